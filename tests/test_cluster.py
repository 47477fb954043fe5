"""Sweeps on a real SLURM cluster: trials as SLURM jobs (launcher=slurm), a grid, preemption, the
nightly sbatch driver and sweep workers on one study. All slow; they need a running cluster
(`deploy/local-cluster.sh` starts one on this machine) and skip with the reason without one.

A shared study (PostgreSQL) and an MLflow tracking server stand in for a cluster's services."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import optuna
import pytest
from optuna.trial import TrialState

from conftest import OFFLINE_ENV, ROOT, require_slurm

# A loaded machine slows SLURM jobs a lot. The one node has 2 CPUs: these tests take turns, as one
# module on one xdist worker (make test-slow distributes by module).
pytestmark = [pytest.mark.slow, pytest.mark.timeout(1800)]

QUICK = ["model=tiny", "trainer.max_steps=6", "trainer.eval_steps=2", "trainer.logging_steps=2", "trainer.lr=1e-3", "trainer.save_model=false"]
SPACE = ["batch=choice(16,32)", "trainer.warmup_ratio=interval(0,0.3)"]
STUDY = None  # the one study in the storage: its name is made from the search and the data


@pytest.fixture(scope="module")
def slurm() -> None:
    """A SLURM cluster whose node takes jobs, and the submitit launcher; else skip, saying which (fail under CI=true)."""
    require_slurm()


@pytest.fixture
def services(slurm, postgres_db: Callable[[], str], mlflow_server) -> tuple[str, str]:
    """(Optuna storage URL, MLflow tracking URI), both on servers every node reaches."""
    return postgres_db(), mlflow_server[0]


def train(cwd: Path, *args: str, timeout: float = 900) -> subprocess.Popen[str]:
    """Start `python train.py ARGS` in cwd (as a user on a login node would)."""
    env = os.environ | OFFLINE_ENV | {"OMP_NUM_THREADS": "1"}
    return subprocess.Popen([sys.executable, str(ROOT / "train.py"), *args], cwd=cwd, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)  # fmt: skip


# Without SLURM's accounting database (a one-node test cluster has none) submitit warns at every poll
# that sacct failed; those lines would fill the tail of output that a failing assertion shows.
SACCT_NOISE = ("Bypassing sacct error", "Slurm accounting storage is disabled")


def finish(proc: subprocess.Popen[str], timeout: float = 900) -> tuple[int, str]:
    """Wait for the command; its exit code and its output without submitit's sacct warnings."""
    try:
        out, _ = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        out, _ = proc.communicate()
        raise AssertionError(f"timed out:\n{out[-4000:]}") from None
    return proc.returncode, "\n".join(line for line in out.splitlines() if not any(n in line for n in SACCT_NOISE))


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
        "trainer.max_steps=12", "trainer.lr=choice(1e-3,0.9)", "hydra/sweeper/sampler=random",
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


# ---------------------------------------------------------------- preemption


def _job_of_trial(tmp_path: Path, storage: str, number: int, deadline: float) -> str:
    """The SLURM job id running trial `number`, once that trial has reported an evaluation (it trains)."""
    while time.monotonic() < deadline:
        try:
            trials = {t.number: t for t in optuna.load_study(study_name=STUDY, storage=storage).trials}
        except (KeyError, ValueError):  # the sweeper has not created the study yet (ValueError: no study to pick without a name)
            trials = {}
        if number in trials and trials[number].intermediate_values:
            for submitted in tmp_path.glob("outputs/multiruns/*/*/.submitit/*/*_submitted.pkl"):
                if f"trial={number}" in _overrides(submitted):
                    return submitted.parent.name
        time.sleep(0.5)
    raise AssertionError(f"trial {number} never started training")


def _overrides(submitted: Path) -> list[str]:
    """A job's overrides, from the call submitit pickled for it (the launcher, its overrides, ...)."""
    import pickle

    with submitted.open("rb") as f:
        delayed = pickle.load(f)
    return list(delayed.args[0])


