"""Start-up: `train.py --help`, `--cfg job` and a config error (`batch=0`) against a bare Hydra app
with the same config tree (bench/bare_hydra_app.py), alternating, medians and ratios.

    python bench/startup.py --repeats 7        # about a minute

The bare app runs `--help`, `--cfg job`, and for the config error a plain run of its empty task.
Writes bench/results/startup.json.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile

from perfkit import ROOT, median, save, timed

CASES = {"--help": ["--help"], "--cfg job": ["--cfg", "job"], "config error (batch=0)": ["batch=0"]}
BARE = {"--help": ["--help"], "--cfg job": ["--cfg", "job"], "config error (batch=0)": []}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=7)
    args = parser.parse_args()
    rows = {}
    with tempfile.TemporaryDirectory(prefix="bench-startup-") as tmp:
        env = {"EMBEDSWEEP_OUTPUT_ROOT": tmp}
        for case in CASES:
            ours, bare = [], []
            for i in range(args.repeats):
                order = ("ours", "bare") if i % 2 == 0 else ("bare", "ours")
                for side in order:
                    if side == "ours":
                        r = timed([sys.executable, str(ROOT / "train.py"), *CASES[case]], env=env)
                        assert r["rc"] == (2 if "error" in case else 0), r["stderr"][-500:]
                        ours.append(r["wall_s"])
                    else:
                        r = timed([sys.executable, str(ROOT / "bench" / "bare_hydra_app.py"), *BARE[case]], env=env)
                        assert r["rc"] == 0, r["stderr"][-500:]
                        bare.append(r["wall_s"])
            rows[case] = {"train_py_s": median(ours), "bare_hydra_s": median(bare), "ratio": median(ours) / median(bare)}
            print(case, rows[case], flush=True)
    print(json.dumps(rows, indent=1))
    print("wrote", save("startup", {"repeats": args.repeats, "cases": rows}))


if __name__ == "__main__":
    main()
