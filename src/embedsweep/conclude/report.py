"""A sweep's report, read from MLflow: the verdict table and plots, attached to the sweep's parent run.

    python -m embedsweep.conclude.report                       # the latest sweep in outputs/mlflow.db
    python -m embedsweep.conclude.report --run <parent id>     # a given sweep
    python -m embedsweep.conclude.report --tracking-uri http://127.0.0.1:5000 --experiment embedsweep
    python -m embedsweep.conclude.report --link                # only print the UI link of the latest sweep

Everything comes from the tracking store (any URI, a server included), never from files on disk, so
a report can be made on any machine that reaches the server. It writes `summary.md` and PNG plots
to `--out` (default: a temporary folder) and logs them under the parent run's `report/` artifacts:

- `scores.png`: the objective per job as grouped bars (by the first swept key, one bar per value
  of the second), with the untouched model's score as a dashed line: did training help at all?
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

from embedsweep.conclude import verdict
from embedsweep.errors import UserError
from embedsweep.checks.stores import check_tracking_uri, tracking_uri
from embedsweep.redaction import install, public_url, redact
from embedsweep.tracking.mlflow_tracker import PROMOTION_TAG, _check_server, SUMMARY_FILE, SWEEP_ROLE, MlflowTracker, job_result, sweep_children, with_scored_pairs

if TYPE_CHECKING:
    from mlflow import MlflowClient
    from mlflow.entities import Run

def latest_sweep(client: "MlflowClient", experiment: str) -> "Run":
    found = client.get_experiment_by_name(experiment)
    if found is None:
        raise UserError(f"no experiment {experiment!r} in the tracking store; run a sweep first, or pass --experiment")
    (key, value), = SWEEP_ROLE.items()
    runs = client.search_runs([found.experiment_id], filter_string=f"tags.`{key}` = '{value}'", order_by=["attributes.start_time DESC"], max_results=1)
    if not runs:
        raise UserError(f"experiment {experiment!r} holds no sweep yet; run one with `python train.py -m ...`")
    return runs[0]


def summary_of(client: "MlflowClient", parent: "Run", children: list["Run"], ui_link: str = "") -> verdict.Summary:
    swept = _swept(parent)
    objective = parent.data.tags.get("objective", "pearson_cosine")
    results = with_scored_pairs(client, verdict.rank([job_result(r, swept) for r in children], objective), objective)
    notes = [note] if (note := parent.data.tags.get(PROMOTION_TAG)) else []
    return verdict.Summary(results=results, swept=swept, objective=objective, ui_link=ui_link, notes=notes)


def _swept(parent: "Run") -> list[str]:
    return [k for k in parent.data.tags.get("swept", "").split(",") if k]


# ---------------------------------------------------------------- plots


def plot_scores(summary: verdict.Summary, path: Path) -> Path | None:
    """Grouped bars of the objective: first swept key on the x axis, second as the bars in a group."""
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
    fig, ax = plt.subplots(figsize=(max(5.0, 1.6 * len(groups) * max(1, len(hues)) / 2 + 2), 4))
    for i, hue in enumerate(hues):
        xs, ys = [], []
        for g, group in enumerate(groups):
            match = [r for r in done if (r.values.get(x_key, r.name) if x_key else r.name) == group and (not hue_key or r.values.get(hue_key) == hue)]
            if match:
                xs.append(g + (i - (len(hues) - 1) / 2) * width)
                ys.append(max(r.score(objective) or 0.0 for r in match))
        bars = ax.bar(xs, ys, width, label=f"{hue_key}={verdict.display_value(hue)}" if hue_key else None)
        ax.bar_label(bars, fmt="%.4f", fontsize=8)
    baselines = [r.score(f"baseline_{objective}") for r in done if r.score(f"baseline_{objective}") is not None]
    if baselines:
        base = sum(baselines) / len(baselines)
        ax.axhline(base, color="black", linestyle="--", linewidth=1, label=f"untouched model ({base:.3f})")
    scores = [r.score(objective) or 0.0 for r in done] + baselines
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


def study_runs(client: "MlflowClient", children: list["Run"]) -> list["Run"]:
    """Every trial run of the study the sweep's children belong to (tag `study_name`), across all the
    invocations that resumed it and all workers, so a resumed study's plots show its whole history;
    the sweep's own children when they carry no study name."""
    names = {r.data.tags["study_name"] for r in children if "study_name" in r.data.tags}
    if len(names) != 1:
        return children
    experiment = children[0].info.experiment_id
    return client.search_runs([experiment], filter_string=f"tags.study_name = '{names.pop()}'", max_results=50000)


