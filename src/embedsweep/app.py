"""The task function: compose the run from the rooms, top to bottom. No MLflow, Optuna or parsing here."""

from __future__ import annotations

import logging
import math
import os
import signal
import sys
import threading
from pathlib import Path

import hydra
from hydra.core.hydra_config import HydraConfig
from hydra.errors import HydraException
from omegaconf import DictConfig, ListConfig

from embedsweep import config, data, evaluate, losses, models, pruning, tracking, training
from embedsweep.errors import UserError

log = logging.getLogger("embedsweep")


def _config_dir() -> str:
    """The checkout's conf/ when running from source, else the copy packaged into the wheel."""
    source = Path(__file__).resolve().parents[2] / "conf"
    return str(source if source.is_dir() else Path(__file__).resolve().parent / "conf")


def objective(final: dict[str, float], names: str | ListConfig) -> float | list[float]:
    """The metric named by `objective` (a list of values for a list of names: a multi-objective study).
    A non-finite value fails the job: a sweeper must not rank a diverged run."""
    values = [final[names]] if isinstance(names, str) else [final[n] for n in names]
    if not all(math.isfinite(v) for v in values):
        raise ValueError(f"objective {names} is not finite: {values} (diverged training?)")
    return values[0] if isinstance(names, str) else values


def run(cfg: DictConfig) -> float | list[float]:
    """Train and evaluate one model; return the objective metric(s) for a sweeper."""
    config.validate(cfg)  # seconds, before any model, data or tracking work
    out_dir = Path(HydraConfig.get().runtime.output_dir)
    with tracking.job_run(cfg) as mlrun:
        nli = data.load_nli(cfg.data)
        train_set = data.shape_for_loss(nli, cfg.loss.shape, seed=cfg.trainer.seed)
        sts = data.load_sts(cfg.eval)
        mlrun.log_metrics({
            "train_rows": len(train_set),
            "eval_pairs": len(sts.scores),
            "data_dropped_no_label": nli.attrs["dropped_no_label"],
            "data_dropped_empty": nli.attrs["dropped_empty"],
        })  # fmt: skip

        model = models.build_model(cfg.model, seed=cfg.trainer.seed)
        loss = losses.build_loss(cfg.loss, model)
        evaluator = evaluate.sts_evaluator(sts, batch_size=cfg.trainer.eval_batch_size)

        baseline = evaluate.score(model, evaluator)
        mlrun.log_metrics({f"baseline_{k}": v for k, v in baseline.items()})
        log.info("baseline on %s: %s", sts.source, baseline)

        callbacks = [mlrun.trainer_callback(), *pruning.callbacks(cfg)]
        trainer = training.make_trainer(
            model, loss, train_set, cfg.trainer, cfg.batch, cfg.loss.batch_sampler,
            output_dir=out_dir / "trainer", evaluator=evaluator, callbacks=callbacks,
        )  # fmt: skip
        mlrun.set_tags({"precision": training.precision_of(trainer)})
        stats = training.train(trainer)
        final = evaluate.score(model, evaluator)
        mlrun.log_metrics(final | {
            "train_steps": stats.steps,
            "train_loss_final": stats.train_loss,
            "train_runtime_s": stats.runtime_s,
            "train_samples_per_second": stats.samples_per_second,
        })  # fmt: skip
        if stats.peak_gpu_memory_mb is not None:
            mlrun.log_metrics({"peak_gpu_memory_mb": stats.peak_gpu_memory_mb})
        if cfg.trainer.save_model:
            models.save_model(model, out_dir / "model")
        log.info("final on %s after %d steps: %s", sts.source, stats.steps, final)
        value = objective(final, cfg.objective)
    return value


@hydra.main(version_base="1.3", config_path=_config_dir(), config_name="train")
def _hydra_main(cfg: DictConfig) -> float | list[float]:
    if signal.getsignal(signal.SIGTERM) is _interrupt or threading.current_thread() is not threading.main_thread():
        return run(cfg)  # main() runs this process: SIGTERM stops the whole command
    return _run_in_worker(cfg)


def _run_in_worker(cfg: DictConfig) -> float | list[float]:
    """A job in a launcher's own process: a SLURM job started by submitit (which only logs SIGTERM)
    or a joblib worker. There SIGTERM (scancel, a preemption) ends this job alone:
    its run is recorded KILLED, and it fails as an ordinary error, so the launcher reports the job
    FAILED (an Optuna trial FAIL) and the sweep goes on with its other jobs."""
    previous = {signal.SIGTERM: signal.signal(signal.SIGTERM, _interrupt)}
    requeue = signal.getsignal(signal.SIGUSR2)
    if callable(requeue):  # submitit's: requeue the job (preemption, time limit) and exit

        def _requeue(signum: int, frame: object) -> None:
            # The requeue sends this job SIGTERM: it must not fail the job, which would end the
            # trial that the requeued job is about to retry.
            signal.signal(signal.SIGTERM, signal.SIG_IGN)
            try:
                requeue(signum, frame)
            except SystemExit as exc:  # requeued: say so in the record of this attempt
                raise Requeued("requeued by SLURM (preempted or out of time): the requeued job retries it") from exc

        previous[signal.SIGUSR2] = signal.signal(signal.SIGUSR2, _requeue)
    try:
        return run(cfg)
    except KeyboardInterrupt as exc:
        raise RuntimeError(f"job stopped: {exc} (cancelled or preempted)") from exc
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)


def main() -> None:
    """Run Hydra; a mistake the user can fix is one line on stderr and exit code 2, not a traceback.

    HYDRA_FULL_ERROR=1 (set by you) keeps the full traceback for debugging.
    """
    keep_traceback = os.environ.get("HYDRA_FULL_ERROR") == "1"
    os.environ["HYDRA_FULL_ERROR"] = "1"  # let exceptions reach us instead of Hydra's own printer
    # SIGTERM (SLURM preemption, systemd stop, kill) unwinds like Ctrl-C: runs end KILLED, nothing half-written.
    signal.signal(signal.SIGTERM, _interrupt)
    try:
        _hydra_main()
    except KeyboardInterrupt:
        tracking.abort_open_sweeps("KILLED")
        print("interrupted: the current run was recorded as KILLED", file=sys.stderr)
        sys.exit(130)
    except BaseException as exc:
        tracking.abort_open_sweeps("FAILED")
        if keep_traceback or not isinstance(exc, (UserError, HydraException)):
            raise
        print(f"error: {exc}", file=sys.stderr)
        sys.exit(2)


class Requeued(SystemExit):
    """This attempt of a SLURM job ends because the job was requeued; its run ends KILLED."""


def _interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt(f"received {signal.Signals(signum).name}")


if __name__ == "__main__":
    main()
