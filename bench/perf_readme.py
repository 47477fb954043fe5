"""Write the README's "Performance" tables from the benchmark results in bench/results/*.json
(framework_tax.py, startup.py, sweep_overhead.py), between the bench:perf markers.

    python bench/perf_readme.py
"""

from __future__ import annotations

import json
import re

from perfkit import RESULTS, ROOT

START, END = "<!-- bench:perf:start -->", "<!-- bench:perf:end -->"


def load(name: str) -> dict | None:
    path = RESULTS / f"{name}.json"
    return json.loads(path.read_text()) if path.is_file() else None


def tax(r: dict) -> list[str]:
    m, q = r["median"], r["ratio_train_py_over_plain"]
    return [
        f"**Framework tax** (`{r['command']}`; {r['date']}): the same training (all-MiniLM-L6-v2, MNR, "
        f"{m['train_py']['train_rows']:,.0f} MNLI triplets from the first {r['rows']:,} rows, batch 32, STS-B validation "
        f"before and after) through `train.py` with MLflow and through a plain sentence-transformers script "
        f"(`bench/plain_st.py`), {r['pairs']} alternating pairs, medians; no test set and no cache on either side. "
        f"The training loop is timed alike on both sides: `trainer.train()` less the evaluations inside it "
        f"(train.py's trainer scores the final model there). Wall ratio pair by pair: "
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
        f"**Start-up** (`{r['command']}`; {r['date']}): against a Hydra app with the same config tree and an "
        f"empty task (`bench/bare_hydra_app.py`), alternating, median of {r['repeats']}.",
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
        f"**Repeated work across trials** (`{r['command']}`; {r['date']}): a {r['sides'][0]['trials']}-trial Optuna "
        f"sweep (`hparams_search=batch_warmup`, all-MiniLM-L6-v2, MNR on the triplets of the first {r['rows_limit']:,} "
        f"MNLI rows, STS-B validation{eval_part}), the same trials as separate single runs, and the same sweep on commit "
        f"`{r['before_ref']}` (before). Trial time is the side's wall time / trials (start-up, sweeper and MLflow "
        f"included). Outside `train()`: start-up, data, the untouched model's score, MLflow; evaluations: the "
        f"trained model's score (inside `train()`); outside the loop: both. The earlier commit scored the trained "
        f"model after `train()`, and the untouched model in every trial: its outside `train()` holds both.",
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


def main() -> None:
    parts: list[str] = []
    machine = None
    for name, render in (("framework_tax", tax), ("startup", startup), ("sweep_overhead", sweep)):
        r = load(name)
        if r is not None:
            machine = machine or r["machine"]
            parts += render(r)
        else:
            parts += [f"**{name}**: no result yet (`python bench/{name}.py`).", ""]
    gpu = RESULTS / "gpu_check.md"
    parts.append(gpu.read_text() if gpu.is_file() else "No GPU result yet: `bench/gpu_check.sh` is ready for a GPU machine without internet and has not run.")
    body = f"Machine: {machine}. Its speed varies from day to day: compare the ratios (alternating runs), not absolute times across dates.\n\n" + "\n".join(parts)
    readme = ROOT / "README.md"
    text = readme.read_text()
    block = f"{START}\n{body.strip()}\n{END}"
    text = re.sub(re.escape(START) + ".*?" + re.escape(END), lambda _: block, text, flags=re.S) if START in text else text + f"\n{block}\n"
    readme.write_text(text)
    print(body)


if __name__ == "__main__":
    main()
