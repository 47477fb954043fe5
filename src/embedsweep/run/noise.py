"""How much an STS score would move on another draw of the same kind of pairs: bootstrap intervals.

A correlation over 1,500 pairs is uncertain by about ±0.01, often more than the differences that
decide a sweep. We resample the *pairs* (with replacement) and recompute the correlations from
cosine similarities already computed, so an interval costs no extra encoding.

Why a seeded numpy resample and not `scipy.stats.bootstrap`: one draw of pair indices is shared by
pearson, spearman and, when comparing two models on the same pairs, by both models (a paired
difference). scipy redraws per statistic and `spearmanr` has no resample axis, so it would cost
B Python calls per statistic. Here a resample is held as how often it draws each pair (a (B, n)
count matrix), and each statistic is a correlation weighted by those counts: the same value as on
the resampled rows, without building them. Spearman's ranks of a resample follow from the counts
in one sorted pass (ties share their average rank, as in `scipy.stats.rankdata`): both intervals
of 1,500 pairs take about 0.13 s instead of 0.4 s with `rankdata` on 1,000 resampled rows (2-core CPU).
The interval is the percentile interval (what `scipy.stats.bootstrap(method="percentile")` gives).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

CONFIDENCE = 0.95
RESAMPLES = 1000
SEED = 0  # fixed: the same similarities always give the same interval


@dataclass(frozen=True)
class Interval:
    low: float
    high: float

    def overlaps(self, other: Interval) -> bool:
        return self.low <= other.high and other.low <= self.high


def _pearson(counts: np.ndarray, x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Pearson correlation of each resample: row b of `counts` says how often it drew each pair;
    x and y hold one value per pair, shared by all resamples (n,) or per resample (B, n)."""
    total = counts.sum(axis=1, keepdims=True)
    dx = x - (counts * x).sum(axis=1, keepdims=True) / total
    dy = y - (counts * y).sum(axis=1, keepdims=True) / total
    with np.errstate(invalid="ignore", divide="ignore"):
        return (counts * dx * dy).sum(axis=1) / np.sqrt((counts * dx * dx).sum(axis=1) * (counts * dy * dy).sum(axis=1))


def _resample_ranks(counts: np.ndarray, values: np.ndarray) -> np.ndarray:
    """The rank each pair's value takes within each resample (1-based, ties averaged), as (B, n)."""
    order = np.argsort(values, kind="stable")
    ordered = values[order]
    first = np.r_[True, ordered[1:] != ordered[:-1]]  # where each distinct value starts
    group = np.empty(len(values), dtype=np.intp)
    group[order] = np.cumsum(first) - 1  # each pair's distinct value, numbered from the smallest
    drawn = np.add.reduceat(counts[:, order], np.flatnonzero(first), axis=1)  # draws holding each distinct value
    last = np.cumsum(drawn, axis=1)  # the highest rank those draws take
    return (last - (drawn - 1) / 2)[:, group]


def _spearman(counts: np.ndarray, x: np.ndarray, y: np.ndarray) -> np.ndarray:
    return _pearson(counts, _resample_ranks(counts, x), _resample_ranks(counts, y))


STATISTICS = {"pearson_cosine": _pearson, "spearman_cosine": _spearman}


def _counts(n: int, resamples: int, seed: int) -> np.ndarray:
    """How often each of `resamples` draws of n pairs (with replacement) takes each pair, as (B, n)."""
    idx = np.random.default_rng(seed).integers(0, n, size=(resamples, n))
    flat = (idx + np.arange(resamples)[:, None] * n).ravel()
    return np.bincount(flat, minlength=resamples * n).reshape(resamples, n).astype(float)


def score(metric: str, similarities: Sequence[float], gold: Sequence[float]) -> float:
    """The metric on all pairs once (no resampling)."""
    sims, scores = np.asarray(similarities, dtype=float), np.asarray(gold, dtype=float)
    return float(STATISTICS[metric](np.ones((1, len(scores))), sims, scores)[0])


def _percentile(values: np.ndarray, confidence: float) -> Interval:
    values = values[np.isfinite(values)]  # a resample of identical similarities has no correlation
    tail = (1 - confidence) / 2 * 100
    low, high = np.percentile(values, [tail, 100 - tail])
    return Interval(float(low), float(high))


def intervals(
    similarities: Sequence[float], gold: Sequence[float], *, confidence: float = CONFIDENCE, resamples: int = RESAMPLES, seed: int = SEED
) -> dict[str, Interval]:
    """Percentile bootstrap intervals of pearson and spearman between similarities and gold scores."""
    sims, scores = np.asarray(similarities, dtype=float), np.asarray(gold, dtype=float)
    counts = _counts(len(scores), resamples, seed)
    return {name: _percentile(stat(counts, sims, scores), confidence) for name, stat in STATISTICS.items()}


def difference_interval(
    similarities_a: Sequence[float], similarities_b: Sequence[float], gold: Sequence[float], metric: str,
    *, confidence: float = CONFIDENCE, resamples: int = RESAMPLES, seed: int = SEED,
) -> Interval:  # fmt: skip
    """Paired bootstrap interval of metric(a) - metric(b) on the same pairs: the pair-to-pair noise
    both models share cancels, so this is narrower than comparing two separate intervals."""
    a, b, scores = (np.asarray(v, dtype=float) for v in (similarities_a, similarities_b, gold))
    counts = _counts(len(scores), resamples, seed)
    stat = STATISTICS[metric]
    return _percentile(stat(counts, a, scores) - stat(counts, b, scores), confidence)


@dataclass(frozen=True)
class ScoredPairs:
    """One model's cosine similarity per eval pair, with the gold scores and a fingerprint of the pairs:
    what comparing it later, pair by pair, with another model scored on the same pairs needs.
    Each job keeps its own (an MLflow artifact), so a sweep can compare jobs that ran on other machines."""

    fingerprint: str  # of the pairs' texts and gold scores: equal fingerprints, same pairs in the same order
    similarities: tuple[float, ...]
    gold: tuple[float, ...]

    def to_json(self) -> str:
        return json.dumps({"fingerprint": self.fingerprint, "similarities": list(self.similarities), "gold": list(self.gold)})

    @classmethod
    def from_json(cls, text: str) -> ScoredPairs:
        found = json.loads(text)
        return cls(found["fingerprint"], tuple(map(float, found["similarities"])), tuple(map(float, found["gold"])))

    def difference(self, other: ScoredPairs, metric: str) -> Interval | None:
        """Paired 95% interval of metric(self) - metric(other); None when they were scored on other pairs."""
        if self.fingerprint != other.fingerprint or len(self.similarities) != len(other.similarities):
            return None
        return difference_interval(self.similarities, other.similarities, self.gold, metric)


def metrics(found: dict[str, Interval], prefix: str = "") -> dict[str, float]:
    """Our metric names: `pearson_cosine_ci_low`, `pearson_cosine_ci_high`, ..."""
    out = {}
    for name, interval in found.items():
        out[f"{prefix}{name}_ci_low"], out[f"{prefix}{name}_ci_high"] = interval.low, interval.high
    return out
