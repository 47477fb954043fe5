"""The Optuna study shared by the sweeper (which asks and tells) and by each job (which reports and
may be pruned). Both sides open it from the sweeper's config, so they agree across processes and machines."""

from __future__ import annotations

import time
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from omegaconf import DictConfig

from embedsweep.checks import stores
from embedsweep.errors import UserError

if TYPE_CHECKING:
    import optuna

PRUNERS = ("median", "hyperband", "none")


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
    db: Path | None = None
    if url.startswith("sqlite:///"):
        db = Path(url.removeprefix("sqlite:///"))
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


def make_pruner(cfg: DictConfig) -> "optuna.pruners.BasePruner":
    import optuna

    if cfg.name == "median":
        return optuna.pruners.MedianPruner(n_startup_trials=cfg.n_startup_trials, n_warmup_steps=cfg.n_warmup_steps)
    if cfg.name == "hyperband":
        return optuna.pruners.HyperbandPruner(min_resource=cfg.min_resource, reduction_factor=cfg.reduction_factor)
    if cfg.name == "none":
        return optuna.pruners.NopPruner()
    raise UserError(f"hydra.sweeper.pruner.name={cfg.name!r} is not allowed; allowed: {', '.join(PRUNERS)}")


def attach_trial(sweeper: DictConfig, number: int) -> "optuna.Trial":
    """The running trial `number` of the sweeper's study, as the job process sees it."""
    import optuna

    storage = open_storage(str(sweeper.storage))
    study = optuna.load_study(study_name=sweeper.study_name, storage=storage, pruner=make_pruner(sweeper.pruner))
    study_id = storage.get_study_id_from_name(sweeper.study_name)
    return optuna.trial.Trial(study, storage.get_trial_id_from_study_id_trial_number(study_id, number))
