"""`make ui`: the MLflow UI over the store train.py writes to, with the latest sweep's link first.

    python -m embedsweep.tracking.ui [--tracking-uri URI] [--port 5000] [--dry-run]

The store is resolved as by train.py, the report and the liveness command (stores.tracking_uri):
--tracking-uri, else $MLFLOW_TRACKING_URI, else sqlite:///<$EMBEDSWEEP_OUTPUT_ROOT or outputs>/mlflow.db.
A tracking server is its own UI: only its link is printed. The UI binds to 127.0.0.1.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
from pathlib import Path

from embedsweep.errors import UserError
from embedsweep.redaction import public_url, redact
from embedsweep.checks.stores import check_tracking_uri, tracking_uri


def ui_command(uri: str, port: int) -> list[str]:
    mlflow = shutil.which("mlflow", path=str(Path(sys.executable).parent)) or shutil.which("mlflow") or "mlflow"
    return [mlflow, "ui", "--backend-store-uri", uri, "--host", "127.0.0.1", "--port", str(port)]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m embedsweep.tracking.ui", description=__doc__.split("\n\n")[0])
    parser.add_argument("--tracking-uri", default=None, help="MLflow tracking URI (default: as train.py: $MLFLOW_TRACKING_URI, else the output root's mlflow.db)")
    parser.add_argument("--experiment", default="embedsweep")
    parser.add_argument("--port", type=int, default=5000)
    parser.add_argument("--dry-run", action="store_true", help="print the link and the command, start nothing")
    args = parser.parse_args(argv)
    try:
        uri = tracking_uri(args.tracking_uri)
        check_tracking_uri(uri, must_exist=True)  # nothing to show in a store not made yet: no empty one made
        from embedsweep.tracking.mlflow_tracker import MlflowTracker

        server = uri.startswith(("http://", "https://"))
        link = MlflowTracker(uri, args.experiment).ui_link()  # a server that does not answer: one line
        link = public_url(link) if server else link.replace("http://127.0.0.1:5000/", f"http://127.0.0.1:{args.port}/", 1)
    except UserError as exc:
        print(redact(f"error: {exc}"), file=sys.stderr)
        return 2
    print(f"open: {link}", flush=True)
    if server:
        print("the tracking server is its own UI: nothing to start here")
        return 0
    command = ui_command(uri, args.port)
    if args.dry_run:
        print(" ".join(command))
        return 0
    os.execv(command[0], command)  # the UI in this process: Ctrl-C stops it
    return 0  # pragma: no cover


if __name__ == "__main__":
    sys.exit(main())
