"""Optuna's view of a finished sweep, for the report: its study rebuilt from the tracked trial runs,
and Optuna's own plots of it (history with the running best, importances, parallel coordinates).

Rebuilt from the runs, not read from the study's storage: a report needs only the tracking store, on any
machine that reaches it.
"""

from __future__ import annotations

import math
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from embedsweep.redaction import redact
from embedsweep.run import metric_names
from embedsweep.tracking import TRIAL_NUMBER, TRIAL_STATE

if TYPE_CHECKING:
    from embedsweep.tracking import RecordedRun

def study_from_runs(runs: Sequence["RecordedRun"], names: list[str], objective: str, direction: str = "maximize"):  # noqa: ANN201 - optuna.Study
    """An in-memory Optuna study rebuilt from the trial runs of an Optuna sweep (trial number, params,
    state, objective), so that Optuna's plots need only the tracking store, not the study's storage.
    Runs sharing a trial number are one trial: its seeds (the study got their mean) or a requeued
    job's attempts (the complete one counts)."""
    import optuna
    from optuna.distributions import CategoricalDistribution, FloatDistribution
    from optuna.trial import TrialState, create_trial

    by_number: dict[int, list["RecordedRun"]] = {}
    for run in runs:
        if TRIAL_NUMBER in run.tags:
            by_number.setdefault(int(run.tags[TRIAL_NUMBER]), []).append(run)
    if not by_number:
        return None
    trials = [group[0] for group in by_number.values()]
    values = {n: [r.params.get(n) for r in trials] for n in names}
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
        params = {n: (float(run.params[n]) if isinstance(dists[n], FloatDistribution) else run.params[n]) for n in names if n in run.params}
        scores = [v for r in group if r.tags.get(TRIAL_STATE) == "COMPLETE" and math.isfinite(v := _score(r.metrics, objective))]
        states = {r.tags.get(TRIAL_STATE, "") for r in group}
        state = TrialState.COMPLETE if scores else TrialState.PRUNED if "PRUNED" in states else TrialState.FAIL
        study.add_trial(create_trial(
            params=params, distributions={n: dists[n] for n in params}, state=state,
            value=sum(scores) / len(scores) if scores else None,
            user_attrs={"mlflow_run_id": run.run_id, TRIAL_NUMBER: number},
        ))  # fmt: skip
    return study


def _score(metrics: dict[str, float], objective: str) -> float:
    """A trial run's final score on the objective (NaN if none); runs recorded before the names had sections too."""
    return metric_names.current(metrics).get(metric_names.answer(objective), math.nan)


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
