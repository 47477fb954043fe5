"""SLURM jobs that vanish: a job of the sweep that the scheduler no longer knows (`squeue`) and that wrote
no result ends FAILED after a bounded wait, instead of the sweep waiting for it forever.

Hydra's submitit launcher waits for each job's result file; submitit learns that a job died without
writing one from `sacct`, SLURM's accounting database. Without accounting (a small or one-node
cluster) or when the node died with the job, nothing ever says so, and the sweep would wait forever.
While a batch runs, a thread in the sweeping process polls `squeue` for the sweep's jobs (found in the
submitit folder); a job that is gone from the queue and still has no result after `grace_s` gets a
result written in its place: a failed Hydra job whose error says what happened. The sweeper then
records its trial FAIL like any failed job and goes on. A result that the job writes itself always
wins (the file is created only if it does not exist).
"""

from __future__ import annotations

import logging
import os
import subprocess
import tempfile
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

GRACE_S = 30.0  # gone from squeue this long, with no result: vanished (a result file can lag on NFS)
POLL_S = 5.0


def submitit_root(launcher: Any) -> Path | None:
    """The folder under which Hydra's submitit launcher keeps one folder per job (`.../.submitit/%j` -> `.../.submitit`)."""
    folder = str(launcher.get("submitit_folder") or "")
    if "submitit" not in str(launcher.get("_target_", "")).lower() or "Slurm" not in str(launcher.get("_target_", "")) or not folder:
        return None
    return Path(folder).parent if "%" in Path(folder).name else Path(folder)


def queued_jobs() -> set[str] | None:
    """The job ids SLURM knows now (one per array task: 123_4), or None when squeue cannot answer."""
    try:
        out = subprocess.run(["squeue", "-h", "-r", "-o", "%i"], capture_output=True, text=True, timeout=60)
    except (OSError, subprocess.TimeoutExpired):
        return None
    if out.returncode != 0:
        return None
    return {line.strip() for line in out.stdout.splitlines() if line.strip()}


class Watch:
    """Polls the jobs under `root` while a batch runs (a context manager; see the module's doc)."""

    def __init__(self, root: Path, grace_s: float = GRACE_S, poll_s: float = POLL_S) -> None:
        self.root, self.grace_s, self.poll_s = root, grace_s, poll_s
        self.missing_since: dict[str, float] = {}
        self.failed: list[str] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="slurm-vanished-jobs", daemon=True)

    def __enter__(self) -> Watch:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()

    def _run(self) -> None:
        while not self._stop.wait(self.poll_s):
            try:
                self.poll()
            except Exception as exc:  # noqa: BLE001 - the watch must never take the sweep down
                log.debug("vanished-job watch: %s", exc)

    def waiting(self) -> dict[str, Path]:
        """job id -> its folder, for every job of the sweep without a result yet."""
        found = {}
        for submitted in self.root.glob("*/*_submitted.pkl"):
            job_id = submitted.name.removesuffix("_submitted.pkl")
            if not (submitted.parent / f"{job_id}_0_result.pkl").exists():
                found[job_id] = submitted.parent
        return found

    def poll(self, now: float | None = None) -> None:
        waiting = self.waiting()
        if not waiting:
            self.missing_since.clear()
            return
        queued = queued_jobs()
        if queued is None:  # the scheduler does not answer: that says nothing about the jobs
            return
        now = time.monotonic() if now is None else now
        for job_id, folder in waiting.items():
            if job_id in queued or job_id.split("_", 1)[0] in queued:  # a pending array shows as 123_[0-3]
                self.missing_since.pop(job_id, None)
                continue
            if any(q.startswith(f"{job_id.split('_', 1)[0]}_[") for q in queued):
                continue
            since = self.missing_since.setdefault(job_id, now)
            if now - since >= self.grace_s:
                self.fail(job_id, folder, now - since)

    def fail(self, job_id: str, folder: Path, gone_s: float) -> None:
        message = (
            f"SLURM job {job_id} is no longer known to the scheduler (squeue) and left no result for {gone_s:.0f} s: "
            f"its node died or its processes were killed outside SLURM (log: {folder / f'{job_id}_0_log.err'})"
        )
        if write_failed_result(folder, job_id, message):
            self.failed.append(job_id)
            log.warning("%s; its trial is failed and the sweep goes on", message)
        self.missing_since.pop(job_id, None)


class VanishedJob(RuntimeError):
    """The error of a job that SLURM lost: what the sweeper records for its trial."""


def write_failed_result(folder: Path, job_id: str, message: str) -> bool:
    """Write the result submitit waits for: a failed Hydra job with `message` as its error. Only if the
    job wrote none meanwhile (created with a hard link, which fails on an existing file)."""
    from hydra.core.utils import JobReturn, JobStatus
    from submitit.core import utils

    result = folder / f"{job_id}_0_result.pkl"
    if result.exists():
        return False
    overrides: list[str] = []
    try:
        submitted = utils.pickle_load(folder / f"{job_id}_submitted.pkl")
        overrides = list(submitted.args[0])  # Hydra's launcher is called with (sweep_overrides, job_dir_key, ...)
    except Exception as exc:  # noqa: BLE001 - the overrides only name the job
        log.debug("no overrides for job %s: %s", job_id, exc)
    ret = JobReturn(overrides=overrides, status=JobStatus.FAILED, _return_value=VanishedJob(message))
    fd, tmp = tempfile.mkstemp(prefix=f".{job_id}_result.", dir=folder)
    os.close(fd)
    try:
        utils.cloudpickle_dump(("success", ret), tmp)
        os.link(tmp, result)
        return True
    except FileExistsError:
        return False
    finally:
        Path(tmp).unlink(missing_ok=True)


@contextmanager
def watched(launcher_config: Any, grace_s: float = GRACE_S) -> Iterator[Watch | None]:
    """Watch the sweep's SLURM jobs while the block runs (nothing for other launchers)."""
    root = submitit_root(launcher_config)
    if root is None:
        yield None
        return
    with Watch(root, grace_s) as watch:
        yield watch
