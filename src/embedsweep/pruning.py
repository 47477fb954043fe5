"""Pruning: a job launched by the Optuna sweeper reports each intermediate STS evaluation to its trial
and stops as soon as the study's pruner calls the trial hopeless.

The job finds its trial through the study's storage (the sweeper passes `trial=<number>`), so this
works the same whether the job runs in the sweeper's process, a joblib worker or a SLURM node.
Stopping raises `optuna.TrialPruned`: the sweeper records the trial PRUNED, and tracking ends the
MLflow run KILLED with `trial_state=PRUNED`.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, ListConfig

from embedsweep.evaluate import metrics_from

if TYPE_CHECKING:
    import optuna
    from transformers import TrainerCallback

log = logging.getLogger(__name__)


def callbacks(cfg: DictConfig) -> list["TrainerCallback"]:
    """The pruning callback for a job that belongs to a trial; none for a plain run."""
    if cfg.get("trial") is None:
        return []
    if isinstance(cfg.objective, ListConfig):
        # Optuna cannot prune multi-objective trials (Trial.report refuses them).
        log.info("multi-objective trial %s: intermediate evaluations are not reported, no pruning", cfg.trial)
        return []
    from embedsweep.distributed import is_main_process
    from embedsweep.study import attach_trial

    # Under torchrun only rank 0 talks to the study; the others follow its decisions.
    trial = attach_trial(HydraConfig.get().sweeper, int(cfg.trial)) if is_main_process() else None
    return [report_to(trial, str(cfg.objective))]


def report_to(trial: "optuna.Trial | None", metric: str) -> "TrainerCallback":
    """A TrainerCallback reporting `metric` of each STS evaluation to `trial`, stopping training when
    pruned. `trial=None` (ranks other than 0) receives rank 0's decision instead."""
    import optuna
    from transformers import TrainerCallback

    from embedsweep import distributed

    class ReportToTrial(TrainerCallback):
        def on_evaluate(self, args, state, control, metrics=None, **kwargs):  # noqa: ANN001
            value = metrics_from(metrics or {}, prefix="eval_").get(metric)
            if value is None:
                return
            if trial is not None:
                trial.report(value, step=state.global_step)
            if distributed.broadcast_from_main(trial is not None and trial.should_prune()):
                raise optuna.TrialPruned(f"trial {getattr(trial, 'number', '')} pruned at step {state.global_step} ({metric}={value:.4f})")

    return ReportToTrial()
