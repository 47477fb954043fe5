"""Shared by the performance benchmarks: timing a command (wall and CPU), naming the machine, medians,
and writing each benchmark's result as JSON under bench/results/ (bench/results_page.py renders the
results page of the docs, docs/results.md, from those files, never by hand)."""

from __future__ import annotations

import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "bench" / "results"
# The shared data folder next to the checkout (also next to the parent of a worktree folder).
DATA = next((p / "shared" / "data" for p in ROOT.parents if (p / "shared" / "data" / "mnli").is_dir()), ROOT.parent / "shared" / "data")
OFFLINE = {"HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}


def machine() -> str:
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    mem = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    return f"{cpu}, {os.cpu_count()} cores, {mem:.0f} GiB, no GPU used"


def timed(cmd: list[str], env: dict[str, str] | None = None, cwd: Path = ROOT) -> dict[str, object]:
    """Run a command; its wall time, its (and its children's) CPU time, exit code and output."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    started = time.perf_counter()
    proc = subprocess.run(cmd, cwd=cwd, env=os.environ | OFFLINE | (env or {}), capture_output=True, text=True)
    wall = time.perf_counter() - started
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    if proc.returncode not in (0,):
        sys.stderr.write(f"command failed ({proc.returncode}): {' '.join(cmd)}\n{proc.stderr[-3000:]}\n")
    return {"wall_s": wall, "cpu_s": cpu, "rc": proc.returncode, "stdout": proc.stdout, "stderr": proc.stderr}


def median(values: list[float]) -> float:
    return statistics.median(values)


def save(name: str, result: dict[str, object]) -> Path:
    RESULTS.mkdir(parents=True, exist_ok=True)
    result = {"machine": machine(), "date": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"), "command": " ".join(sys.argv)} | result
    path = RESULTS / f"{name}.json"
    path.write_text(json.dumps(result, indent=1) + "\n")
    import results_page  # bench/ is on sys.path: the benchmarks run as scripts from it

    results_page.main()
    return path