def test_preempted_trial_jobs_fail_or_are_requeued_and_the_study_resumes(services, tmp_path: Path) -> None:
    """Two trials as SLURM jobs: one gets SIGTERM (scancel --signal=TERM: a cancel, a preemption without
    requeue), the other SIGUSR2, on which submitit requeues its job. The first trial ends FAIL and its
    run KILLED, the second is retried by its requeued job and completes; the sweep goes on, and the
    same command later resumes the study."""
    storage, uri = services
    sweep = ["-m", "launcher=slurm", "hparams_search=batch_warmup", *QUICK, *SPACE, "trainer.max_steps=200",
             "trainer.eval_steps=10", "trainer.logging_steps=10", "hydra/sweeper/pruner=none",
             f"hydra.sweeper.storage={storage}", f"tracking.uri={uri}"]  # fmt: skip
    proc = train(tmp_path, *sweep, "hydra.sweeper.n_trials=2", "hydra.sweeper.n_jobs=2")
    try:
        deadline = time.monotonic() + 600
        cancelled, requeued = (_job_of_trial(tmp_path, storage, n, deadline) for n in (0, 1))
        subprocess.run(["scancel", "--signal=TERM", cancelled], check=True, timeout=30)
        subprocess.run(["scancel", "--signal=USR2", requeued], check=True, timeout=30)
        code, out = finish(proc)
    finally:
        proc.kill()
    assert code == 0, out[-4000:]  # 1 of 2 trials failed: within max_failure_rate=0.5
    restarts = subprocess.run(["scontrol", "-o", "show", "job", requeued], capture_output=True, text=True).stdout
    assert "Restarts=1" in restarts, restarts

    trials = optuna.load_study(study_name=STUDY, storage=storage).trials
    assert [(t.number, t.state) for t in trials] == [(0, TrialState.FAIL), (1, TrialState.COMPLETE)]
    assert "SIGTERM" in trials[0].user_attrs["error"]
    runs = runs_of(uri)
    by_trial = {n: [r for r in runs if r.data.tags.get("trial_number") == str(n)] for n in (0, 1)}
    ((stopped,), (attempt, retry)) = by_trial[0], by_trial[1]
    assert (stopped.info.status, stopped.data.tags["trial_state"]) == ("KILLED", "FAIL")
    assert attempt.info.status == "KILLED" and "requeued by SLURM" in attempt.data.tags["error"]
    assert (retry.info.status, retry.data.tags["trial_state"]) == ("FINISHED", "COMPLETE")

    code, out = finish(train(tmp_path, *sweep, "hydra.sweeper.n_trials=1"))  # the same command, later
    assert code == 0, out[-4000:]
    trials = optuna.load_study(study_name=STUDY, storage=storage).trials
    assert [(t.number, t.state) for t in trials] == [(0, TrialState.FAIL), (1, TrialState.COMPLETE), (2, TrialState.COMPLETE)]


# ---------------------------------------------------------------- sbatch scripts: the nightly driver, sweep workers


def _sbatch_env(tmp_path: Path, storage: str, uri: str, **extra: str) -> dict[str, str]:
    """What a user exports before `sbatch` (it passes the environment to the job)."""
    (tmp_path / "outputs").mkdir(exist_ok=True)  # #SBATCH --output=outputs/... needs it at submission
    return os.environ | OFFLINE_ENV | {
        "EMBEDSWEEP_HOME": str(ROOT), "EMBEDSWEEP_PYTHON": sys.executable, "EMBEDSWEEP_OUTPUT_ROOT": str(tmp_path / "outputs"),
        "EMBEDSWEEP_OPTUNA_STORAGE": storage, "MLFLOW_TRACKING_URI": uri, "OMP_NUM_THREADS": "1",
    } | extra  # fmt: skip


