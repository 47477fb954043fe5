"""What a run prints: by default one line per job start and end, a training progress bar, warnings
and errors; `verbose=true` brings back every library's log lines and the trainer's raw log dicts.

The console handler of Hydra's logging config (conf/hydra/job_logging, conf/hydra/hydra_logging)
uses `ConsoleFilter` and `ConsoleFormatter`; the job's train.log keeps every INFO line either way.
Libraries that print on their own (MLflow's handler, tqdm bars of sentence-transformers and
transformers) are quietened by `setup` and `quiet_trainer`, called from the task (embedsweep.app).
"""

from __future__ import annotations

import contextlib
import io
import logging
import time
from typing import TYPE_CHECKING, Any

from hydra.core.utils import JobReturn
from hydra.experimental.callback import Callback
from omegaconf import DictConfig

from embedsweep import redaction

from embedsweep.checks import stores

if TYPE_CHECKING:
    from datasets import Dataset

    from embedsweep.run.noise import Interval
    from sentence_transformers import SentenceTransformer, SentenceTransformerTrainer

log = logging.getLogger(__name__)

# Loggers whose INFO lines are ours and reach the console by default: the task and the Optuna sweeper.
OWN_LOGGERS = ("embedsweep", "hydra_plugins.embedsweep_optuna_sweeper")
_FULL_FORMAT = "[%(asctime)s][%(name)s][%(levelname)s] - %(message)s"


class ConsoleFilter(logging.Filter):
    """Quiet: our own lines, and warnings and errors from anyone. Verbose: everything."""

    def __init__(self, verbose: bool = False) -> None:
        super().__init__()
        self.verbose = bool(verbose)

    def filter(self, record: logging.LogRecord) -> bool:
        if getattr(record, "console", True) is False:  # a line for the job's train.log alone
            return False
        return self.verbose or record.levelno >= logging.WARNING or record.name.startswith(OWN_LOGGERS)


class ConsoleFormatter(logging.Formatter):
    """Quiet: our lines as plain text, others prefixed with level and logger. Verbose: Hydra's format."""

    def __init__(self, verbose: bool = False) -> None:
        super().__init__(_FULL_FORMAT)
        self.verbose = bool(verbose)

    def format(self, record: logging.LogRecord) -> str:
        if self.verbose:
            return super().format(record)
        text = record.getMessage()
        if record.exc_info:  # exc_text: as redaction.RedactingFilter left it
            text = f"{text}\n{record.exc_text or self.formatException(record.exc_info)}"
        if record.name.startswith(OWN_LOGGERS):
            return text if record.levelno == logging.INFO else f"{record.levelname}: {text}"
        return f"{record.levelname} {record.name}: {text}"


class LogFile(logging.FileHandler):
    """A job's train.log. A disk that fills up costs the rest of the log, not the run: one warning on the
    console naming the file, then nothing more is written to it (instead of a "--- Logging error ---"
    traceback for every line)."""

    full = False

    def emit(self, record: logging.LogRecord) -> None:
        if not self.full:
            super().emit(record)

    def handleError(self, record: logging.LogRecord) -> None:  # noqa: N802 - logging's name
        import sys

        exc = sys.exc_info()[1]
        if exc is None or stores.ran_out(exc) is None:
            super().handleError(record)
        else:
            self._disk_full(exc)

    def flush(self) -> None:
        try:
            super().flush()
        except OSError as exc:
            if stores.ran_out(exc) is None:
                raise
            self._disk_full(exc)

    def close(self) -> None:
        try:
            super().close()
        except OSError as exc:  # the last buffered lines: no room for them either
            if stores.ran_out(exc) is None:
                raise
            self._disk_full(exc)

    def _disk_full(self, exc: BaseException) -> None:
        import sys

        if not self.full:
            self.full = True
            print(f"WARNING: {stores.one_line(exc)} ({self.baseFilename}): the rest of this log is not written", file=sys.stderr, flush=True)


