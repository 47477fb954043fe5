"""The end-of-sweep verdict: ranking, the change against the untouched model, and both renderings."""

from __future__ import annotations

from dataclasses import replace
from typing import TYPE_CHECKING

import pytest

from embedsweep.conclude.verdict import JobResult, Summary, counts, rank
from embedsweep.run import metric_names as names

if TYPE_CHECKING:
    import numpy as np


def job(name: str, state: str = "FINISHED", pearson: float | None = None, baseline: float = 0.80, **values: str) -> JobResult:
    metrics = {"baseline/pearson_cosine": baseline, "baseline/spearman_cosine": baseline, "history/steps": 40.0, "efficiency/tokens_per_second": 1234.4}
    if pearson is not None:
        metrics |= {"answer/pearson_cosine": pearson, "answer/spearman_cosine": pearson - 0.01}
    return JobResult(name=name, values=values, state=state, metrics=metrics, seconds=75.0, run_id=name, overrides=name)


RESULTS = [
    job("loss=cosine batch=32", pearson=0.71, loss="cosine", batch="32"),
    job("loss=mnr batch=128", pearson=0.83, loss="mnr", batch="128"),
    job("loss=mnr batch=32", "FAILED", loss="mnr", batch="32"),
    job("loss=cosine batch=128", "PRUNED", pearson=0.60, loss="cosine", batch="128"),
    job("loss=mnr batch=64", pearson=0.82, loss="mnr", batch="64"),
]


def test_finished_jobs_rank_best_first_and_the_rest_follow() -> None:
    ranked = rank(RESULTS, "pearson_cosine")
    assert [r.name for r in ranked] == [
        "loss=mnr batch=128", "loss=mnr batch=64", "loss=cosine batch=32",  # finished, by score
        "loss=cosine batch=128", "loss=mnr batch=32",  # pruned and failed, by name
    ]  # fmt: skip
    assert counts(RESULTS) == {"jobs_finished": 3, "jobs_failed": 1, "jobs_pruned": 1}


def test_gain_is_the_change_against_the_untouched_model() -> None:
    assert RESULTS[1].gain("pearson_cosine") == 0.83 - 0.80
    assert RESULTS[2].gain("pearson_cosine") is None  # failed: no score


def test_the_terminal_table_names_the_winner_and_the_link() -> None:
    summary = Summary(rank(RESULTS, "pearson_cosine"), ["loss", "batch"], "pearson_cosine", ui_link="http://ui/#/x")
    lines = summary.text().splitlines()
    assert lines[0] == "sweep verdict, ranked by pearson_cosine (5 jobs):"
    assert lines[1].split() == ["#", "loss", "batch", "pearson", "spearman", "Δ", "pearson", "vs", "untouched", "steps", "tok/s", "time", "state"]
    assert lines[2].split() == ["1", "mnr", "128", "0.8300", "0.8200", "+0.0300", "40", "1,234", "75", "s", "FINISHED"]
    assert lines[5].split()[:3] == ["cosine", "128", "0.6000"] and lines[5].split()[-1] == "PRUNED"  # no rank number
    assert lines[6].split()[:4] == ["mnr", "32", "—", "—"] and lines[6].split()[-1] == "FAILED"
    assert lines[7] == "best: loss=mnr batch=128 (pearson_cosine 0.8300, +0.0300 vs untouched)"
    assert lines[8] == "  reproduce: python train.py loss=mnr batch=128"
    assert lines[-1] == "runs in MLflow: http://ui/#/x"


def test_a_sweep_whose_best_run_is_no_better_than_the_untouched_model_says_so() -> None:
    worse = [job("loss=mnr batch=16", pearson=0.79, loss="mnr", batch="16"), job("loss=mnr batch=32", pearson=0.78, loss="mnr", batch="32")]
    lines = Summary(rank(worse, "pearson_cosine"), ["loss", "batch"], "pearson_cosine").text().splitlines()
    assert lines[4] == "best: loss=mnr batch=16 (pearson_cosine 0.7900, -0.0100 vs untouched)"
    assert lines[6] == "no run improved on the untouched model (pearson_cosine 0.8000): training as swept here did not help on this eval set"
    better = Summary(rank(RESULTS, "pearson_cosine"), ["loss", "batch"], "pearson_cosine").text()
    assert "no run improved" not in better


