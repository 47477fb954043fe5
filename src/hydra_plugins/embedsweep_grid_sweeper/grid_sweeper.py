"""The `hydra/sweeper=grid` plugin: Hydra's basic sweeper (every combination of the swept values),
run inside a tracked sweep.

Why not the basic sweeper plus a Hydra callback: a callback cannot hand anything to the jobs except
through the environment, and is not told when the sweep dies, so its parent run was left open. A
sweeper wraps the whole sweep: the parent run opens before the first job, every job gets the
linkage as overrides (`sweep.parent_run_id=...`: a SLURM node sees the same), and the parent run
ends with the verdict, or FAILED or KILLED, however the sweep ends.
"""

from dataclasses import dataclass
from typing import Any, Dict, List, Optional

from hydra._internal.core_plugins.basic_sweeper import BasicSweeper
from hydra.core.config_store import ConfigStore


@dataclass
class GridSweeperConf:
    _target_: str = "hydra_plugins.embedsweep_grid_sweeper.grid_sweeper.GridSweeper"
    max_batch_size: Optional[int] = None  # jobs launched together; None = the whole grid at once
    params: Optional[Dict[str, str]] = None  # a grid in config form, e.g. {loss: "mnr,cosine"}
    # Jobs run at once by a parallel launcher: launcher=joblib sets its pool from it. The same key as
    # hydra/sweeper=optuna's, so that a launcher preset and `hydra.sweeper.n_jobs=4` work with either
    # sweeper. The grid itself hands the launcher max_batch_size jobs at a time (all of them by default).
    n_jobs: int = 1


ConfigStore.instance().store(group="hydra/sweeper", name="grid", node=GridSweeperConf, provider="embedsweep")


class GridSweeper(BasicSweeper):
    def __init__(self, max_batch_size: Optional[int] = None, params: Optional[Dict[str, str]] = None, n_jobs: int = 1) -> None:
        super().__init__(max_batch_size=max_batch_size, params=params)
        self.n_jobs = n_jobs  # read by the launcher's config (conf/launcher/joblib.yaml), not here

    def sweep(self, arguments: List[str]) -> Any:
        from embedsweep import vanished
        from embedsweep.conclude.conclusion import concluded
        from embedsweep.notify import sweep_ended
        from embedsweep.swept import swept_values
        from embedsweep.tracking import make_tracker

        assert self.config is not None
        swept = list(swept_values(arguments, self.params))
        try:
            with concluded(make_tracker(self.config.tracking), self.config, swept) as parent, vanished.watched(self.config.hydra.launcher):
                return super().sweep([*arguments, *parent.job_overrides])
        except BaseException as exc:
            sweep_ended(self.hydra_context, self.config, exc)  # Hydra tells its callbacks only of a sweep that returned
            raise
