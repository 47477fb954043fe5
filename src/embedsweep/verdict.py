"""The end-of-sweep verdict: the jobs ranked best first, as a terminal table and as markdown.

It knows nothing of the tracker: the tracker hands it one `JobResult` per job (mlflow_tracking.py
reads them back from the child runs, which also works when the jobs ran on other machines).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field

METRICS = ("pearson_cosine", "spearman_cosine")


@dataclass(frozen=True)
class JobResult:
    name: str  # what differs, e.g. "loss=mnr batch=32"
    values: dict[str, str]  # swept key -> value
    state: str  # FINISHED | FAILED | KILLED | PRUNED | RUNNING
    metrics: dict[str, float]
    seconds: float | None
    run_id: str
    overrides: str = ""  # every override of the job: the command that reproduces it

    def score(self, metric: str) -> float | None:
        value = self.metrics.get(metric)
        return value if value is not None and math.isfinite(value) else None

    def gain(self, metric: str) -> float | None:
        """The change against the untouched model on the same eval set."""
        final, before = self.score(metric), self.score(f"baseline_{metric}")
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


def _rate(value: float | None) -> str:
    """Training tokens per second (real tokens, padding excluded)."""
    return "—" if value is None else f"{value:,.0f}"


def _duration(seconds: float | None) -> str:
    if seconds is None:
        return "—"
    return f"{seconds:.0f} s" if seconds < 120 else f"{seconds / 60:.1f} min"


@dataclass
class Summary:
    results: list[JobResult]  # ranked (see rank)
    swept: list[str]
    objective: str
    ui_link: str = ""
    notes: list[str] = field(default_factory=list)

    def header(self) -> list[str]:
        return ["#", *self.swept, "pearson", "spearman", f"Δ {self.objective.split('_')[0]} vs untouched", "steps", "tok/s", "time", "state"]

    def rows(self) -> list[list[str]]:
        rows = []
        for i, r in enumerate(self.results, 1):
            steps = r.metrics.get("train_steps")
            rows.append([
                str(i) if r.state == "FINISHED" else "",
                *(r.values.get(k, "") for k in self.swept),
                _num(r.score("pearson_cosine")),
                _num(r.score("spearman_cosine")),
                _num(r.gain(self.objective), signed=True),
                "—" if steps is None else f"{steps:.0f}",
                _rate(r.metrics.get("train_tokens_per_second")),
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
        else:
            lines.append("best: none (no job finished with a score)")
        lines += self.notes
        if self.ui_link:
            lines.append(f"runs in MLflow: {self.ui_link}")
        return lines

    def text(self) -> str:
        """An aligned table for the terminal, then the best run and the link."""
        table = [self.header(), *self.rows()]
        widths = [max(len(row[i]) for row in table) for i in range(len(table[0]))]
        lines = [f"sweep verdict, ranked by {self.objective} ({len(self.results)} jobs):"]
        lines += ["  " + "  ".join(cell.ljust(w) for cell, w in zip(row, widths)).rstrip() for row in table]
        return "\n".join(lines + self._closing())

    def markdown(self) -> str:
        header = self.header()
        lines = [f"# Sweep verdict\n\nRanked by `{self.objective}`, best first; Δ is the change against the untouched model.\n"]
        lines.append("| " + " | ".join(header) + " |")
        lines.append("|" + "|".join("---:" if h in ("#", "steps", "tok/s", "time") else "---" for h in header) + "|")
        lines += ["| " + " | ".join(row) + " |" for row in self.rows()]
        lines.append("")
        lines += [f"- {line.strip()}" for line in self._closing()]
        return "\n".join(lines) + "\n"
