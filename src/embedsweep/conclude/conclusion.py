"""What a sweep concludes, whatever the tracker: the jobs ranked, the verdict printed and written, the
winner tested and promoted, and (for a scheduled sweep) how the champion does on today's test pairs.

A sweeper wraps its work in `concluded(tracker, config, swept)`: the tracker opens the sweep's parent
record, this module fills it at the end, the tracker closes it. Everything here goes through the
tracker seam (`embedsweep.tracking`), so another tracker changes nothing below.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING

from omegaconf import DictConfig

from embedsweep.checks.stores import one_line
from embedsweep.conclude import drift, promote, verdict
from embedsweep.redaction import public_url, redact
from embedsweep.run import metric_names as names
from embedsweep.tracking import TRIAL_STATE

if TYPE_CHECKING:
    from embedsweep.tracking import RecordedRun, SweepRun, Tracker

log = logging.getLogger(__name__)

SUMMARY_FILE = "summary.md"  # the verdict as markdown, in the sweep folder and on the parent record
VERDICT_FILE = "verdict.json"  # the verdict as data, for notification hooks and scripts
PROMOTION_TAG = "promotion"  # the promotion's words on the parent record, read back by the report


@contextmanager
def concluded(tracker: "Tracker", config: DictConfig, swept: Sequence[str]) -> Iterator["SweepRun"]:
    """The sweep's parent record, concluded on the way out: FINISHED sweeps get a verdict and a
    promotion; a failed or interrupted one gets the verdict of what ran. A sweep that ran nothing
    (a spent Optuna budget, a failure before the first job) leaves no parent record."""
    promote.check(config)  # the test set the winner will be scored on: fail now, not after the last job
    with tracker.sweep(config, swept) as parent:
        champion = drift.check(tracker, parent, config) if _checks_drift(config) else None
        try:
            yield parent
        except BaseException:
            conclude(tracker, parent, config, finished=False, champion=champion)
            raise
        conclude(tracker, parent, config, finished=True, champion=champion)


def _checks_drift(config: DictConfig) -> bool:
    return bool(config.get("promote") and config.promote.get("check_drift", False) and config.get("test") and config.test.source != "none")


def conclude(tracker: "Tracker", parent: "SweepRun", config: DictConfig, finished: bool, champion: "drift.Drift | None" = None) -> verdict.Summary | None:
    """Rank the jobs, promote the winner (a finished sweep only), print the verdict, write it to the
    sweep folder and the parent record. A failure here is a warning: the parent's end state matters more."""
    try:
        jobs = parent.jobs()
        if not jobs:  # nothing ran: a spent budget, or a sweep that failed or stopped before its first job
            parent.discard()
            return None
        return _summarise(tracker, parent, [job_result(r, parent.swept) for r in jobs], config, finished, champion)
    except Exception as exc:  # noqa: BLE001 - the parent's end status matters more than its summary
        log.warning("could not summarise sweep run %s: %s", parent.run_id, one_line(exc))
        return None


def job_result(run: "RecordedRun", swept: Sequence[str]) -> verdict.JobResult:
    """What the verdict needs of one job's run."""
    return verdict.JobResult(
        name=run.name,
        values={k: run.params.get(k, "") for k in swept},
        state="PRUNED" if run.tags.get(TRIAL_STATE) == "PRUNED" else run.status,
        metrics=dict(run.metrics),
        seconds=run.seconds,
        run_id=run.run_id,
        overrides=run.tags.get("overrides", ""),
        output_dir=run.tags.get("hydra_output_dir", ""),
        error=run.tags.get("error", ""),
    )


def with_scored_pairs(parent: "SweepRun", ranked: list[verdict.JobResult], objective: str) -> list[verdict.JobResult]:
    """The ranked results, the best job and those whose interval overlaps its own given their per-pair
    similarities, so that the verdict can compare them pair by pair. The others are apart already:
    their intervals do not even overlap. A run without them (from before they were kept) is left as is."""
    close = verdict.candidates(ranked, objective)
    return [replace(r, pairs=parent.scored_pairs(r.run_id)) if r.run_id in close else r for r in ranked]


def _summarise(tracker: "Tracker", parent: "SweepRun", results: list[verdict.JobResult], config: DictConfig, finished: bool, champion: "drift.Drift | None") -> verdict.Summary:
    objective = config.objective if isinstance(config.get("objective"), str) else None
    name = objective or "pearson_cosine"
    ranked = with_scored_pairs(parent, verdict.rank(results, name), name)
    parent.log_results(dict(verdict.counts(results)), {}, {})
    best = ranked[0] if ranked and ranked[0].state == "FINISHED" and objective and ranked[0].score(objective) is not None else None
    if best is not None:
        parent.log_results({"best_objective": best.score(name)}, {}, {"best_overrides": redact(best.name), "best_run_id": best.run_id})
    promotion = _promote(tracker, parent, ranked, config, name) if finished and best is not None and objective else None
    notes = ([champion.line()] if champion is not None else []) + (promotion.notes if promotion else [])
    link = parent.link(names.answer(objective) if objective else None)  # best first
    summary = verdict.Summary(
        results=ranked, swept=parent.swept, objective=name, ui_link=link, notes=notes,
        promotion=promotion.as_dict() if promotion else None, drift=champion.as_dict() if champion else None, tags=parent.tags(),
    )  # fmt: skip
    print(summary.text(), flush=True)
    sweep_dir = Path(config.hydra.sweep.dir).resolve()
    sweep_dir.mkdir(parents=True, exist_ok=True)
    (sweep_dir / SUMMARY_FILE).write_text(summary.markdown())
    parent.log_results({}, {}, {"ui_link": public_url(link)}, artifact=sweep_dir / SUMMARY_FILE)
    (sweep_dir / VERDICT_FILE).write_text(json.dumps(summary.as_dict(), indent=2) + "\n")  # as_dict hides secrets
    parent.log_results({}, {}, {}, artifact=sweep_dir / VERDICT_FILE)
    return summary


def _promote(tracker: "Tracker", parent: "SweepRun", ranked: list[verdict.JobResult], config: DictConfig, objective: str) -> promote.Promotion | None:
    """Test and register the winner (promote.py); a failure there costs the promotion, not the sweep."""
    if config.get("promote") is None or not config.promote.get("enabled", True) or config.get("test") is None:
        return None
    try:
        result = promote.promote(tracker.registry(), parent, ranked, config, objective)
    except Exception as exc:  # noqa: BLE001 - the verdict and the parent's status matter more
        log.warning("could not promote the best run %s: %s", ranked[0].run_id, exc, exc_info=True)
        result = promote.Promotion(notes=[redact(f"not promoted: {type(exc).__name__}: {exc}")[:1000]])
    parent.log_results({}, {}, {PROMOTION_TAG: redact(" ".join(result.notes))})  # the report reads it back
    return result
