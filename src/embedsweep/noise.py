"""How much an STS score would move on another draw of the same kind of pairs: bootstrap intervals.

A correlation over 1,500 pairs is uncertain by about ±0.01, often more than the differences that
decide a sweep. We resample the *pairs* (with replacement) and recompute the correlations from
cosine similarities already computed, so an interval costs no extra encoding.

Why a seeded numpy resample and not `scipy.stats.bootstrap`: one draw of pair indices is shared by
pearson, spearman and, when comparing two models on the same pairs, by both models (a paired
difference). scipy redraws per statistic and `spearmanr` has no resample axis, so it would cost
B Python calls per statistic; one (B, n) index matrix and row-wise ranks do all of it at once.
The interval is the percentile interval (what `scipy.stats.bootstrap(method="percentile")` gives).
"""

from __future__ import annotations

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


def _rowwise_pearson(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    x = x - x.mean(axis=1, keepdims=True)
    y = y - y.mean(axis=1, keepdims=True)
    denom = np.sqrt((x * x).sum(axis=1) * (y * y).sum(axis=1))
    with np.errstate(invalid="ignore", divide="ignore"):
        return (x * y).sum(axis=1) / denom


def _rowwise_spearman(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    from scipy.stats import rankdata

    return _rowwise_pearson(rankdata(x, axis=1), rankdata(y, axis=1))


STATISTICS = {"pearson_cosine": _rowwise_pearson, "spearman_cosine": _rowwise_spearman}


def _indices(n: int, resamples: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, n, size=(resamples, n))


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
    idx = _indices(len(scores), resamples, seed)
    return {name: _percentile(stat(sims[idx], scores[idx]), confidence) for name, stat in STATISTICS.items()}


def difference_interval(
    similarities_a: Sequence[float], similarities_b: Sequence[float], gold: Sequence[float], metric: str,
    *, confidence: float = CONFIDENCE, resamples: int = RESAMPLES, seed: int = SEED,
) -> Interval:  # fmt: skip
    """Paired bootstrap interval of metric(a) - metric(b) on the same pairs: the pair-to-pair noise
    both models share cancels, so this is narrower than comparing two separate intervals."""
    a, b, scores = (np.asarray(v, dtype=float) for v in (similarities_a, similarities_b, gold))
    idx = _indices(len(scores), resamples, seed)
    stat = STATISTICS[metric]
    return _percentile(stat(a[idx], scores[idx]) - stat(b[idx], scores[idx]), confidence)


def metrics(found: dict[str, Interval], prefix: str = "") -> dict[str, float]:
    """Our metric names: `pearson_cosine_ci_low`, `pearson_cosine_ci_high`, ..."""
    out = {}
    for name, interval in found.items():
        out[f"{prefix}{name}_ci_low"], out[f"{prefix}{name}_ci_high"] = interval.low, interval.high
    return out