def setup(verbose: bool) -> None:
    """Quieten the libraries that print past the console filter: their own log handlers, their bars."""
    import datasets
    from transformers.utils import logging as transformers_logging

    redaction.install()  # on the handlers the libraries made for themselves (Optuna's; the tracker does MLflow's)
    # "Loading weights", "Map" and download bars (HF_HUB_DISABLE_PROGRESS_BARS=1 does the same).
    if verbose:
        transformers_logging.enable_progress_bar()
        datasets.enable_progress_bars()
    else:
        transformers_logging.disable_progress_bar()
        datasets.disable_progress_bars()


def quiet_widget_examples(model: "SentenceTransformer", train_set: "Dataset", verbose: bool) -> None:
    """sentence-transformers picks the model card's widget examples behind a progress bar that has
    no switch ("Computing widget examples"); picking them here first, the same way, with stderr set
    aside, makes the trainer skip that step. Nothing else writes to stderr there: it samples rows."""
    if verbose:
        return
    with contextlib.redirect_stderr(io.StringIO()):
        model.model_card_data.set_widget_examples(train_set)


def quiet_trainer(trainer: "SentenceTransformerTrainer", verbose: bool) -> None:
    """Quiet: a progress bar with the loss in it, instead of transformers' bar that also writes
    every log dict (`{'loss': ...}`) on a line of its own."""
    if verbose:
        return
    from transformers.trainer_callback import ProgressCallback

    class TrainingBar(ProgressCallback):
        def on_train_begin(self, args, state, control, **kwargs):  # noqa: ANN001
            from tqdm.auto import tqdm

            self.training_bar = tqdm(total=state.max_steps, desc="  train", dynamic_ncols=True) if state.is_world_process_zero else None
            self.current_step = 0

        def on_log(self, args, state, control, logs=None, **kwargs):  # noqa: ANN001
            if self.training_bar is not None and logs and "loss" in logs:
                self.training_bar.set_postfix(loss=f"{float(logs['loss']):.4g}", refresh=False)

    trainer.remove_callback(ProgressCallback)
    trainer.add_callback(TrainingBar())


def metrics_text(metrics: dict[str, float], core: bool = False) -> str:
    """`pearson_cosine 0.8720, ...`; core=True leaves out the intervals (`*_ci_low`, `*_ci_high`)."""
    shown = {k: v for k, v in metrics.items() if not (core and "_ci_" in k)}
    return ", ".join(f"{name} {value:.4f}" for name, value in shown.items())


def scores_line(seconds: float, steps: int, baseline: dict[str, float], final: dict[str, float], plan: str | None = None) -> str:
    """`  done in 41 s, 16 steps: pearson_cosine 0.8720 -> 0.8850 (+0.0130), spearman_cosine ...`;
    `plan` says the steps with where they come from (training_checks.StepPlan.describe)."""
    moves = ", ".join(
        f"{name} {baseline[name]:.4f} -> {value:.4f} ({value - baseline[name]:+.4f})"
        for name, value in final.items()
        if name in baseline and "_ci_" not in name
    )
    return f"  done in {seconds:.0f} s, {plan or f'{steps} step' + ('' if steps == 1 else 's')}: {moves}"


# ---------------------------------------------------------------- one line per job (a Hydra callback)

_GRID_SWEEPERS = (
    "hydra._internal.core_plugins.basic_sweeper.BasicSweeper",
    "hydra_plugins.embedsweep_grid_sweeper.grid_sweeper.GridSweeper",
)


def test_gain_line(name: str, trained: float, untouched: float, gain: "Interval") -> str:
    """The trained model against the untouched one on the test pairs, with the paired 95% interval."""
    if gain.low > 0:
        verdict = "better than the untouched model beyond noise"
    elif gain.high < 0:
        verdict = "worse than the untouched model beyond noise"
    else:
        verdict = "not distinguishable from the untouched model"
    return (
        f"  vs the untouched model on the same test pairs: {name} {untouched:.4f} -> {trained:.4f} "
        f"({trained - untouched:+.4f}, paired 95% interval [{gain.low:+.4f}, {gain.high:+.4f}]): {verdict}"
    )


