"""The real command: efficiency metrics, single evaluation of the final model, reuse across runs, DDP."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import OFFLINE_ENV, ROOT

QUICK = ["model=tiny", "trainer.warmup_steps=0", "trainer.lr=1e-3", "batch=16", "trainer.max_steps=6", "trainer.eval_steps=3"]


def test_a_run_reports_efficiency_and_a_second_run_reuses_baseline_and_data(train_cmd, mlflow_runs, tmp_path: Path) -> None:  # noqa: ANN001
    # The second run trains with another batch size, as the next trial of a sweep over batch would:
    # the eval set is encoded with its own fixed batch size, so the untouched model's score still holds.
    for batch in ("batch=16", "batch=8"):
        proc = train_cmd(*[o for o in QUICK if not o.startswith("batch=")], batch)
        assert proc.returncode == 0, proc.stderr[-3000:]
    first, second = mlflow_runs()
    assert (first.data.tags["baseline_cached"], first.data.tags["data_cached"]) == ("False", "False")
    assert (second.data.tags["baseline_cached"], second.data.tags["data_cached"]) == ("True", "True")
    for name in ("baseline/pearson_cosine", "baseline/spearman_cosine_low", "sets/train_rows", "sets/dropped_no_label"):
        assert first.data.metrics[name] == second.data.metrics[name], name
    assert (first.data.params["batch"], second.data.params["batch"]) == ("16", "8")

    m = second.data.metrics
    assert m["efficiency/tokens_per_second"] > 0 and m["efficiency/loop_samples_per_second"] > 0
    assert 0 < m["efficiency/padding_share"] < 1  # the sample sentences differ in length
    assert m["efficiency/peak_cpu_rss_mb"] > 100 and 0 < m["efficiency/loop_s"] < m["efficiency/runtime_s"]
    assert m["efficiency/eval_s"] > 0 and m["efficiency/model_tflops_per_second"] > 0
    assert "efficiency/mfu" not in m  # no peak FLOP/s for a CPU

    from mlflow import MlflowClient

    client = MlflowClient(tracking_uri=f"sqlite:///{tmp_path}/outputs/mlflow.db")
    evals = client.get_metric_history(second.info.run_id, "history/pearson_cosine")
    assert [e.step for e in evals] == [3, 6]
    assert m["answer/pearson_cosine"] == evals[-1].value  # the final score is the trainer's last evaluation, not a second one
    assert client.get_metric_history(second.info.run_id, "history/padding_share")
    assert "(cached)" in proc.stdout  # the log says the baseline was reused


@pytest.mark.slow
def test_torchrun_trains_one_trial_on_two_processes_with_one_mlflow_run(tmp_path: Path, mlflow_runs) -> None:  # noqa: ANN001
    # 240 sample NLI pairs -> 80 entailment triplets; batch 8 per process: 10 steps alone, 5 on two ranks.
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", "--master_port=29517", str(ROOT / "train.py"),
           "model=tiny", "data=sample", "eval=sample", "batch=8", "trainer.eval_steps=100", "trainer.warmup_steps=0"]  # fmt: skip
    env = os.environ | OFFLINE_ENV | {"OMP_NUM_THREADS": "1"}
    proc = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-4000:]
    (run,) = mlflow_runs()
    assert run.info.status == "FINISHED"
    assert run.data.tags["world_size"] == "2"
    assert run.data.metrics["sets/train_rows"] == 80 and run.data.metrics["history/steps"] == 5
    assert run.data.params["loss.module.gather_across_devices"] == "True"
    models = list((tmp_path / "outputs" / "runs").glob("*/*/model/modules.json"))
    assert len(models) == 1  # saved by rank 0 only
