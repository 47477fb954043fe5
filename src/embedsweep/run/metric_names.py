"""The names a run and a sweep record their metrics under: one place, for whoever logs or reads them.

MLflow's chart view (3.x) makes one section per name prefix (the part before the last `/`), orders
the sections alphabetically (by character code; the names below are lowercase letters, which a later
re-sort by locale keeps in the same order), and puts the unprefixed "Model metrics" after all of them.
Within a section the charts are sorted by name. The order in which metrics were logged changes nothing.
(Checked in headless Chromium against MLflow 3.17; tests/test_report.py checks it on every slow run.)
So each section's name is chosen for where it sorts:

    answer/      pearson_cosine, spearman_cosine: the final scores on the eval set, what `objective` names
    baseline/    the untouched model on the same eval pairs: its scores and their 95% intervals
    efficiency/  time, samples and tokens per second, padding, model TFLOP/s and MFU, peak memory
    history/     the training step by step: loss, learning rate, gradient norm, padding share and the
                 eval scores; the steps taken and the last loss
    interval/    the 95% bootstrap intervals of the answer's scores
    sets/        rows and pairs per set, rows dropped, the overlap guard's counts
    test/        scores on the held-out test pairs: a single run's (with the untouched model's and the
                 gain's interval), or a sweep winner's on the sweep's own record; a sweep's jobs log none

`objective: pearson_cosine` (config, hparams_search presets, Optuna's metric names) names a score the
way the evaluator does; `answer()` gives the name it is recorded under. A run recorded before these
names (flat `pearson_cosine`, `baseline_pearson_cosine`, `train_tokens_per_second`...) reads back under
them through `current()`. Metrics of a sweep's own record (`jobs_finished`, `best_objective`...) keep
their plain names: they are not charted per job.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TypeVar

V = TypeVar("V")

SCORES = ("pearson_cosine", "spearman_cosine")  # what the STS evaluator reports (evaluate.METRICS)

ANSWER, BASELINE, EFFICIENCY, HISTORY, INTERVAL, SETS, TEST = "answer", "baseline", "efficiency", "history", "interval", "sets", "test"
SECTIONS = (ANSWER, BASELINE, EFFICIENCY, HISTORY, INTERVAL, SETS, TEST)  # in the order the chart view shows them

LOW, HIGH = "_ci_low", "_ci_high"  # how evaluate and noise name an interval's ends


def answer(score: str) -> str:
    """The recorded name of a final eval score, e.g. `pearson_cosine` -> `answer/pearson_cosine`."""
    return f"{ANSWER}/{score}"


def interval(score: str) -> tuple[str, str]:
    """The recorded names of the ends of a final eval score's 95% interval."""
    return f"{INTERVAL}/{score}_low", f"{INTERVAL}/{score}_high"


def baseline(score: str) -> str:
    """The untouched model's score on the eval pairs."""
    return f"{BASELINE}/{score}"


def test(score: str) -> str:
    """A score on the held-out test pairs."""
    return f"{TEST}/{score}"


def test_interval(score: str) -> tuple[str, str]:
    """The ends of a test score's 95% interval."""
    return f"{TEST}/{score}_low", f"{TEST}/{score}_high"


def test_gain(score: str) -> tuple[str, str]:
    """The ends of the paired 95% interval of (trained - untouched) on the test pairs."""
    return f"{TEST}/gain_{score}_low", f"{TEST}/gain_{score}_high"


def efficiency(name: str) -> str:
    return f"{EFFICIENCY}/{name}"


def history(name: str) -> str:
    return f"{HISTORY}/{name}"


def sets(name: str) -> str:
    return f"{SETS}/{name}"


STEPS = history("steps")
LOSS_FINAL = history("loss_final")
TOKENS_PER_SECOND = efficiency("tokens_per_second")
TRAIN_ROWS, EVAL_PAIRS, TEST_PAIRS = sets("train_rows"), sets("eval_pairs"), test("pairs")


