"""Quality benchmark: fine-tune all-MiniLM-L6-v2 with each loss on the same slice of real MNLI train,
and compare STS-B validation scores before and after.

    python bench/quality.py                      # ~20 min on a 2-core CPU
    python bench/quality.py --rows 600 --variants mnr   # a quick look

Writes bench/results/quality.json (date, machine, command, one row per loss) and renders
docs/results.md from bench/results/ again (bench/results_page.py).

Each variant is one real `python train.py experiment=recipe_minilm_mnr_offline ...` run, so the
numbers are what a user gets; the results are read back from MLflow (experiment `bench_quality`).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

from embedsweep.run import metric_names as names

ROOT = Path(__file__).resolve().parents[1]
EXPERIMENT = "bench_quality"

# name -> overrides on top of the common ones
VARIANTS: dict[str, list[str]] = {
    "softmax": ["loss=softmax"],
    "cosine": ["loss=cosine"],
    "mnr": ["loss=mnr"],
    "mnr_hard": ["loss=mnr_hard"],
    "cached_mnr_b128": ["loss=cached_mnr", "batch=128", "loss.module.mini_batch_size=32"],
}
DESCRIPTIONS = {
    "softmax": "softmax (3-way NLI classifier)",
    "cosine": "cosine (entailment 1, else 0)",
    "mnr": "MNR, soft negatives, batch 32",
    "mnr_hard": "MNR, hard negatives (contradictions), batch 32",
    "cached_mnr_b128": "cached MNR, soft negatives, batch 128",
}


def cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def run_variant(name: str, args: argparse.Namespace, output_root: Path) -> dict[str, float | str]:
    from embedsweep.tracking.mlflow_tracker import MlflowTracker

    overrides = [
        "experiment=recipe_minilm_mnr_offline",
        f"paths.data_dir={args.data_dir}",
        f"data.limit={args.rows}",
        f"trainer.lr={args.lr}",
        f"trainer.warmup_steps={args.warmup}",
        "trainer.eval_steps=100000",  # one evaluation at the end; the baseline is measured before training
        "trainer.save_model=false",
        f"tracking.experiment={EXPERIMENT}",
        *VARIANTS[name],
    ]
    env = os.environ | {"HF_HUB_OFFLINE": "1", "EMBEDSWEEP_OUTPUT_ROOT": str(output_root)}
    env.pop("MLFLOW_TRACKING_URI", None)
    started = time.perf_counter()
    proc = subprocess.run([sys.executable, str(ROOT / "train.py"), *overrides], cwd=ROOT, env=env, capture_output=True, text=True)
    wall = time.perf_counter() - started
    if proc.returncode != 0:
        raise SystemExit(f"variant {name} failed:\n{proc.stderr[-3000:]}")
    run = MlflowTracker(f"sqlite:///{output_root}/mlflow.db", EXPERIMENT).runs()[0]  # the newest: this variant's
    m = run.metrics
    return {
        "variant": name,
        "batch": run.params["batch"],
        "rows": int(m[names.TRAIN_ROWS]),
        "steps": int(m[names.STEPS]),
        "baseline_pearson": m[names.baseline("pearson_cosine")],
        "baseline_spearman": m[names.baseline("spearman_cosine")],
        "pearson": m[names.answer("pearson_cosine")],
        "spearman": m[names.answer("spearman_cosine")],
        "train_s": m[names.efficiency("runtime_s")],
        "wall_s": wall,
    }


def record(results: list[dict], args: argparse.Namespace, total_s: float) -> dict:
    """One measurement for bench/results/quality.json, as bench/results_page.py renders it."""
    return {
        "kind": "quality",
        "date": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "machine": f"{cpu_name()}, {os.cpu_count()} cores, CPU only",
        "command": " ".join(["python", "bench/quality.py", *sys.argv[1:]]),
        "rows": args.rows,
        "data": f"{args.data_dir}/mnli/train.tsv",
        "lr": args.lr,
        "warmup": args.warmup,
        "total_min": round(total_s / 60, 1),
        "results": [r | {"description": DESCRIPTIONS[r["variant"]], "train_min": round(r["train_s"] / 60, 1)} for r in results],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data-dir", type=Path, default=ROOT.parent / "shared" / "data")
    parser.add_argument("--rows", type=int, default=3000, help="first N rows of MNLI train (each loss shapes the same rows)")
    parser.add_argument("--lr", type=float, default=5e-5)
    parser.add_argument("--warmup", type=int, default=10)
    parser.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=list(VARIANTS))
    parser.add_argument("--output-root", type=Path, default=ROOT / "outputs" / "bench")
    args = parser.parse_args()
    args.data_dir = args.data_dir.resolve()
    if not (args.data_dir / "mnli" / "train.tsv").is_file():
        raise SystemExit(f"no MNLI data at {args.data_dir}/mnli/train.tsv; pass --data-dir (a folder laid out like ../shared/data)")

    started, results = time.perf_counter(), []
    for name in args.variants:
        results.append(run_variant(name, args, args.output_root.resolve()))
        r = results[-1]
        print(f"{name}: pearson {r['baseline_pearson']:.4f} -> {r['pearson']:.4f} in {r['wall_s']:.0f}s", flush=True)
    path = ROOT / "bench" / "results" / "quality.json"
    path.write_text(json.dumps(record(results, args, time.perf_counter() - started), indent=1, ensure_ascii=False) + "\n")
    print("wrote", path.relative_to(ROOT))
    sys.path.insert(0, str(ROOT / "bench"))
    import results_page

    results_page.main()


if __name__ == "__main__":
    main()
