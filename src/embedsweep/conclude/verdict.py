"""The end-of-sweep verdict: the jobs ranked best first, as a terminal table and as markdown.

It knows nothing of the tracker: conclusion.py makes one `JobResult` per job from the runs the tracker
reads back (which also works when the jobs ran on other machines).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field, is_dataclass
from functools import cached_property
from typing import TYPE_CHECKING, Any

from embedsweep.redaction import public_url, redact
from embedsweep.run import metric_names as names

if TYPE_CHECKING:
    from embedsweep.run.noise import ScoredPairs

METRICS = names.SCORES
SEED_KEY = "trainer.seed"  # jobs whose values differ only in this key are one configuration


@dataclass(frozen=True)
class JobResult:
    name: str  # what differs, e.g. "loss=mnr batch=32"
    values: dict[str, str]  # swept key -> value
    state: str  # FINISHED | FAILED | KILLED | PRUNED | RUNNING
    metrics: dict[str, float]  # under their recorded names (metric_names): `answer/pearson_cosine`...
    seconds: float | None
    run_id: str
    overrides: str = ""  # every override of the job: the command that reproduces it
    pairs: "ScoredPairs | None" = None  # its final evaluation, pair by pair, where the tracker kept it
    output_dir: str = ""  # the job's folder on the machine that ran it (its saved model, its .hydra config)
    error: str = ""  # why a FAILED or KILLED job ended (its run's `error` tag), for the verdict's JSON

    def __post_init__(self) -> None:
        # A run recorded before the metrics had sections (flat `pearson_cosine`...) reads as a new one.
        object.__setattr__(self, "metrics", names.current(self.metrics))

    def value(self, name: str) -> float | None:
        """A metric by its recorded name, if logged and finite."""
        value = self.metrics.get(name)
        return value if value is not None and math.isfinite(value) else None

    def score(self, metric: str) -> float | None:
        """The final eval score that `objective` names (`pearson_cosine`), if logged and finite."""
        return self.value(names.answer(metric))

    def interval(self, metric: str) -> tuple[float, float] | None:
        """The 95% bootstrap interval of the metric over the eval pairs (noise.py), if logged."""
        low, high = (self.value(n) for n in names.interval(metric))
        return None if low is None or high is None else (low, high)

    def baseline(self, metric: str) -> float | None:
        """The untouched model's score on the same eval pairs."""
        return self.value(names.baseline(metric))

    def gain(self, metric: str) -> float | None:
        """The change against the untouched model on the same eval set."""
        final, before = self.score(metric), self.baseline(metric)
        return None if final is None or before is None else final - before


def rank(results: Sequence[JobResult], objective: str) -> list[JobResult]:
    """Finished jobs best first, then everything else (pruned, failed) in name order."""
    scored = [r for r in results if r.state == "FINISHED" and r.score(objective) is not None]
    rest = sorted((r for r in results if r not in scored), key=lambda r: r.name)
    return sorted(scored, key=lambda r: -(r.score(objective) or 0.0)) + rest


def counts(results: Sequence[JobResult]) -> dict[str, int]:
    return {
        "jobs_finished": sum(r.state == "FINISHED" for r in results),
        "jobs_failed": sum(r.state in ("FAILED", "KILLED") for r in results),
        "jobs_pruned": sum(r.state == "PRUNED" for r in results),
    }


def _num(value: float | None, signed: bool = False) -> str:
    return "—" if value is None else f"{value:+.4f}" if signed else f"{value:.4f}"


def display_value(text: str) -> str:
    """A swept value as the table shows it: a sampled float (0.01633084436347884) to 4 significant digits."""
    try:
        number = float(text)
    except ValueError:
        return text
    return text if "." not in text or len(text) <= 6 else f"{number:.4g}"


def _rate(value: float | None) -> str:
    """Training tokens per second (real tokens, padding excluded)."""
    return "—" if value is None else f"{value:,.0f}"


def _duration(seconds: float | None) -> str:
    if seconds is None:
        return "—"
    return f"{seconds:.0f} s" if seconds < 120 else f"{seconds / 60:.1f} min"


