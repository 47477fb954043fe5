"""Instantiate the loss named in conf/loss (its `module:` block) for a model."""

from __future__ import annotations

import inspect
from typing import TYPE_CHECKING

from hydra.utils import get_class, instantiate
from omegaconf import DictConfig

if TYPE_CHECKING:
    import torch
    from sentence_transformers import SentenceTransformer

# Loss arguments that depend on the model, filled in when the YAML leaves them out.
_FROM_MODEL = ("embedding_dimension", "sentence_embedding_dimension")


def build_loss(cfg: DictConfig, model: "SentenceTransformer") -> "torch.nn.Module":
    params = inspect.signature(get_class(cfg.module._target_)).parameters
    extra = {name: model.get_embedding_dimension() for name in _FROM_MODEL if name in params and name not in cfg.module}
    return instantiate(cfg.module, model=model, **extra)
