"""The `hydra/sweeper=optuna` plugin class. Hydra imports this module on every start while it scans
for plugins, so it stays light: Optuna and the sweep logic load from _impl when a sweep begins."""


from typing import Any

from hydra.plugins.sweeper import Sweeper
from hydra.types import HydraContext, TaskFunction
from omegaconf import DictConfig


class OptunaSweeper(Sweeper):
    """Search hyperparameters with an Optuna study that outlives the command.

    Why our own sweeper and not `hydra-optuna-sweeper`: that plugin pins optuna<3, cannot prune
    (its jobs never see their trial) and has no clean resume. This one drives Optuna's current
    ask/tell API and keeps the study in an RDB storage, so that

    - re-running the same command continues the study (trial numbers keep counting, the sampler
      sees the history, a grid never repeats a finished point) until `max_trials` are done, after
      which the command is a no-op: fit for cron, systemd timers and SLURM;
    - each job attaches to its trial through the storage (`trial=<number>`), reports intermediate
      evaluations and is stopped early by the pruner, in any process or on any machine;
    - trials left RUNNING by a killed sweep are failed (heartbeats), a concurrent sweep's are not;
    - a failing trial is recorded FAIL and the sweep goes on, up to `max_failure_rate`.

    See config.py for the options and conf/hparams_search/batch_warmup.yaml for a preset.
    """

    def __init__(self, **options: Any) -> None:
        from .config import check_options

        self.options = check_options(options)

    def setup(self, *, hydra_context: HydraContext, task_function: TaskFunction, config: DictConfig) -> None:
        from hydra.core.plugins import Plugins

        self.hydra_context = hydra_context
        self.config = config
        self.launcher = Plugins.instance().instantiate_launcher(
            hydra_context=hydra_context, task_function=task_function, config=config
        )

    def sweep(self, arguments: list[str]) -> Any:
        from ._impl import run_sweep

        assert self.hydra_context is not None and self.config is not None and self.launcher is not None
        try:
            return run_sweep(self, self.options, arguments)
        except BaseException as exc:
            from embedsweep.notify import sweep_ended

            sweep_ended(self.hydra_context, self.config, exc)  # Hydra tells its callbacks only of a sweep that returned
            raise
