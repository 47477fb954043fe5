"""Faults during a run: clear errors, the right recorded state, nothing half-written or lost."""

from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from omegaconf import OmegaConf

from conftest import OFFLINE_ENV, ROOT
from embedsweep.run import losses, models, training
from embedsweep import tracking
from embedsweep.errors import UserError

TINY = ["model=tiny", "trainer.warmup_ratio=0"]


def write_loss_yaml(tmp_path: Path, name: str, target: str, **kwargs: object) -> str:
    """A loss plugged in as one YAML file in an extra config dir; returns the override adding that dir."""
    (tmp_path / "extra_conf" / "loss").mkdir(parents=True, exist_ok=True)
    module = {"_target_": target, **kwargs}
    cfg = {"name": name, "shape": "pair_score", "batch_sampler": "batch_sampler", "module": module}
    OmegaConf.save(cfg, tmp_path / "extra_conf" / "loss" / f"{name}.yaml")
    return f"hydra.searchpath=[file://{tmp_path / 'extra_conf'}]"


# ---------------------------------------------------------------- NaN / inf loss


def test_non_finite_loss_stops_the_step_it_happens(compose) -> None:
    cfg = compose("model=tiny", "loss=cosine")
    loss = losses.build_loss(cfg.loss, models.build_model(cfg.model, seed=0))
    with pytest.raises(losses.NonFiniteLoss, match=r"training loss became nan .* lower trainer.lr"):
        losses._stop_on_non_finite(loss, (), torch.tensor(float("nan")))
    losses._stop_on_non_finite(loss, (), torch.tensor(0.5))  # finite: nothing happens


def test_a_diverging_run_fails_with_a_clear_error_and_a_failed_run(train_cmd, mlflow_runs, tmp_path: Path) -> None:
    searchpath = write_loss_yaml(tmp_path, "nan_after", "faulty_losses.NaNAfterLoss", after=2)
    proc = train_cmd(*TINY, "loss=nan_after", "batch=16", "trainer.max_steps=10", searchpath)
    assert proc.returncode != 0
    assert "NonFiniteLoss: training loss became nan (NaNAfterLoss)" in proc.stderr
    (run,) = mlflow_runs()
    assert run.info.status == "FAILED"
    assert run.data.tags["error"].startswith("NonFiniteLoss: training loss became nan")
    assert "answer/pearson_cosine" not in run.data.metrics  # no final score for a diverged run


# ---------------------------------------------------------------- out of memory


class _OomTrainer:
    class args:
        per_device_train_batch_size = 256

    def train(self) -> None:
        raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")


def test_out_of_memory_names_the_batch_and_suggests_cached_mnr() -> None:
    with pytest.raises(UserError) as info:
        training.train(_OomTrainer())  # type: ignore[arg-type]
    assert str(info.value) == (
        "out of GPU memory training with batch=256: use a smaller batch (e.g. batch=128), or loss=cached_mnr, "
        "which computes the same loss in mini-batches (loss.module.mini_batch_size)"
    )


# ---------------------------------------------------------------- services


def test_unreachable_tracking_server_fails_before_training(train_cmd, tmp_path: Path) -> None:
    proc = train_cmd(*TINY, "tracking.uri=http://127.0.0.1:9")
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines()[-1].startswith("error: MLflow tracking server http://127.0.0.1:9 is unreachable")
    assert not list(tmp_path.glob("outputs/runs/*/*/model"))  # nothing was trained


def test_a_password_in_the_tracking_uri_from_the_environment_is_never_shown(train_cmd) -> None:
    # Secrets belong in the environment: Hydra itself echoes command-line overrides of a failed job.
    proc = train_cmd(*TINY, env={"MLFLOW_TRACKING_URI": "http://alice:s3cret@127.0.0.1:9"})
    assert proc.returncode == 2
    assert "s3cret" not in proc.stderr + proc.stdout
    assert "http://alice:***@127.0.0.1:9" in proc.stderr


