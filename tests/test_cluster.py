"""Sweeps on a real SLURM cluster: trials as SLURM jobs (launcher=slurm), a grid, preemption, the
nightly sbatch driver and sweep workers on one study. All slow; they need a running cluster
(`deploy/local-cluster.sh` starts one on this machine) and skip with the reason without one.

A shared study (PostgreSQL) and an MLflow tracking server stand in for a cluster's services."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import optuna
import pytest
from optuna.trial import TrialState

from conftest import OFFLINE_ENV, ROOT

pytestmark = pytest.mark.slow

QUICK = ["model=tiny", "trainer.max_steps=6", "trainer.eval_steps=2", "trainer.logging_steps=2", "trainer.lr=1e-3", "trainer.save_model=false"]
SPACE = ["batch=choice(16,32)", "trainer.warmup_steps=int(interval(0,10))"]
STUDY = "batch_warmup-mnr-tiny-sample"


@pytest.fixture(scope="module")
def slurm() -> None:
    """A SLURM cluster whose node takes jobs, and the submitit launcher; else skip, saying which."""
    if shutil.which("sinfo") is None or shutil.which("sbatch") is None:
        pytest.skip("SLURM is not installed (sinfo/sbatch not found); deploy/local-cluster.sh installs and starts one")
    states = subprocess.run(["sinfo", "-h", "-o", "%T"], capture_output=True, text=True, timeout=30)
    if states.returncode != 0 or not {"idle", "mixed", "allocated"} & set(states.stdout.split()):
        pytest.skip(f"no SLURM node takes jobs (sinfo: {(states.stdout + states.stderr).strip()!r}); run deploy/local-cluster.sh")
    pytest.importorskip("hydra_plugins.hydra_submitit_launcher", reason="hydra-submitit-launcher is not installed (pip install -e '.[slurm]')")


@pytest.fixture
def services(slurm, postgres_db: Callable[[], str], mlflow_server) -> tuple[str, str]:
    """(Optuna storage URL, MLflow tracking URI), both on servers every node reaches."""
    return postgres_db(), mlflow_server[0]


def train(cwd: Path, *args: str, timeout: float = 900) -> subprocess.Popen[str]:
    """Start `python train.py ARGS` in cwd (as a user on a login node would)."""
    env = os.environ | OFFLINE_ENV | {"OMP_NUM_THREADS": "1"}
    return subprocess.Popen([sys.executable, str(ROOT / "train.py"), *args], cwd=cwd, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)  # fmt: skip


def finish(proc: subprocess.Popen[str], timeout: float = 900) -> tuple[int, str]:
    try:
        out, _ = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        out, _ = proc.communicate()
        raise AssertionError(f"timed out:\n{out[-4000:]}") from None
    return proc.returncode, out


def runs_of(uri: str) -> list:
    from mlflow import MlflowClient

    client = MlflowClient(tracking_uri=uri)
    experiment = client.get_experiment_by_name("embedsweep")
    assert experiment is not None, "no embedsweep experiment on the tracking server"
    return list(client.search_runs([experiment.experiment_id], order_by=["attributes.start_time ASC"]))


def slurm_jobs(tmp_path: Path) -> dict[str, str]:
    """SLURM job id -> state, for every job submitit submitted under tmp_path (from its folders)."""
    ids = sorted({p.parent.name for p in tmp_path.glob("outputs/multiruns/*/*/.submitit/*/*_log.out")})  # 12 or 12_0 (array)
    states = {}
    for job in ids:
        out = subprocess.run(["scontrol", "-o", "show", "job", job], capture_output=True, text=True, timeout=30).stdout
        states[job] = next((f.split("=", 1)[1] for f in out.split() if f.startswith("JobState=")), "gone")
    return states


def children_of(runs: list, parent) -> list:
    return [r for r in runs if r.data.tags.get("mlflow.parentRunId") == parent.info.run_id]


# ---------------------------------------------------------------- launcher=slurm


def test_an_optuna_sweep_runs_each_trial_as_a_slurm_job_and_prunes_across_jobs(services, tmp_path: Path) -> None:
    storage, uri = services
    # Half the learning rates are absurd: once a trial has completed, those fall behind the median.
    proc = train(
        tmp_path, "-m", "launcher=slurm", "hparams_search=batch_warmup", *QUICK, *SPACE,
        "trainer.max_steps=12", "trainer.lr=choice(1e-3,0.9)", "hydra.sweeper.sampler.name=random",
        "hydra.sweeper.pruner.n_startup_trials=1", "hydra.sweeper.pruner.n_warmup_steps=0",
        "hydra.sweeper.n_trials=6", "hydra.sweeper.n_jobs=2", f"hydra.sweeper.storage={storage}", f"tracking.uri={uri}",
    )  # fmt: skip
    code, out = finish(proc)
    assert code == 0, out[-4000:]

    jobs = slurm_jobs(tmp_path)
    assert len(jobs) == 6 and set(jobs.values()) == {"COMPLETED"}, jobs  # one SLURM job per trial
    trials = optuna.load_study(study_name=STUDY, storage=storage).trials
    assert len(trials) == 6
    states = {t.number: t.state for t in trials}
    assert TrialState.PRUNED in states.values() and TrialState.FAIL not in states.values(), states

    runs = runs_of(uri)
    (parent,) = [r for r in runs if r.data.tags.get("embedsweep.role") == "sweep"]
    children = children_of(runs, parent)
    assert sorted(int(r.data.tags["trial_number"]) for r in children) == list(range(6))
    for run in children:
        state = states[int(run.data.tags["trial_number"])]
        assert (run.data.tags["trial_state"], run.info.status) == (state.name, {"COMPLETE": "FINISHED", "PRUNED": "KILLED"}[state.name])
    assert parent.info.status == "FINISHED"
    assert parent.data.metrics["jobs_pruned"] == sum(s == TrialState.PRUNED for s in states.values())
    best = max((t for t in trials if t.state == TrialState.COMPLETE), key=lambda t: t.value)
    assert parent.data.metrics["best_pearson_cosine"] == pytest.approx(best.value)


def test_a_grid_runs_on_slurm_with_the_basic_sweeper(slurm, train_cmd, mlflow_runs, tmp_path: Path) -> None:
    proc = train_cmd("-m", "launcher=slurm", "loss=mnr,cosine", *QUICK, env={"OMP_NUM_THREADS": "1"}, timeout=900)
    assert proc.returncode == 0, proc.stderr[-4000:]
    jobs = slurm_jobs(tmp_path)
    assert len(jobs) == 2 and set(jobs.values()) == {"COMPLETED"}, jobs
    runs = mlflow_runs()
    (parent,) = [r for r in runs if r.data.tags.get("embedsweep.role") == "sweep"]
    children = children_of(runs, parent)
    assert sorted(r.info.run_name for r in children) == ["loss=cosine", "loss=mnr"]
    assert {r.info.status for r in children} == {"FINISHED"} and parent.data.metrics["jobs_finished"] == 2


def test_the_slurm_preset_asks_for_cpu_resources_that_any_cluster_can_schedule(compose) -> None:
    launcher = compose("launcher=slurm", hydra_config=True).hydra.launcher  # no sweeper keys needed
    assert (launcher.gpus_per_node, launcher.cpus_per_task, launcher.mem_gb, launcher.array_parallelism) == (None, 1, 4, 8)
    gpu = compose("launcher=slurm", "hparams_search=batch_warmup", "hydra.launcher.gpus_per_node=1", hydra_config=True).hydra
    assert (gpu.launcher.gpus_per_node, gpu.sweeper.n_jobs) == (1, 1)
