"""Liveness of MLflow runs: who owns a RUNNING run, whether that owner still lives, and ending the
runs whose owner is gone.

A process killed with SIGKILL (the OOM killer, a lost node, `kill -9`) runs no handler, so its MLflow
runs would stay RUNNING forever. Every run we start carries its owner (host, pid, the process's start
time, which tells a reused pid apart) and a heartbeat tag that a background thread refreshes. `reap`
ends a RUNNING run FAILED, tagged with the reason, when its owner process is gone (owner on this host:
known at once) or its heartbeat is older than `stale_after` seconds (owner on another host).

MLflow keeps no liveness of its own (a run has a status and an end time, nothing more), hence the tags.
Runs without owner tags (started by other tools or older versions) are never touched.

    python -m embedsweep.tracking.liveness --uri sqlite:///outputs/mlflow.db [--dry-run]
"""

from __future__ import annotations

import argparse
import logging
import os
import socket
import sys
import threading
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING

from embedsweep.interrupts import deferred
from embedsweep.checks.stores import one_line
from embedsweep.tracking import TRIAL_STATE

if TYPE_CHECKING:
    from mlflow import MlflowClient

log = logging.getLogger(__name__)

OWNER_HOST = "embedsweep.owner_host"
OWNER_PID = "embedsweep.owner_pid"
OWNER_STARTED = "embedsweep.owner_started"  # the owner process's start time (unix s): a reused pid has another
HEARTBEAT = "embedsweep.heartbeat"  # unix seconds of the owner's last beat
ENDED_BY = "embedsweep.ended_by"  # why `reap` ended the run

DEFAULT_INTERVAL = 30
DEFAULT_STALE_AFTER = 300


def process_started(pid: int) -> float | None:
    """When process `pid` started (unix seconds), or None if there is no such process."""
    import psutil

    try:
        return psutil.Process(pid).create_time()
    except (psutil.NoSuchProcess, psutil.ZombieProcess):
        return None


def owner() -> dict[str, str]:
    """This process, as the owner of what it starts (tags for a run, attributes for a trial)."""
    pid = os.getpid()
    return {OWNER_HOST: socket.gethostname(), OWNER_PID: str(pid), OWNER_STARTED: f"{process_started(pid):.2f}"}


def owner_gone(tags: Mapping[str, str], stale_after: float, now: float | None = None) -> str | None:
    """Why the owner named in `tags` is gone, or None while it may still be alive (or is unknown).

    On this host the process table answers at once; for another host only a stale heartbeat can tell.
    """
    host, pid, started = tags.get(OWNER_HOST), tags.get(OWNER_PID), tags.get(OWNER_STARTED)
    if not host or not pid:
        return None
    if host == socket.gethostname():
        actual = process_started(int(pid))
        # create_time is rounded differently by different readers; a reused pid starts much later.
        if actual is None or (started is not None and abs(actual - float(started)) > 1.0):
            return f"its process {pid} on {host} is gone (killed, e.g. out of memory or kill -9)"
        return None
    beat = tags.get(HEARTBEAT)
    if beat is None:
        return None
    age = (time.time() if now is None else now) - float(beat)
    if age > stale_after:
        return f"no heartbeat from process {pid} on {host} for {age:.0f} s (> {stale_after:g} s: node lost or process killed)"
    return None


class Heartbeat:
    """Tags `run_id` with this process as owner, then refreshes its heartbeat tag every `interval` s
    from a daemon thread until stopped. A beat that fails (a busy store) is logged and retried."""

    def __init__(self, client: "MlflowClient", run_id: str, interval: float = DEFAULT_INTERVAL) -> None:
        self.client, self.run_id, self.interval = client, run_id, interval
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name=f"mlflow-heartbeat-{run_id[:8]}", daemon=True)

    def beat(self) -> None:
        self.client.set_tag(self.run_id, HEARTBEAT, f"{time.time():.0f}")

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            try:
                self.beat()
            except Exception as exc:  # noqa: BLE001 - a missed beat must never kill the run
                log.warning("heartbeat for MLflow run %s failed: %s", self.run_id, one_line(exc))

    def start(self) -> Heartbeat:
        with deferred():
            for key, value in owner().items():
                self.client.set_tag(self.run_id, key, value)
            self.beat()
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None and self._thread.is_alive():
            self._thread.join()

    # A parallel launcher (joblib) pickles Hydra's callbacks, and so a sweep's heartbeat, to its
    # workers: there it is an inert copy; the beat stays with the process that owns the run.
    def __getstate__(self) -> dict[str, object]:
        return {"run_id": self.run_id, "interval": self.interval}

    def __setstate__(self, state: dict[str, object]) -> None:
        self.__dict__.update(state, client=None, _stop=threading.Event(), _thread=None)

    def __enter__(self) -> Heartbeat:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