def test_secrets_are_redacted_from_params(compose) -> None:
    cfg = compose("+extra.api_token=abc123", "data.path=https://bob:hunter2@example.org/train.tsv")
    params = tracking.flat_params(cfg, {"loss": "mnr"})
    assert "extra.api_token" not in params
    assert params["data.path"] == "https://bob:***@example.org/train.tsv"
    assert not any("hunter2" in v or "abc123" in v for v in params.values())
    assert tracking.redact("postgresql://u:pw@db:5432/optuna") == "postgresql://u:***@db:5432/optuna"


# ---------------------------------------------------------------- data errors, end to end


@pytest.mark.parametrize(
    "args,message",
    [
        (["data=local", "data.path=missing.tsv"], "error: data file not found: missing.tsv (data.path)"),
        (["eval=local", "eval.path=missing.tsv"], "error: data file not found: missing.tsv (eval.path)"),
        (["data=local", "data.path=train.tsv", "data.columns.label=gold"], "error: train.tsv lacks column(s) ['gold']; found ['premise', 'hypothesis', 'label']"),
    ],
)
def test_data_errors_are_one_line(train_cmd, tmp_path: Path, args: list[str], message: str) -> None:
    (tmp_path / "train.tsv").write_text("premise\thypothesis\tlabel\na\tb\t0\n", encoding="utf-8")
    proc = train_cmd(*TINY, *args)
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines()[-1].startswith(message)
    # Once: not also as the job's failure line and as Hydra's "Error executing job with overrides".
    assert (proc.stdout + proc.stderr).count(message.removeprefix("error: ")) == 1, proc.stdout + proc.stderr
    assert "Error executing job" not in proc.stderr and "Traceback" not in proc.stderr
    if "not found" in message:  # found by the config check, before any tracking work
        assert not (tmp_path / "outputs" / "mlflow.db").exists()


@pytest.mark.slow  # a real sweep in a subprocess: the fast suite stays as fast as before this round
def test_a_sweeps_data_error_is_said_once_by_its_job(train_cmd, tmp_path: Path) -> None:
    (tmp_path / "train.tsv").write_text("premise\thypothesis\tlabel\na\tb\t0\n", encoding="utf-8")
    proc = train_cmd("-m", *TINY, "data=local", "data.path=train.tsv", "data.columns.label=gold", "test=none")
    assert proc.returncode == 2
    shown = proc.stdout + proc.stderr
    assert shown.count("train.tsv lacks column(s) ['gold']") == 1, shown
    assert "ERROR: [job 1/1] failed after " in shown and "Error executing job" not in shown
    assert proc.stderr.strip().splitlines()[-1] == "error: the sweep stopped: [job 1/1] failed (its error is above)"


# ---------------------------------------------------------------- interruption


def _wait_for_running_run(db: Path, timeout: float = 400) -> None:  # start-up: minutes on a loaded machine
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if db.exists():
            try:
                with sqlite3.connect(db) as con:
                    steps = con.execute("select count(*) from metrics where key = 'history/loss'").fetchone()[0]
                if steps >= 2:
                    return
            except sqlite3.OperationalError:
                pass  # tables not created yet
        time.sleep(0.5)
    raise AssertionError("the run never started training")


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_sigterm_and_ctrl_c_end_the_run_killed(tmp_path: Path, mlflow_runs, sig: signal.Signals) -> None:
    env = os.environ | OFFLINE_ENV
    cmd = [sys.executable, str(ROOT / "train.py"), *TINY, "batch=4", "trainer.epochs=100", "trainer.logging_steps=1", "loss=cosine"]
    # As in a terminal: a test run started in the background (nohup, `cmd &` in a script) passes on an
    # ignored SIGINT, and train.py rightly keeps ignoring Ctrl-C then.
    def ctrl_c_reaches_it() -> None:
        signal.signal(signal.SIGINT, signal.SIG_DFL)

    proc = subprocess.Popen(cmd, cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            preexec_fn=ctrl_c_reaches_it)  # fmt: skip
    try:
        _wait_for_running_run(tmp_path / "outputs" / "mlflow.db")
        proc.send_signal(sig)
        _, stderr = proc.communicate(timeout=60)
    finally:
        proc.kill()
    assert proc.returncode == 130, stderr[-2000:]
    assert "interrupted: the current run was recorded as KILLED" in stderr
    (run,) = mlflow_runs()
    assert run.info.status == "KILLED"
    assert "KeyboardInterrupt" in run.data.tags["error"]
    assert not list(tmp_path.glob("outputs/runs/*/*/model"))  # no half-written model