def candidates(results: Sequence[JobResult], objective: str) -> set[str]:
    """Run ids of the best finished job and of those whose 95% interval overlaps the best's: the only
    ones that can be within noise of it (two intervals apart already tell the jobs apart)."""
    ranked = rank(results, objective)
    best = ranked[0] if ranked and ranked[0].state == "FINISHED" else None
    top = best.interval(objective) if best is not None else None
    if best is None or top is None:
        return set()
    close = {best.run_id}
    for r in ranked[1:]:
        ci = r.interval(objective) if r.state == "FINISHED" else None
        if ci is not None and ci[0] <= top[1] and top[0] <= ci[1]:
            close.add(r.run_id)
    return close


def comparisons(results: Sequence[JobResult], objective: str) -> dict[str, tuple[bool, int | None]]:
    """For each finished job close to the best (see `candidates`): whether the eval set cannot tell it
    from the best, and how that was decided: on how many shared pairs (paired bootstrap interval of the
    difference includes 0) or None (its interval overlaps the best's: no per-pair similarities to pair).

    Pairing is the sharper test: both jobs were scored on the same pairs, so the pairs that are hard for
    one are hard for the other, and that shared noise cancels in the difference."""
    ranked = rank(results, objective)
    close = candidates(ranked, objective)
    if not close:
        return {}
    best = ranked[0]
    found: dict[str, tuple[bool, int | None]] = {}
    for r in ranked[1:]:
        if r.run_id not in close:
            continue
        paired = r.pairs.difference(best.pairs, objective) if r.pairs and best.pairs else None
        found[r.run_id] = (True, None) if paired is None else (paired.low <= 0 <= paired.high, len(r.pairs.gold))
    return found


def ties(results: Sequence[JobResult], objective: str) -> set[str]:
    """Run ids of the finished jobs (the best excluded) that the eval set cannot tell from the best."""
    return {run_id for run_id, (tied, _) in comparisons(results, objective).items() if tied}


@dataclass(frozen=True)
class SeedGroup:
    """One configuration run with several seeds."""

    values: dict[str, str]  # swept key -> value, the seed left out
    seeds: list[str]
    scores: list[float]

    @property
    def mean(self) -> float:
        return sum(self.scores) / len(self.scores)

    @property
    def std(self) -> float:
        """Sample standard deviation (n - 1); 0 for a single seed."""
        n = len(self.scores)
        return 0.0 if n < 2 else math.sqrt(sum((s - self.mean) ** 2 for s in self.scores) / (n - 1))


def by_seed(results: Sequence[JobResult], swept: Sequence[str], objective: str) -> list[SeedGroup]:
    """Finished jobs grouped by their swept values except `trainer.seed`, best mean first."""
    keys = [k for k in swept if k != SEED_KEY]
    groups: dict[tuple[str, ...], SeedGroup] = {}
    def seed_order(r: JobResult) -> tuple[int, str]:
        seed = r.values.get(SEED_KEY, "")
        return (int(seed), "") if seed.lstrip("-").isdigit() else (0, seed)

    for r in sorted(results, key=seed_order):
        score = r.score(objective)
        if r.state != "FINISHED" or score is None:
            continue
        key = tuple(r.values.get(k, "") for k in keys)
        group = groups.setdefault(key, SeedGroup(dict(zip(keys, key)), [], []))
        group.seeds.append(r.values.get(SEED_KEY, ""))
        group.scores.append(score)
    return sorted(groups.values(), key=lambda g: -g.mean)


