"""One output folder, one writer: a run or sweep claims its Hydra output folder before writing to it.

The claim is an exclusive `flock` on `<folder>/.embedsweep.lock`, held by the claiming process until it
exits. The kernel drops it when the process dies in any way (kill -9 included), so a claim never goes
stale and needs no cleaning. The file records the owner (host, pid, start time) for the refusal
message. flock is advisory and local to one machine's kernel (over NFS it depends on the server):
a folder shared between machines is not protected. (`filelock.FileLock` would do the locking too, but
hides the open file we write the owner into.)

A folder that already holds a trained model is refused before training, since saving would fail after
the whole run (`Directory not empty`) or replace finished work. A `.model.partial` left by a killed
save is removed: only that exact name, in the folder or in a job folder directly under it (a sweep's),
and only a real folder, so a claim of `hydra.run.dir=.` or `$HOME` removes nothing of anyone else's.
"""

from __future__ import annotations

import fcntl
import json
import os
import shutil
import socket
import time
from pathlib import Path
from typing import IO

from embedsweep.errors import UserError

LOCK_FILE = ".embedsweep.lock"
PARTIAL = ".model.partial"  # where models.save_model writes before its rename


class Claim:
    """A held claim: the open lock file (closing it releases the claim)."""

    def __init__(self, folder: Path, handle: IO[str] | None) -> None:
        self.folder, self._handle = folder, handle

    def release(self) -> None:
        if self._handle is not None:
            self._handle.close()

    # A parallel launcher (joblib) pickles Hydra's callbacks, and so this claim, to its workers:
    # there it is an inert copy; the lock stays with the process that claimed the folder.
    def __getstate__(self) -> dict[str, object]:
        return {"folder": self.folder}

    def __setstate__(self, state: dict[str, object]) -> None:
        self.__dict__.update(state, _handle=None)


def claim(folder: Path, key: str) -> Claim:
    """Claim `folder` for this process, or fail at once naming the folder and its current owner.
    `key` is the config key that chose the folder (hydra.run.dir / hydra.sweep.dir), for the fix.
    Keep the returned Claim as long as the folder is written to."""
    folder = Path(folder).resolve()
    folder.mkdir(parents=True, exist_ok=True)
    handle = open(folder / LOCK_FILE, "a+", encoding="utf-8")  # noqa: SIM115 - held open until exit
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        handle.seek(0)
        owner = handle.read().strip() or "unknown owner"
        handle.close()
        raise UserError(
            f"output folder {folder} is in use by another run or sweep ({owner}); "
            f"wait for it to end, or give this one another {key}"
        ) from None
    handle.seek(0)
    handle.truncate()
    handle.write(json.dumps({"host": socket.gethostname(), "pid": os.getpid(), "started": time.strftime("%Y-%m-%dT%H:%M:%S%z")}))
    handle.flush()
    for partial in [folder / PARTIAL, *folder.glob(f"*/{PARTIAL}")]:
        if partial.is_dir() and not partial.is_symlink():
            shutil.rmtree(partial, ignore_errors=True)  # a save killed half-way; the folder is ours now
    return Claim(folder, handle)


def check_no_model(run_dir: Path, save_model: bool) -> None:
    """Refuse a run whose model folder is already taken: the save at the end would fail or overwrite it."""
    model = Path(run_dir) / "model"
    if save_model and model.exists() and any(model.iterdir()):
        raise UserError(
            f"{model} already holds a trained model; this run would fail to save its own at the end. "
            f"Give it a new output folder (hydra.run.dir=...), or set trainer.save_model=false"
        )
    partial = model.with_name(PARTIAL)
    if partial.is_dir() and not partial.is_symlink():
        shutil.rmtree(partial, ignore_errors=True)
