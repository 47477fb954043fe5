"""The task function: compose the run from the rooms, top to bottom. No MLflow, Optuna or parsing here."""

from __future__ import annotations

import logging
import math
import os
import signal
import sys
import time
from pathlib import Path

import hydra
from hydra.core.hydra_config import HydraConfig
from hydra.errors import HydraException
from omegaconf import DictConfig, ListConfig

from embedsweep import config, console, data, evaluate, losses, models, pruning, tracking, training
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
    started = time.monotonic()
    console.setup(cfg.verbose)
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
        log.info(
            "  %d training rows (%s) from %d NLI rows; baseline %s",
            len(train_set), cfg.loss.shape, len(nli), console.metrics_text(baseline),
        )  # fmt: skip

        console.quiet_widget_examples(model, train_set, cfg.verbose)
        callbacks = [mlrun.trainer_callback(), *pruning.callbacks(cfg)]
        trainer = training.make_trainer(
            model, loss, train_set, cfg.trainer, cfg.batch, cfg.loss.batch_sampler,
            output_dir=out_dir / "trainer", evaluator=evaluator, callbacks=callbacks,
        )  # fmt: skip
        console.quiet_trainer(trainer, cfg.verbose)
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
        log.info("%s", console.scores_line(time.monotonic() - started, stats.steps, baseline, final))
        value = objective(final, cfg.objective)
    return value


@hydra.main(version_base="1.3", config_path=_config_dir(), config_name="train")
def _hydra_main(cfg: DictConfig) -> float | list[float]:
    return run(cfg)


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


def _interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt(f"received {signal.Signals(signum).name}")


if __name__ == "__main__":
    main()