@dataclass
class Summary:
    results: list[JobResult]  # ranked (see rank)
    swept: list[str]
    objective: str
    ui_link: str = ""
    notes: list[str] = field(default_factory=list)
    promotion: dict | None = None  # promote.Promotion.as_dict(): what happened to the winner
    drift: dict | None = None  # conclude.drift.Drift.as_dict(): the champion on today's test pairs
    tags: dict[str, str] = field(default_factory=dict)  # the sweep's own tags (study_name, data_version) where the tracker has them

    @property
    def _with_noise(self) -> bool:
        return any(r.interval(self.objective) is not None for r in self.results)

    def header(self) -> list[str]:
        noise = [f"{self.objective.split('_')[0]} 95% CI", "vs best"] if self._with_noise else []
        return ["#", *self.swept, "pearson", "spearman", *noise, f"Δ {self.objective.split('_')[0]} vs untouched", "steps", "tok/s", "time", "state"]

    def rows(self) -> list[list[str]]:
        rows, tied = [], {run_id for run_id, (is_tied, _) in self._comparisons.items() if is_tied}
        best = self.best
        for i, r in enumerate(self.results, 1):
            steps = r.value(names.STEPS)
            noise = []
            if self._with_noise:
                ci = r.interval(self.objective)
                marker = "best" if best is not None and r is best else "tied" if r.run_id in tied else ""
                noise = ["—" if ci is None else f"[{ci[0]:.4f}, {ci[1]:.4f}]", marker]
            rows.append([
                str(i) if r.state == "FINISHED" else "",
                *(display_value(r.values.get(k, "")) for k in self.swept),
                _num(r.score("pearson_cosine")),
                _num(r.score("spearman_cosine")),
                *noise,
                _num(r.gain(self.objective), signed=True),
                "—" if steps is None else f"{steps:.0f}",
                _rate(r.value(names.TOKENS_PER_SECOND)),
                _duration(r.seconds),
                r.state,
            ])  # fmt: skip
        return rows

    @property
    def best(self) -> JobResult | None:
        top = self.results[0] if self.results else None
        return top if top is not None and top.state == "FINISHED" and top.score(self.objective) is not None else None

    def _closing(self) -> list[str]:
        lines = []
        if (best := self.best) is not None:
            lines.append(f"best: {best.name} ({self.objective} {_num(best.score(self.objective))}, {_num(best.gain(self.objective), True)} vs untouched)")
            lines.append(f"  reproduce: python train.py {best.overrides}".rstrip())
            scored = [r for r in self.results if r.state == "FINISHED" and r.score(self.objective) is not None]
            if best.interval(self.objective) is not None and len(scored) > 1:
                lines.append(self._noise_line())
            if (gain := best.gain(self.objective)) is not None and gain <= 0:
                # Worth a line of its own: "the best run" reads like progress even when it is a loss.
                before = _num(best.baseline(self.objective))
                lines.append(f"no run improved on the untouched model ({self.objective} {before}): training as swept here did not help on this eval set")
        else:
            lines.append("best: none (no job finished with a score)")
        lines += self._seed_lines()
        lines += self.notes
        if self.ui_link:
            lines.append(f"runs in MLflow: {public_url(self.ui_link)}")
        return lines

    @cached_property
    def _comparisons(self) -> dict[str, tuple[bool, int | None]]:
        return comparisons(self.results, self.objective)

    def _noise_line(self) -> str:
        """How many runs the eval set cannot tell from the best, and by which test."""
        found = self._comparisons.values()
        by_pairs = [n for tied, n in found if tied and n is not None]
        by_overlap = [n for tied, n in found if tied and n is None]
        paired = next((n for _, n in found if n is not None), None)
        overlap = f"its 95% bootstrap interval of {self.objective} overlaps the best's"
        if by_pairs or by_overlap:
            reasons = [f"the paired 95% bootstrap interval of its difference to the best, on the same {paired} eval pairs, includes 0"] if by_pairs else []
            reasons += [overlap] if by_overlap else []
            k = len(by_pairs) + len(by_overlap)
            return f"{k} run{'s are' if k != 1 else ' is'} within noise of the best ({'; or '.join(reasons)})"
        if paired is not None:
            return (
                f"no other run is within noise of the best (the 95% bootstrap intervals of the others lie below the best's, "
                f"or, paired on the same {paired} eval pairs, their difference to the best does)"
            )
        return f"no other run is within noise of the best (no other 95% bootstrap interval of {self.objective} overlaps the best's)"

    def _seed_lines(self) -> list[str]:
        """Mean ± std over seeds per configuration, when the sweep varies trainer.seed."""
        if SEED_KEY not in self.swept:
            return []
        groups = by_seed(self.results, self.swept, self.objective)
        lines = [f"across seeds ({self.objective}, mean ± std):"]
        for g in groups:
            what = " ".join(f"{k}={v}" for k, v in g.values.items()) or "(all jobs)"
            lines.append(f"  {what}: {g.mean:.4f} ± {g.std:.4f} over {len(g.scores)} seed(s) ({', '.join(g.seeds)})")
        return lines if groups else []

    def text(self) -> str:
        """An aligned table for the terminal, then the best run and the link (secrets hidden, as in markdown)."""
        table = [self.header(), *self.rows()]
        widths = [max(len(row[i]) for row in table) for i in range(len(table[0]))]
        lines = [f"sweep verdict, ranked by {self.objective} ({len(self.results)} jobs):"]
        lines += ["  " + "  ".join(cell.ljust(w) for cell, w in zip(row, widths)).rstrip() for row in table]
        return redact("\n".join(lines + self._closing()))

    def markdown(self) -> str:
        header = self.header()
        lines = [f"# Sweep verdict\n\nRanked by `{self.objective}`, best first; Δ is the change against the untouched model.\n"]
        lines.append("| " + " | ".join(header) + " |")
        lines.append("|" + "|".join("---:" if h in ("#", "steps", "tok/s", "time") else "---" for h in header) + "|")
        lines += ["| " + " | ".join(row) + " |" for row in self.rows()]
        lines.append("")
        lines += [f"- {line.strip()}" for line in self._closing()]
        return redact("\n".join(lines)) + "\n"

    def as_dict(self) -> dict[str, Any]:
        """The verdict as JSON-ready data (plain dicts, lists, strings, finite numbers or None), for
        `<sweep dir>/verdict.json` and the notification hook (embedsweep.notify): the winner, every
        job's scores and state, the counts, the failures with their errors, the promotion decision and
        the champion's drift (where the end of the sweep recorded them), the study and data version,
        and the link to the runs. Secrets are hidden in every text, as in the table."""
        ranked, objective = self.results, self.objective
        tied = {run_id for run_id, (is_tied, _) in self._comparisons.items() if is_tied}
        best = self.best
        found = counts(ranked)
        jobs = [self._job_dict(r, best, tied) for r in ranked]
        failures = [
            {"name": redact(r.name), "run_id": r.run_id, "state": r.state, "error": redact(r.error) or None}
            for r in ranked if r.state in ("FAILED", "KILLED")
        ]  # fmt: skip
        winner = None
        if best is not None:
            winner = {
                "name": redact(best.name),
                "overrides": redact(best.overrides),
                "run_id": best.run_id,
                "objective": objective,
                "value": _finite(best.score(objective)),
                "interval": _interval(best.interval(objective)),
                "gain": _finite(best.gain(objective)),
                "within_noise": sorted(r.name for r in ranked if r.run_id in tied),
            }
        return {
            # finished: a job finished with a score; failed: jobs ran, none did; nothing to do: no job ran.
            "state": "finished" if best is not None else "failed" if ranked else "nothing to do",
            "objective": objective,
            "study": self.tags.get("study_name") or None,
            "data_version": self.tags.get("data_version") or None,
            "winner": winner,
            "counts": {"jobs": len(ranked), "finished": found["jobs_finished"], "failed": found["jobs_failed"], "pruned": found["jobs_pruned"]},
            "jobs": jobs,
            "failures": failures,
            # Set on the summary by the end of the sweep (conclude.promote, the drift check); None: not decided here.
            "promotion": _plain(getattr(self, "promotion", None)),
            "drift": _plain(getattr(self, "drift", None)),
            "lines": [redact(line) for line in self._closing()],
            "ui_link": public_url(self.ui_link) if self.ui_link else None,
        }

    def _job_dict(self, r: JobResult, best: JobResult | None, tied: set[str]) -> dict[str, Any]:
        objective = self.objective
        scores = {m: _finite(r.score(m)) for m in dict.fromkeys((objective, *METRICS))}
        return {
            "name": redact(r.name),
            "values": {k: redact(v) for k, v in r.values.items()},
            "state": r.state,
            "run_id": r.run_id,
            "overrides": redact(r.overrides),
            "scores": scores,
            "interval": _interval(r.interval(objective)),
            "gain": _finite(r.gain(objective)),
            "best": best is not None and r is best,
            "within_noise_of_best": r.run_id in tied,
            "steps": _finite(r.value(names.STEPS)),
            "seconds": _finite(r.seconds),
            "error": redact(r.error) or None,
        }


def _finite(value: float | None) -> float | None:
    """A number JSON can hold: NaN and infinities (a diverged run's loss) become None."""
    return float(value) if value is not None and math.isfinite(value) else None


def _interval(found: tuple[float, float] | None) -> list[float | None] | None:
    return None if found is None else [_finite(found[0]), _finite(found[1])]


def _plain(value: Any) -> Any:
    """A promotion or drift record as JSON-ready data: dataclasses and mappings become dicts, tuples
    lists, non-finite floats None, secrets in texts hidden; anything else its text."""
    if value is None or isinstance(value, bool | int):
        return value
    if isinstance(value, float):
        return _finite(value)
    if isinstance(value, str):
        return redact(value)
    if is_dataclass(value) and not isinstance(value, type):
        value = asdict(value)
    if isinstance(value, Mapping):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple | set | frozenset):
        return [_plain(v) for v in value]
    return redact(str(value))
