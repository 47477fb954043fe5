"""Losses that break (or wait) on purpose, plugged in through a YAML file like any other loss (tests only)."""

from __future__ import annotations

import time
from pathlib import Path

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


class GatedLoss(CosineSimilarityLoss):
    """CosineSimilarityLoss whose first forward writes the file `started` and then waits until the file
    `gate` exists: a test holds the run in the middle of training for as long as it needs (an event,
    not a sleep that hopes the run is still going)."""

    def __init__(self, model, started: str, gate: str, timeout: float = 600) -> None:  # noqa: ANN001
        super().__init__(model)
        self.started, self.gate, self.timeout, self.waited = Path(started), Path(gate), timeout, False

    def forward(self, sentence_features, labels):  # noqa: ANN001
        if not self.waited:
            self.waited = True
            self.started.write_text("training")
            deadline = time.monotonic() + self.timeout
            while not self.gate.exists():
                if time.monotonic() > deadline:
                    raise TimeoutError(f"{self.gate} never appeared")
                time.sleep(0.05)
        return super().forward(sentence_features, labels)
