"""The Optuna study shared by the sweeper (which asks and tells) and by each job (which reports and
may be pruned). Both sides open it from the sweeper's config, so they agree across processes and machines."""

from __future__ import annotations

import time
import warnings
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any

from omegaconf import DictConfig, OmegaConf

from embedsweep.checks import stores
from embedsweep.errors import UserError

if TYPE_CHECKING:
    import optuna

# What each option group holds, and a class to show when a `_target_` is wrong.
KINDS = {"sampler": ("optuna.samplers.BaseSampler", "optuna.samplers.TPESampler"), "pruner": ("optuna.pruners.BasePruner", "optuna.pruners.MedianPruner")}


def open_storage(
    url: str,
    heartbeat_interval: int | None = None,
    grace_period: int | None = None,
    on_stale: Callable[["optuna.Study", "optuna.trial.FrozenTrial"], None] | None = None,
) -> "optuna.storages.RDBStorage":
    """An RDB storage; SQLite waits for a lock instead of failing when several processes write."""
    import optuna
    import sqlalchemy

    engine_kwargs: dict[str, Any] = {}
    db = stores.sqlite_path(url)
    if db is not None:
        db.parent.mkdir(parents=True, exist_ok=True)
        engine_kwargs = {"connect_args": {"timeout": 120}}
    new = db is not None and (not db.exists() or db.stat().st_size == 0)

    def connect() -> "optuna.storages.RDBStorage":
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)  # heartbeats: stable since 2.9
            return optuna.storages.RDBStorage(
                url,
                engine_kwargs=engine_kwargs,
                heartbeat_interval=heartbeat_interval,
                grace_period=grace_period,
                heartbeat_stale_trial_callback=on_stale,
            )

    for wait_s in (1.0, 2.0):
        try:
            return connect()
        except sqlalchemy.exc.OperationalError as exc:
            if stores.ran_out(exc) is not None:
                if new and db is not None:  # cut short while its tables were made, and held nothing yet
                    db.unlink(missing_ok=True)
                raise stores.full_disk_error(exc, ("Optuna storage", db) if db is not None else None) or exc from exc
            if not _created_concurrently(exc):
                raise _unreachable(url, exc) from exc
        except sqlalchemy.exc.SQLAlchemyError:
            pass
        # Two sweeps starting together on a new database both create its tables and the
        # loser fails on a duplicate; a moment later the schema is there.
        time.sleep(wait_s)
    try:
        return connect()
    except sqlalchemy.exc.SQLAlchemyError as exc:
        raise _unreachable(url, exc) from exc


def _created_concurrently(exc: Exception) -> bool:
    return "already exists" in str(exc)


def _unreachable(url: str, exc: Exception) -> UserError:
    from embedsweep.tracking import redact

    reason = str(getattr(exc, "orig", exc)).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    return UserError(f"Optuna storage {redact(url)} is unreachable ({reason}); check hydra.sweeper.storage")


def target_class(node: Mapping[str, Any], kind: str) -> type:
    """The Optuna class that `hydra.sweeper.<kind>._target_` names (kind: sampler or pruner)."""
    import importlib

    def located(path: str) -> Any:
        # Not hydra.utils.get_class: it logs an error of several lines before raising.
        module, _, name = path.rpartition(".")
        try:
            return getattr(importlib.import_module(module), name)
        except (ImportError, AttributeError, ValueError):
            return None

    base_name, example = KINDS[kind]
    target = node.get("_target_") if isinstance(node, Mapping) else None
    if not target:
        raise UserError(f"hydra.sweeper.{kind}={dict(node) if isinstance(node, Mapping) else node} is not allowed: must have a _target_, "
                        f"an Optuna {kind} class such as {example} (or pick one: hydra/sweeper/{kind}=<name>)")  # fmt: skip
    cls = located(str(target))
    if not isinstance(cls, type) or not issubclass(cls, located(base_name)):
        raise UserError(f"hydra.sweeper.{kind}._target_={target} is not allowed: must be an Optuna {kind} class "
                        f"(a subclass of {base_name}), such as {example}")  # fmt: skip
    return cls


def build(node: Mapping[str, Any], kind: str, target: type | None = None, **given: Any) -> Any:
    """An Optuna sampler or pruner from its config node, `_target_` and arguments, as
    hydra.utils.instantiate builds it; `given` adds or replaces arguments (a grid's search space, a
    trial's seed) and `target` the class. A wrong target or argument is one line naming the option."""
    import inspect

    from hydra.utils import instantiate

    cls = target or target_class(node, kind)
    args = {k: v for k, v in node.items() if k != "_target_"} | given
    try:
        inspect.signature(cls).bind(**args)
    except TypeError as exc:
        takes = ", ".join(p for p in inspect.signature(cls).parameters if p not in ("self", "args", "kwargs")) or "no arguments"
        raise UserError(f"hydra.sweeper.{kind}: {node['_target_']} does not accept these arguments ({exc}); it takes: {takes}") from None
    try:
        return instantiate({**node, **given, "_target_": cls}, _convert_="all")
    except Exception as exc:  # noqa: BLE001 - Optuna refusing a value: its reason, on one line
        reason = exc.__cause__ or exc
        text = f"{type(reason).__name__}: {reason}".strip().splitlines()[0]
        raise UserError(f"hydra.sweeper.{kind}: {node['_target_']} refused its arguments {args}: {text}") from None


def make_pruner(cfg: Mapping[str, Any]) -> "optuna.pruners.BasePruner":
    """The study's pruner from `hydra.sweeper.pruner`: built so by the sweeper and by each job."""
    return build(cfg, "pruner")


def rehearse_pruner(cfg: Mapping[str, Any]) -> None:
    """Let the pruner judge a small made-up study in memory (three trials of four steps each), so that
    a value Optuna checks only once trials complete (Hyperband's min_resource=0 divides by zero) is one
    line now instead of a failed trial later."""
    import optuna

    pruner = make_pruner(cfg)
    verbosity = optuna.logging.get_verbosity()
    optuna.logging.set_verbosity(optuna.logging.WARNING)  # no "new study created in memory" lines
    try:
        study = optuna.create_study(storage=optuna.storages.InMemoryStorage(), pruner=pruner)
        for number in range(3):
            trial = study.ask()
            for step in range(1, 5):
                trial.report(float(number), step)
                trial.should_prune()
            study.tell(trial, float(number))
    except Exception as exc:  # noqa: BLE001 - whatever Optuna raises, said in one line
        args = {k: v for k, v in cfg.items() if k != "_target_"}
        reason = f"{type(exc).__name__}: {exc}".strip().splitlines()[0]
        raise UserError(f"hydra.sweeper.pruner: {cfg['_target_']} fails with its arguments {args} ({reason})") from None
    finally:
        optuna.logging.set_verbosity(verbosity)


def attach_trial(sweeper: DictConfig, number: int) -> "optuna.Trial":
    """The running trial `number` of the sweeper's study, as the job process sees it."""
    import optuna

    storage = open_storage(str(sweeper.storage))
    study = optuna.load_study(study_name=sweeper.study_name, storage=storage, pruner=make_pruner(OmegaConf.to_container(sweeper.pruner, resolve=True)))
    study_id = storage.get_study_id_from_name(sweeper.study_name)
    return optuna.trial.Trial(study, storage.get_trial_id_from_study_id_trial_number(study_id, number))
