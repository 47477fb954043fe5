"""Hard kills leave no lies: runs and trials whose owner died without a word (kill -9, the OOM killer,
a lost node) are found and ended FAILED, saying why; live ones are left alone."""

from __future__ import annotations

import os
import signal
import socket
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest
from mlflow import MlflowClient

from conftest import OFFLINE_ENV, ROOT
from embedsweep.tracking import liveness

TINY = ["model=tiny", "trainer.warmup_steps=0"]
LONG = [*TINY, "batch=4", "trainer.epochs=100", "trainer.logging_steps=1", "loss=cosine"]


def dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def tags_of(pid: int, started: float, host: str | None = None, beat: float | None = None) -> dict[str, str]:
    tags = {liveness.OWNER_HOST: host or socket.gethostname(), liveness.OWNER_PID: str(pid), liveness.OWNER_STARTED: f"{started:.2f}"}
    return tags | ({liveness.HEARTBEAT: f"{beat:.0f}"} if beat is not None else {})


def test_an_owner_is_gone_when_its_process_is_or_its_heartbeat_stopped() -> None:
    me = os.getpid()
    started = liveness.process_started(me)
    assert liveness.owner_gone(tags_of(me, started), stale_after=60) is None
    assert "is gone" in liveness.owner_gone(tags_of(dead_pid(), started), stale_after=60)
    assert "is gone" in liveness.owner_gone(tags_of(me, started - 3600), stale_after=60)  # our pid, reused
    now = time.time()
    assert liveness.owner_gone(tags_of(1, 0, host="elsewhere", beat=now - 30), stale_after=60) is None
    assert "no heartbeat from process 1 on elsewhere for 90 s" in liveness.owner_gone(tags_of(1, 0, host="elsewhere", beat=now - 90), 60, now)
    assert liveness.owner_gone({}, stale_after=60) is None  # not ours: never touched


def test_reap_ends_only_the_runs_of_dead_owners(tmp_path: Path) -> None:
    client = MlflowClient(tracking_uri=f"sqlite:///{tmp_path}/mlflow.db")
    exp = client.create_experiment("e")
    me = os.getpid()
    dead = client.create_run(exp, run_name="dead", tags=tags_of(dead_pid(), 0.0, beat=time.time() - 5) | {"trial_state": "RUNNING"})
    alive = client.create_run(exp, run_name="alive", tags=tags_of(me, liveness.process_started(me)))
    foreign = client.create_run(exp, run_name="foreign")
    (reaped,) = liveness.reap(client, [exp], stale_after=60)
    assert reaped.run_id == dead.info.run_id
    run = client.get_run(dead.info.run_id)
    assert run.info.status == "FAILED" and run.data.tags["trial_state"] == "FAIL"
    assert run.data.tags[liveness.ENDED_BY].startswith("ended by embedsweep.tracking.liveness: its process")
    assert run.data.tags["error"] == run.data.tags[liveness.ENDED_BY]
    assert run.info.end_time <= time.time() * 1000 - 4000  # ended at its last heartbeat, not now
    assert client.get_run(alive.info.run_id).info.status == "RUNNING"
    assert client.get_run(foreign.info.run_id).info.status == "RUNNING"


