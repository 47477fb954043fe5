"""How the Optuna sweeper works: parse the search space, ask trials in batches, launch them through
Hydra's launcher with `trial=<number>`, tell Optuna how each ended, and report the study."""

from __future__ import annotations

import hashlib
import logging
import math
import os
import tempfile
import threading
import warnings
from collections import Counter
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import optuna
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.core.override_parser.types import IntervalSweep, Override, RangeSweep
from hydra.core.utils import JobReturn, JobStatus
from hydra.errors import HydraException
from omegaconf import DictConfig, OmegaConf
from optuna.distributions import BaseDistribution, CategoricalDistribution, FloatDistribution, IntDistribution
from optuna.trial import TrialState

from embedsweep.tracking import liveness

from embedsweep import vanished
from embedsweep.checks.stores import one_line
from embedsweep.errors import UserError
from embedsweep.interrupts import deferred
from embedsweep.studies.study import build, make_pruner, open_storage, target_class
from embedsweep.redaction import install
from embedsweep.tracking import SweepRun, redact

from ._identity import Identity, choose_study, record, settings_of, warm_source, warm_start, warm_start_from_champion

from .config import OptunaSweeperConf

if TYPE_CHECKING:
    from .optuna_sweeper import OptunaSweeper

log = logging.getLogger(__name__)

FINISHED = (TrialState.COMPLETE, TrialState.PRUNED)  # what counts against max_trials
RESULTS_FILE = "optimization_results.yaml"


class SweepFailed(HydraException):
    """Too many trials of this invocation failed."""


# ---------------------------------------------------------------- search space


@dataclass
class SearchSpace:
    """Optuna distributions for the swept keys, plus fixed overrides every trial gets."""

    distributions: dict[str, BaseDistribution]
    fixed: list[str]
    # A categorical choice goes back to the job exactly as the user wrote it (quotes and all).
    literals: dict[str, list[str]]

    @classmethod
    def parse(cls, params: Mapping[str, str], arguments: Sequence[str], parser: OverridesParser | None = None) -> SearchSpace:
        """`params` (the config's search space) first, then the command line, which wins on a shared key."""
        parser = parser or OverridesParser.create()
        by_key: dict[str, Override] = {}
        for override in parser.parse_overrides([f"{k}={v}" for k, v in params.items()] + list(arguments)):
            by_key[override.get_key_element()] = override  # a repeated key keeps its place, takes the new value
        space = cls({}, [], {})
        for key, override in by_key.items():
            if override.is_sweep_override():
                space.distributions[key], literals = _distribution(override)
                if literals is not None:
                    space.literals[key] = literals
            else:
                space.fixed.append(f"{key}={override.get_value_element_as_str()}")
        return space

    def overrides(self, params: Mapping[str, Any]) -> list[str]:
        """The job's command-line overrides for one trial's parameters."""
        chosen = []
        for key, value in params.items():
            dist = self.distributions[key]
            if isinstance(dist, CategoricalDistribution):
                value = self.literals[key][dist.choices.index(value)]
            chosen.append(f"{key}={value!r}" if isinstance(value, float) else f"{key}={value}")
        return self.fixed + chosen

    def grid(self) -> dict[str, list[Any]]:
        """Every point of a discrete space, for the grid sampler."""
        grid: dict[str, list[Any]] = {}
        for key, dist in self.distributions.items():
            if isinstance(dist, CategoricalDistribution):
                grid[key] = list(dist.choices)
            elif isinstance(dist, IntDistribution) and not dist.log:
                grid[key] = list(range(dist.low, dist.high + 1, dist.step))
            else:
                raise HydraException(f"sampler=grid needs choice(...) or range(...) for {key}, not {dist}")
        return grid


def _distribution(override: Override) -> tuple[BaseDistribution, list[str] | None]:
    """choice(...) and a,b,c -> categorical; int range -> stepped int; interval -> int or float, `log` tag honoured."""
    sweep = override.value()
    if isinstance(sweep, IntervalSweep):
        log_scale = "log" in sweep.tags
        if isinstance(sweep.start, int) and isinstance(sweep.end, int):
            return IntDistribution(sweep.start, sweep.end, log=log_scale), None
        return FloatDistribution(float(sweep.start), float(sweep.end), log=log_scale), None
    values = list(override.sweep_iterator())
    literals = list(override.sweep_string_iterator())
    if isinstance(sweep, RangeSweep) and all(isinstance(v, int) for v in values) and len(values) > 1:
        return IntDistribution(min(values), max(values), step=abs(int(sweep.step))), None
    primitive = all(v is None or isinstance(v, (bool, int, float, str)) for v in values)
    # Optuna stores only primitives; anything else (lists, dicts) is chosen by its text.
    return CategoricalDistribution(values if primitive else literals), literals


