"""The sweeper's config schema, registered as `hydra/sweeper=optuna` (Hydra imports this module when it
scans plugins, so it stays light: Optuna is imported only when the options are checked), and
`check_options`, the one check of those options: the sweeper runs it when it starts, the preflight
before any multirun work.

The sampler and the pruner are Optuna classes given by `_target_` with their arguments, chosen from the
config groups hydra/sweeper/sampler (tpe, random, grid) and hydra/sweeper/pruner (median, hyperband,
none) in conf/hydra/sweeper/, or written out: `hydra.sweeper.sampler._target_=optuna.samplers.QMCSampler`.
"""

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional

from hydra.core.config_store import ConfigStore
from omegaconf import MISSING


@dataclass
class WarmStartConf:
    # Where a new study's first trials come from: auto (the most recent study of the same search on
    # other data, in the same storage), a study name, or null (off: the sampler starts cold).
    from_study: Optional[str] = None
    top_k: int = 3  # that study's best finished trials, enqueued as the new study's first trials
    # true: the very first trial takes the settings of the registered @champion (promote.model_name /
    # promote.alias; its `overrides` tag), for the keys this search has; values outside it are dropped.
    champion: bool = False


@dataclass
class OptunaSweeperConf:
    _target_: str = "hydra_plugins.embedsweep_optuna_sweeper.optuna_sweeper.OptunaSweeper"
    # Hydra passes the sampler and pruner configs on as they are: the sweeper builds them (it fills a grid's space).
    _recursive_: bool = False
    defaults: List[Any] = field(default_factory=lambda: [{"sampler": "tpe"}, {"pruner": "median"}])
    # null: named after what is searched and the data it is searched on,
    # <hparams_search or "search">-<search hash>-data-<data hash> (docs/optuna.md#studies), so that
    # different searches, or one search on new data, never share a study. A name given here is used
    # as is, and refused when its study searches another space or objective.
    study_name: Optional[str] = None
    # An explicit study_name whose study holds trials on other data (training or eval fingerprints):
    # refuse (the default: a one-off command never mixes data versions silently), new_study (go on in
    # <study_name>-data-<data hash>: what the scheduled preset sets), or mix (add to it anyway).
    on_new_data: str = "refuse"
    warm_start: WarmStartConf = field(default_factory=WarmStartConf)
    # Any Optuna RDB storage URL (sqlite:///..., postgresql://user@host/db, mysql://...). The study
    # lives there, so re-running a command resumes it and several machines can feed it.
    storage: str = "${oc.env:EMBEDSWEEP_OPTUNA_STORAGE,sqlite:///${paths.output_root}/optuna.db}"
    # maximize | minimize, or a list with one direction per objective; the objective itself is the
    # job's `objective` key (a metric name, or a list of names for a multi-objective study).
    direction: Any = "maximize"
    # An Optuna sampler: `_target_` (its class) and its arguments. A `seed` is re-seeded per trial (seed +
    # trial number); a GridSampler gets its `search_space` from the sweeper.
    sampler: Any = MISSING
    # An Optuna pruner, built the same way by the sweeper and by each job (embedsweep.studies.study.make_pruner).
    pruner: Any = MISSING
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

    def directions(self, n_objectives: int) -> List[str]:
        """One direction per objective (a single `direction` applies to all)."""
        from hydra.errors import HydraException

        directions = [self.direction] * n_objectives if isinstance(self.direction, str) else list(self.direction)
        if len(directions) != n_objectives:
            raise HydraException(f"hydra.sweeper.direction has {len(directions)} entries for {n_objectives} objectives")
        return directions


def check_options(options: Mapping[str, Any]) -> OptunaSweeperConf:
    """The sweeper's options (hydra.sweeper, resolved) merged onto OptunaSweeperConf and checked before
    anything is opened: a wrong type, value, sampler or pruner is one line naming the key and what is
    allowed. Returns them as an OptunaSweeperConf."""
    from hydra.errors import HydraException
    from omegaconf import OmegaConf
    from omegaconf.errors import OmegaConfBaseException

    from embedsweep.studies.study import rehearse_pruner

    from ._impl import make_sampler

    def refuse(key: str, value: Any, allowed: str) -> None:
        raise HydraException(f"hydra.sweeper.{key}={value} is not allowed: must be {allowed}")

    given = {k: v for k, v in options.items() if k != "defaults"}  # Hydra's defaults list, if left in
    try:
        opts = OmegaConf.to_object(OmegaConf.merge(OmegaConf.structured(OptunaSweeperConf), given))
    except OmegaConfBaseException as exc:  # a wrong type, an unknown key, no sampler or pruner
        key = f"hydra.sweeper.{exc.full_key}" if getattr(exc, "full_key", None) else "hydra.sweeper"
        raise HydraException(f"{key}: {str(exc).strip().splitlines()[0]}") from None
    assert isinstance(opts, OptunaSweeperConf)
    for key in ("n_trials", "n_jobs", "heartbeat_interval"):
        if getattr(opts, key) < 1:
            refuse(key, getattr(opts, key), "a whole number >= 1")
    if opts.max_trials is not None and opts.max_trials < 1:
        refuse("max_trials", opts.max_trials, "null (no budget) or a whole number >= 1")
    if opts.grace_period is not None and opts.grace_period < opts.heartbeat_interval:
        refuse("grace_period", opts.grace_period, f"null or at least heartbeat_interval ({opts.heartbeat_interval}) seconds")
    if not 0.0 <= opts.max_failure_rate <= 1.0:
        refuse("max_failure_rate", opts.max_failure_rate, "a number from 0 to 1")
    if opts.stop_after_failures < 0:
        refuse("stop_after_failures", opts.stop_after_failures, "0 (never stop early) or a whole number >= 1")
    directions = [opts.direction] if isinstance(opts.direction, str) else opts.direction
    if not directions or any(d not in ("maximize", "minimize") for d in directions):
        refuse("direction", opts.direction, "maximize, minimize, or a list of them")
    if opts.seeds is not None and (not opts.seeds or len(set(opts.seeds)) != len(opts.seeds)):
        refuse("seeds", opts.seeds, "null or a non-empty list of distinct seeds")
    opts.params = dict(opts.params or {})
    from ._identity import check_options as check_identity

    check_identity(opts.study_name, opts.on_new_data, opts.warm_start)
    # Optuna checks its own arguments when it builds the objects: build them once now (a grid's
    # search space is not known yet: an empty one stands in), and let the pruner judge a few made-up trials.
    make_sampler(opts.sampler)
    rehearse_pruner(opts.pruner)
    return opts


ConfigStore.instance().store(group="hydra/sweeper", name="optuna", node=OptunaSweeperConf, provider="embedsweep")
