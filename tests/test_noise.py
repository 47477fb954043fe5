"""Bootstrap intervals of STS correlations, on synthetic similarities whose answers are known."""

from __future__ import annotations

import math

import numpy as np
import pytest

from embedsweep.run.noise import Interval, ScoredPairs, difference_interval, intervals, metrics


def correlated(n: int, rho: float, seed: int = 1) -> tuple[np.ndarray, np.ndarray]:
    """Bivariate normal pairs with population correlation rho."""
    rng = np.random.default_rng(seed)
    gold = rng.standard_normal(n)
    sims = rho * gold + math.sqrt(1 - rho**2) * rng.standard_normal(n)
    return sims, gold


def test_a_perfect_ranking_has_no_noise() -> None:
    gold = np.linspace(0, 1, 200)
    found = intervals(gold * 0.5 + 0.1, gold)  # a monotone, linear copy: pearson = spearman = 1 on every resample
    assert found["pearson_cosine"].low == pytest.approx(1.0) and found["pearson_cosine"].high == pytest.approx(1.0)
    assert found["spearman_cosine"].low == pytest.approx(1.0)


def test_the_interval_covers_the_true_correlation_with_the_textbook_width() -> None:
    sims, gold = correlated(1500, rho=0.8)
    ci = intervals(sims, gold)["pearson_cosine"]
    assert ci.low < 0.8 < ci.high
    # For bivariate normal data the standard error of r is about (1 - rho^2) / sqrt(n): 0.0093 here,
    # so a 95% interval is about 2 x 1.96 x 0.0093 = 0.036 wide.
    assert (ci.high - ci.low) == pytest.approx(2 * 1.96 * (1 - 0.8**2) / math.sqrt(1500), rel=0.15)


def test_four_times_the_pairs_halves_the_interval() -> None:
    small = intervals(*correlated(400, rho=0.6))["spearman_cosine"]
    large = intervals(*correlated(1600, rho=0.6))["spearman_cosine"]
    assert (large.high - large.low) / (small.high - small.low) == pytest.approx(0.5, rel=0.2)


def test_the_same_similarities_give_the_same_interval() -> None:
    sims, gold = correlated(300, rho=0.5)
    assert intervals(sims, gold) == intervals(sims, gold)
    assert intervals(sims, gold, seed=1) != intervals(sims, gold, seed=2)


def test_a_paired_difference_sees_what_two_overlapping_intervals_hide() -> None:
    rng = np.random.default_rng(3)
    sims, gold = correlated(1500, rho=0.8)
    better = sims + 0.05 * (gold - sims) + 0.01 * rng.standard_normal(1500)  # slightly closer to gold
    a, b = intervals(better, gold)["pearson_cosine"], intervals(sims, gold)["pearson_cosine"]
    assert a.overlaps(b)  # separately: within noise of each other
    diff = difference_interval(better, sims, gold, "pearson_cosine")
    assert diff.low > 0  # paired on the same pairs: the gain is real
    same = difference_interval(sims, sims, gold, "spearman_cosine")
    assert same == Interval(0.0, 0.0)


def test_metric_names() -> None:
    found = {"pearson_cosine": Interval(0.1, 0.2)}
    assert metrics(found) == {"pearson_cosine_ci_low": 0.1, "pearson_cosine_ci_high": 0.2}
    assert metrics(found, "test_") == {"test_pearson_cosine_ci_low": 0.1, "test_pearson_cosine_ci_high": 0.2}
    assert Interval(0.1, 0.2).overlaps(Interval(0.2, 0.3)) and not Interval(0.1, 0.2).overlaps(Interval(0.21, 0.3))


def test_counting_draws_gives_the_statistics_of_the_resampled_rows() -> None:
    """The counted form equals the textbook one: draw the rows, then scipy's pearsonr and spearmanr,
    with ties on both sides (gold on a grid of 0.04 steps, similarities to 2 decimals)."""
    from scipy.stats import pearsonr, spearmanr

    from embedsweep.run import noise

    rng = np.random.default_rng(7)
    gold = np.round(rng.uniform(0, 1, 300) * 25) / 25
    sims = np.round(0.6 * gold + 0.4 * rng.random(300), 2)
    idx = np.random.default_rng(0).integers(0, 300, size=(20, 300))  # the draws noise._counts(300, 20, 0) counts
    counts = noise._counts(300, 20, 0)
    assert (counts.sum(axis=1) == 300).all()
    pearson, spearman = noise._pearson(counts, sims, gold), noise._spearman(counts, sims, gold)
    for b in range(20):
        assert pearson[b] == pytest.approx(pearsonr(sims[idx[b]], gold[idx[b]])[0], abs=1e-12)
        assert spearman[b] == pytest.approx(spearmanr(sims[idx[b]], gold[idx[b]])[0], abs=1e-12)
    assert noise.score("pearson_cosine", sims, gold) == pytest.approx(pearsonr(sims, gold)[0], abs=1e-12)
    assert noise.score("spearman_cosine", sims, gold) == pytest.approx(spearmanr(sims, gold)[0], abs=1e-12)


def test_scored_pairs_survive_json_and_pair_only_on_the_same_pairs() -> None:
    sims, gold = correlated(200, rho=0.7)
    pairs = ScoredPairs("fp", tuple(map(float, sims)), tuple(map(float, gold)))
    assert ScoredPairs.from_json(pairs.to_json()) == pairs  # exact floats, not rounded
    better = ScoredPairs("fp", tuple(map(float, sims + 0.2 * (gold - sims))), pairs.gold)
    assert better.difference(pairs, "pearson_cosine") == difference_interval(better.similarities, sims, gold, "pearson_cosine")
    assert better.difference(pairs, "pearson_cosine").low > 0
    elsewhere = ScoredPairs("other pairs", better.similarities, pairs.gold)
    assert elsewhere.difference(pairs, "pearson_cosine") is None
