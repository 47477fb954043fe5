"""Training that would do nothing, or not what was asked, is said so before it starts.

Each check returns findings (a tag name and a sentence): the run logs them as warnings and tags its
MLflow run `warning.<name>`. Where the result could not mean anything, the check raises UserError
instead, before any training. The inputs are plain numbers, so that each check can be tested alone
and the caller decides how they are computed (for warmup: the effective warmup steps, whatever option
set them).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

from embedsweep.errors import UserError

if TYPE_CHECKING:
    from datasets import Dataset
    from sentence_transformers import SentenceTransformerTrainer


@dataclass(frozen=True)
class Finding:
    name: str  # the run is tagged warning.<name>
    message: str


@dataclass(frozen=True)
class StepPlan:
    """The steps the training rows give at this batch size: what the trainer runs, and how the
    console says it (rows read -> rows kept -> steps add up on the console)."""

    rows: int
    batch: int
    per_epoch: int  # the trainer's steps in one epoch: the length of its data loader
    epochs: float
    max_steps: int  # -1: none, the epochs decide

    @property
    def total(self) -> int:
        return self.max_steps if self.max_steps > 0 else math.ceil(self.epochs * self.per_epoch)  # as transformers counts

    def describe(self, done: int) -> str:
        """`3 steps (1 epoch: 80 rows at batch=32)`; `2 of 6 steps (...)` for a run stopped early."""
        steps = f"{done} step{'' if done == 1 else 's'}" if done == self.total else f"{done} of {self.total} steps"
        if self.max_steps > 0:
            return f"{steps} (trainer.max_steps={self.max_steps}; an epoch of {self.rows} rows at batch={self.batch} is {self.per_epoch})"
        return f"{steps} ({self.epochs:g} epoch{'' if self.epochs == 1 else 's'}: {self.rows} rows at batch={self.batch})"


def step_plan(trainer: "SentenceTransformerTrainer", rows: int, batch: int) -> StepPlan:
    args = trainer.args
    return StepPlan(rows, batch, len(trainer.get_train_dataloader()), float(args.num_train_epochs), int(args.max_steps))


def check_batches(batch_sizes: Sequence[int], batch: int, rows: int, sampler: str, per_epoch: int | None = None) -> list[Finding]:
    """The batches the sampler really forms, against the batch size asked for. `per_epoch`: the steps
    the trainer counts in an epoch, from the rows and the batch size, whatever the sampler forms."""
    findings = []
    if batch > rows:
        findings.append(Finding("batch_exceeds_data", f"batch={batch} but the training data has only {rows} rows: every step sees at most {rows}"))
    short = [size for size in batch_sizes[:-1] if size < batch]  # the last batch of an epoch may be short
    if short:
        findings.append(Finding(
            "batches_short",
            f"{len(short)} of {len(batch_sizes)} batches hold fewer than batch={batch} rows (smallest {min(short)}): "
            f"the {sampler} sampler cannot fill them" + (" without repeating a text (the data repeats texts)" if sampler.startswith("no_duplicates") else "")
            + (f"; the trainer counts {per_epoch} steps an epoch ({rows} rows at batch={batch}), so each epoch trains on "
               f"{per_epoch} of the {len(batch_sizes)} batches" if per_epoch is not None and per_epoch < len(batch_sizes) else ""),
        ))  # fmt: skip
    return findings


def check_warmup(total_steps: int, warmup_steps: int) -> list[Finding]:
    """A run that ends inside its warmup never trains at the learning rate asked for."""
    if warmup_steps > 0 and total_steps <= warmup_steps:
        return [Finding(
            "warmup_covers_run",
            f"the whole run ({total_steps} steps) stays inside the warmup ({warmup_steps} steps): the learning rate "
            f"peaks at {total_steps / warmup_steps:.0%} of trainer.lr; lower trainer.warmup_steps or train longer",
        )]  # fmt: skip
    return []


def check_negatives(positives: Sequence[str], negatives: Sequence[str]) -> list[Finding]:
    """A ranking loss's negative equal to its positive asks the model to rank a text above itself."""
    same = sum(p == n for p, n in zip(positives, negatives))
    if same and same == len(positives):
        raise UserError(
            f"every one of the {same} training negatives equals its positive: a ranking loss learns nothing from "
            f"that (too few distinct entailment pairs?); use more data, or loss=cosine or loss=softmax"
        )
    if same:
        return [Finding("negatives_equal_positives", f"{same} of {len(positives)} training negatives equal their positive")]
    return []


def check_trainer(trainer: "SentenceTransformerTrainer", train_set: "Dataset", batch: int, sampler: str) -> list[Finding]:
    """All checks, on the batches and schedule this trainer would really use."""
    loader = trainer.get_train_dataloader()
    sizes = [len(indices) for indices in loader.batch_sampler]
    findings = check_batches(sizes, batch, len(train_set), sampler, per_epoch=len(loader))
    args = trainer.args
    total = args.max_steps if args.max_steps > 0 else math.ceil(args.num_train_epochs * len(sizes))
    findings += check_warmup(total, args.get_warmup_steps(total))
    if {"positive", "negative"} <= set(train_set.column_names):
        findings += check_negatives(train_set["positive"], train_set["negative"])
    return findings
