"""Hydra callback, first in conf/hydra/default.yaml: everything that can be checked without data, models or
tracking is checked before any of them, and the output folder is claimed.

For a single run: the config (config.validate), the output folder, the MLflow store; then the run
folder is claimed (claim.py). For a multirun, once before the parent MLflow run exists: every swept
key and option of a config group, the shared part of the config (swept values are checked again by each
job), the sweeper's options, the Optuna
storage, the MLflow store and the sweep folder, which is then claimed for the whole sweep.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from hydra.experimental.callback import Callback
from omegaconf import DictConfig, OmegaConf

from embedsweep.checks import claim, overrides, stores
from embedsweep.checks.config import validate as config_checks
from embedsweep.swept import swept_values_of


class Refused(BaseException):
    """A preflight check failed. Hydra 1.3 turns an Exception raised by a callback into a warning and
    goes on (Callbacks._notify), so the refusal travels as a BaseException; app.main prints `error`."""

    def __init__(self, error: Exception, config: DictConfig | None = None) -> None:
        super().__init__(str(error))
        self.error = error
        self.config = config  # the refused command's config: a sweep's notification hook still reports it


OUR_SWEEPER = "hydra_plugins.embedsweep_optuna_sweeper.optuna_sweeper.OptunaSweeper"
_FOLDER_FIX = "set EMBEDSWEEP_OUTPUT_ROOT (or paths.output_root=) to a writable folder"


def check_places(cfg: DictConfig, folder: Path) -> None:
    tracking = cfg.get("tracking") or {}
    uri = stores.tracking_uri(tracking.get("uri"), tracking.get("default_uri"))  # a file store: refused before any folder is made
    stores.register_places(cfg, OmegaConf.select(cfg, "hydra.sweeper.storage"))  # a full disk is named by what lies on it
    stores.check_folder(Path(cfg.paths.output_root), "output root", _FOLDER_FIX)
    stores.check_folder(folder, "output folder", _FOLDER_FIX, create_parents=True)
    stores.check_tracking_uri(uri)


class Preflight(Callback):
    def __init__(self) -> None:
        self.claim: claim.Claim | None = None

    def on_run_start(self, config: DictConfig, **kwargs: Any) -> None:
        try:
            self._run_start(config)
        except Exception as exc:
            raise Refused(exc, config) from exc

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        try:
            self._multirun_start(config)
        except Exception as exc:
            raise Refused(exc, config) from exc

    def _run_start(self, config: DictConfig) -> None:
        config_checks(config, check_machine=True)
        folder = Path(config.hydra.run.dir)
        check_places(config, folder)
        self.claim = claim.claim(folder, "hydra.run.dir")

    def _multirun_start(self, config: DictConfig) -> None:
        # Jobs on a cluster run on other machines: their device is checked by each job.
        local = "submitit" not in str(config.hydra.launcher.get("_target_", ""))
        swept = swept_values_of(config)
        overrides.check_swept(config)  # `loss=mnr,mnrr`, `trainer.lrr=1,2`: refused before the sweep's parent run exists
        config_checks(config, check_machine=local, swept=frozenset(swept), losses=swept.get("loss") or ())
        sweeper = config.hydra.sweeper
        if sweeper.get("_target_") == OUR_SWEEPER:
            from hydra_plugins.embedsweep_optuna_sweeper.config import check_options

            check_options(OmegaConf.to_container(sweeper, resolve=True))  # the sweeper's own check, run again when it starts
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
