"""The names metrics are recorded under (run/metric_names.py): the sections of MLflow's chart view in
the order a person should read them, today's names for runs recorded before them, and `scores.png`'s
error bars. The chart view itself is checked in a real browser in tests/test_report.py (slow)."""

from __future__ import annotations

import locale
from pathlib import Path

import pytest

from embedsweep.conclude.verdict import JobResult, Summary, rank
from embedsweep.run import metric_names as names

# A job's metrics as recorded before the names had sections (read back from an existing store).
OLD_RUN = {
    "pearson_cosine": 0.83, "spearman_cosine": 0.82, "pearson_cosine_ci_low": 0.80, "pearson_cosine_ci_high": 0.86,
    "baseline_pearson_cosine": 0.75, "baseline_pearson_cosine_ci_low": 0.71, "train_steps": 40.0, "train_loss_final": 0.3,
    "train_tokens_per_second": 1234.0, "train_mfu": 0.4, "peak_gpu_memory_mb": 900.0, "train_rows": 5000.0, "eval_pairs": 1500.0,
    "data_dropped_no_label": 3.0, "overlap_test_in_train": 0.0, "test_pearson_cosine": 0.81, "baseline_test_spearman_cosine_ci_high": 0.7,
    "test_gain_pearson_cosine_low": 0.01, "test_pairs": 60.0,
}  # fmt: skip


def test_the_sections_sort_in_reading_order_under_both_orders_the_ui_uses() -> None:
    """MLflow sorts sections by character code when it first builds the chart view and by locale when
    new metrics arrive: lowercase letters alone keep both orders the same, answer first."""
    assert all(s.isascii() and s.isalpha() and s.islower() for s in names.SECTIONS)
    assert sorted(names.SECTIONS) == list(names.SECTIONS) == sorted(names.SECTIONS, key=locale.strxfrm)
    assert names.SECTIONS[:4] == ("answer", "baseline", "efficiency", "history")


def test_the_final_scores_are_alone_in_the_answer_section() -> None:
    final = {"pearson_cosine": 0.8, "spearman_cosine": 0.7, "pearson_cosine_ci_low": 0.75, "pearson_cosine_ci_high": 0.85}
    assert names.answer_scores(final) == {
        "answer/pearson_cosine": 0.8, "answer/spearman_cosine": 0.7, "interval/pearson_cosine_low": 0.75, "interval/pearson_cosine_high": 0.85,
    }  # fmt: skip
    assert names.baseline_scores(final)["baseline/pearson_cosine_low"] == 0.75
    assert set(names.test_scores(final, untouched=True)) == {
        "test/baseline_pearson_cosine", "test/baseline_spearman_cosine", "test/baseline_pearson_cosine_low", "test/baseline_pearson_cosine_high",
    }  # fmt: skip
    assert names.answer("spearman_cosine") == "answer/spearman_cosine" and names.interval("pearson_cosine") == ("interval/pearson_cosine_low", "interval/pearson_cosine_high")


def test_the_objectives_the_config_allows_are_the_scores_recorded() -> None:
    from embedsweep.checks import config  # the checks may not import embedsweep.run: the two lists must agree

    assert tuple(config.OBJECTIVES) == names.SCORES


def test_a_run_recorded_under_the_old_flat_names_reads_back_under_todays() -> None:
    now = names.current(OLD_RUN | {"jobs_finished": 4.0, "best_objective": 0.83})
    assert now == {
        "answer/pearson_cosine": 0.83, "answer/spearman_cosine": 0.82, "interval/pearson_cosine_low": 0.80, "interval/pearson_cosine_high": 0.86,
        "baseline/pearson_cosine": 0.75, "baseline/pearson_cosine_low": 0.71, "history/steps": 40.0, "history/loss_final": 0.3,
        "efficiency/tokens_per_second": 1234.0, "efficiency/mfu": 0.4, "efficiency/peak_gpu_memory_mb": 900.0, "sets/train_rows": 5000.0,
        "sets/eval_pairs": 1500.0, "sets/dropped_no_label": 3.0, "sets/overlap_test_in_train": 0.0, "test/pearson_cosine": 0.81,
        "test/baseline_spearman_cosine_high": 0.7, "test/gain_pearson_cosine_low": 0.01, "test/pairs": 60.0,
        "jobs_finished": 4.0, "best_objective": 0.83,  # a sweep's own record keeps its plain names
    }  # fmt: skip
    assert names.current(now) == now  # today's names pass as they are
    assert names.current({"pearson_cosine": 0.1, "answer/pearson_cosine": 0.9}) == {"answer/pearson_cosine": 0.9}  # both: today's wins


