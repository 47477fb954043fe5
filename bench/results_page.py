"""Render docs/results.md, the one page of measured figures, from bench/results/*.json.

    python bench/results_page.py            # rewrite docs/results.md
    python bench/results_page.py --check    # exit 1 when docs/results.md is not what the JSON files give

Each JSON file is one measurement, with its `date`, `machine` and `command`. The benchmarks write
theirs (framework_tax.py, startup.py, sweep_overhead.py through perfkit.save; quality.py) and then
call this script; a measurement made by hand is a JSON file of the generic form:

    {"section": "The main job", "title": "...", "date": "2026-11-29", "machine": "...",
     "command": "make sweep", "text": "what was measured and what it shows (optional)",
     "figures": {"columns": ["loss", "pearson"], "rows": [["mnr", "0.9047"]]},   # or {"name": "value", ...}
     "notes": ["a remark", "..."]}                                                 # optional

The page is generated: edit the JSON, never the page (tests/test_docs.py checks that they agree).
A result of a benchmark replaces its file; earlier results stay in git's history.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "bench" / "results"
PAGE = ROOT / "docs" / "results.md"

# The page's sections, in this order; a measurement names its own (the benchmarks' are fixed below).
SECTIONS = [
    "The main job",
    "Quality on real data",
    "Optuna searches",
    "Performance",
    "On a SLURM cluster",
    "Tests and CI",
]
BENCH_SECTIONS = {"framework_tax": "Performance", "startup": "Performance", "sweep_overhead": "Performance", "quality": "Quality on real data"}
BENCH_TITLES = {
    "framework_tax": "Framework tax: train.py against a plain sentence-transformers script",
    "startup": "Start-up against a bare Hydra app",
    "sweep_overhead": "Repeated work across the trials of a sweep",
    "quality": "Each loss on the same slice of MNLI (bench/quality.py)",
}


def header(r: dict) -> list[str]:
    return [f"*{r['date']}; {r['machine']}*", "", f"Command: `{r['command']}`", ""]


def tax(r: dict) -> list[str]:
    m, q = r["median"], r["ratio_train_py_over_plain"]
    return [
        f"The same training (all-MiniLM-L6-v2, MNR, {m['train_py']['train_rows']:,.0f} MNLI triplets from the first "
        f"{r['rows']:,} rows, batch 32, STS-B validation before and after) through `train.py` with MLflow and through "
        f"a plain sentence-transformers script (`bench/plain_st.py`), {r['pairs']} alternating pairs, medians; no test "
        f"set and no cache on either side. The training loop is timed alike on both sides: `trainer.train()` less the "
        f"evaluations inside it (train.py's trainer scores the final model there). Wall ratio pair by pair: "
        f"{', '.join(f'{x:.3f}' for x in r['wall_ratio_per_pair'])} (median {q['wall_s_median_of_pairs']:.3f}×).",
        "",
        "| | train.py | plain script | ratio |",
        "|---|---:|---:|---:|",
        f"| whole command, wall | {m['train_py']['wall_s']:.1f} s | {m['plain']['wall_s']:.1f} s | {q['wall_s']:.3f}× |",
        f"| whole command, CPU | {m['train_py']['cpu_s']:.1f} s | {m['plain']['cpu_s']:.1f} s | {q['cpu_s']:.3f}× |",
        f"| training loop | {m['train_py']['loop_s']:.1f} s | {m['plain']['loop_s']:.1f} s | {q['loop_s']:.3f}× |",
        f"| training loop samples/s | {m['train_py']['samples_per_s']:.2f} | {m['plain']['samples_per_s']:.2f} | {q['samples_per_s']:.3f}× |",
        f"| STS-B pearson_cosine before → after | {m['train_py']['before']:.4f} → {m['train_py']['after']:.4f} | "
        f"{m['plain']['before']:.4f} → {m['plain']['after']:.4f} | |",
        "",
    ]


def startup(r: dict) -> list[str]:
    lines = [
        f"Against a Hydra app with the same config tree and an empty task (`bench/bare_hydra_app.py`), alternating, "
        f"median of {r['repeats']}.",
        "",
        "| command | train.py | bare Hydra app | ratio |",
        "|---|---:|---:|---:|",
    ]
    for case, c in r["cases"].items():
        lines.append(f"| `{case}` | {c['train_py_s']:.2f} s | {c['bare_hydra_s']:.2f} s | {c['ratio']:.2f}× |")
    return [*lines, ""]


def sweep(r: dict) -> list[str]:
    eval_part = f" (first {r['eval_rows']:,} pairs)" if r.get("eval_rows") else ""
    lines = [
        f"A {r['sides'][0]['trials']}-trial Optuna sweep (`hparams_search=batch_warmup`, all-MiniLM-L6-v2, MNR on the "
        f"triplets of the first {r['rows_limit']:,} MNLI rows, STS-B validation{eval_part}), the same trials as separate "
        f"single runs, and the same sweep on commit `{r['before_ref']}` (before). Trial time is the side's wall time / "
        f"trials (start-up, sweeper and MLflow included). Outside `train()`: start-up, data, the untouched model's "
        f"score, MLflow; evaluations: the trained model's score (inside `train()`); outside the loop: both. The earlier "
        f"commit scored the trained model after `train()`, and the untouched model in every trial: its outside "
        f"`train()` holds both.",
        "",
        "| side | trial time | loop per trial | outside `train()` | evaluations | outside the loop | baseline reused |",
        "|---|---:|---:|---:|---:|---:|---|",
    ]
    for s in r["sides"]:
        reused = sum(c == "True" for c in s["baseline_cached"])
        evals = s.get("eval_share")
        lines.append(
            f"| {s['side']} | {s['trial_s']:.1f} s | {s['loop_s_per_trial']:.1f} s | {s['outside_training_share']:.1%} | "
            f"{'n/a' if evals is None else f'{evals:.1%}'} | {s['outside_loop_share']:.1%} | {reused} of {s['trials']} |"
        )
    return [*lines, ""]


def quality(r: dict) -> list[str]:
    lines = [
        f"Fine-tuning all-MiniLM-L6-v2 on the first {r['rows']:,} rows of MNLI train (`{r['data']}`), one epoch, "
        f"lr {r['lr']}, warmup {r['warmup']} steps, fp32; evaluated on STS-B validation (1,500 pairs, scores / 5); "
        f"each row one real `train.py experiment=recipe_minilm_mnr_offline` run, read back from MLflow; "
        f"{r['total_min']:.1f} min in all.",
        "",
        "| loss | batch | train rows | steps | pearson_cosine before → after | spearman_cosine before → after | train time |",
        "|---|---:|---:|---:|---|---|---:|",
    ]
    for v in r["results"]:
        delta = v["pearson"] - v["baseline_pearson"]
        lines.append(
            f"| {v['description']} | {v['batch']} | {v['rows']:,} | {v['steps']} "
            f"| {v['baseline_pearson']:.4f} → **{v['pearson']:.4f}** ({delta:+.4f}) "
            f"| {v['baseline_spearman']:.4f} → {v['spearman']:.4f} | {v['train_min']:.1f} min |"
        )
    return [*lines, ""]


def cell(value: object) -> str:
    return str(value).replace("|", "\\|").replace("\n", " ")


def generic(r: dict) -> list[str]:
    lines = [r["text"], ""] if r.get("text") else []
    figures = r.get("figures")
    if isinstance(figures, dict) and "columns" in figures:
        lines += ["| " + " | ".join(cell(c) for c in figures["columns"]) + " |", "|" + "---|" * len(figures["columns"])]
        lines += ["| " + " | ".join(cell(c) for c in row) + " |" for row in figures["rows"]]
        lines.append("")
    elif isinstance(figures, dict):
        lines += ["| what | figure |", "|---|---|"] + [f"| {cell(k)} | {cell(v)} |" for k, v in figures.items()] + [""]
    for note in r.get("notes", []):
        lines.append(f"- {note}")
    if r.get("notes"):
        lines.append("")
    return lines


RENDERERS = {"framework_tax": tax, "startup": startup, "sweep_overhead": sweep, "quality": quality}


def load() -> list[tuple[str, dict]]:
    """Every measurement as (kind, record); the kind is the record's `kind`, else its file name."""
    found = []
    for path in sorted(RESULTS.glob("*.json")):
        record = json.loads(path.read_text())
        for key in ("date", "machine", "command"):
            if not record.get(key):
                raise SystemExit(f"{path.name}: a measurement needs its {key!r}")
        kind = record.get("kind", path.stem)
        section = record.get("section") or BENCH_SECTIONS.get(kind)
        if section not in SECTIONS:
            raise SystemExit(f"{path.name}: section {section!r} is none of {SECTIONS}")
        found.append((kind, record | {"section": section, "title": record.get("title") or BENCH_TITLES.get(kind, kind)}))
    return found


