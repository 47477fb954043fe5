"""End to end: the real `python train.py` command on CPU with model=tiny, checked in MLflow."""

from __future__ import annotations

from pathlib import Path

import pytest

from conftest import CONF
from embedsweep.run import noise
from embedsweep.run.noise import ScoredPairs

LOSSES = sorted(p.stem for p in (CONF / "loss").glob("*.yaml"))
QUICK = ["model=tiny", "trainer.warmup_ratio=0", "trainer.lr=1e-3"]


@pytest.fixture(scope="module")
def every_loss(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, object]]:
    """One multirun over every loss YAML (one process, so the imports are paid once); its child runs by loss."""
    import os
    import subprocess
    import sys

    from mlflow import MlflowClient

    from conftest import OFFLINE_ENV, ROOT

    cwd = tmp_path_factory.mktemp("losses")
    args = [*QUICK, f"loss={','.join(LOSSES)}", "test=none", "batch=16", "trainer.max_steps=6", "trainer.eval_steps=3", "trainer.logging_steps=2"]
    proc = subprocess.run([sys.executable, str(ROOT / "train.py"), "-m", *args], cwd=cwd, env=os.environ | OFFLINE_ENV,
                          capture_output=True, text=True, timeout=900)  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    # Recording the data (MLflow infers a schema; NLI labels are integers) adds no library hint to the console.
    assert "UserWarning" not in proc.stdout + proc.stderr, proc.stderr[-3000:]
    client = MlflowClient(tracking_uri=f"sqlite:///{cwd}/outputs/mlflow.db")
    runs = client.search_runs([client.get_experiment_by_name("embedsweep").experiment_id])
    return cwd, {r.data.params["loss"]: r for r in runs if "mlflow.parentRunId" in r.data.tags}


@pytest.mark.parametrize("loss", LOSSES)
def test_each_loss_trains_and_lands_in_mlflow(every_loss, loss: str) -> None:
    cwd, by_loss = every_loss
    assert sorted(by_loss) == LOSSES
    run = by_loss[loss]
    assert run.info.status == "FINISHED"
    m, p, t = run.data.metrics, run.data.params, run.data.tags
    for name in ("answer/pearson_cosine", "answer/spearman_cosine", "baseline/pearson_cosine", "baseline/spearman_cosine"):
        assert -1.0 <= m[name] <= 1.0, name
    # Six steps at lr 1e-3 move a random model: its eval score by more than float noise between two encodings.
    assert abs(m["answer/pearson_cosine"] - m["baseline/pearson_cosine"]) > 1e-4, (m["answer/pearson_cosine"], m["baseline/pearson_cosine"])
    assert m["history/steps"] == 6 and m["efficiency/samples_per_second"] > 0 and m["efficiency/runtime_s"] > 0
    assert (p["loss"], p["model"], p["data"], p["eval"], p["batch"]) == (loss, "tiny", "snli_1pct", "stsb_captions", "16")
    assert p["trainer.lr"] == "0.001" and (p["trainer.warmup_ratio"], p["trainer.warmup_steps"]) == ("0", "None")
    assert t["device"] == "cpu" and t["torch_version"] and t["sentence_transformers_version"]
    assert Path(t["hydra_output_dir"], "model", "modules.json").is_file()  # the trained model is saved

    from mlflow import MlflowClient

    client = MlflowClient(tracking_uri=f"sqlite:///{cwd}/outputs/mlflow.db")
    evals = client.get_metric_history(run.info.run_id, "history/pearson_cosine")
    assert [e.step for e in evals] == [3, 6]  # intermediate evaluations as history
    assert len(client.get_metric_history(run.info.run_id, "history/loss")) >= 3
    assert [a.path for a in client.list_artifacts(run.info.run_id)] == ["config.yaml", "eval_pairs.json"]
    # The final evaluation pair by pair, for the sweep's paired comparison: it gives the logged score.
    pairs = ScoredPairs.from_json(Path(client.download_artifacts(run.info.run_id, "eval_pairs.json", str(cwd))).read_text())
    assert len(pairs.similarities) == len(pairs.gold) == m["sets/eval_pairs"]
    assert noise.score("pearson_cosine", pairs.similarities, pairs.gold) == pytest.approx(m["answer/pearson_cosine"], abs=1e-6)


def test_the_readme_multirun_gives_one_parent_and_four_children(train_cmd, mlflow_runs) -> None:
    proc = train_cmd("-m", "loss=mnr,cosine", "batch=32,128", "model=tiny")
    assert proc.returncode == 0, proc.stderr[-3000:]
    runs = mlflow_runs()
    parents = [r for r in runs if "mlflow.parentRunId" not in r.data.tags]
    children = [r for r in runs if "mlflow.parentRunId" in r.data.tags]
    assert len(parents) == 1 and len(children) == 4
    (parent,) = parents
    assert parent.info.status == "FINISHED" and parent.data.metrics["jobs_finished"] == 4
    assert {r.data.tags["mlflow.parentRunId"] for r in children} == {parent.info.run_id}
    assert all(r.info.status == "FINISHED" for r in children)
    combos = {(r.data.params["loss"], r.data.params["batch"]) for r in children}
    assert combos == {("mnr", "32"), ("mnr", "128"), ("cosine", "32"), ("cosine", "128")}
    names = {r.info.run_name for r in children}
    assert names == {"loss=mnr batch=32", "loss=mnr batch=128", "loss=cosine batch=32", "loss=cosine batch=128"}
    for r in children:
        assert {"answer/pearson_cosine", "answer/spearman_cosine"} <= r.data.metrics.keys()
    best = max(r.data.metrics["answer/pearson_cosine"] for r in children)
    assert parent.data.metrics["best_objective"] == pytest.approx(best)


