"""A sweep's report, read from MLflow: the verdict table and plots, attached to the sweep's parent run.

    python -m embedsweep.conclude.report                       # the latest sweep in outputs/mlflow.db
    python -m embedsweep.conclude.report --run <parent id>     # a given sweep
    python -m embedsweep.conclude.report --tracking-uri http://127.0.0.1:5000 --experiment embedsweep
    python -m embedsweep.conclude.report --link                # only print the UI link of the latest sweep

Everything comes from the tracking store (any URI, a server included), never from files on disk, so
a report can be made on any machine that reaches the server. It writes `summary.md` and PNG plots
to `--out` (default: a temporary folder) and logs them under the parent run's `report/` artifacts:

- `scores.png`: the objective per job as grouped bars (by the first swept key, one bar per value
  of the second), each with its 95% bootstrap interval as an error bar (bars whose intervals overlap
  are not told apart by the eval set), and the untouched model's score as a dashed line: did
  training help at all?
- for Optuna sweeps, Optuna's own plots of a study rebuilt from the child runs:
  `history.png` (objective by trial with the running best), `importances.png` (which parameter
  mattered, fANOVA) and `parallel.png` (parallel coordinates of parameters and objective).
"""

from __future__ import annotations

import argparse
import math
import sys
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING

from omegaconf import OmegaConf

from embedsweep.conclude import verdict
from embedsweep.errors import UserError
from embedsweep.checks.stores import check_tracking_uri, tracking_uri
from embedsweep.conclude.conclusion import PROMOTION_TAG, SUMMARY_FILE, job_result, with_scored_pairs
from embedsweep.redaction import install, public_url, redact
from embedsweep.tracking import STUDY_NAME, make_tracker

TRACKER = "embedsweep.tracking.mlflow_tracker.MlflowTracker"  # as conf/tracking/mlflow.yaml, for a command outside Hydra

if TYPE_CHECKING:
    from embedsweep.tracking import RecordedRun, SweepRun, Tracker


def summary_of(parent: "RecordedRun", sweep: "SweepRun", jobs: list["RecordedRun"]) -> verdict.Summary:
    objective = parent.tags.get("objective", "pearson_cosine")
    results = with_scored_pairs(sweep, verdict.rank([job_result(r, sweep.swept) for r in jobs], objective), objective)
    notes = [note] if (note := parent.tags.get(PROMOTION_TAG)) else []
    drift = [line] if (line := parent.tags.get("drift")) else []
    return verdict.Summary(results=results, swept=sweep.swept, objective=objective, ui_link=parent.tags.get("ui_link", ""), notes=drift + notes)


# ---------------------------------------------------------------- plots