def test_the_heartbeat_names_its_owner_and_keeps_beating(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """On an explicit clock (60 s per reading) and waiting on the beats themselves, not on a sleep: the
    first beat is written on entry, the thread keeps writing the clock's time, and nothing after exit."""
    import itertools
    import threading
    from types import SimpleNamespace

    clock = itertools.count(1000, 60)
    monkeypatch.setattr(liveness, "time", SimpleNamespace(time=lambda: next(clock)))
    client = MlflowClient(tracking_uri=f"sqlite:///{tmp_path}/mlflow.db")
    run = client.create_run(client.create_experiment("e"))
    beats, three = [], threading.Event()

    class Recording:  # the client, noting each heartbeat it writes
        def set_tag(self, run_id: str, key: str, value: str) -> None:
            client.set_tag(run_id, key, value)
            if key == liveness.HEARTBEAT:
                beats.append(value)
                if len(beats) >= 3:
                    three.set()

    with liveness.Heartbeat(Recording(), run.info.run_id, interval=0.01):
        assert beats == ["1000"]  # written before the block starts
        assert three.wait(timeout=120), beats
    written = list(beats)
    tags = client.get_run(run.info.run_id).data.tags
    assert tags[liveness.OWNER_PID] == str(os.getpid()) and tags[liveness.OWNER_HOST] == socket.gethostname()
    assert written[:3] == ["1000", "1060", "1120"] and written == [str(1000 + 60 * i) for i in range(len(written))]
    assert tags[liveness.HEARTBEAT] == written[-1]  # the store holds the last beat
    assert beats == written  # stopped: no beat after the block


def _start_and_wait(cmd: list[str], cwd: Path, db: Path, metric: str = "history/loss", timeout: float = 400) -> subprocess.Popen:
    proc = subprocess.Popen(cmd, cwd=cwd, env=os.environ | OFFLINE_ENV, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if db.exists():
            try:
                with sqlite3.connect(db) as con:
                    if con.execute("select count(*) from metrics where key = ?", (metric,)).fetchone()[0] >= 2:
                        return proc
            except sqlite3.OperationalError:
                pass
        if proc.poll() is not None:
            raise AssertionError(f"the command ended early: {proc.stderr.read()[-2000:]}")
        time.sleep(0.5)
    proc.kill()
    raise AssertionError("the run never started training")


def test_kill_9_of_a_run_is_found_and_closed_by_the_liveness_command(tmp_path: Path, mlflow_runs) -> None:
    db = tmp_path / "outputs" / "mlflow.db"
    proc = _start_and_wait([sys.executable, str(ROOT / "train.py"), *LONG], tmp_path, db)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait(timeout=30)
    (run,) = mlflow_runs()
    assert run.info.status == "RUNNING"  # no handler ran: this is the lie to undo

    cli = [sys.executable, "-m", "embedsweep.tracking.liveness", "--uri", f"sqlite:///{db}"]
    out = subprocess.run(cli, cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    assert f"ended FAILED: run {run.info.run_id}" in out.stdout and "1 run(s) ended" in out.stdout
    (run,) = mlflow_runs()
    assert run.info.status == "FAILED"
    assert f"its process {proc.pid} on {socket.gethostname()} is gone" in run.data.tags[liveness.ENDED_BY]


def test_the_liveness_command_refuses_a_store_that_is_not_mlflows(tmp_path: Path) -> None:
    (tmp_path / "x.db").write_bytes(b"not a database at all" * 100)
    out = subprocess.run([sys.executable, "-m", "embedsweep.tracking.liveness", "--uri", f"sqlite:///{tmp_path}/x.db"], capture_output=True, text=True)
    assert out.returncode == 2 and out.stderr.startswith(f"error: MLflow store {tmp_path}/x.db is not a SQLite database")


@pytest.mark.slow
def test_kill_9_of_a_sweep_is_reconciled_when_the_next_sweep_starts(tmp_path: Path, mlflow_runs) -> None:
    import optuna

    sweep = [sys.executable, str(ROOT / "train.py"), "-m", "hydra/sweeper=optuna", "hydra.sweeper.study_name=s",
             "hydra/sweeper/pruner=none", "batch=choice(4,8)"]  # fmt: skip
    db = tmp_path / "outputs" / "mlflow.db"
    long_trial = [*TINY, "trainer.epochs=100", "trainer.logging_steps=1", "loss=cosine"]
    proc = _start_and_wait([*sweep, *long_trial], tmp_path, db)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait(timeout=30)
    assert {r.info.status for r in mlflow_runs()} == {"RUNNING"}  # parent and child: lies until reconciled

    again = subprocess.run([*sweep, *TINY, "trainer.max_steps=2", "hydra.sweeper.n_trials=1", "trainer.save_model=false"],
                           cwd=tmp_path, env=os.environ | OFFLINE_ENV, capture_output=True, text=True, timeout=600)  # fmt: skip
    assert again.returncode == 0, again.stderr[-3000:]
    assert "trial 0 was left RUNNING: its process" in again.stderr + again.stdout

    first, second = optuna.load_study(study_name="s", storage=f"sqlite:///{tmp_path}/outputs/optuna.db").trials
    assert first.state.name == "FAIL" and "its sweep ended without recording it" in first.user_attrs["error"]
    assert first.datetime_complete <= second.datetime_start  # failed before the first new trial was asked
    assert second.state.name == "COMPLETE"
    runs = mlflow_runs()
    dead_parent, dead_child = runs[0], runs[1]
    for run in (dead_parent, dead_child):
        assert run.info.status == "FAILED", run.data.tags
        assert f"its process {proc.pid} on" in run.data.tags[liveness.ENDED_BY]
    assert dead_child.data.tags["trial_state"] == "FAIL" and dead_parent.data.tags["embedsweep.role"] == "sweep"
    assert [r.info.status for r in runs[2:]] == ["FINISHED", "FINISHED"]


def test_a_heartbeat_travels_to_parallel_workers_as_an_inert_copy(tmp_path: Path) -> None:
    import pickle

    client = MlflowClient(tracking_uri=f"sqlite:///{tmp_path}/mlflow.db")
    run = client.create_run(client.create_experiment("e"))
    with liveness.Heartbeat(client, run.info.run_id, interval=30) as beat:
        copy = pickle.loads(pickle.dumps(beat))  # what joblib does with Hydra's callbacks
        copy.stop()
        assert copy.run_id == run.info.run_id and beat._thread.is_alive()
