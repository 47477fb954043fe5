"""Instantiate the loss named in conf/loss (its `module:` block) for a model."""

from __future__ import annotations

import inspect
from typing import TYPE_CHECKING

from hydra.utils import get_class, instantiate
from omegaconf import DictConfig

from embedsweep.run.distributed import world_size

if TYPE_CHECKING:
    import torch
    from sentence_transformers import SentenceTransformer

# Loss arguments that depend on the model, filled in when the YAML leaves them out.
_FROM_MODEL = ("embedding_dimension", "sentence_embedding_dimension")


class NonFiniteLoss(RuntimeError):
    """The training loss became NaN or infinite: the run has diverged."""


def build_loss(cfg: DictConfig, model: "SentenceTransformer") -> "torch.nn.Module":
    params = inspect.signature(get_class(cfg.module._target_)).parameters
    extra: dict[str, object] = {name: model.get_embedding_dimension() for name in _FROM_MODEL if name in params and name not in cfg.module}
    if cfg.module.get("gather_across_devices") and world_size() == 1:
        extra["gather_across_devices"] = False  # nothing to gather in one process; spares its warning
    loss = instantiate(cfg.module, model=model, **extra)
    loss.register_forward_hook(_stop_on_non_finite)
    return loss


def _stop_on_non_finite(module: "torch.nn.Module", inputs: object, output: "torch.Tensor") -> None:
    """Checked on every step, since the trainer's logging filters NaN/inf losses out of its averages
    (`logging_nan_inf_filter`) and would train on, silently, until the end."""
    import torch

    if not bool(torch.isfinite(output.detach()).all()):
        raise NonFiniteLoss(
            f"training loss became {output.detach().float().flatten()[0].item()} ({type(module).__name__}): "
            f"the run diverged; lower trainer.lr or raise the warmup (trainer.warmup_ratio, or trainer.warmup_steps)"
        )