def _scores(found: Mapping[str, float], score_prefix: str, interval_prefix: str) -> dict[str, float]:
    out = {}
    for key, value in found.items():
        for end, suffix in ((LOW, "_low"), (HIGH, "_high")):
            if key.endswith(end):
                out[f"{interval_prefix}{key.removesuffix(end)}{suffix}"] = value
                break
        else:
            out[f"{score_prefix}{key}"] = value
    return out


def answer_scores(found: Mapping[str, float]) -> dict[str, float]:
    """The final eval scores (`pearson_cosine`, `pearson_cosine_ci_low`...) under their recorded names:
    the scores alone in answer/, their intervals in interval/."""
    return _scores(found, f"{ANSWER}/", f"{INTERVAL}/")


def baseline_scores(found: Mapping[str, float]) -> dict[str, float]:
    """The untouched model's eval scores and intervals, all in baseline/."""
    return _scores(found, f"{BASELINE}/", f"{BASELINE}/")


def test_scores(found: Mapping[str, float], untouched: bool = False) -> dict[str, float]:
    """Test-pair scores and intervals in test/; the untouched model's as test/baseline_*."""
    prefix = f"{TEST}/baseline_" if untouched else f"{TEST}/"
    return _scores(found, prefix, prefix)


# ---------------------------------------------------------------- reading back runs recorded before these names


def _renamed() -> dict[str, str]:
    """Each flat name of earlier runs and the name it has now."""
    old = {
        "train_steps": STEPS,
        "train_loss_final": LOSS_FINAL,
        "train_loss": history("loss"),
        "train_learning_rate": history("learning_rate"),
        "train_grad_norm": history("grad_norm"),
        "train_padding_share": efficiency("padding_share"),  # its final value; the history shared the name
        "train_rows": TRAIN_ROWS,
        "eval_pairs": EVAL_PAIRS,
        "test_pairs": TEST_PAIRS,
        "peak_cpu_rss_mb": efficiency("peak_cpu_rss_mb"),
        "peak_gpu_memory_mb": efficiency("peak_gpu_memory_mb"),
    }
    for name in ("runtime_s", "samples_per_second", "loop_s", "eval_s", "loop_samples_per_second", "tokens_per_second", "model_tflops_per_second", "mfu"):
        old[f"train_{name}"] = efficiency(name)
    for score in SCORES:
        old[f"eval_{score}"] = history(score)
        old[f"test_gain_{score}_low"], old[f"test_gain_{score}_high"] = test_gain(score)
        for flat, prefix, interval_prefix in (
            ("", f"{ANSWER}/", f"{INTERVAL}/"), ("baseline_", f"{BASELINE}/", f"{BASELINE}/"),
            ("test_", f"{TEST}/", f"{TEST}/"), ("baseline_test_", f"{TEST}/baseline_", f"{TEST}/baseline_"),
        ):  # fmt: skip
            old[f"{flat}{score}"] = f"{prefix}{score}"
            old[f"{flat}{score}{LOW}"], old[f"{flat}{score}{HIGH}"] = f"{interval_prefix}{score}_low", f"{interval_prefix}{score}_high"
    return old


RENAMED = _renamed()


def current(recorded: Mapping[str, V]) -> dict[str, V]:
    """Metrics (or a model version's tags) as read back, under today's names: the flat names of runs
    recorded before them are renamed (`baseline_pearson_cosine` -> `baseline/pearson_cosine`,
    `data_dropped_x` -> `sets/dropped_x`, `overlap_x` -> `sets/overlap_x`); any other name stays, and
    a name recorded both ways keeps today's value."""
    out: dict[str, V] = {}
    for key, value in recorded.items():
        new = RENAMED.get(key) or (sets(key.removeprefix("data_")) if key.startswith(("data_dropped_", "overlap_")) else key)
        if new == key or new not in recorded:
            out[new] = value
    return out