# ---------------------------------------------------------------- studies and trials


@dataclass
class Tally:
    """How this invocation's trials ended."""

    states: Counter[str] = field(default_factory=Counter)
    errors: list[str | None] = field(default_factory=list)  # per trial, in order: its error if it failed

    def add(self, state: TrialState, error: str | None = None) -> None:
        self.states[state.name] += 1
        self.errors.append(error if state == TrialState.FAIL else None)

    def systematic(self, first: int) -> str | None:
        """The error every one of the first `first` trials failed with, if they all failed alike: a
        broken setup (bad data, a missing package) that the remaining trials would only repeat."""
        head = self.errors[:first]
        if first and len(head) == first and None not in head and len(set(head)) == 1:
            return head[0]
        return None

    @property
    def total(self) -> int:
        return sum(self.states.values())

    def failure(self, max_failure_rate: float) -> str | None:
        """Why the command should fail, or None: every trial failed, or more than the allowed share."""
        failed, total = self.states["FAIL"], self.total
        if total and (failed == total or failed / total > max_failure_rate):
            return f"{failed} of {total} trials failed (max_failure_rate={max_failure_rate})"
        return None


class GridSampler(optuna.samplers.GridSampler):
    """Optuna's grid sampler, except that the sweeper decides when the grid is done (grid_left):
    the original calls study.stop() after the last point, which Optuna allows only inside optimize()."""

    def after_trial(self, study: optuna.Study, trial: optuna.trial.FrozenTrial, state: TrialState, values: Sequence[float] | None) -> None:
        pass


def is_grid(cfg: Mapping[str, Any]) -> bool:
    """Whether `hydra.sweeper.sampler` is a grid: the sweeper then fills its search space and counts its points."""
    return issubclass(target_class(cfg, "sampler"), optuna.samplers.GridSampler)


def make_sampler(cfg: Mapping[str, Any], space: SearchSpace | None = None, trial_number: int | None = None, study_name: str = "") -> optuna.samplers.BaseSampler:
    """The sampler `hydra.sweeper.sampler` names (`_target_`), with its arguments.

    A grid gets the points of `space` as its search_space (none without a space), and Optuna's own
    GridSampler is built as ours (above). With `trial_number`, a `seed` argument becomes seed + that
    number + an offset of the study's name (see ask)."""
    cls = target_class(cfg, "sampler")
    given: dict[str, Any] = {}
    if issubclass(cls, optuna.samplers.GridSampler):
        given["search_space"] = space.grid() if space is not None else {}
        cls = GridSampler if cls is optuna.samplers.GridSampler else cls
    elif trial_number is not None and cfg.get("seed") is not None:
        given["seed"] = (int(cfg["seed"]) + trial_number + study_offset(study_name)) % 2**32
    return build(cfg, "sampler", target=cls, **given)


def study_offset(study_name: str) -> int:
    """A stable number per study name: a new study (new data, a warm start) must not replay the points
    of the study before it, which had the same seed and trial numbers; the same study replays its own."""
    return int(hashlib.sha256(study_name.encode()).hexdigest()[:8], 16) if study_name else 0


def _on_stale(study: optuna.Study, trial: optuna.trial.FrozenTrial) -> None:
    log.warning("trial %d was left RUNNING by a sweep that is gone (no heartbeat): marked FAIL", trial.number)


def open_study(opts: OptunaSweeperConf, storage: optuna.storages.RDBStorage, space: SearchSpace, directions: list[str], name: str | None = None) -> optuna.Study:
    """Create the study `name` (default: opts.study_name) or load it (resume), after failing trials
    whose sweep stopped beating."""
    study = optuna.create_study(
        storage=storage, study_name=name or opts.study_name, directions=directions, load_if_exists=True,
        sampler=make_sampler(opts.sampler, space), pruner=make_pruner(opts.pruner),
    )  # fmt: skip
    fail_stale(study)
    fail_orphans(study, storage)
    return study


