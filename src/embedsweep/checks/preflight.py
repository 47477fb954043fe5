"""Hydra callback, first in conf/hydra/default.yaml: everything that can be checked without data, models or
tracking is checked before any of them, and the output folder is claimed.

For a single run: the config (config.validate), the output folder, the MLflow store; then the run
folder is claimed (claim.py). For a multirun, once before the parent MLflow run exists: the shared
part of the config (swept values are checked again by each job), the sweeper's options, the Optuna
storage, the MLflow store and the sweep folder, which is then claimed for the whole sweep.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from embedsweep.checks import claim, stores
from embedsweep.checks.config import validate as config_checks

try:
    from hydra.experimental.callback import Callback as _HydraCallback
except ImportError:  # pragma: no cover - hydra-core < 1.1
    _HydraCallback = object  # type: ignore[assignment,misc]


class Refused(BaseException):
    """A preflight check failed. Hydra 1.3 turns an Exception raised by a callback into a warning and
    goes on (Callbacks._notify), so the refusal travels as a BaseException; app.main prints `error`."""

    def __init__(self, error: Exception) -> None:
        super().__init__(str(error))
        self.error = error


OUR_SWEEPER = "hydra_plugins.embedsweep_optuna_sweeper.optuna_sweeper.OptunaSweeper"
_FOLDER_FIX = "set EMBEDSWEEP_OUTPUT_ROOT (or paths.output_root=) to a writable folder"


def check_places(cfg: DictConfig, folder: Path) -> None:
    tracking = cfg.get("tracking") or {}
    uri = stores.tracking_uri(tracking.get("uri"), tracking.get("default_uri"))  # a file store: refused before any folder is made
    stores.register_places(cfg, OmegaConf.select(cfg, "hydra.sweeper.storage"))  # a full disk is named by what lies on it
    stores.check_folder(Path(cfg.paths.output_root), "output root", _FOLDER_FIX)
    stores.check_folder(folder, "output folder", _FOLDER_FIX, create_parents=True)
    stores.check_tracking_uri(uri)


def swept_keys(config: DictConfig) -> frozenset[str]:
    """The keys a multirun sets per job: command-line sweeps (`batch=32,128`, `batch=choice(8,16)`) and
    the Optuna sweeper's `params`. Hydra composes a multirun's config without them."""
    return frozenset(swept_values(config))


def swept_values(config: DictConfig) -> dict[str, list[str] | None]:
    """Each swept key and the values it takes, where they can be listed (`loss=cosine,cosent`,
    `choice(...)`); None for ranges (`interval(...)`)."""
    from hydra.core.override_parser.overrides_parser import OverridesParser

    parser = OverridesParser.create()
    task = list(config.hydra.overrides.get("task", []))
    params = config.hydra.sweeper.get("params") or {}
    found: dict[str, list[str] | None] = {}
    for o in parser.parse_overrides(task + [f"{k}={v}" for k, v in params.items()]):
        if o.is_sweep_override():
            found[o.key_or_group] = list(o.sweep_string_iterator()) if o.is_discrete_sweep() else None
    return found


class Preflight(_HydraCallback):
    def __init__(self) -> None:
        self.claim: claim.Claim | None = None

    def on_run_start(self, config: DictConfig, **kwargs: Any) -> None:
        try:
            self._run_start(config)
        except Exception as exc:
            raise Refused(exc) from exc

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        try:
            self._multirun_start(config)
        except Exception as exc:
            raise Refused(exc) from exc

    def _run_start(self, config: DictConfig) -> None:
        config_checks(config, check_machine=True)
        folder = Path(config.hydra.run.dir)
        check_places(config, folder)
        self.claim = claim.claim(folder, "hydra.run.dir")

    def _multirun_start(self, config: DictConfig) -> None:
        # Jobs on a cluster run on other machines: their device is checked by each job.
        local = "submitit" not in str(config.hydra.launcher.get("_target_", ""))
        swept = swept_values(config)
        config_checks(config, check_machine=local, swept=frozenset(swept), losses=swept.get("loss") or ())
        sweeper = config.hydra.sweeper
        if sweeper.get("_target_") == OUR_SWEEPER:
            from hydra_plugins.embedsweep_optuna_sweeper._impl import SweepOptions

            SweepOptions.from_config({k: v for k, v in sweeper.items() if k != "_target_"})
            stores.check_optuna_storage(str(sweeper.storage))
        folder = Path(config.hydra.sweep.dir)
        check_places(config, folder)
        self.claim = claim.claim(folder, "hydra.sweep.dir")

    def on_run_end(self, config: DictConfig, **kwargs: Any) -> None:
        self._release()

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        self._release()

    def _release(self) -> None:
        if self.claim is not None:
            self.claim.release()
            self.claim = None
