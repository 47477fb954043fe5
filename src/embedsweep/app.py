"""The task function: compose the run from the rooms, top to bottom. No MLflow, Optuna or parsing here."""

from __future__ import annotations

import logging
import math
import os
import signal
import sys
import threading
import time
from pathlib import Path
from typing import TYPE_CHECKING

import hydra
from hydra.core.hydra_config import HydraConfig
from hydra.errors import HydraException
from hydra.types import RunMode
from omegaconf import DictConfig, ListConfig

from embedsweep.checks import claim, config, overrides, preflight, stores

from embedsweep import console, notify, redaction, tracking
from embedsweep.errors import UserError

if TYPE_CHECKING:
    from embedsweep.run.data import RunData

log = logging.getLogger("embedsweep")

# Everything a run writes (stores, logs, models, submitit's pickles that compute nodes unpickle) is
# for its owner alone: set in main() and again in run(), which a launcher's worker calls without main().
UMASK = 0o077


def objective(final: dict[str, float], names: str | ListConfig) -> float | list[float]:
    """The metric named by `objective` (a list of values for a list of names: a multi-objective study).
    A non-finite value fails the job: a sweeper must not rank a diverged run."""
    values = [final[names]] if isinstance(names, str) else [final[n] for n in names]
    if not all(math.isfinite(v) for v in values):
        raise ValueError(f"objective {names} is not finite: {values} (diverged training?)")
    return values[0] if isinstance(names, str) else values