def study_from_runs(runs: list["Run"], names: list[str], objective: str, direction: str = "maximize"):  # noqa: ANN201 - optuna.Study
    """An in-memory Optuna study rebuilt from the trial runs of an Optuna sweep (trial number, params,
    state, objective), so that Optuna's plots need only the tracking store, not the study's storage.
    Runs sharing a trial number are one trial: its seeds (the study got their mean) or a requeued
    job's attempts (the complete one counts)."""
    import optuna
    from optuna.distributions import CategoricalDistribution, FloatDistribution
    from optuna.trial import TrialState, create_trial

    by_number: dict[int, list["Run"]] = {}
    for run in runs:
        if "trial_number" in run.data.tags:
            by_number.setdefault(int(run.data.tags["trial_number"]), []).append(run)
    if not by_number:
        return None
    trials = [group[0] for group in by_number.values()]
    values = {n: [r.data.params.get(n) for r in trials] for n in names}
    dists = {}
    for name, seen in values.items():
        numbers = [_number(v) for v in seen if v is not None]
        if numbers and all(n is not None for n in numbers) and len(set(numbers)) > 1 and len(set(numbers)) > 4:
            dists[name] = FloatDistribution(min(numbers), max(numbers))  # type: ignore[type-var]
        else:
            dists[name] = CategoricalDistribution(sorted({v for v in seen if v is not None}, key=lambda v: (_number(v) is None, _number(v) or 0, v)))
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(direction=direction)
    study.set_metric_names([objective])
    for number in sorted(by_number):
        group = by_number[number]
        run = group[0]
        params = {n: (float(run.data.params[n]) if isinstance(dists[n], FloatDistribution) else run.data.params[n]) for n in names if n in run.data.params}
        scores = [v for r in group if r.data.tags.get("trial_state") == "COMPLETE" and math.isfinite(v := r.data.metrics.get(objective, math.nan))]
        states = {r.data.tags.get("trial_state", "") for r in group}
        state = TrialState.COMPLETE if scores else TrialState.PRUNED if "PRUNED" in states else TrialState.FAIL
        study.add_trial(create_trial(
            params=params, distributions={n: dists[n] for n in params}, state=state,
            value=sum(scores) / len(scores) if scores else None,
            user_attrs={"mlflow_run_id": run.info.run_id, "trial_number": number},
        ))  # fmt: skip
    return study


def _number(value: str | None) -> float | None:
    try:
        return float(value) if value is not None else None
    except ValueError:
        return None


def plot_study(study, out: Path) -> list[Path]:  # noqa: ANN001 - optuna.Study
    """Optuna's own matplotlib plots: history with the running best, importances, parallel coordinates."""
    import warnings

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from optuna.trial import TrialState
    from optuna.visualization import matplotlib as vis

    complete = study.get_trials(states=(TrialState.COMPLETE,))
    plots = {"history.png": vis.plot_optimization_history}
    if len(complete) >= 2 and study.trials[0].params:
        plots |= {"importances.png": vis.plot_param_importances, "parallel.png": vis.plot_parallel_coordinate}
    written = []
    for name, plot in plots.items():
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # Optuna marks its matplotlib backend experimental
            try:
                ax = plot(study)
            except (ValueError, RuntimeError) as exc:  # e.g. importances of a parameter that never varied
                print(redact(f"report: skipped {name}: {exc}"), file=sys.stderr)
                continue
        fig = ax.figure if hasattr(ax, "figure") else ax.flat[0].figure
        fig.set_size_inches(8, 4.5)
        fig.tight_layout()
        fig.savefig(out / name, dpi=120)
        plt.close(fig)
        written.append(out / name)
    return written


# ---------------------------------------------------------------- the command


def make_report(tracking_uri: str, experiment: str, run_id: str | None, out: Path) -> tuple[verdict.Summary, list[Path]]:
    tracker = MlflowTracker(tracking_uri, experiment)
    client = tracker.client()
    parent = client.get_run(run_id) if run_id else latest_sweep(client, experiment)
    link = parent.data.tags.get("ui_link", "")
    children = sweep_children(client, parent.info.run_id)
    summary = summary_of(client, parent, children, link)
    out.mkdir(parents=True, exist_ok=True)
    (out / SUMMARY_FILE).write_text(summary.markdown())
    files = [out / SUMMARY_FILE]
    if (scores := plot_scores(summary, out / "scores.png")) is not None:
        files.append(scores)
    study = study_from_runs(study_runs(client, children), summary.swept, summary.objective)
    if study is not None:
        files += plot_study(study, out)
    for path in files:
        client.log_artifact(parent.info.run_id, str(path), artifact_path="report")
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
        if uri.startswith(("http://", "https://")):
            _check_server(uri)  # one line, not MLflow's retries and tracebacks
        if args.link:
            print(public_url(ui_link(uri, args.experiment)))
            return 0
        out = args.out or Path(tempfile.mkdtemp(prefix="embedsweep-report-"))
        summary, files = make_report(uri, args.experiment, args.run, out)
    except UserError as exc:
        print(redact(f"error: {exc}"), file=sys.stderr)
        return 2
    print(summary.text())
    print(f"report: {', '.join(str(f) for f in files)} (also attached to the sweep's run under report/)")
    return 0


def ui_link(uri: str, experiment: str) -> str:
    """The UI link of the latest sweep, or of the experiment's runs table when there is no sweep yet."""
    tracker = MlflowTracker(uri, experiment)
    client = tracker.client()
    found = client.get_experiment_by_name(experiment)
    if found is None:
        return f"{tracker.ui_url}/#/experiments"
    try:
        return latest_sweep(client, experiment).data.tags.get("ui_link") or tracker.runs_link(found.experiment_id)
    except UserError:
        return tracker.runs_link(found.experiment_id)


if __name__ == "__main__":
    sys.exit(main())