def fail_orphans(study: optuna.Study, storage: optuna.storages.RDBStorage) -> None:
    """Fail at once the RUNNING trials whose sweep process on this host is gone (kill -9, the OOM
    killer): no need to wait out the heartbeat grace period. Trials owned on other hosts are left
    to their heartbeat (fail_stale)."""
    for trial in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        reason = liveness.owner_gone(trial.user_attrs.get("owner") or {}, stale_after=math.inf)
        if reason is None:
            continue
        try:
            storage.set_trial_user_attr(trial._trial_id, "error", f"its sweep ended without recording it: {reason}")
            storage.set_trial_state_values(trial._trial_id, TrialState.FAIL)
        except optuna.exceptions.UpdateFinishedTrialError:
            continue  # another sweep starting now got there first
        log.warning("trial %d was left RUNNING: %s; marked FAIL", trial.number, reason)


def fail_stale(study: optuna.Study) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        optuna.storages.fail_stale_trials(study)


def count(study: optuna.Study, states: Sequence[TrialState]) -> int:
    return len(study.get_trials(deepcopy=False, states=tuple(states)))


def ask(study: optuna.Study, opts: OptunaSweeperConf, space: SearchSpace) -> optuna.Trial:
    """A new trial with its parameters chosen.

    A sampler with a `seed` (TPE, random) is re-seeded with seed + trial number + the study's offset: a
    fresh study replays exactly (same seed, same study, same trials), while a resumed or concurrent
    sweep, whose trial numbers differ, proposes new points instead of repeating the first ones, and a
    new study for new data does not repeat the points of the study before it. The grid sampler keeps one seed: it
    orders the grid with it, and skips points finished in earlier runs itself.
    """
    with warnings.catch_warnings():
        # Optuna warns that heartbeats are meant for study.optimize; we beat ourselves (heartbeat()).
        warnings.filterwarnings("ignore", message="Heartbeat of storage")
        if is_grid(opts.sampler):
            trial = study.ask(space.distributions)
            trial.set_user_attr("owner", liveness.owner())
            return trial
        trial = study.ask()
    trial.set_user_attr("owner", liveness.owner())
    study.sampler = make_sampler(opts.sampler, space, trial.number, study.study_name)
    for name, dist in space.distributions.items():
        try:
            suggest(trial, name, dist)
        except ValueError as exc:  # Optuna refuses a dimension that differs from the study's earlier trials
            trial.set_user_attr("error", f"search space of {name} changed: {exc}")
            study.tell(trial, state=TrialState.FAIL)
            raise UserError(
                f"the search space of {name} ({dist}) differs from the one study {study.study_name!r} already "
                f"holds ({exc}); keep the space, or start a new study with hydra.sweeper.study_name=<new name>"
            ) from exc
    return trial


def suggest(trial: optuna.Trial, name: str, dist: BaseDistribution) -> Any:
    if isinstance(dist, CategoricalDistribution):
        return trial.suggest_categorical(name, dist.choices)
    if isinstance(dist, IntDistribution):
        return trial.suggest_int(name, dist.low, dist.high, step=dist.step, log=dist.log)
    assert isinstance(dist, FloatDistribution)
    return trial.suggest_float(name, dist.low, dist.high, step=dist.step, log=dist.log)


def grid_left(study: optuna.Study, space: SearchSpace) -> int:
    """Grid points no trial has started yet (finished, failed or running)."""
    started = {t.system_attrs.get("grid_id") for t in study.get_trials(deepcopy=False)} - {None}
    return math.prod(len(v) for v in space.grid().values()) - len(started)