def run(cfg: DictConfig) -> float | list[float]:
    """Train and evaluate one model; return the objective metric(s) for a sweeper."""
    os.umask(UMASK)
    config.validate(cfg)  # seconds, before any model, data or tracking work
    stores.register_places(cfg, HydraConfig.get().sweeper.get("storage"))  # a full disk is named by what lies on it
    started = time.monotonic()
    # The rooms import torch, sentence-transformers and pandas: loaded here, so that `--help`,
    # `--cfg job` and a config error stay as quick as Hydra itself.
    from embedsweep.run import cache, data, distributed, evaluate, losses, models, noise, training
    from embedsweep.run import metric_names as names  # in the sections of MLflow's chart view
    from embedsweep.studies import pruning
    from embedsweep.checks import training_checks
    from embedsweep.run.callbacks import LastEvaluation
    from embedsweep.run.efficiency import EfficiencyMeter, matmul_params

    console.setup(cfg.verbose)
    out_dir = Path(HydraConfig.get().runtime.output_dir)
    claim.check_no_model(out_dir, cfg.trainer.save_model)
    cache_dir = cfg.paths.get("cache_dir")
    # In a sweep the test set stays unseen by every job: only the sweep's winner is scored on it, once,
    # at the end (promote.py). A job that reported test scores would let a sweeper select on them.
    score_test = cfg.test.source != "none" and HydraConfig.get().mode != RunMode.MULTIRUN
    tracker = tracking.make_tracker(cfg.tracking)  # records nothing on ranks other than 0
    with tracker.job(cfg) as mlrun, pruning.trial_of(cfg, mlrun) as trial_callbacks:
        # Before any model: a bad file or a leaking test set fails the run now, recorded with its error.
        # Every job reads the test pairs, even in a sweep: its training must leave them out (splits.py).
        sets = data.load_run_data(cfg)
        kind, shape = cfg.data.get("kind", "nli"), cfg.loss.shape
        data_key = lambda: cache.shaped_data_key(sets.train, kind, shape, cfg.trainer.seed)  # noqa: E731
        train_set, data_cached = cache.cached_dataset(cache_dir, data_key, lambda: data.shape_for_loss(sets.train, shape, cfg.trainer.seed, kind))
        sts, held_out = sets.eval, sets.test if score_test else None
        mlrun.log_datasets(sets)
        mlrun.log_metrics({names.TRAIN_ROWS: len(train_set), names.EVAL_PAIRS: len(sts.scores)} | {names.sets(k): v for k, v in sets.info.items()})
        _report_overlap(sets, mlrun)

        model = models.build_model(cfg.model, seed=cfg.trainer.seed)
        loss = losses.build_loss(cfg.loss, model)
        evaluator = evaluate.sts_evaluator(sts, batch_size=cfg.trainer.eval_batch_size)

        # Every trial starts from the same model: its score is computed once per model, eval set and device.
        key = lambda: cache.baseline_key(model, sts.sentence1, sts.sentence2, sts.scores, evaluate.settings(evaluator), training.device_name())  # noqa: E731
        baseline, baseline_cached = cache.cached_json(cache_dir, "baseline", key, lambda: evaluate.score(model, evaluator))
        mlrun.log_metrics(names.baseline_scores(baseline))
        mlrun.set_tags({"baseline_cached": baseline_cached, "data_cached": data_cached})
        # A single run also scores the untouched model on the test pairs, before training: the answer to
        # "is my model better than the one I started with" on pairs nothing selected on.
        test_evaluator = evaluate.sts_evaluator(held_out, batch_size=cfg.trainer.eval_batch_size) if held_out is not None else None
        untouched_test = evaluate.score_with_similarities(model, test_evaluator) if test_evaluator is not None else None
        log.info(
            "  %d training rows (%s) %s; baseline%s %s",
            len(train_set), cfg.loss.shape, sets.origin(), " (cached)" if baseline_cached else "", console.metrics_text(baseline, core=True),
        )  # fmt: skip

        console.quiet_widget_examples(model, train_set, cfg.verbose)
        meter = EfficiencyMeter(params=matmul_params(model), device_name=training.device_name()).attach(loss)
        last_eval = LastEvaluation()
        callbacks = [meter, last_eval, mlrun.trainer_callback(), *trial_callbacks]
        trainer = training.make_trainer(
            model, loss, train_set, cfg.trainer, cfg.batch, cfg.loss.batch_sampler,
            output_dir=out_dir / "trainer", evaluator=evaluator, callbacks=[c for c in callbacks if c is not None],
        )  # fmt: skip
        console.quiet_trainer(trainer, cfg.verbose)
        mlrun.set_tags({"precision": training.precision_of(trainer), "world_size": distributed.world_size()})
        plan = training_checks.step_plan(trainer, len(train_set), cfg.batch)  # said in the `done in` line
        for finding in training_checks.check_trainer(trainer, train_set, cfg.batch, cfg.loss.batch_sampler):
            log.warning("%s", finding.message)
            mlrun.set_tags({f"warning.{finding.name}": finding.message})
        stats = training.train(trainer)
        # The trainer evaluates at its last step (transformers does for step-based evaluation): that score
        # is the final one. A run stopped before (pruned) or without evaluator is evaluated here.
        # Its intervals resample the similarities that evaluation kept (no second encoding).
        last = last_eval.at(stats.steps)
        final = last | evaluate.intervals(evaluator) if last else evaluate.score(model, evaluator)
        mlrun.keep_scored_pairs(evaluate.scored_pairs(evaluator))
        mlrun.log_metrics(names.answer_scores(final) | meter.metrics() | {
            names.STEPS: stats.steps,
            names.LOSS_FINAL: stats.train_loss,
            names.efficiency("runtime_s"): stats.runtime_s,
            names.efficiency("samples_per_second"): stats.samples_per_second,
        })  # fmt: skip
        if stats.peak_gpu_memory_mb is not None:
            mlrun.log_metrics({names.efficiency("peak_gpu_memory_mb"): stats.peak_gpu_memory_mb})
        if cfg.trainer.save_model and distributed.is_main_process():
            models.save_model(model, out_dir / "model")
        mlrun.keep_model(model)  # to the run itself, with tracking.log_models=true
        log.info("%s", console.scores_line(time.monotonic() - started, stats.steps, baseline, final, plan.describe(stats.steps)))
        if held_out is not None and test_evaluator is not None and untouched_test is not None:
            tested = evaluate.score_with_similarities(model, test_evaluator)
            name = cfg.objective if isinstance(cfg.objective, str) else cfg.objective[0]
            gain = noise.difference_interval(tested.similarities, untouched_test.similarities, held_out.scores, name)
            mlrun.log_metrics(
                names.test_scores(tested.metrics) | names.test_scores(untouched_test.metrics, untouched=True)
                | {names.TEST_PAIRS: len(held_out.scores)} | dict(zip(names.test_gain(name), (gain.low, gain.high)))
            )  # fmt: skip
            log.info("  test on %s: %s", held_out.source, console.metrics_text(tested.metrics, core=True))
            log.info("%s", console.test_gain_line(name, tested.metrics[name], untouched_test.metrics[name], gain))
        value = objective(final, cfg.objective)
    return value


def _report_overlap(sets: "RunData", mlrun: tracking.JobRun) -> None:
    """Say what the overlap guard did: a line for left-out training rows, a warning for eval pairs seen in training."""
    found = sets.overlap
    if found.train_in_test:
        log.info("  left out %d training row(s) whose pair is in the test set (%s)", found.train_in_test, sets.sources["test"])
    if found.eval_in_train:
        message = (
            f"{found.eval_in_train} of {len(sets.eval.scores)} eval pairs also occur in the training data: "
            f"their scores favour memorising over generalising"
        )
        log.warning("%s", message)
        mlrun.set_tags({"warning.eval_pairs_in_train": message})
    if found.allowed and (found.test_in_train or found.test_in_eval):
        mlrun.set_tags({"warning.test_overlap_allowed": f"{found.test_in_train} test pairs in training, {found.test_in_eval} in eval (allow_test_overlap=true)"})