def test_the_markdown_table_has_one_row_per_job() -> None:
    md = Summary(rank(RESULTS, "pearson_cosine"), ["loss", "batch"], "pearson_cosine").markdown()
    rows = [line for line in md.splitlines() if line.startswith("| ")]
    assert len(rows) == 1 + len(RESULTS)  # header + jobs
    assert rows[1] == "| 1 | mnr | 128 | 0.8300 | 0.8200 | +0.0300 | 40 | 1,234 | 75 s | FINISHED |"
    assert "- best: loss=mnr batch=128" in md


def test_a_sweep_where_nothing_finished_says_so() -> None:
    summary = Summary(rank(RESULTS[2:3], "pearson_cosine"), ["loss", "batch"], "pearson_cosine")
    assert summary.best is None
    assert "best: none (no job finished with a score)" in summary.text()


def noisy(name: str, pearson: float, low: float, high: float, **values: str) -> JobResult:
    result = job(name, pearson=pearson, **values)
    result.metrics.update({"interval/pearson_cosine_low": low, "interval/pearson_cosine_high": high})
    return result


def test_runs_whose_interval_overlaps_the_best_are_marked_tied() -> None:
    from embedsweep.conclude.verdict import ties

    results = [
        noisy("lr=a", 0.83, 0.81, 0.85, lr="a"),
        noisy("lr=b", 0.82, 0.80, 0.84, lr="b"),  # overlaps the best
        noisy("lr=c", 0.70, 0.67, 0.73, lr="c"),  # clearly worse
        noisy("lr=d", 0.79, 0.76, 0.81, lr="d"),  # touches the best's low end: still tied
    ]
    assert ties(results, "pearson_cosine") == {"lr=b", "lr=d"}
    text = Summary(rank(results, "pearson_cosine"), ["lr"], "pearson_cosine").text().splitlines()
    assert text[1].split()[:7] == ["#", "lr", "pearson", "spearman", "pearson", "95%", "CI"]
    assert text[2].split()[:7] == ["1", "a", "0.8300", "0.8200", "[0.8100,", "0.8500]", "best"]
    assert text[3].split()[5:7] == ["0.8400]", "tied"] and text[4].split()[6] == "tied"
    assert text[5].split()[6] == "-0.1000"  # lr=c: no marker, the next cell is its Δ
    assert [line for line in text if "within noise" in line] == ["2 runs are within noise of the best (its 95% bootstrap interval of pearson_cosine overlaps the best's)"]

    clear = Summary(rank([results[0], results[2]], "pearson_cosine"), ["lr"], "pearson_cosine").text().splitlines()
    noise_lines = [line for line in clear if "within noise" in line]
    assert noise_lines == ["no other run is within noise of the best (no other 95% bootstrap interval of pearson_cosine overlaps the best's)"]
    alone = Summary(rank(results[:1], "pearson_cosine"), ["lr"], "pearson_cosine").text()
    assert "within noise" not in alone  # one run: nothing to compare


def scored(name: str, sims: "np.ndarray", gold: "np.ndarray", fingerprint: str = "eval") -> JobResult:
    """A finished job whose scores and intervals are computed from its per-pair similarities."""
    from embedsweep.run import noise

    found = noise.intervals(sims, gold)
    metrics = names.answer_scores({m: noise.score(m, sims, gold) for m in found} | noise.metrics(found))
    pairs = noise.ScoredPairs(fingerprint, tuple(map(float, sims)), tuple(map(float, gold)))
    return JobResult(name=name, values={"lr": name}, state="FINISHED", metrics=metrics, seconds=1.0, run_id=name, pairs=pairs)