def test_a_failing_job_is_recorded_failed_and_loses_nothing(train_cmd, mlflow_runs) -> None:
    # eval.limit=1 leaves one pair: no correlation can be computed, so job 0 fails; job 1 runs.
    proc = train_cmd("-m", "model=tiny", "eval.limit=1,100", "trainer.max_steps=2")
    assert proc.returncode != 0
    # The job's error is said once, on its job line; the command's last line points to it.
    assert proc.stderr.strip().splitlines()[-1] == "error: the sweep stopped: [job 1/2] failed (its error is above)"
    assert "ERROR: [job 1/2] failed after" in proc.stdout and (proc.stdout + proc.stderr).count("too few for a meaningful correlation") == 1
    runs = mlflow_runs()
    parent = next(r for r in runs if "mlflow.parentRunId" not in r.data.tags)
    failed = next(r for r in runs if r.data.params.get("eval.limit") == "1")
    ok = next(r for r in runs if r.data.params.get("eval.limit") == "100")
    assert failed.info.status == "FAILED" and "too few for a meaningful correlation" in failed.data.tags["error"]
    assert ok.info.status == "FINISHED" and "answer/pearson_cosine" in ok.data.metrics
    assert parent.info.status == "FAILED"


def test_hub_data_without_network_fails_fast_naming_the_offline_option(train_cmd, mlflow_runs) -> None:
    # How long this takes is measured, not asserted (README "When things go wrong"); what is asserted is
    # that the first refused connection ends it (no retries) before any training.
    proc = train_cmd("data=mnli", "model=tiny", env={"HF_HUB_OFFLINE": "0", "HF_DATASETS_OFFLINE": "0", "HF_ENDPOINT": "http://127.0.0.1:9"})
    assert proc.returncode == 2
    last = proc.stderr.strip().splitlines()[-1]
    assert last.startswith("error: cannot reach the Hugging Face Hub (http://127.0.0.1:9)") and "Connection refused" in last
    assert "data=local data.path=" in last
    (run,) = mlflow_runs()
    assert run.info.status == "FAILED" and "cannot reach the Hugging Face Hub" in run.data.tags["error"]
    assert "history/steps" not in run.data.metrics


def test_hub_model_in_offline_mode_names_the_packaged_alternative(train_cmd) -> None:
    proc = train_cmd("model=bert-base-uncased", "trainer.max_steps=1")
    assert proc.returncode == 2
    assert "model=minilm" in proc.stderr.strip().splitlines()[-1]


def test_real_mnli_and_stsb_train_and_score(train_cmd, mlflow_runs, compose, tmp_path: Path, shared_data: Path) -> None:
    proc = train_cmd(
        "model=tiny", "data=local", f"data.path={shared_data}/mnli/train.tsv", "data.limit=2000",
        "eval=local", f"eval.path={shared_data}/stsb/validation.tsv", "trainer.max_steps=5", "trainer.eval_steps=100",
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    (run,) = mlflow_runs()
    assert run.data.metrics["sets/eval_pairs"] == 1500
    # Scored on the real validation pairs, in the file's order, with their gold scores scaled to [0, 1];
    # the logged score is the one those similarities give.
    from mlflow import MlflowClient

    from embedsweep.run import data

    validation = data.load_sts(compose("eval=local", f"eval.path={shared_data}/stsb/validation.tsv").eval, "eval")
    client = MlflowClient(tracking_uri=f"sqlite:///{tmp_path}/outputs/mlflow.db")
    pairs = ScoredPairs.from_json(Path(client.download_artifacts(run.info.run_id, "eval_pairs.json", str(tmp_path))).read_text())
    assert list(pairs.gold) == pytest.approx(list(validation.scores), abs=1e-9) and len(pairs.gold) == 1500
    assert noise.score("pearson_cosine", pairs.similarities, pairs.gold) == pytest.approx(run.data.metrics["answer/pearson_cosine"], abs=1e-6)


@pytest.mark.slow
@pytest.mark.timeout(2400)  # four MiniLM runs: 3.4 min on an idle 2-core CPU, 14 min on a slow one (2026-11-30)
def test_the_main_job_shows_mnr_above_cosine(train_cmd, mlflow_runs) -> None:
    """`make sweep` on the packaged defaults (MiniLM): cosine loss on NLI's 1/0 labels pulls the STS
    score down, MNR keeps it; each run is scored against the same untouched baseline."""
    proc = train_cmd("-m", "loss=mnr,cosine", "batch=32,128", "trainer.save_model=false", timeout=2300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    children = [r for r in mlflow_runs() if "mlflow.parentRunId" in r.data.tags]
    score = {(r.data.params["loss"], r.data.params["batch"]): r.data.metrics for r in children}
    assert len(score) == 4
    baseline = score[("mnr", "32")]["baseline/pearson_cosine"]
    assert all(m["baseline/pearson_cosine"] == pytest.approx(baseline) for m in score.values())
    for batch in ("32", "128"):
        mnr, cosine = score[("mnr", batch)]["answer/pearson_cosine"], score[("cosine", batch)]["answer/pearson_cosine"]
        assert mnr > cosine + 0.005, (batch, mnr, cosine)
        assert mnr > baseline - 0.01 and cosine < baseline, (batch, baseline, mnr, cosine)
