"""Pruning: a job launched by the Optuna sweeper reports each intermediate STS evaluation to its trial
and stops as soon as the study's pruner calls the trial hopeless.

The job finds its trial through the study's storage (the sweeper passes `trial=<number>`), so this
works the same whether the job runs in the sweeper's process, a joblib worker or a SLURM node.
Stopping raises `optuna.TrialPruned`: the sweeper records the trial PRUNED, and tracking ends the
MLflow run KILLED with `trial_state=PRUNED`.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING

from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, ListConfig

from embedsweep.run.evaluate import metrics_from
from embedsweep.interrupts import deferred
from embedsweep.tracking import STUDY_NAME, TRIAL_NUMBER, TRIAL_STATE, JobRun

if TYPE_CHECKING:
    import optuna
    from transformers import TrainerCallback

log = logging.getLogger(__name__)


@contextmanager
def trial_of(cfg: DictConfig, run: JobRun) -> Iterator[list["TrainerCallback"]]:
    """For a job that belongs to a trial: tag its run with the study and trial, record the run id on
    the trial (Optuna's own tools then lead back to MLflow), yield the pruning callback, and tag how
    the trial ended. A plain run gets no callbacks and no tags."""
    if cfg.get("trial") is None:
        yield []
        return
    sweeper = HydraConfig.get().sweeper
    run.set_tags({STUDY_NAME: sweeper.study_name, TRIAL_NUMBER: cfg.trial, TRIAL_STATE: "RUNNING"})
    from embedsweep.run.distributed import is_main_process
    from embedsweep.studies.study import attach_trial

    # Under torchrun only rank 0 talks to the study; the others follow its decisions (report_to).
    trial = attach_trial(sweeper, int(cfg.trial)) if is_main_process() else None
    if trial is not None:
        with deferred():
            trial.set_user_attr("mlflow_run_id", run.run_id)
    if isinstance(cfg.objective, ListConfig):
        # Optuna cannot prune multi-objective trials (Trial.report refuses them).
        log.info("multi-objective trial %s: intermediate evaluations are not reported, no pruning", cfg.trial)
        callbacks = []
    else:
        callbacks = [report_to(trial, str(cfg.objective))]
    try:
        yield callbacks
    except BaseException as exc:
        import optuna

        if isinstance(exc, optuna.TrialPruned):
            run.set_tags({TRIAL_STATE: "PRUNED", "pruned": str(exc)})
            run.stopped_early(str(exc))
        else:
            run.set_tags({TRIAL_STATE: "FAIL"})
        raise
    run.set_tags({TRIAL_STATE: "COMPLETE"})


def report_to(trial: "optuna.Trial | None", metric: str) -> "TrainerCallback":
    """A TrainerCallback reporting `metric` of each STS evaluation to `trial`, stopping training when
    pruned. `trial=None` (ranks other than 0) receives rank 0's decision instead."""
    import optuna
    from transformers import TrainerCallback

    from embedsweep.run import distributed

    class ReportToTrial(TrainerCallback):
        def on_evaluate(self, args, state, control, metrics=None, **kwargs):  # noqa: ANN001
            value = metrics_from(metrics or {}, prefix="eval_").get(metric)
            if value is None:
                return
            if trial is not None:
                with deferred():  # Optuna's store may be SQLite too
                    trial.report(value, step=state.global_step)
            if distributed.broadcast_from_main(trial is not None and trial.should_prune()):
                raise optuna.TrialPruned(f"trial {getattr(trial, 'number', '')} pruned at step {state.global_step} ({metric}={value:.4f})")

    return ReportToTrial()