def test_the_verdict_of_old_runs_is_the_verdict_of_new_ones() -> None:
    old = JobResult("batch=32", {"batch": "32"}, "FINISHED", dict(OLD_RUN), 10.0, run_id="old")
    new = JobResult("batch=16", {"batch": "16"}, "FINISHED", names.current(OLD_RUN) | {"answer/pearson_cosine": 0.80}, 10.0, run_id="new")
    assert old.score("pearson_cosine") == 0.83 and old.interval("pearson_cosine") == (0.80, 0.86)
    assert old.gain("pearson_cosine") == pytest.approx(0.08) and old.value(names.STEPS) == 40.0
    summary = Summary(rank([new, old], "pearson_cosine"), ["batch"], "pearson_cosine")
    assert [r.run_id for r in summary.results] == ["old", "new"]
    rows = summary.text().splitlines()
    assert rows[2].split()[:4] == ["1", "32", "0.8300", "0.8200"] and "1,234" in rows[2]


def test_the_training_history_is_logged_in_its_section() -> None:
    from embedsweep.run.callbacks import MlflowMetrics

    logged: list[tuple[dict[str, float], int]] = []
    callback = MlflowMetrics(lambda metrics, step: logged.append((dict(metrics), step)))
    state = type("State", (), {"global_step": 6})()
    callback.on_log(None, state, None, logs={"loss": 0.5, "learning_rate": 1e-4, "epoch": 0.1})
    callback.on_evaluate(None, state, None, metrics={"eval_sts_pearson_cosine": 0.7, "eval_sts_spearman_cosine": 0.6, "eval_loss": 1.0})
    assert logged == [
        ({"history/loss": 0.5, "history/learning_rate": 1e-4}, 6),
        ({"history/pearson_cosine": 0.7, "history/spearman_cosine": 0.6}, 6),
    ]


def test_scores_png_draws_each_bar_with_its_95_percent_interval(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import matplotlib.figure
    from matplotlib.container import BarContainer

    from embedsweep.conclude import report

    def job(batch: str, score: float, low: float, high: float) -> JobResult:
        metrics = {"answer/pearson_cosine": score, "interval/pearson_cosine_low": low, "interval/pearson_cosine_high": high, "baseline/pearson_cosine": 0.5}
        return JobResult(f"batch={batch}", {"batch": batch}, "FINISHED", metrics, 1.0, run_id=batch)

    saved: list[matplotlib.figure.Figure] = []
    real_savefig = matplotlib.figure.Figure.savefig
    monkeypatch.setattr(matplotlib.figure.Figure, "savefig", lambda fig, *a, **k: (saved.append(fig), real_savefig(fig, *a, **k))[1])
    summary = Summary(rank([job("16", 0.70, 0.66, 0.73), job("32", 0.75, 0.72, 0.79)], "pearson_cosine"), ["batch"], "pearson_cosine")
    assert report.plot_scores(summary, tmp_path / "scores.png") == tmp_path / "scores.png"
    (ax,) = saved[0].axes
    (bars,) = [c for c in ax.containers if isinstance(c, BarContainer)]
    assert [round(b.get_height(), 4) for b in bars] == [0.70, 0.75]
    (whiskers,) = bars.errorbar.lines[2]
    ends = [tuple(round(y, 4) for _, y in segment) for segment in whiskers.get_segments()]
    assert ends == [(0.66, 0.73), (0.72, 0.79)]  # each bar's interval, low to high
    assert ax.get_ylim()[1] > 0.79 and ax.get_ylim()[0] < 0.5  # whiskers and the untouched line in view
    assert "95% bootstrap interval" in [t.get_text() for t in ax.get_legend().get_texts()]
    assert (tmp_path / "scores.png").read_bytes().startswith(b"\x89PNG")
