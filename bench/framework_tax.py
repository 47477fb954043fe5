"""Framework tax: the same training through `python train.py` (MLflow on) and through a plain
sentence-transformers script (bench/plain_st.py), alternating A and B, several pairs.

    python bench/framework_tax.py --pairs 3 --rows 3000      # about 12 min on 2 CPU cores

Reports medians of whole-command wall and CPU time and of the training loop's samples/s, and their
ratios train.py / plain. The loop is timed the same way on both sides: the wall time of
`trainer.train()` (perf_counter around the call) less the evaluations inside it, and samples/s is
training rows / that time. train.py's trainer scores the final model at its last step, inside
`train()` (train_runtime_s - train_eval_s in MLflow); the plain script evaluates after `train()`. The
same work on both sides: the content cache is off (`paths.cache_dir=null`: this measures the framework,
not reuse), so is the held-out test set (`test=none`: the plain script has none), and both encode
the eval set in batches of 32.
Writes bench/results/framework_tax.json.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

from perfkit import DATA, ROOT, median, save, timed

from embedsweep.run import metric_names as names


def ours(args: argparse.Namespace, out: Path) -> dict[str, float]:
    from embedsweep.tracking.mlflow_tracker import MlflowTracker

    cmd = [
        sys.executable, str(ROOT / "train.py"), "experiment=recipe_minilm_mnr_offline", f"paths.data_dir={args.data}",
        f"data.limit={args.rows}", "trainer.warmup_steps=10", "trainer.eval_steps=100000", "trainer.save_model=false",
        "paths.cache_dir=null", "test=none", "tracking.experiment=bench_tax", "trainer.eval_batch_size=32", *([f"eval.limit={args.eval_rows}"] if args.eval_rows else []),
    ]  # fmt: skip
    r = timed(cmd, env={"EMBEDSWEEP_OUTPUT_ROOT": str(out)})
    if r["rc"] != 0:
        raise SystemExit("train.py failed")
    m = MlflowTracker(f"sqlite:///{out}/mlflow.db", "bench_tax").runs()[0].metrics
    loop_s = m[names.efficiency("runtime_s")] - m[names.efficiency("eval_s")]
    return {"wall_s": r["wall_s"], "cpu_s": r["cpu_s"], "loop_s": loop_s, "samples_per_s": m[names.TRAIN_ROWS] / loop_s, "train_rows": m[names.TRAIN_ROWS],
            "before": m[names.baseline("pearson_cosine")], "after": m[names.answer("pearson_cosine")]}  # fmt: skip


def plain(args: argparse.Namespace) -> dict[str, float]:
    r = timed([sys.executable, str(ROOT / "bench" / "plain_st.py"), "--data", str(args.data), "--rows", str(args.rows),
               *(["--eval-rows", str(args.eval_rows)] if args.eval_rows else [])])
    if r["rc"] != 0:
        raise SystemExit("plain_st.py failed")
    o = json.loads(r["stdout"].strip().splitlines()[-1])
    return {"wall_s": r["wall_s"], "cpu_s": r["cpu_s"], "loop_s": o["train_s"], "samples_per_s": o["train_rows"] / o["train_s"], "train_rows": o["train_rows"],
            "before": o["before"], "after": o["after"]}  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--pairs", type=int, default=3)
    parser.add_argument("--rows", type=int, default=3000)
    parser.add_argument("--eval-rows", type=int, default=None, help="the first N STS-B validation pairs (all by default)")
    parser.add_argument("--data", type=Path, default=DATA)
    args = parser.parse_args()
    a: list[dict[str, float]] = []
    b: list[dict[str, float]] = []
    with tempfile.TemporaryDirectory(prefix="bench-tax-") as tmp:
        # A user's MLflow store exists already; creating one (schema migrations) is a one-off, not timed here.
        from embedsweep.tracking.mlflow_tracker import MlflowTracker

        MlflowTracker(f"sqlite:///{tmp}/mlflow.db", "bench_tax").connect()
        for i in range(args.pairs):
            # Alternate which side goes first, so that drift on a shared machine hits both.
            for side in ("ours", "plain") if i % 2 == 0 else ("plain", "ours"):
                (a if side == "ours" else b).append(ours(args, Path(tmp)) if side == "ours" else plain(args))
                print(f"pair {i} {side}: {(a if side == 'ours' else b)[-1]}", flush=True)
    med = {side: {k: median([r[k] for r in rows]) for k in rows[0]} for side, rows in (("train_py", a), ("plain", b))}
    ratios = {k: med["train_py"][k] / med["plain"][k] for k in ("wall_s", "cpu_s", "loop_s", "samples_per_s")}
    # Pair by pair too: each pair ran back to back, so slow spells of a shared machine hit both sides.
    per_pair = [a[i]["wall_s"] / b[i]["wall_s"] for i in range(args.pairs)]
    ratios["wall_s_median_of_pairs"] = median(per_pair)
    result = {"pairs": args.pairs, "wall_ratio_per_pair": per_pair, "rows": args.rows, "eval_rows": args.eval_rows, "train_py": a, "plain": b, "median": med, "ratio_train_py_over_plain": ratios}
    print(json.dumps({"median": med, "ratios": ratios}, indent=1))
    print("wrote", save("framework_tax", result))


if __name__ == "__main__":
    main()