@hydra.main(version_base="1.3", config_path=config.config_dir(), config_name="train")
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
    except Exception as exc:
        raise redaction.redacted_error(exc) from None  # pickled back to the sweep: submitit keeps it on disk
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)


def main() -> None:
    """Run Hydra; a mistake the user can fix is one line on stderr and exit code 2, not a traceback.

    HYDRA_FULL_ERROR=1 (set by you) keeps the full traceback for debugging.
    """
    os.umask(UMASK)
    redaction.install()  # a traceback that ends the command is printed with its secrets hidden
    if given := redaction.secrets_in(sys.argv[1:]):
        print(
            f"warning: {', '.join(given)} on the command line: `ps` shows it and Hydra saves it as typed in "
            f".hydra/overrides.yaml; give secrets through the environment or ~/.pgpass (README: Secrets)",
            file=sys.stderr,
        )
    keep_traceback = os.environ.get("HYDRA_FULL_ERROR") == "1"
    os.environ["HYDRA_FULL_ERROR"] = "1"  # let exceptions reach us instead of Hydra's own printer
    # SIGTERM (SLURM preemption, systemd stop, kill) unwinds like Ctrl-C: runs end KILLED, nothing half-written.
    signal.signal(signal.SIGTERM, _interrupt)
    if (conflict := _conflicting_commands(sys.argv[1:])) is not None:
        print(f"error: {conflict}", file=sys.stderr)
        sys.exit(2)
    try:
        _hydra_main()
    except KeyboardInterrupt:
        print("interrupted: the current run was recorded as KILLED", file=sys.stderr)
        sys.exit(130)
    except BaseException as exc:
        if isinstance(exc, preflight.Refused):
            notify.refused(exc.config, exc.error)  # a scheduled sweep refused at its start is still reported
            if not keep_traceback:
                exc = exc.error
        if not keep_traceback and not isinstance(exc, (UserError, SystemExit)) and (full := stores.full_disk_error(exc)) is not None:
            exc = full  # a full disk under a store, the output root or the cache, wherever it struck
        if keep_traceback or not isinstance(exc, (UserError, HydraException)):
            raise
        _close_progress_bars()  # the error on a line of its own, not after a bar's last state
        text = overrides.explain(exc, _hydra_args(sys.argv[1:]).overrides, config.config_dir(), "train") or str(exc)
        if (job := console.told_by(exc)) is not None:  # its line above says why: once is enough
            text = f"the sweep stopped: {job} failed (its error is above)"
        print(redaction.redact(f"error: {text}"), file=sys.stderr)
        sys.exit(2)


def _hydra_args(argv: list[str]):  # noqa: ANN202 - argparse's Namespace
    """The command line as Hydra reads it (its own parser: flags, then overrides)."""
    from hydra._internal.utils import get_args_parser

    return get_args_parser().parse_known_args(argv)[0]


def _conflicting_commands(argv: list[str]) -> str | None:
    """Hydra raises a bare ValueError (a traceback) for `-m ... --cfg job`: say it in one line, with
    the command that shows the config of the sweep's first job."""
    from hydra.core.override_parser.overrides_parser import OverridesParser

    args = _hydra_args(argv)
    given = [name for name, on in (("--run", args.run), ("--multirun", args.multirun), (f"--cfg {args.cfg}", args.cfg),
                                   ("--info", args.info is not None), ("--shell-completion", args.shell_completion)) if on]  # fmt: skip
    if len(given) < 2:
        return None
    if args.multirun and args.cfg and len(given) == 2:
        try:
            first = [
                f"{o.get_key_element()}={next(iter(o.sweep_string_iterator()))}" if o.is_discrete_sweep() else o.input_line
                for o in OverridesParser.create().parse_overrides(args.overrides)
            ]
        except Exception:  # noqa: BLE001 - an override Hydra cannot parse: it says so when run without --cfg
            first = list(args.overrides)
        return (
            f"--cfg {args.cfg} prints one job's config and runs nothing, so it cannot go with -m; "
            f"the sweep's first job: python train.py {' '.join(first)} --cfg {args.cfg}".replace("  ", " ")
        )
    return f"{' and '.join(given)} cannot be given together: use one of them"


def _close_progress_bars() -> None:
    if "tqdm" in sys.modules:
        from tqdm import tqdm

        for bar in list(getattr(tqdm, "_instances", ())):
            try:
                bar.close()
            except Exception:  # noqa: BLE001 - a bar that cannot draw itself is no reason to hide the error
                pass


class Requeued(SystemExit):
    """This attempt of a SLURM job ends because the job was requeued; its run ends KILLED."""


def _interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt(f"received {signal.Signals(signum).name}")


if __name__ == "__main__":
    main()
