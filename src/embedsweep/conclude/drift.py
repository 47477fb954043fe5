"""Drift: how the current champion does on today's test pairs, against its score when it was promoted.

A scheduled sweep (`promote.check_drift=true`) scores `@champion` before anything else: a champion can
get worse without any new model, when the test pairs are refreshed with harder or newer ones. The
comparison uses the paired rule where the pairs are the same ones it was promoted on (its similarities
then are kept on that sweep's record), else the two 95% intervals: apart or overlapping.
"""

from __future__ import annotations

import logging
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING

from omegaconf import DictConfig

from embedsweep.conclude import promote
from embedsweep.run import data, evaluate, noise
from embedsweep.run import metric_names as names

if TYPE_CHECKING:
    from embedsweep.tracking import SweepRun, Tracker

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Drift:
    name: str
    version: str
    objective: str
    now: float
    now_interval: tuple[float, float]
    was: float | None  # at promotion (None: registered before scores were kept)
    was_interval: tuple[float, float] | None
    same_pairs: bool
    difference: tuple[float, float] | None  # paired 95% interval of now - was, on the same pairs
    beyond_noise: bool

    def line(self) -> str:
        head = f"champion {self.name} v{self.version} on today's test pairs: {self.objective} {self.now:.4f}"
        if self.was is None:
            return f"{head} (no score kept from its promotion to compare with)"
        head += f", was {self.was:.4f} at promotion ({round(self.now - self.was, 4) + 0.0:+.4f}"  # + 0.0: no "-0.0000"
        if self.same_pairs and self.difference is not None:
            low, high = self.difference
            how = f"paired 95% interval [{low:+.4f}, {high:+.4f}] on the same pairs"
        elif self.was_interval is not None:
            how = (
                f"95% intervals [{self.now_interval[0]:.4f}, {self.now_interval[1]:.4f}] today and "
                f"[{self.was_interval[0]:.4f}, {self.was_interval[1]:.4f}] then, on other pairs: {'apart' if self.beyond_noise else 'overlapping'}"
            )
        else:
            how = "no interval kept from its promotion"
        verdict = "beyond noise" if self.beyond_noise else "within noise"
        return f"{head}; {how}): {verdict}"

    def as_dict(self) -> dict[str, object]:
        return asdict(self) | {"line": self.line()}


def check(tracker: "Tracker", parent: "SweepRun", config: DictConfig) -> Drift | None:
    """Score the champion of this sweep's registry name on today's test pairs; log it to the parent
    record and say it in a line. None when there is no champion yet. A failure is a warning."""
    name, alias = promote.registry_name(config), config.promote.alias
    objective = config.objective if isinstance(config.objective, str) else config.objective[0]
    try:
        registry = tracker.registry()
        champion = registry.version(name, alias)
        if champion is None:
            log.info("drift: no %s@%s yet, nothing to compare", name, alias)
            return None
        pairs = data.load_test(config)
        evaluator = evaluate.sts_evaluator(pairs, batch_size=config.trainer.eval_batch_size)
        trust = bool(config.model.get("trust_remote_code", False))
        scored = evaluate.score_with_similarities(registry.load(name, champion.version, trust), evaluator)
        today = evaluate.scored_pairs(evaluator)
        kept = tracker.scored_pairs(champion.tags["sweep_run_id"], promote.TEST_PAIRS_FILE) if "sweep_run_id" in champion.tags else None
        found = compare(name, champion.version, objective, scored.metrics, today, kept, champion.tags)
    except Exception as exc:  # noqa: BLE001 - a drift check that fails must not stop the night's sweep
        log.warning("drift: could not score %s@%s on today's test pairs: %s", name, alias, exc)
        return None
    parent.log_results(
        {f"champion_test_{objective}": found.now},
        {},
        {"champion": f"{name}@{alias} v{champion.version}", "drift": found.line(), "drift_beyond_noise": str(found.beyond_noise).lower()},
    )
    log.info("%s", found.line())
    return found


def compare(name: str, version: str, objective: str, metrics: dict[str, float], today: noise.ScoredPairs, kept: noise.ScoredPairs | None, tags: dict[str, str]) -> Drift:
    """Today's score against the one kept at promotion: paired where the pairs are the same, else by intervals."""
    now = metrics[objective]
    now_interval = (metrics[f"{objective}_ci_low"], metrics[f"{objective}_ci_high"])
    tags = names.current(tags)  # a champion registered before the metric names had sections: test_pearson_cosine...
    was = float(tags[names.test(objective)]) if names.test(objective) in tags else None
    low, high = (tags.get(n) for n in names.test_interval(objective))
    was_interval = (float(low), float(high)) if low is not None and high is not None else None
    paired = today.difference(kept, objective) if kept is not None else None
    if paired is not None:
        beyond = paired.low > 0 or paired.high < 0
        return Drift(name, version, objective, now, now_interval, noise.score(objective, kept.similarities, kept.gold), was_interval, True, (paired.low, paired.high), beyond)
    beyond = was_interval is not None and (now_interval[1] < was_interval[0] or now_interval[0] > was_interval[1])
    return Drift(name, version, objective, now, now_interval, was, was_interval, False, None, beyond)
