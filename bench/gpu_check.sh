#!/usr/bin/env bash
# Run ON the lent GPU machine, from the repo root, after bench/gpu_prepare.sh here. With the device tool:
#   run(command="bash bench/gpu_check.sh", carry=[".whl", ".gpu_assets"], timeout_s=540)
# Trains the reference recipe's MNR run (50k MNLI rows -> ~16.7k triplets, batch 32, warmup 100,
# precision=auto -> bf16) on a randomly initialised bert-base-sized model, then a short tiny run, logging to
# MLflow; writes a summary (samples/s, scores, peak memory, device tags) to $OUT/gpu_check.json.
set -euo pipefail
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl
export PYTHONPATH=/tmp/site:$PWD/src HF_HUB_OFFLINE=1 PYTHONUNBUFFERED=1 EMBEDSWEEP_OUTPUT_ROOT=/tmp/embedsweep-out
OUT=${OUT:-/tmp/gpu-out}; mkdir -p "$OUT"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv | tee "$OUT/nvidia_smi.txt"
common=(paths.data_dir=.gpu_assets/data model.tokenizer_dir=.gpu_assets/tokenizer trainer.save_model=false
        tracking.experiment=gpu_check)
timeout 420 python3 train.py experiment=recipe_mnr_offline model=bert_base_random "${common[@]}" 2>&1 | tee "$OUT/recipe_mnr.log" | grep -E "baseline on|final on|train_runtime|error" || true
timeout 60 python3 train.py model=tiny loss=softmax "${common[@]}" 2>&1 | tail -n 2 || true
python3 - <<'PY' | tee "$OUT/gpu_check.json"
import json, mlflow, os
client = mlflow.MlflowClient(f"sqlite:///{os.environ['EMBEDSWEEP_OUTPUT_ROOT']}/mlflow.db")
exp = client.get_experiment_by_name("gpu_check")
rows = []
for run in client.search_runs([exp.experiment_id], order_by=["attributes.start_time ASC"]):
    keep = ("pearson_cosine", "spearman_cosine", "baseline_pearson_cosine", "train_samples_per_second",
            "train_runtime_s", "train_steps", "peak_gpu_memory_mb")
    rows.append({"run": run.info.run_name, "status": run.info.status, "model": run.data.params.get("model"),
                 "device": run.data.tags.get("device"), "precision": run.data.tags.get("precision"), **{k: run.data.metrics.get(k) for k in keep},
                 "error": run.data.tags.get("error")})
print(json.dumps(rows, indent=1))
PY
