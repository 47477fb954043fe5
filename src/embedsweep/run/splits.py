"""Which pairs a run may train on, select on and test on: held-out splits, overlap guards, fingerprints.

A pair is known by its two texts, normalised (case folded, whitespace collapsed) and in either order:
"A man plays." / "A man is playing." is the same pair as "a man is  playing." / "A man plays.".

- `holdout` keeps part of one labelled file aside as the test (and eval) set. Each pair goes to a side
  by a seeded hash of its text, not by its row number: the split is the same on every machine and in
  every job, duplicates of a pair always land on the same side, and appending rows to the file never
  moves an existing pair from one side to the other.
- `guard` compares the pairs of training, eval and test before training. Training pairs that occur in
  the test set are left out of training; eval pairs seen in training are reported; a test set that is
  (mostly) the eval set, or lies mostly inside the training data, is refused: its score would not say
  how the model does on pairs it has not seen.
- `fingerprint` names a set of pairs by content (order of rows ignored): the same data gets the same
  fingerprint wherever it comes from.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

import pandas as pd

from embedsweep.errors import UserError

# A test set with more than this share of its pairs in the eval or training data is refused (unless
# allowed): its score would mostly measure pairs the run selected on or trained on.
MOSTLY = 0.5


def pair_keys(first: pd.Series, second: pd.Series) -> pd.Series:
    """One key per row: the two normalised texts in sorted order, joined by a tab (texts hold none)."""

    def norm(texts: pd.Series) -> pd.Series:
        return texts.astype(str).str.casefold().str.split().str.join(" ")

    a, b = norm(first).tolist(), norm(second).tolist()
    return pd.Series([f"{x}\t{y}" if x <= y else f"{y}\t{x}" for x, y in zip(a, b)], index=first.index)


def fingerprint(keys: pd.Series, values: pd.Series | None = None) -> str:
    """A short content hash of a set of pairs (and their scores or labels), independent of row order."""
    rows = keys if values is None else keys + "\t" + values.astype(str)
    h = hashlib.blake2b(digest_size=8)
    for row in sorted(rows.tolist()):
        h.update(row.encode())
        h.update(b"\n")
    return h.hexdigest()


def _bucket(key: str, seed: int) -> float:
    """A number in [0, 1) fixed by the pair's text and the seed."""
    h = hashlib.blake2b(f"{seed}\n{key}".encode(), digest_size=8).digest()
    return int.from_bytes(h, "big") / 2**64


def holdout(keys: pd.Series, fractions: dict[str, float], seed: int) -> pd.Series:
    """The side of each row: one of `fractions`' names (e.g. test 0.2, eval 0.1) or "train".
    Fractions are shares of the distinct pairs, taken in the order given."""
    bounds, total = [], 0.0
    for name, share in fractions.items():
        total += share
        bounds.append((total, name))

    def side(key: str) -> str:
        u = _bucket(key, seed)
        return next((name for bound, name in bounds if u < bound), "train")

    return keys.map(side)


@dataclass(frozen=True)
class Overlap:
    """What the guard found and did; logged with the run."""

    train_in_test: int = 0  # training rows left out because their pair is a test pair
    eval_in_train: int = 0  # eval pairs that also occur in the training data
    test_in_eval: int = 0
    test_in_train: int = 0
    allowed: bool = False  # allow_test_overlap=true: nothing refused or left out

    def metrics(self) -> dict[str, int]:
        """Counts as metrics; none starts with `test_`, the prefix of test scores, which a sweep's jobs never log."""
        return {
            "overlap_train_rows_left_out": self.train_in_test,
            "overlap_eval_in_train": self.eval_in_train,
            "overlap_test_in_eval": self.test_in_eval,
            "overlap_test_in_train": self.test_in_train,
        }


def guard(train: pd.Series, eval_: pd.Series, test: pd.Series | None, where: dict[str, str], allow: bool = False) -> tuple[pd.Series, Overlap]:
    """Compare the pair keys of the three sets. Returns which training rows to keep, and what was found.
    Raises UserError when the test set is mostly the eval set or mostly inside the training data."""
    train_set, eval_set = set(train), set(eval_)
    eval_in_train = sum(k in train_set for k in eval_)
    if test is None:
        return pd.Series(True, index=train.index), Overlap(eval_in_train=eval_in_train, allowed=allow)
    test_set = set(test)
    test_in_eval = sum(k in eval_set for k in test)
    test_in_train = sum(k in train_set for k in test)
    n = len(test)
    fix = "choose another test set (or test=holdout), or set allow_test_overlap=true to test on them deliberately"
    if not allow and test_in_eval > MOSTLY * n:
        raise UserError(
            f"the test set is the eval set: {test_in_eval} of its {n} pairs ({where['test']}) are eval pairs ({where['eval']}); "
            f"a score on pairs the sweep selected on is not a held-out score; {fix}"
        )
    if not allow and test_in_train > MOSTLY * n:
        raise UserError(
            f"the test set lies inside the training data: {test_in_train} of its {n} pairs ({where['test']}) are training pairs "
            f"({where['data']}); {fix}"
        )
    keep = pd.Series(True, index=train.index) if allow else ~train.isin(test_set)
    found = Overlap(int((~keep).sum()), eval_in_train, test_in_eval, test_in_train, allow)
    return keep, found