@dataclass(frozen=True)
class Reaped:
    run_id: str
    run_name: str
    reason: str


def reap(client: "MlflowClient", experiment_ids: Iterable[str], stale_after: float = DEFAULT_STALE_AFTER, dry_run: bool = False) -> list[Reaped]:
    """End FAILED every RUNNING run in these experiments whose owner is gone, tagged `embedsweep.ended_by`
    (and `error`, and `trial_state=FAIL` for a trial's run); the end time is the owner's last heartbeat."""
    reaped = []
    runs = client.search_runs(list(experiment_ids), filter_string="attributes.status = 'RUNNING'", max_results=50000)
    for run in runs:
        tags = run.data.tags
        reason = owner_gone(tags, stale_after)
        if reason is None:
            continue
        reason = f"ended by embedsweep.tracking.liveness: {reason}"
        reaped.append(Reaped(run.info.run_id, run.info.run_name or "", reason))
        if dry_run:
            continue
        client.set_tag(run.info.run_id, ENDED_BY, reason)
        if "error" not in tags:
            client.set_tag(run.info.run_id, "error", reason)
        if tags.get(TRIAL_STATE) == "RUNNING":
            client.set_tag(run.info.run_id, TRIAL_STATE, "FAIL")
        beat = tags.get(HEARTBEAT)
        client.set_terminated(run.info.run_id, "FAILED", end_time=int(float(beat) * 1000) if beat else None)
        log.warning("MLflow run %s (%s) was left RUNNING: marked FAILED, %s", run.info.run_id, run.info.run_name, reason)
    return reaped


def main(argv: list[str] | None = None) -> int:
    """`python -m embedsweep.tracking.liveness`: end the runs of dead owners in one MLflow experiment."""
    parser = argparse.ArgumentParser(prog="python -m embedsweep.tracking.liveness", description=main.__doc__)
    parser.add_argument("--uri", default=None, help="MLflow tracking URI (default: $MLFLOW_TRACKING_URI, else sqlite:///<$EMBEDSWEEP_OUTPUT_ROOT or outputs>/mlflow.db)")
    parser.add_argument("--experiment", default="embedsweep")
    parser.add_argument("--stale-after", type=float, default=DEFAULT_STALE_AFTER, help="seconds without heartbeat before a run on another host counts as dead")
    parser.add_argument("--dry-run", action="store_true", help="list what would be ended, change nothing")
    args = parser.parse_args(argv)

    from embedsweep.errors import UserError
    from embedsweep.redaction import redact
    from embedsweep.checks.stores import tracking_uri

    try:  # the same store as train.py and the report would use; before MLflow is imported
        args.uri = tracking_uri(args.uri)
    except UserError as exc:
        print(redact(f"error: {exc}"), file=sys.stderr)
        return 2

    from mlflow import MlflowClient

    from embedsweep.redaction import install

    install()  # MLflow's own log lines and a traceback carry the URI too
    os.environ["MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT"] = "true"  # its "View run ... at: <URI>" lines
    shown = redact(args.uri)
    from embedsweep.checks.stores import check_tracking_uri
    from embedsweep.errors import UserError

    try:
        check_tracking_uri(args.uri, must_exist=True)
    except UserError as exc:
        print(redact(f"error: {exc}"), file=sys.stderr)
        return 2
    client = MlflowClient(tracking_uri=args.uri)
    experiment = client.get_experiment_by_name(args.experiment)
    if experiment is None:
        print(f"error: no experiment {args.experiment!r} in {shown}", file=sys.stderr)
        return 2
    reaped = reap(client, [experiment.experiment_id], args.stale_after, dry_run=args.dry_run)
    verb = "would end" if args.dry_run else "ended"
    for r in reaped:
        print(redact(f"{verb} FAILED: run {r.run_id} ({r.run_name}): {r.reason}"))
    print(f"{len(reaped)} run(s) {verb}; {shown} experiment {args.experiment!r}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
