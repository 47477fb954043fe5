"""Repeated work across trials: a 6-trial Optuna sweep against 6 separate single runs with the same
settings, and the same sweep on an earlier commit (before the content cache and single evaluation).

    python bench/sweep_overhead.py --trials 6 --rows 1500 --eval-rows 500 --before-ref 77afda4   # about 30 min on 2 CPU cores

For each side: trial time = the side's whole wall time / trials (start-up, sweeper and MLflow included);
the share of it spent outside `trainer.train()` (train_runtime_s in MLflow, which holds the trainer's
evaluation of the final model); the evaluations' share (train_eval_s, where logged); and the share
outside the training loop (both). The defaults make trials of about a minute on 2 CPU cores (the
issue's goal: under 10% outside training for a 1-minute trial).
Writes bench/results/sweep_overhead.json.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

from perfkit import DATA, ROOT, save, timed

from embedsweep.run import metric_names as names

EXPERIMENT = "bench_sweep"


def common(args: argparse.Namespace, out: Path) -> list[str]:
    return [
        "experiment=recipe_minilm_mnr_offline", f"paths.data_dir={args.data}", f"data.limit={args.rows}",
        "trainer.save_model=false", f"tracking.experiment={EXPERIMENT}", *([f"eval.limit={args.eval_rows}"] if args.eval_rows else []),
        # The same evaluation policy on every side (the recipe's: none inside these short trials, so no
        # pruning either); each side's preset keeps its own search space.
        "trainer.eval_steps=100",
    ]  # fmt: skip


def runs(out: Path) -> list:
    """The jobs' runs, oldest first (the sweeps' parent runs left out)."""
    from embedsweep.tracking.mlflow_tracker import MlflowTracker

    found = MlflowTracker(f"sqlite:///{out}/mlflow.db", EXPERIMENT).runs()[::-1]
    return [r for r in found if r.tags.get("embedsweep.role") != "sweep"]


def summarise(side: str, wall: float, cpu: float, found: list, trials: int) -> dict[str, object]:
    train = sum(r.metrics[names.efficiency("runtime_s")] for r in found)
    # The trained model's evaluation inside train(); the earlier commit logs no train_eval_s, but it
    # evaluated the trained model again after train(), which "outside train()" then holds.
    timed_evals = [r.metrics.get("train_eval_s") for r in found]
    evals = sum(timed_evals) if None not in timed_evals else None
    per_trial = wall / trials
    row = {
        "side": side, "wall_s": wall, "cpu_s": cpu, "trials": len(found), "trial_s": per_trial,
        "train_s_per_trial": train / trials, "loop_s_per_trial": (train - (evals or 0.0)) / trials,
        "outside_training_share": 1 - train / wall,
        "eval_share": None if evals is None else evals / wall,
        "outside_loop_share": 1 - (train - (evals or 0.0)) / wall,
        "params": [{k: r.params.get(k) for k in ("batch", "trainer.warmup_steps", "trainer.warmup_ratio")} for r in found],
        "baseline_cached": [r.tags.get("baseline_cached") for r in found],
    }  # fmt: skip
    print(json.dumps({k: v for k, v in row.items() if k != "params"}), flush=True)
    return row


def sweep(args: argparse.Namespace, out: Path, pythonpath: str | None = None, cwd: Path = ROOT) -> dict[str, object]:
    cmd = [
        sys.executable, str(cwd / "train.py"), "-m", "hparams_search=batch_warmup", *common(args, out),
        f"hydra.sweeper.n_trials={args.trials}", f"hydra.sweeper.storage=sqlite:///{out}/optuna.db", "hydra/sweeper/pruner=none",
    ]  # fmt: skip
    env = {"EMBEDSWEEP_OUTPUT_ROOT": str(out)} | ({"PYTHONPATH": pythonpath} if pythonpath else {})
    r = timed(cmd, env=env, cwd=cwd)
    if r["rc"] != 0:
        raise SystemExit("sweep failed")
    return summarise("sweep (before)" if pythonpath else "sweep", r["wall_s"], r["cpu_s"], runs(out), args.trials)


def singles(args: argparse.Namespace, out: Path, params: list[dict[str, str]]) -> dict[str, object]:
    wall = cpu = 0.0
    for p in params:
        warmup = [f"{k}={'null' if p[k] in (None, 'None') else p[k]}" for k in ("trainer.warmup_steps", "trainer.warmup_ratio")]
        r = timed([sys.executable, str(ROOT / "train.py"), *common(args, out), f"batch={p['batch']}", *warmup],
                  env={"EMBEDSWEEP_OUTPUT_ROOT": str(out)})  # fmt: skip
        if r["rc"] != 0:
            raise SystemExit("single run failed")
        wall, cpu = wall + r["wall_s"], cpu + r["cpu_s"]
    return summarise(f"{len(params)} single runs", wall, cpu, runs(out), len(params))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--trials", type=int, default=6)
    parser.add_argument("--rows", type=int, default=1500)
    parser.add_argument("--eval-rows", type=int, default=500, help="the first N STS-B validation pairs (0: all 1,500)")
    parser.add_argument("--data", type=Path, default=DATA)
    parser.add_argument("--before-ref", default=None, help="a commit to measure the same sweep on (a git worktree in /tmp)")
    args = parser.parse_args()
    rows = []
    with tempfile.TemporaryDirectory(prefix="bench-sweep-") as tmp:
        after = sweep(args, Path(tmp) / "sweep")
        rows.append(after)
        rows.append(singles(args, Path(tmp) / "singles", after["params"]))
        if args.before_ref:
            tree = Path(tmp) / "before"
            subprocess.run(["git", "worktree", "add", "--detach", str(tree), args.before_ref], cwd=ROOT, check=True, capture_output=True)
            try:
                rows.append(sweep(args, Path(tmp) / "sweep-before", pythonpath=str(tree / "src"), cwd=tree))
            finally:
                subprocess.run(["git", "worktree", "remove", "--force", str(tree)], cwd=ROOT, check=False)
    print("wrote", save("sweep_overhead", {"rows_limit": args.rows, "eval_rows": args.eval_rows, "before_ref": args.before_ref, "sides": rows}))


if __name__ == "__main__":
    main()
