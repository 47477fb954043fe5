"""Losses that break on purpose, plugged in through a YAML file like any other loss (tests only)."""

from __future__ import annotations

import torch
from sentence_transformers.sentence_transformer.losses import CosineSimilarityLoss


class NaNAfterLoss(CosineSimilarityLoss):
    """CosineSimilarityLoss that returns NaN from step `after` on: a diverging run."""

    def __init__(self, model, after: int = 2) -> None:  # noqa: ANN001
        super().__init__(model)
        self.after, self.calls = after, 0

    def forward(self, sentence_features, labels):  # noqa: ANN001
        self.calls += 1
        loss = super().forward(sentence_features, labels)
        return loss * torch.tensor(float("nan")) if self.calls > self.after else loss
