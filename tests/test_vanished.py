"""SLURM jobs that vanish (embedsweep.vanished): a job the scheduler no longer knows that wrote no
result ends FAILED within a bounded time, and the sweep goes on. Without SLURM's accounting database,
submitit cannot learn that such a job died and the sweep used to wait forever."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from conftest import OFFLINE_ENV, ROOT, require_module, require_slurm
from embedsweep import vanished


def _submitted(root: Path, job_id: str, overrides: list[str]) -> Path:
    """A job folder as Hydra's submitit launcher leaves it at submission."""
    from submitit.core import utils
    from submitit.core.utils import DelayedSubmission

    folder = root / job_id
    folder.mkdir(parents=True)
    utils.cloudpickle_dump(DelayedSubmission(print, overrides, "key", 0, "id", None), folder / f"{job_id}_submitted.pkl")
    return folder


def test_a_job_gone_from_the_queue_without_a_result_gets_a_failed_result_after_the_grace(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    require_module("submitit", "submitit is not installed (pip install -e '.[slurm]')")
    from hydra.core.utils import JobStatus
    from submitit.core import utils

    gone = _submitted(tmp_path, "41_0", ["batch=16", "trial=3"])
    running = _submitted(tmp_path, "41_1", ["batch=32", "trial=4"])
    finished = _submitted(tmp_path, "41_2", ["batch=64", "trial=5"])
    utils.cloudpickle_dump(("success", "its own result"), finished / "41_2_0_result.pkl")
    monkeypatch.setattr(vanished, "queued_jobs", lambda: {"41_1"})
    watch = vanished.Watch(tmp_path, grace_s=30)
    watch.poll(now=100.0)
    assert watch.failed == [] and set(watch.missing_since) == {"41_0"}  # gone, but not yet for long
    watch.poll(now=131.0)
    assert watch.failed == ["41_0"]
    outcome, ret = utils.pickle_load(gone / "41_0_0_result.pkl")  # what submitit reads, then Hydra's launcher returns
    assert outcome == "success" and ret.status == JobStatus.FAILED and ret.overrides == ["batch=16", "trial=3"]
    assert str(ret._return_value).startswith("SLURM job 41_0 is no longer known to the scheduler (squeue) and left no result for 31 s")
    assert not (running / "41_1_0_result.pkl").exists()
    assert utils.pickle_load(finished / "41_2_0_result.pkl") == ("success", "its own result")  # never replaced
    assert sorted(p.name for p in gone.iterdir()) == ["41_0_0_result.pkl", "41_0_submitted.pkl"]  # no temporary left


def test_a_job_back_in_the_queue_or_a_silent_scheduler_fails_nothing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    require_module("submitit", "submitit is not installed (pip install -e '.[slurm]')")
    _submitted(tmp_path, "7", [])
    answers = iter([set(), {"7"}, set(), None, None])
    monkeypatch.setattr(vanished, "queued_jobs", lambda: next(answers))
    watch = vanished.Watch(tmp_path, grace_s=30)
    for now in (0.0, 20.0, 40.0, 80.0, 120.0):  # gone, back (requeued), gone again, then squeue does not answer
        watch.poll(now=now)
    assert watch.failed == [] and not (tmp_path / "7" / "7_0_result.pkl").exists()


def test_a_result_the_job_writes_at_the_last_moment_wins(tmp_path: Path) -> None:
    require_module("submitit", "submitit is not installed (pip install -e '.[slurm]')")
    from submitit.core import utils

    folder = _submitted(tmp_path, "9", [])
    utils.cloudpickle_dump(("success", 0.8), folder / "9_0_result.pkl")
    assert vanished.write_failed_result(folder, "9", "gone") is False
    assert utils.pickle_load(folder / "9_0_result.pkl") == ("success", 0.8)


def test_only_a_slurm_launcher_is_watched(compose) -> None:
    require_module("hydra_plugins.hydra_submitit_launcher", "hydra-submitit-launcher is not installed (pip install -e '.[slurm]')")
    slurm = compose("launcher=slurm", "hydra.sweep.dir=/s/sweep", hydra_config=True).hydra.launcher
    assert vanished.submitit_root(slurm) == Path("/s/sweep/.submitit")
    assert vanished.submitit_root(compose("hydra/launcher=submitit_local", hydra_config=True).hydra.launcher) is None
    assert vanished.submitit_root(compose(hydra_config=True).hydra.launcher) is None


# ---------------------------------------------------------------- on the local cluster


@pytest.fixture
def slurm() -> None:
    require_slurm()


def _running_jobs() -> list[str]:
    out = subprocess.run(["squeue", "-h", "-r", "-t", "RUNNING", "-o", "%i"], capture_output=True, text=True, timeout=30).stdout
    return out.split()


def _job_pids(job: str) -> list[int]:
    out = subprocess.run(["scontrol", "listpids", job], capture_output=True, text=True, timeout=30).stdout.split("\n")[1:]
    return [int(line.split()[0]) for line in out if line.strip() and line.split()[0].isdigit()]


@pytest.mark.slow
@pytest.mark.timeout(1500)
def test_a_trial_whose_job_is_killed_outside_slurm_fails_within_a_bounded_time_and_the_sweep_goes_on(slurm, tmp_path: Path) -> None:
    import optuna

    storage = f"sqlite:///{tmp_path}/optuna.db"
    cmd = [sys.executable, str(ROOT / "train.py"), "-m", "launcher=slurm", "hydra/sweeper=optuna", "model=tiny", "trainer.warmup_steps=0",
           "test=none", "trainer.save_model=false", "trainer.max_steps=1500", "trainer.eval_steps=500", "batch=choice(16,32)",
           "hydra.sweeper.n_trials=2", "hydra.sweeper.n_jobs=1", "hydra/sweeper/pruner=none", f"hydra.sweeper.storage={storage}",
           f"tracking.uri=sqlite:///{tmp_path}/mlflow.db"]  # fmt: skip
    env = os.environ | OFFLINE_ENV | {"OMP_NUM_THREADS": "1"}
    before = set(_running_jobs())
    proc = subprocess.Popen(cmd, cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        deadline = time.monotonic() + 600
        while not (jobs := [j for j in _running_jobs() if j not in before]):
            assert proc.poll() is None and time.monotonic() < deadline, "no job started"
            time.sleep(1)
        (job,) = jobs
        # The job's processes, killed outside SLURM's control (as a dead node or the OOM killer would), as
        # soon as they are there: waiting a fixed time let a quick job end first on an idle machine.
        while not _job_pids(job):
            assert proc.poll() is None and time.monotonic() < deadline, f"no processes for job {job}"
            time.sleep(1)
        time.sleep(10)  # its python processes started (a 1,500-step trial runs for a minute or more)
        pids = _job_pids(job)
        for pid in pids:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        killed = time.monotonic()
        out, _ = proc.communicate(timeout=900)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    lines = [line for line in out.splitlines() if "no longer known to the scheduler" in line]
    assert proc.returncode in (0, 2) and "Traceback" not in out, out[-4000:]
    assert lines and f"SLURM job {job} is no longer known to the scheduler (squeue) and left no result for " in lines[0], out[-4000:]
    trials = optuna.load_study(study_name=None, storage=storage).trials
    assert [t.state.name for t in trials] == ["FAIL", "COMPLETE"], out[-4000:]
    assert trials[0].user_attrs["error"].startswith(f"VanishedJob: SLURM job {job} is no longer known to the scheduler")
    # bounded: the grace, a few polls and the second trial's whole run
    print(f"vanished job {job}: sweep ended {time.monotonic() - killed:.0f} s after the kill")