def gpu_result() -> str:
    """bench/gpu_check.sh's summary table, copied into bench/results/gpu_check.md once it has run."""
    gpu = RESULTS / "gpu_check.md"
    if gpu.is_file():
        return gpu.read_text().strip()
    return ("No GPU result yet: `bench/gpu_prepare.sh` and `bench/gpu_check.sh` are ready for a GPU machine "
            "without internet and have not run.")


def render() -> str:
    measurements = load()
    lines = [
        "# Results",
        "",
        "<!-- Generated by bench/results_page.py from bench/results/*.json: edit those, then run the script. -->",
        "",
        "Every figure measured on this project, one measurement per entry, each with its date, the machine and",
        "the command. Nothing here is a promise for another machine: the project's machine (2 shared CPU",
        "cores) ran up to 3× slower on some days than on others, so compare the ratios within one entry,",
        "not absolute times across dates. How to measure again: [Performance](performance.md#benchmarks).",
        "",
    ]
    kinds = {id(r): k for k, r in measurements}
    for section in SECTIONS:
        entries = sorted((r for _, r in measurements if r["section"] == section), key=lambda r: (r["date"], r["title"]))
        if not entries and section != "Performance":
            continue
        lines += [f"## {section}", ""]
        for r in entries:
            lines += [f"### {r['title']}", "", *header(r), *RENDERERS.get(kinds[id(r)], generic)(r)]
        if section == "Performance":
            lines += ["### On a GPU", "", gpu_result(), ""]
    return "\n".join(lines).rstrip() + "\n"


def main() -> None:
    text = render()
    if "--check" in sys.argv[1:]:
        if not PAGE.is_file() or PAGE.read_text() != text:
            raise SystemExit(f"{PAGE.relative_to(ROOT)} differs from what bench/results_page.py renders: run it")
        return
    PAGE.parent.mkdir(exist_ok=True)
    PAGE.write_text(text)
    print(f"wrote {PAGE.relative_to(ROOT)} from {len(load())} measurements")


if __name__ == "__main__":
    main()