# ---------------------------------------------------------------- nothing lost, nothing overwritten


@pytest.mark.slow
def test_two_sweeps_at_once_on_one_store_lose_nothing(tmp_path: Path, mlflow_runs) -> None:
    env = os.environ | OFFLINE_ENV
    cmd = [sys.executable, str(ROOT / "train.py"), "-m", *TINY, "loss=mnr,cosine", "trainer.max_steps=3"]
    procs = [subprocess.Popen(cmd, cwd=tmp_path, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True) for _ in range(2)]
    for p in procs:
        _, err = p.communicate(timeout=600)
        assert p.returncode == 0, err[-2000:]
    runs = mlflow_runs()
    parents = [r for r in runs if "mlflow.parentRunId" not in r.data.tags]
    children = [r for r in runs if "mlflow.parentRunId" in r.data.tags]
    assert len(parents) == 2 and len(children) == 4
    assert all(r.info.status == "FINISHED" and "answer/pearson_cosine" in r.data.metrics for r in children)
    for parent in parents:
        mine = [c for c in children if c.data.tags["mlflow.parentRunId"] == parent.info.run_id]
        assert sorted(c.data.params["loss"] for c in mine) == ["cosine", "mnr"]
    dirs = {c.data.tags["hydra_output_dir"] for c in children}
    assert len(dirs) == 4  # no sweep wrote into the other's folders


def test_unreachable_optuna_storage_is_one_line_before_any_tracking_work(train_cmd, tmp_path: Path) -> None:
    proc = train_cmd("-m", "hparams_search=batch_warmup", *TINY, "hydra.sweeper.storage=postgresql://bob:pw@127.0.0.1:9/optuna")
    assert proc.returncode == 2
    last = proc.stderr.strip().splitlines()[-1]
    assert last.startswith("error: Optuna storage postgresql://bob:***@127.0.0.1:9/optuna is unreachable (")
    assert last.endswith("check hydra.sweeper.storage") and ":pw@" not in proc.stderr
    # The storage is checked before the sweep's parent run exists: nothing is recorded for a sweep that never ran.
    assert not (tmp_path / "outputs" / "mlflow.db").exists()


def test_a_job_whose_per_pair_similarities_cannot_be_kept_still_ends_well(caplog: pytest.LogCaptureFixture, small_disk: Path, tmp_path: Path) -> None:
    """They only sharpen the sweep's verdict (paired comparison): losing them costs a warning, not the job.
    A real MLflow client whose artifact store is a real tmpfs filled to the last byte."""
    from mlflow import MlflowClient

    from conftest import fill
    from embedsweep.tracking.mlflow_tracker import PAIRS_FILE, MlflowJobRun
    from embedsweep.run.noise import ScoredPairs

    client = MlflowClient(tracking_uri=f"sqlite:///{tmp_path}/mlflow.db")
    run_id = client.create_run(client.create_experiment("e", artifact_location=(small_disk / "artifacts").as_uri())).info.run_id
    fill(small_disk)
    MlflowJobRun(run_id, client).keep_scored_pairs(ScoredPairs("eval", (0.1, 0.2), (0.3, 0.4)))
    (warning,) = [r.getMessage() for r in caplog.records if "per-pair similarities" in r.getMessage()]
    # The cause in words: the OS's "No space left on device", or embedsweep's own sentence for ENOSPC.
    assert warning.startswith(f"could not keep the per-pair similarities of run {run_id}: ") and "space left on" in warning.lower(), warning
    assert client.list_artifacts(run_id) == [] and not list(small_disk.rglob(PAIRS_FILE))  # no half-written file either
    client.log_metric(run_id, "pearson_cosine", 0.5)  # the job goes on: its scores are recorded and it ends well
    client.set_terminated(run_id, "FINISHED")
    assert client.get_run(run_id).info.status == "FINISHED"
