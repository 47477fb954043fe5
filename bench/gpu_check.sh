#!/usr/bin/env bash
# Run ON a GPU machine without internet, from the repo root, after bench/gpu_prepare.sh on a machine with PyPI
# (it gathers .whl/ and .gpu_assets/, which must travel with the checkout). One run, within 15 minutes.
#
# Throughput of MNR training in bf16 at batch 32, 128 and 512 on two model sizes, randomly initialised
# (the architectures of all-MiniLM-L6-v2 and of bert-base-uncased: same speed as the trained weights,
# which cannot be carried there): 40 optimizer steps each on real MNLI triplets, one STS-B evaluation
# at the end. Each run logs samples/s, tokens/s (padding excluded), padding share, peak GPU memory and
# MFU (embedsweep/efficiency.py) to MLflow; the summary goes to $OUT/gpu_check.json and $OUT/gpu_check.md.
# Goal: MFU >= 25% for the bert-base-sized model at batch >= 128.
set -euo pipefail
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl
export PYTHONPATH=/tmp/site:$PWD/src HF_HUB_OFFLINE=1 PYTHONUNBUFFERED=1 EMBEDSWEEP_OUTPUT_ROOT=/tmp/embedsweep-out
OUT=${OUT:-/tmp/gpu-out}; mkdir -p "$OUT"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv | tee "$OUT/nvidia_smi.txt"
common=(experiment=recipe_mnr_offline paths.data_dir=.gpu_assets/data model.tokenizer_dir=.gpu_assets/tokenizer
        trainer.precision=bf16 trainer.max_steps=40 trainer.warmup_steps=10 trainer.eval_steps=100000
        trainer.logging_steps=10 trainer.save_model=false paths.cache_dir=null tracking.experiment=gpu_check)
for model in minilm_random bert_base_random; do
  for batch in 32 128 512; do
    echo "== $model batch=$batch"
    timeout 150 python3 train.py model=$model batch=$batch "${common[@]}" > "$OUT/${model}_b${batch}.log" 2>&1 \
      || echo "   failed or timed out: see $OUT/${model}_b${batch}.log"
    tail -n 1 "$OUT/${model}_b${batch}.log"
  done
done
python3 - "$OUT" <<'PY'
import json, mlflow, os, sys
from embedsweep.run import metric_names as names
out = sys.argv[1]
client = mlflow.MlflowClient(f"sqlite:///{os.environ['EMBEDSWEEP_OUTPUT_ROOT']}/mlflow.db")
exp = client.get_experiment_by_name("gpu_check")
# gpu_check.json keeps the earlier flat names as its keys; the runs record them in sections (metric_names.py).
keep = {k: names.RENAMED[k] for k in ("train_loop_samples_per_second", "train_tokens_per_second", "train_padding_share", "peak_gpu_memory_mb",
                                      "train_model_tflops_per_second", "train_mfu", "train_steps", "train_loop_s", "pearson_cosine")}
rows = []
for run in client.search_runs([exp.experiment_id], order_by=["attributes.start_time ASC"]):
    rows.append({"model": run.data.params.get("model"), "batch": run.data.params.get("batch"), "status": run.info.status,
                 "device": run.data.tags.get("device"), "precision": run.data.tags.get("precision"),
                 **{k: run.data.metrics.get(recorded) for k, recorded in keep.items()}, "error": run.data.tags.get("error")})
json.dump(rows, open(f"{out}/gpu_check.json", "w"), indent=1)
lines = ["| model | batch | samples/s | tokens/s | padding | peak GPU MiB | TFLOP/s | MFU |", "|---|---:|---:|---:|---:|---:|---:|---:|"]
f = lambda v, spec: "–" if v is None else format(v, spec)
for r in rows:
    lines.append(f"| {r['model']} | {r['batch']} | {f(r['train_loop_samples_per_second'], ',.0f')} | {f(r['train_tokens_per_second'], ',.0f')} | "
                 f"{f(r['train_padding_share'], '.0%')} | {f(r['peak_gpu_memory_mb'], ',.0f')} | {f(r['train_model_tflops_per_second'], '.1f')} | {f(r['train_mfu'], '.1%')} |")
device = rows[0]["device"] if rows else "?"
open(f"{out}/gpu_check.md", "w").write(f"Device: {device}, bf16, MNR, 40 steps on MNLI triplets.\n\n" + "\n".join(lines) + "\n")
print(open(f"{out}/gpu_check.md").read())
PY
