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


ConfigStore.instance().store(group="hydra/sweeper", name="grid", node=GridSweeperConf, provider="embedsweep")


class GridSweeper(BasicSweeper):
    def sweep(self, arguments: List[str]) -> Any:
        from embedsweep.tracking import make_tracker, swept_keys

        assert self.config is not None
        swept = swept_keys(arguments, self.params)
        with make_tracker(self.config.tracking).sweep(self.config, swept) as parent:
            return super().sweep([*arguments, *parent.job_overrides])