def test_jobs_scored_on_the_same_pairs_are_compared_pair_by_pair() -> None:
    """Three jobs on the same 1,500 pairs, all three 95% intervals overlapping: `b` is `a` a little
    further from gold on every pair (paired: worse beyond noise, so not tied); `c` is about as good as `a`
    with its own errors (tied). Without per-pair similarities both would count as tied."""
    import numpy as np

    from embedsweep.conclude.verdict import ties

    rng = np.random.default_rng(1)  # a draw in which `a` scores highest
    gold = rng.standard_normal(1500)
    a = 0.8 * gold + 0.6 * rng.standard_normal(1500)
    b = a - 0.05 * (gold - a) + 0.01 * rng.standard_normal(1500)
    c = 0.8 * gold + 0.62 * rng.standard_normal(1500)  # a little noisier than a, errors of its own
    results = rank([scored("a", a, gold), scored("b", b, gold), scored("c", c, gold)], "pearson_cosine")
    assert [r.name for r in results][0] == "a" and {r.name for r in results[1:]} == {"b", "c"}
    top = results[0].interval("pearson_cosine")
    assert all(r.interval("pearson_cosine")[0] <= top[1] for r in results[1:])  # all overlap the best's

    assert ties(results, "pearson_cosine") == {"c"}
    text = Summary(results, ["lr"], "pearson_cosine").text()
    assert [line for line in text.splitlines() if "within noise" in line] == [
        "1 run is within noise of the best (the paired 95% bootstrap interval of its difference to the best, on the same 1500 eval pairs, includes 0)"
    ]
    without_pairs = [replace(r, pairs=None) for r in results]
    assert ties(without_pairs, "pearson_cosine") == {"b", "c"}
    # Scored on other pairs (another eval set): nothing to pair, the intervals decide.
    elsewhere = [results[0], *(replace(r, pairs=replace(r.pairs, fingerprint="other")) for r in results[1:])]
    assert ties(elsewhere, "pearson_cosine") == {"b", "c"}

    clear = Summary([results[0], *(r for r in results if r.name == "b")], ["lr"], "pearson_cosine").text()
    assert [line for line in clear.splitlines() if "within noise" in line] == [
        "no other run is within noise of the best (the 95% bootstrap intervals of the others lie below the best's, "
        "or, paired on the same 1500 eval pairs, their difference to the best does)"
    ]


def test_repeated_seeds_are_summarised_per_configuration() -> None:
    from embedsweep.conclude.verdict import by_seed

    results = [
        job("a1", pearson=0.80, loss="mnr", **{"trainer.seed": "1"}),
        job("a2", pearson=0.84, loss="mnr", **{"trainer.seed": "2"}),
        job("a3", pearson=0.82, loss="mnr", **{"trainer.seed": "3"}),
        job("b1", pearson=0.70, loss="cosine", **{"trainer.seed": "1"}),
        job("b2", "FAILED", loss="cosine", **{"trainer.seed": "2"}),
    ]
    swept = ["loss", "trainer.seed"]
    groups = by_seed(results, swept, "pearson_cosine")
    assert [g.values for g in groups] == [{"loss": "mnr"}, {"loss": "cosine"}]
    assert groups[0].mean == pytest.approx(0.82) and groups[0].std == pytest.approx(0.02)  # sample std of .80 .84 .82
    assert groups[1].scores == [0.70] and groups[1].std == 0.0  # the failed seed is left out
    text = Summary(rank(results, "pearson_cosine"), swept, "pearson_cosine").text()
    assert "across seeds (pearson_cosine, mean ± std):" in text
    assert "  loss=mnr: 0.8200 ± 0.0200 over 3 seed(s) (1, 2, 3)" in text.splitlines()
    assert "  loss=cosine: 0.7000 ± 0.0000 over 1 seed(s) (1)" in text.splitlines()