def job_count(config: DictConfig) -> int | None:
    """How many jobs Hydra's basic sweeper will launch for this multirun (None for other sweepers,
    which decide as they go): the grid of the command line's sweeps and `hydra.sweeper.params`."""
    if config.hydra.sweeper.get("_target_") not in _GRID_SWEEPERS:
        return None
    from hydra._internal.core_plugins.basic_sweeper import BasicSweeper

    from embedsweep.swept import parse

    parsed = parse(list(config.hydra.overrides.task), config.hydra.sweeper.get("params") or {})
    batches = BasicSweeper.split_arguments(parsed, None)
    return sum(len(batch) for batch in batches)


def _shorten(override: str) -> str:
    """`trainer.warmup_ratio=0.04679835610086079` as `trainer.warmup_ratio=0.0468`, as the verdict shows it."""
    from embedsweep.conclude.verdict import display_value

    key, sep, value = override.partition("=")
    return f"{key}={display_value(value)}" if sep else override


class JobLines(Callback):
    """Hydra callback: `[job 2/4] loss=mnr batch=128` when a job starts, and a line when one fails
    (a finished job ends with the task's `done in ...` line). Also quietens MLflow before the
    multirun's parent run (embedsweep.tracking) creates its store."""

    def __init__(self) -> None:
        self.total: int | None = None
        self.started = 0.0

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        redaction.install()
        self.total = job_count(config)

    def _name(self, config: DictConfig) -> str:
        if config.hydra.mode.name != "MULTIRUN":
            return "[run]"
        number = int(config.hydra.job.num) + 1
        return f"[job {number}/{self.total}]" if self.total else f"[job {number}]"

    def on_job_start(self, config: DictConfig, **kwargs: Any) -> None:
        self.started = time.monotonic()
        # The sweep's linkage (sweep.parent_run_id=...) is bookkeeping, not what the job tries.
        shown = [_shorten(o) for o in config.hydra.overrides.task if not o.startswith("sweep.")]
        log.info("%s %s", self._name(config), " ".join(shown) or "(defaults)")

    def on_job_end(self, config: DictConfig, job_return: JobReturn, **kwargs: Any) -> None:
        from hydra.core.utils import JobStatus

        if job_return.status == JobStatus.FAILED:
            error = job_return._return_value  # the exception; reading .return_value would raise it
            name, single = self._name(config), config.hydra.mode.name != "MULTIRUN"
            # One message per error: a single run's error is the command's last line (app.main), so this
            # line goes to train.log alone; a sweep's job says it here, and the command's end refers to it.
            log.error("%s failed after %.0f s: %s", name, time.monotonic() - self.started, error, extra={"console": not single})
            if not single and isinstance(error, BaseException):
                with contextlib.suppress(AttributeError):  # an exception type that takes no attributes
                    error.embedsweep_told_by = name
            job_return.__class__ = ToldFailure  # Hydra's "Error executing job with overrides: [...]" said it a third time


class ToldFailure(JobReturn):
    """A failed job whose error our own lines tell: reading its value raises the error, without
    the line Hydra writes to stderr first ("Error executing job with overrides: [...]")."""

    @property
    def return_value(self) -> Any:
        from hydra.core.utils import JobStatus

        if self.status == JobStatus.FAILED:
            raise self._return_value
        return self._return_value

    @return_value.setter
    def return_value(self, value: Any) -> None:
        self._return_value = value


def told_by(exc: BaseException) -> str | None:
    """The `[job 2/4]` whose line already told this error, if one did (JobLines)."""
    return getattr(exc, "embedsweep_told_by", None)
