"""The sweeper's config schema, registered as `hydra/sweeper=optuna` (Hydra imports this module when it scans plugins)."""

from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional

from hydra.core.config_store import ConfigStore


@dataclass
class SamplerConf:
    name: str = "tpe"  # tpe | random | grid (grid: every dimension must be a choice or an int range)
    seed: Optional[int] = 42  # a fixed seed makes two runs of the same command propose the same trials
    n_startup_trials: int = 5  # tpe: random trials before the model is used


@dataclass
class PrunerConf:
    name: str = "median"  # median | hyperband | none
    n_startup_trials: int = 2  # median: never prune before this many trials have completed
    n_warmup_steps: int = 0  # median: never prune a trial before this training step
    min_resource: int = 1  # hyperband: steps a trial gets before it can be pruned
    reduction_factor: int = 3  # hyperband


@dataclass
class OptunaSweeperConf:
    _target_: str = "hydra_plugins.embedsweep_optuna_sweeper.optuna_sweeper.OptunaSweeper"
    study_name: str = "embedsweep"
    # Any Optuna RDB storage URL (sqlite:///..., postgresql://user@host/db, mysql://...). The study
    # lives there, so re-running a command resumes it and several machines can feed it.
    storage: str = "${oc.env:EMBEDSWEEP_OPTUNA_STORAGE,sqlite:///${paths.output_root}/optuna.db}"
    # maximize | minimize, or a list with one direction per objective; the objective itself is the
    # job's `objective` key (a metric name, or a list of names for a multi-objective study).
    direction: Any = "maximize"
    sampler: SamplerConf = field(default_factory=SamplerConf)
    pruner: PrunerConf = field(default_factory=PrunerConf)
    n_trials: int = 10  # trials this invocation runs (fewer if max_trials is reached first)
    max_trials: Optional[int] = None  # the study's total budget of finished (COMPLETE + PRUNED) trials
    n_jobs: int = 1  # trials launched together per batch; >1 needs a parallel launcher (launcher=joblib|slurm)
    max_failure_rate: float = 0.5  # the command fails if more than this share of its trials failed
    # Stop at once when the first this-many trials of the command all failed with the same error (a
    # broken setup, not a bad region of the space), instead of spending the budget; 0 never stops early.
    stop_after_failures: int = 3
    # Seconds between "still running" beats the sweeper writes for its trials. A trial whose beat
    # is older than grace_period (default 2 x interval) was left by a killed sweep and is failed
    # at the start of the next one; trials of a sweep that is still alive are left alone.
    heartbeat_interval: int = 60
    grace_period: Optional[int] = None
    # The search space, in Hydra's override syntax: choice(16,32), int(interval(0,500)),
    # tag(log, interval(1e-6,1e-4)), range(0,500,100). Command-line sweeps (loss=mnr,cosine) add to it.
    params: Optional[Dict[str, str]] = None
    # Run every sampled configuration once per seed (trainer.seed=<s>) and report the mean of their
    # objectives to the study: seeds=[1,2,3] costs three jobs per trial. None: one job, the config's seed.
    seeds: Optional[List[int]] = None


ConfigStore.instance().store(group="hydra/sweeper", name="optuna", node=OptunaSweeperConf, provider="embedsweep")