def plot_scores(summary: verdict.Summary, path: Path) -> Path | None:
    """Grouped bars of the objective: first swept key on the x axis, second as the bars in a group;
    each bar with its 95% interval as an error bar and its score written above it."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    objective = summary.objective
    done = [r for r in summary.results if r.state == "FINISHED" and r.score(objective) is not None]
    if not done:
        return None
    x_key = summary.swept[0] if summary.swept else None
    hue_key = summary.swept[1] if len(summary.swept) > 1 else None
    groups = _ordered({r.values.get(x_key, r.name) if x_key else r.name for r in done})
    hues = _ordered({r.values.get(hue_key, "") for r in done}) if hue_key else [""]
    width = 0.8 / len(hues)
    intervals: list[float] = []
    fig, ax = plt.subplots(figsize=(max(5.0, 1.6 * len(groups) * max(1, len(hues)) / 2 + 2), 4))
    for i, hue in enumerate(hues):
        xs, ys, lows, highs = [], [], [], []
        for g, group in enumerate(groups):
            match = [r for r in done if (r.values.get(x_key, r.name) if x_key else r.name) == group and (not hue_key or r.values.get(hue_key) == hue)]
            if match:
                shown = max(match, key=lambda r: r.score(objective) or 0.0)  # of several seeds, the best: its own interval
                y = shown.score(objective) or 0.0
                ci = shown.interval(objective) or (y, y)  # a run without one (recorded before intervals): no bar
                xs.append(g + (i - (len(hues) - 1) / 2) * width)
                ys.append(y)
                lows.append(ci[0])
                highs.append(ci[1])
        label = f"{hue_key}={verdict.display_value(hue)}" if hue_key else None
        errors = [[y - lo for y, lo in zip(ys, lows)], [hi - y for y, hi in zip(ys, highs)]]
        ax.bar(xs, ys, width, yerr=errors, capsize=3, error_kw={"linewidth": 1}, label=label)
        for x, y, hi in zip(xs, ys, highs):
            ax.annotate(f"{y:.4f}", (x, hi), xytext=(0, 2), textcoords="offset points", ha="center", va="bottom", fontsize=8)
        intervals += lows + highs
    baselines = [b for r in done if (b := r.baseline(objective)) is not None]
    if baselines:
        base = sum(baselines) / len(baselines)
        ax.axhline(base, color="black", linestyle="--", linewidth=1, label=f"untouched model ({base:.3f})")
    ax.plot([], [], color="black", linewidth=1, marker="_", label="95% bootstrap interval")  # the error bars' legend entry
    scores = [r.score(objective) or 0.0 for r in done] + baselines + intervals
    low, high = min(scores), max(scores)
    pad = max((high - low) * 0.3, 0.005)
    ax.set_ylim(max(-1.0, low - pad), min(1.0, high + pad))
    ax.set_xticks(range(len(groups)), [f"{x_key}={verdict.display_value(g)}" if x_key else g for g in groups])
    ax.set_ylabel(objective)
    ax.set_title(f"{objective} per job")
    ax.legend(fontsize=8, loc="best")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def _ordered(values: set[str]) -> list[str]:
    """Numbers in numeric order, other values alphabetically."""
    def key(v: str) -> tuple[int, float, str]:
        try:
            return (0, float(v), "")
        except ValueError:
            return (1, 0.0, v)

    return sorted(values, key=key)


# ---------------------------------------------------------------- the command


def make_report(tracker: "Tracker", run_id: str | None, out: Path) -> tuple[verdict.Summary, list[Path]]:
    from embedsweep.studies.plots import plot_study, study_from_runs

    parent, sweep = tracker.sweep_record(run_id)
    jobs = sweep.jobs()
    summary = summary_of(parent, sweep, jobs)
    out.mkdir(parents=True, exist_ok=True)
    (out / SUMMARY_FILE).write_text(summary.markdown())
    files = [out / SUMMARY_FILE]
    if (scores := plot_scores(summary, out / "scores.png")) is not None:
        files.append(scores)
    # Every trial of the study the jobs belong to, across the sweeps that resumed it and all workers,
    # so a resumed study's plots show its whole history; the sweep's own jobs when they name no study.
    studies = {r.tags[STUDY_NAME] for r in jobs if STUDY_NAME in r.tags}
    trials = tracker.study_runs(studies.pop()) if len(studies) == 1 else jobs
    study = study_from_runs(trials, summary.swept, summary.objective)
    if study is not None:
        files += plot_study(study, out)
    for path in files:
        sweep.log_results({}, {}, {}, artifact=path, artifact_dir="report")
    return summary, files


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m embedsweep.conclude.report", description=__doc__.split("\n\n")[0])
    parser.add_argument("--tracking-uri", default=None, help="MLflow tracking URI (default: $MLFLOW_TRACKING_URI, else sqlite:///<$EMBEDSWEEP_OUTPUT_ROOT or outputs>/mlflow.db)")
    parser.add_argument("--experiment", default="embedsweep", help="the experiment to take the latest sweep from")
    parser.add_argument("--run", default=None, help="the sweep's parent run id (default: the latest sweep)")
    parser.add_argument("--out", type=Path, default=None, help="where to write the files (default: a temporary folder)")
    parser.add_argument("--link", action="store_true", help="only print the MLflow UI link of the sweep")
    args = parser.parse_args(argv)
    install()  # MLflow's own log lines and a traceback carry the tracking URI too

    try:
        uri = tracking_uri(args.tracking_uri)  # the same store as train.py would use (stores.py)
        check_tracking_uri(uri, must_exist=not args.link)  # a report of a store that is not there: one line, no empty store made
        tracker = make_tracker(OmegaConf.create({"_target_": TRACKER, "uri": uri, "experiment": args.experiment}))
        if args.link:
            print(public_url(tracker.ui_link()))
            return 0
        out = args.out or Path(tempfile.mkdtemp(prefix="embedsweep-report-"))
        summary, files = make_report(tracker, args.run, out)
    except UserError as exc:
        print(redact(f"error: {exc}"), file=sys.stderr)
        return 2
    print(summary.text())
    print(f"report: {', '.join(str(f) for f in files)} (also attached to the sweep's run under report/)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