def test_pruned_and_failed_jobs_never_rank_or_tie_even_with_the_highest_score() -> None:
    """A pruned trial's partial score (and a score a failed job logged before it broke) is HIGHER than
    every finished job's here: none of them is ranked, best, tied or counted in a seed's mean.
    Kills: rank() sorting every scored job (`r.state == "FINISHED" and` dropped from `scored`);
    candidates() taking a pruned job's interval (`if r.state == "FINISHED"` dropped); by_seed() averaging
    a pruned seed in (`r.state != "FINISHED" or` dropped)."""
    from embedsweep.conclude.verdict import by_seed, ties

    results = [
        noisy("lr=a", 0.80, 0.78, 0.82, lr="a", **{"trainer.seed": "1"}),
        noisy("lr=b", 0.70, 0.68, 0.72, lr="b", **{"trainer.seed": "1"}),
        noisy("lr=p", 0.95, 0.79, 0.99, lr="p", **{"trainer.seed": "1"}),  # its interval overlaps the best's too
        noisy("lr=a2", 0.79, 0.60, 0.81, lr="a", **{"trainer.seed": "2"}),
        noisy("lr=f", 0.99, 0.79, 0.999, lr="f", **{"trainer.seed": "1"}),
        noisy("lr=k", 0.97, 0.79, 0.99, lr="k", **{"trainer.seed": "1"}),
        noisy("lr=p2", 0.96, 0.79, 0.99, lr="a", **{"trainer.seed": "3"}),  # a pruned seed of lr=a
    ]
    results = [replace(r, state={"lr=p": "PRUNED", "lr=p2": "PRUNED", "lr=f": "FAILED", "lr=k": "KILLED"}.get(r.name, "FINISHED")) for r in results]
    ranked = rank(results, "pearson_cosine")
    assert [r.name for r in ranked] == ["lr=a", "lr=a2", "lr=b", "lr=f", "lr=k", "lr=p", "lr=p2"]
    assert ties(results, "pearson_cosine") == {"lr=a2"}
    swept = ["lr", "trainer.seed"]
    summary = Summary(ranked, swept, "pearson_cosine")
    assert summary.best is not None and summary.best.name == "lr=a"
    lines = summary.text().splitlines()
    assert [line.split()[0] for line in lines[2:5]] == ["1", "2", "3"]
    assert [line.split()[-1] for line in lines[5:9]] == ["FAILED", "KILLED", "PRUNED", "PRUNED"]
    assert all(line.split()[0] not in ("1", "2", "3", "4") and "tied" not in line.split() for line in lines[5:9])
    assert "best: lr=a (pearson_cosine 0.8000, +0.0000 vs untouched)" in lines
    assert "1 run is within noise of the best (its 95% bootstrap interval of pearson_cosine overlaps the best's)" in lines
    groups = by_seed(results, swept, "pearson_cosine")
    assert [(g.values, g.seeds, g.scores) for g in groups] == [({"lr": "a"}, ["1", "2"], [0.80, 0.79]), ({"lr": "b"}, ["1"], [0.70])]