@contextmanager
def heartbeat(storage: optuna.storages.RDBStorage, trial_ids: list[int], interval: int) -> Iterator[None]:
    """Beat for our running trials while their jobs run, so that a sweep started meanwhile leaves them
    alone, and the next sweep fails them if this process dies."""
    stop = threading.Event()

    def beat() -> None:
        while True:
            for trial_id in trial_ids:
                try:
                    storage.record_heartbeat(trial_id)
                except Exception as exc:  # a storage hiccup must not kill the beat
                    log.warning("heartbeat for trial id %d failed: %s", trial_id, one_line(exc))
            if stop.wait(interval):
                return

    thread = threading.Thread(target=beat, name="optuna-heartbeat", daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join()


def tell(study: optuna.Study, trial: optuna.Trial, result: JobReturn, n_objectives: int) -> TrialState:
    """Record how the job ended: COMPLETE with its value(s), PRUNED, or FAIL with the error as a user attr."""
    if result.status == JobStatus.COMPLETED:
        value = result.return_value
        values = [value] if isinstance(value, (int, float)) else list(value)
        if len(values) == n_objectives and all(isinstance(v, (int, float)) and math.isfinite(v) for v in values):
            return study.tell(trial, [float(v) for v in values]).state
        error = f"the job returned {value!r}, expected {n_objectives} finite number(s)"
    else:
        # `.return_value` of a failed job re-raises (and prints "Error executing job"): read the exception.
        exc = result._return_value
        if isinstance(exc, optuna.TrialPruned):
            log.info("%s", exc)
            return study.tell(trial, state=TrialState.PRUNED).state
        error = f"{type(exc).__name__}: {exc}"
    log.warning("trial %d failed: %s", trial.number, error)
    trial.set_user_attr("error", redact(error)[:2000])
    return study.tell(trial, state=TrialState.FAIL).state


def tell_seeds(study: optuna.Study, trial: optuna.Trial, results: Sequence[JobReturn], n_objectives: int) -> TrialState:
    """One trial run on several seeds: COMPLETE with the mean objective(s) when every seed completed;
    otherwise as the first seed that did not (PRUNED, or FAIL with its error)."""
    if len(results) == 1:
        return tell(study, trial, results[0], n_objectives)
    values: list[list[float]] = []
    for result in results:
        value = result.return_value if result.status == JobStatus.COMPLETED else None
        seed_values = [value] if isinstance(value, (int, float)) else list(value or [])
        if len(seed_values) != n_objectives or not all(isinstance(v, (int, float)) and math.isfinite(v) for v in seed_values):
            return tell(study, trial, result, n_objectives)
        values.append([float(v) for v in seed_values])
    means = [sum(column) / len(column) for column in zip(*values)]
    trial.set_user_attr("seed_values", values)
    return study.tell(trial, means).state


# ---------------------------------------------------------------- the sweep


def open_identified_study(
    config: DictConfig, opts: OptunaSweeperConf, storage: optuna.storages.RDBStorage, space: SearchSpace, objectives: list[str]
) -> tuple[optuna.Study, Identity, str]:
    """The study of this search on this data (_identity.py): chosen by name, created with its identity
    recorded, and, when it is new and warm_start asks, given the registered champion's settings and
    the best trials of an earlier study as its first. Returns the study, the identity and what the warm start enqueued ("" if nothing)."""
    from embedsweep.run.data import data_version

    directions = opts.directions(len(objectives))
    # Read once here from the sweep's config, before any job: the fingerprints every job will record.
    data = data_version(config)
    identity = Identity.of(space.distributions, objectives, directions, settings_of(config, space.distributions, space.fixed), data)
    prefix = str(config.hydra.runtime.choices.get("hparams_search") or "search")
    name = choose_study(storage, opts.study_name, opts.on_new_data, identity, prefix)
    warm = opts.warm_start.from_study if opts.warm_start is not None else None
    source = warm_source(storage, str(warm), identity, name, redact(opts.storage)) if warm else None
    study = open_study(opts, storage, space, directions, name)
    fresh = not study.get_trials(deepcopy=False)
    record(study, identity)
    log.info("study %r: search %s, data version %s (%s)", name, identity.search_id, identity.data_id,
             ", ".join(f"{k} {v}" for k, v in identity.data.items()))  # fmt: skip
    champion = bool(getattr(opts.warm_start, "champion", False))
    if not (fresh and (warm or champion)):
        return study, identity, ""
    if isinstance(study.sampler, optuna.samplers.GridSampler):
        log.info("warm start skipped: the grid sampler tries every point anyway")
        return study, identity, ""
    started = [champion_warm_start(config, study, space)] if champion else []
    if warm and source is None:
        log.info("warm start: no earlier study of this search on other data in the storage; study %r starts cold", name)
    elif warm and source is not None:
        numbers = warm_start(study, storage, source, int(opts.warm_start.top_k), space.distributions)
        started.append(f"{source} trials {','.join(map(str, numbers))}" if numbers else "")
    return study, identity, "; ".join(s for s in started if s)


def champion_warm_start(config: DictConfig, study: optuna.Study, space: SearchSpace) -> str:
    """warm_start.champion: the registered champion's settings as the first trial. A registry that
    cannot be read costs the warm start, not the sweep."""
    from embedsweep.conclude.promote import registry_name
    from embedsweep.tracking import make_tracker

    name, alias = registry_name(config), str(config.promote.alias)
    try:
        registry = make_tracker(config.tracking).registry()
        return warm_start_from_champion(study, registry, name, alias, space.distributions)
    except Exception as exc:  # noqa: BLE001 - tracking=none has no registry; a server may be down
        log.warning("warm start: could not read %s@%s from the model registry: %s", name, alias, one_line(exc))
        return ""


def quote(value: str) -> str:
    """A string for a Hydra override, quoted: a name such as `null` or `1e-5` stays a string."""
    return "'" + value.replace("\\", "\\\\").replace("'", "\\'") + "'"



def run_sweep(sweeper: OptunaSweeper, opts: OptunaSweeperConf, arguments: list[str]) -> list[Sequence[JobReturn]]:
    config, launcher = sweeper.config, sweeper.launcher
    assert config is not None and launcher is not None and sweeper.hydra_context is not None
    space = SearchSpace.parse(opts.params, arguments, OverridesParser.create(sweeper.hydra_context.config_loader))
    objectives = [config.objective] if isinstance(config.objective, str) else list(config.objective)
    sweep_dir = Path(config.hydra.sweep.dir)
    sweep_dir.mkdir(parents=True, exist_ok=True)
    OmegaConf.save(config, sweep_dir / "multirun.yaml")  # unresolved: ${oc.env:...} stays a reference
    install()  # the redacting filter on Optuna's own log handler too, made when it was imported
    # Optuna's own "[I ...]" lines (a study created, a trial finished) only with verbose=true: the
    # sweep's lines and its verdict say the same; its warnings and errors still show.
    optuna.logging.set_verbosity(optuna.logging.INFO if config.get("verbose") else optuna.logging.WARNING)

    storage = open_storage(opts.storage, opts.heartbeat_interval, opts.grace_period, on_stale=_on_stale)
    study, identity, warmed = open_identified_study(config, opts, storage, space, objectives)
    name = study.study_name
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        study.set_metric_names(objectives)  # optuna-dashboard and plots show pearson_cosine, not "Objective 0"
    study_id = storage.get_study_id_from_name(name)
    done = count(study, FINISHED)
    if opts.max_trials is not None and done >= opts.max_trials:
        log.info("study %r already holds %d finished trials (max_trials=%d): nothing to do", name, done, opts.max_trials)
        return []
    log.info("study %r in %s: %d finished trials; this run adds up to %d", name, redact(opts.storage), done, opts.n_trials)

    from embedsweep.conclude.conclusion import concluded
    from embedsweep.tracking import make_tracker

    seeds: list[int | None] = list(opts.seeds) if opts.seeds else [None]
    swept = list(space.distributions) + (["trainer.seed"] if opts.seeds else [])
    with concluded(make_tracker(config.tracking), config, swept) as parent:
        # The parent run says which study and data version its trials belong to from the start.
        parent.log_results({}, {}, {
            "study_name": name, "search_id": identity.search_id, "data_version": identity.data_id,
            **{f"fingerprint.{key}": value for key, value in identity.data.items()},
            **({"warm_start": warmed} if warmed else {}),
        })  # fmt: skip
        tally, returns, kept, launched, mine = Tally(), [], None, 0, []
        while (size := batch_size(study, opts, space, tally)) > 0:
            trials = [ask(study, opts, space) for _ in range(size)]
            mine += [t.number for t in trials]
            # Each job finds its trial in the study by name: a made name travels with it.
            batch = [
                [*space.overrides(t.params), *([] if seed is None else [f"trainer.seed={seed}"]), f"trial={t.number}",
                 f"hydra.sweeper.study_name={quote(name)}", *parent.job_overrides]
                for t in trials for seed in seeds
            ]  # fmt: skip
            ids = [storage.get_trial_id_from_study_id_trial_number(study_id, t.number) for t in trials]
            try:
                sweeper.validate_batch_is_legal(batch)
                # SLURM jobs that vanish (a dead node, processes killed outside SLURM) end FAILED, not awaited forever.
                with heartbeat(storage, ids, opts.heartbeat_interval), vanished.watched(config.hydra.launcher):
                    results = launcher.launch(batch, initial_job_idx=launched)  # job numbers name the job folders
            except BaseException as exc:  # a config error, Ctrl-C: do not leave our trials RUNNING
                with deferred():  # a second Ctrl-C must not cut these writes short
                    for trial in trials:
                        trial.set_user_attr("error", redact(f"{type(exc).__name__}: {exc}")[:2000])
                        study.tell(trial, state=TrialState.FAIL)
                raise
            launched += len(batch)
            per_trial = [results[i * len(seeds) : (i + 1) * len(seeds)] for i in range(len(trials))]
            with deferred():
                states = [tell_seeds(study, trial, seed_results, len(objectives)) for trial, seed_results in zip(trials, per_trial)]
            for trial, state in zip(trials, states):
                tally.add(state, trial.user_attrs.get("error"))
            if len(objectives) == 1:
                finished = [(state, r) for state, seed_results in zip(states, per_trial) for r in seed_results]
                kept = keep_best_model(kept, finished, maximize=opts.directions(1)[0] == "maximize")
            returns.append(results)
            fail_stale(study)
            if (error := tally.systematic(opts.stop_after_failures)) is not None:
                report(study, opts, objectives, tally, sweep_dir, parent, mine)
                first_line = (error.strip().splitlines() or [""])[0]
                raise SweepFailed(
                    f"sweep stopped early: its first {opts.stop_after_failures} trials all failed with the same error "
                    f"({first_line}); fix that before spending the remaining {opts.n_trials - tally.total} trial(s) "
                    f"(hydra.sweeper.stop_after_failures=0 never stops early)"
                )

        if tally.total == 0:
            log.info("study %r: no trial left to run (max_trials reached counting running trials, or the grid is done)", name)
            return returns
        report(study, opts, objectives, tally, sweep_dir, parent, mine)
        if reason := tally.failure(opts.max_failure_rate):
            raise SweepFailed(f"sweep failed: {reason}; see each FAIL trial's 'error' attribute (or its MLflow run)")
    return returns


@dataclass(frozen=True)
class KeptModel:
    value: float
    path: Path


def keep_best_model(kept: KeptModel | None, finished: Sequence[tuple[TrialState, JobReturn]], maximize: bool) -> KeptModel | None:
    """Delete the saved models of this sweep's trials that are not its best so far.

    The end of the sweep promotes its best trial's model (embedsweep.conclude.promote); keeping only that one
    costs the disk of one model (90 MB for MiniLM) instead of one per trial, and no retraining.
    A multi-objective study has no single best, so it keeps every model (the caller skips it)."""
    import shutil

    for state, result in finished:
        folder = Path(result.hydra_cfg.hydra.runtime.output_dir) / "model" if result.hydra_cfg else None
        if folder is None or not folder.is_dir():
            continue
        if state != TrialState.COMPLETE:  # never promoted: e.g. a seed that saved its model, of a trial another seed failed
            shutil.rmtree(folder, ignore_errors=True)
            continue
        value = float(result.return_value)
        if kept is None or (value > kept.value if maximize else value < kept.value):
            if kept is not None:
                shutil.rmtree(kept.path, ignore_errors=True)
            kept = KeptModel(value, folder)
        else:
            shutil.rmtree(folder, ignore_errors=True)
    return kept


def batch_size(study: optuna.Study, opts: OptunaSweeperConf, space: SearchSpace, tally: Tally) -> int:
    """How many trials to launch next: n_jobs, capped by this run's n_trials, the study's max_trials
    (counting running trials of concurrent sweeps, which will finish) and, for a grid, points left."""
    size = min(opts.n_jobs, opts.n_trials - tally.total)
    if opts.max_trials is not None:
        size = min(size, opts.max_trials - count(study, (*FINISHED, TrialState.RUNNING)))
    if is_grid(opts.sampler):
        size = min(size, grid_left(study, space))
    return max(size, 0)


# ---------------------------------------------------------------- results


def report(
    study: optuna.Study, opts: OptunaSweeperConf, objectives: list[str], tally: Tally, sweep_dir: Path, parent: SweepRun, mine: Sequence[int] = ()
) -> dict[str, Any]:
    """Log the best trial(s), write optimization_results.yaml atomically and log it to the parent MLflow run.

    A resumed study has two bests: this invocation's (its trials `mine`: the one the verdict names,
    whose run is the parent's best_run_id and whose model is promoted) and the study's, which may be a
    trial of an earlier invocation. `best_trial`, `best_value`, `best_params`, `best.*` params and the
    `best_<objective>` metric are this invocation's everywhere; the study's is labelled `best_of_study`
    (`best_trial_study`, `study_best_<objective>`)."""
    trials = study.get_trials(deepcopy=False)
    results: dict[str, Any] = {
        "name": "optuna",
        "study_name": study.study_name,
        "storage": redact(opts.storage),
        "objectives": dict(zip(objectives, opts.directions(len(objectives)))),
        "this_run": {"COMPLETE": tally.states["COMPLETE"], "PRUNED": tally.states["PRUNED"], "FAIL": tally.states["FAIL"]},
        "study_states": dict(Counter(t.state.name for t in trials)),
    }
    metrics: dict[str, float] = {f"trials_{s.lower()}": n for s, n in results["this_run"].items()}
    best_params: dict[str, Any] = {}
    tags: dict[str, Any] = {"study_name": study.study_name, "optuna_storage": opts.storage}
    if count(study, (TrialState.COMPLETE,)):
        best = study.best_trials  # the Pareto front; one trial for a single objective
        if len(objectives) == 1:
            ours = this_sweeps_best(study, mine)
            theirs = study.best_trial
            objective = objectives[0]
            results["best_of_study"] = {"trial": theirs.number, "value": theirs.value, "params": theirs.params}
            metrics[f"study_best_{objective}"] = theirs.value
            tags["best_trial_study"] = theirs.number
            if ours is not None:
                best_params = ours.params
                results |= {"best_trial": ours.number, "best_value": ours.value, "best_params": best_params}
                metrics[f"best_{objective}"] = ours.value
                tags["best_trial_this_sweep"] = ours.number
            said = f"{objective}=%.4f with %s"
            if ours is not None and ours.number == theirs.number:
                log.info(f"best trial %d, of this sweep and of study %r: {said}", ours.number, study.study_name, ours.value, best_params)
            else:
                if ours is not None:
                    log.info(f"best of this sweep: trial %d, {said}", ours.number, ours.value, best_params)
                else:
                    log.info("no trial of this sweep completed")
                log.info(f"best of study %r, earlier sweeps included: trial %d, {said}", study.study_name, theirs.number, theirs.value, theirs.params)
        else:
            results["best_trials"] = [{"number": t.number, "values": dict(zip(objectives, t.values)), "params": t.params} for t in best]
            for t in best:
                log.info("Pareto-optimal trial %d: %s with %s", t.number, dict(zip(objectives, t.values)), t.params)
    else:
        log.warning("study %r has no completed trial yet", study.study_name)
    results["trials"] = [
        {"number": t.number, "state": t.state.name, "values": t.values, "params": t.params,
         "last_step": t.last_step, **({"error": t.user_attrs["error"]} if "error" in t.user_attrs else {})}
        for t in trials
    ]  # fmt: skip

    path = sweep_dir / RESULTS_FILE
    with tempfile.NamedTemporaryFile("w", dir=sweep_dir, prefix=f".{RESULTS_FILE}.", delete=False) as tmp:
        tmp.write(OmegaConf.to_yaml(OmegaConf.create(results)))
    os.replace(tmp.name, path)  # a reader never sees half a file
    log.info("results in %s", path)
    parent.log_results(metrics, {f"best.{k}": v for k, v in best_params.items()}, tags, path)
    return results


def this_sweeps_best(study: optuna.Study, mine: Sequence[int]) -> optuna.trial.FrozenTrial | None:
    """The best COMPLETE trial among this invocation's (`mine`), or None. On a tie the study's own
    best wins, so that the two bests are one trial whenever they can be."""
    numbers = set(mine)
    ours = [t for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)) if t.number in numbers]
    if not ours:
        return None
    if study.best_trial.number in numbers:
        return study.best_trial
    maximize = study.direction == optuna.study.StudyDirection.MAXIMIZE
    return max(ours, key=lambda t: t.value) if maximize else min(ours, key=lambda t: t.value)
