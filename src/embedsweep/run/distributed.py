"""One trial on several devices (`torchrun --nproc_per_node=N train.py ...`): which process speaks for the run.

Every rank trains; only rank 0 logs to MLflow, reports to Optuna and saves the model. Pruning decisions
are taken by rank 0 and broadcast, so all ranks stop at the same step. The rank is read from the
variables torchrun sets (RANK, WORLD_SIZE) as well as from an initialised process group, since
tracking starts before the trainer initialises the group.
"""

from __future__ import annotations

import os
import sys


def rank() -> int:
    dist = sys.modules.get("torch.distributed")
    if dist is not None and dist.is_available() and dist.is_initialized():
        return int(dist.get_rank())
    return int(os.environ.get("RANK", "0"))


def world_size() -> int:
    dist = sys.modules.get("torch.distributed")
    if dist is not None and dist.is_available() and dist.is_initialized():
        return int(dist.get_world_size())
    return int(os.environ.get("WORLD_SIZE", "1"))


def is_main_process() -> bool:
    """True in a plain run and on rank 0 of a distributed one."""
    return rank() == 0


def broadcast_from_main(value: object) -> object:
    """Rank 0's `value` on every rank (unchanged in a single process)."""
    dist = sys.modules.get("torch.distributed")
    if dist is None or not dist.is_available() or not dist.is_initialized() or dist.get_world_size() == 1:
        return value
    box = [value]
    dist.broadcast_object_list(box, src=0)
    return box[0]