def test_the_verdict_as_json_names_the_winner_every_job_the_failures_and_the_decisions() -> None:
    """Summary.as_dict: what verdict.json and the notification hook carry. Kills: a NaN that json
    refuses, a failure without its error, a secret in an error or the link, a promotion or drift
    record that is not plain data, the study and data version not taken from the sweep's tags."""
    import json
    from dataclasses import dataclass

    failed = replace(RESULTS[2], error="RuntimeError: could not reach postgresql://alice:s3cr3t-pw@db/optuna")
    diverged = job("loss=cosine batch=16", pearson=float("nan"), loss="cosine", batch="16")
    results = [noisy("loss=mnr batch=128", 0.83, 0.81, 0.85, loss="mnr", batch="128"), noisy("loss=mnr batch=64", 0.82, 0.80, 0.84, loss="mnr", batch="64"),
               noisy("loss=cosine batch=32", 0.71, 0.69, 0.73, loss="cosine", batch="32"), failed, RESULTS[3], diverged]  # fmt: skip

    @dataclass
    class Drift:  # stands in for the drift record the end of the sweep attaches
        champion: str
        today: float
        at_promotion: float

    summary = Summary(rank(results, "pearson_cosine"), ["loss", "batch"], "pearson_cosine", ui_link="http://bob:hunter22@ui:5000/#/x",
                      tags={"study_name": "batch_warmup-mnr-tiny-data-3f2a", "data_version": "3f2a", "other": "x"})  # fmt: skip
    summary.promotion = {"promoted": True, "version": 4, "test": (0.79, float("inf"))}  # type: ignore[attr-defined]
    summary.drift = Drift("embedsweep v3", 0.851, 0.864)  # type: ignore[attr-defined]
    found = json.loads(json.dumps(summary.as_dict(), allow_nan=False))

    assert found["state"] == "finished" and found["objective"] == "pearson_cosine"
    assert (found["study"], found["data_version"]) == ("batch_warmup-mnr-tiny-data-3f2a", "3f2a")
    assert found["winner"] == {
        "name": "loss=mnr batch=128", "overrides": "loss=mnr batch=128", "run_id": "loss=mnr batch=128", "objective": "pearson_cosine",
        "value": 0.83, "interval": [0.81, 0.85], "gain": pytest.approx(0.03), "within_noise": ["loss=mnr batch=64"],
    }  # fmt: skip
    assert found["counts"] == {"jobs": 6, "finished": 4, "failed": 1, "pruned": 1}
    assert [(j["name"], j["state"], j["scores"]["pearson_cosine"]) for j in found["jobs"]] == [
        ("loss=mnr batch=128", "FINISHED", 0.83), ("loss=mnr batch=64", "FINISHED", 0.82), ("loss=cosine batch=32", "FINISHED", 0.71),
        ("loss=cosine batch=128", "PRUNED", 0.60), ("loss=cosine batch=16", "FINISHED", None), ("loss=mnr batch=32", "FAILED", None),
    ]  # fmt: skip
    first = found["jobs"][0]
    assert (first["best"], first["values"], first["scores"]["spearman_cosine"], first["steps"], first["seconds"]) == (True, {"loss": "mnr", "batch": "128"}, 0.82, 40.0, 75.0)
    assert [j["within_noise_of_best"] for j in found["jobs"]] == [False, True, False, False, False, False]
    assert found["failures"] == [{"name": "loss=mnr batch=32", "run_id": "loss=mnr batch=32", "state": "FAILED",
                                  "error": "RuntimeError: could not reach postgresql://alice:***@db/optuna"}]  # fmt: skip
    assert found["promotion"] == {"promoted": True, "version": 4, "test": [0.79, None]}
    assert found["drift"] == {"champion": "embedsweep v3", "today": 0.851, "at_promotion": 0.864}
    assert found["lines"][0] == "best: loss=mnr batch=128 (pearson_cosine 0.8300, +0.0300 vs untouched)"
    assert found["ui_link"] == "http://ui:5000/#/x"
    assert "s3cr3t-pw" not in json.dumps(found) and "hunter22" not in json.dumps(found)


def test_the_verdict_as_json_of_a_sweep_without_a_winner() -> None:
    """No job finished: state failed, no winner; no job at all: nothing to do. Before the end of the sweep
    attaches them, promotion and drift are None (read with defaults, never an AttributeError)."""
    failed = Summary(rank(RESULTS[2:3], "pearson_cosine"), ["loss", "batch"], "pearson_cosine").as_dict()
    assert (failed["state"], failed["winner"], failed["counts"]["failed"], failed["promotion"], failed["drift"]) == ("failed", None, 1, None, None)
    assert failed["failures"][0]["error"] is None  # a run that recorded no error says so by None, not ""
    empty = Summary([], [], "spearman_cosine").as_dict()
    assert (empty["state"], empty["jobs"], empty["study"], empty["ui_link"]) == ("nothing to do", [], None, None)