def sbatch(tmp_path: Path, env: dict[str, str], *args: str) -> str:
    out = subprocess.run(["sbatch", "--parsable", *args], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    return out.stdout.strip().split(";")[0]


def job_field(job: str, field: str) -> str | None:
    out = subprocess.run(["scontrol", "-o", "show", "job", job], capture_output=True, text=True, timeout=30).stdout
    return next((f.split("=", 1)[1] for f in out.split() if f.startswith(f"{field}=")), None)


def wait_for_jobs(*jobs: str, timeout: float = 900, until: Callable[[str], bool] | None = None) -> None:
    """Until no listed job is queued or running (or `until(job)` holds for each)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        queued = subprocess.run(["squeue", "-h", "-o", "%i %T", "-j", ",".join(jobs)], capture_output=True, text=True).stdout
        if until is not None and all(until(j) for j in jobs) or until is None and not queued.strip():
            return
        time.sleep(1)
    raise AssertionError(f"jobs {jobs} still queued after {timeout} s")


def test_the_nightly_sbatch_driver_runs_a_sweep_and_holds_its_lock(services, tmp_path: Path) -> None:
    storage, uri = services
    # The next run is queued for "tomorrow 02:15" when the first job starts: the date is taken here, at
    # the start, and again at the end, so a test that runs across midnight accepts either (not a date
    # computed only when asserting, which fails across midnight).
    tomorrow_at_start = time.strftime("%Y-%m-%dT02:15:00", time.localtime(time.time() + 86400))
    script = str(ROOT / "deploy" / "sweep.sbatch")
    sweep = ["hparams_search=batch_warmup", "launcher=slurm", *QUICK, *SPACE, "hydra.sweeper.n_trials=2"]
    first = sbatch(tmp_path, _sbatch_env(tmp_path, storage, uri), script, *sweep)  # as scheduled: queues tomorrow's run
    try:
        wait_for_jobs(first, until=lambda j: job_field(j, "JobState") == "RUNNING", timeout=300)
        second = sbatch(tmp_path, _sbatch_env(tmp_path, storage, uri, EMBEDSWEEP_RESUBMIT="no"), script, *sweep)
        wait_for_jobs(first, second)
        pending = subprocess.run(["squeue", "-h", "--name=embedsweep-sweep", "-o", "%i %T %S %r"], capture_output=True, text=True).stdout.split()
    finally:
        subprocess.run(["scancel", "--name=embedsweep-sweep"], timeout=30)  # tomorrow's run, not wanted here

    log = (tmp_path / "outputs" / f"slurm-sweep-{first}.log").read_text()
    assert job_field(first, "ExitCode") == "0:0", log[-4000:]
    skipped = (tmp_path / "outputs" / f"slurm-sweep-{second}.log").read_text()
    assert "another sweep holds" in skipped and job_field(second, "ExitCode") == "75:0", skipped
    tomorrow_at_end = time.strftime("%Y-%m-%dT02:15:00", time.localtime(time.time() + 86400))
    assert pending[1] == "PENDING" and pending[2] in {tomorrow_at_start, tomorrow_at_end}, pending  # queued by the first
    assert pending[3] in ("BeginTime", "Dependency"), pending

    trials = optuna.load_study(study_name=STUDY, storage=storage).trials
    assert [(t.number, t.state) for t in trials] == [(0, TrialState.COMPLETE), (1, TrialState.COMPLETE)]
    runs = runs_of(uri)
    (parent,) = [r for r in runs if r.data.tags.get("embedsweep.role") == "sweep"]
    assert parent.info.status == "FINISHED" and len(children_of(runs, parent)) == 2


def test_sweep_workers_share_a_study_without_a_batch_barrier(services, tmp_path: Path) -> None:
    """W=2 workers (a job array), 4 trials each of uneven length: each worker asks its next trial as
    soon as its last one ends, while the other worker's trial still runs."""
    storage, uri = services
    space = ["batch=choice(16,32)", "trainer.warmup_ratio=interval(0,0.3)", "trainer.max_steps=choice(4,40)"]
    sweep = ["hparams_search=batch_warmup", *QUICK, *space, "hydra/sweeper/sampler=random", "hydra/sweeper/pruner=none",
             "hydra.sweeper.n_trials=4", "hydra.sweeper.max_trials=8"]  # fmt: skip
    array = sbatch(tmp_path, _sbatch_env(tmp_path, storage, uri), "--array=0-1", str(ROOT / "deploy" / "sweep-workers.sbatch"), *sweep)
    wait_for_jobs(array)
    logs = {p.name: p.read_text() for p in (tmp_path / "outputs").glob(f"slurm-worker-{array}_*.log")}
    assert len(logs) == 2 and all(job_field(f"{array}_{i}", "ExitCode") == "0:0" for i in (0, 1)), logs

    trials = optuna.load_study(study_name=STUDY, storage=storage).trials
    assert len(trials) == 8 and {t.state for t in trials} == {TrialState.COMPLETE}
    runs = runs_of(uri)
    parents = [r for r in runs if r.data.tags.get("embedsweep.role") == "sweep"]
    assert len(parents) == 2 and len({p.data.tags.get("study_name") for p in parents}) == 1  # one parent run per worker
    worker = {int(c.data.tags["trial_number"]): i for i, p in enumerate(parents) for c in children_of(runs, p)}
    assert sorted(worker) == list(range(8)) and sorted(worker.values()) == [0] * 4 + [1] * 4

    timeline = sorted((t.datetime_start, t.datetime_complete, worker[t.number], t.number) for t in trials)
    t0 = timeline[0][0]
    print("\ntrial  worker  start_s  end_s  max_steps")
    for start, end, w, n in timeline:
        print(f"{n:5d}  {w:6d}  {(start - t0).total_seconds():7.1f}  {(end - t0).total_seconds():5.1f}  {trials[n].params['trainer.max_steps']}")
    by_worker = {w: [(s, e) for s, e, ww, _ in timeline if ww == w] for w in (0, 1)}
    for spans in by_worker.values():  # a worker runs one trial at a time
        assert all(prev_end <= start for (_, prev_end), (start, _) in zip(spans, spans[1:]))
    # No barrier: some trial started after its worker's previous trial ended while a trial of the other
    # worker, running since before that end, was still running (a batch of n_jobs=2 would wait for it).
    overtook = [
        (w, start) for w, spans in by_worker.items() for (_, prev_end), (start, _) in zip(spans, spans[1:])
        if any(s < prev_end and start < e for s, e in by_worker[1 - w])
    ]  # fmt: skip
    assert overtook, timeline
