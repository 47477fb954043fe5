"""Stop signals held back while a record is being written.

Ctrl-C (SIGINT) and SIGTERM unwind a run as a KeyboardInterrupt wherever Python happens to be. When that
lands inside a write to a SQLite store (MLflow's or Optuna's), the write's transaction can stay open in
a connection that nobody closes: the store stays locked, and the writes that then record the run as
KILLED wait for the lock (20 s each) instead of finishing. Inside `deferred()` a stop signal is noted
and acted on as the block ends: the write completes (milliseconds), then the run unwinds as before.
SLURM's requeue signal (SIGUSR2, on which submitit requeues the job and exits) is held the same way:
its exit unwinds the run just as abruptly.
"""

from __future__ import annotations

import signal
import threading
from collections.abc import Iterator
from contextlib import contextmanager

STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGUSR2)


@contextmanager
def deferred() -> Iterator[None]:
    """Run the block to its end even if a stop signal arrives; then deliver the first one that did."""
    # Python runs signal handlers in the main thread only: other threads have nothing to defer.
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    held: list[int] = []

    def hold(signum: int, frame: object) -> None:
        held.append(signum)

    # getsignal is None for a handler not set from Python: it cannot be restored, so it is left alone.
    previous = {s: signal.signal(s, hold) for s in STOP_SIGNALS if signal.getsignal(s) is not None}
    try:
        yield
    finally:
        for signum, handler in previous.items():
            # A handler set inside the block stays: on SLURM's requeue signal the job ignores the
            # SIGTERM that follows, and that choice must outlive the write it interrupted.
            if signal.getsignal(signum) is hold:
                signal.signal(signum, handler)
        if held:
            signal.raise_signal(held[0])
