"""Check the places a run writes to before anything is written there: output folders and SQLite stores.

MLflow and Optuna both create their tables in whatever SQLite file they are given: pointed by mistake
at another application's database they would add (and migrate) tables in it, and a damaged file ends
in a traceback deep inside SQLAlchemy. We open the file read-only with the standard library first and
refuse, in one line naming the path and the fix, anything that is not an empty file or our own kind
of database. A folder is checked by creating it (only below a parent that exists: a missing parent is
more often a typo or an unmounted disk than a wish) and writing a probe file into it.
"""

from __future__ import annotations

import os
import sqlite3
import tempfile
from pathlib import Path

from embedsweep.errors import UserError

# Tables that tell whose database a SQLite file is.
MLFLOW_TABLES = frozenset({"experiments", "runs", "alembic_version"})
OPTUNA_TABLES = frozenset({"studies", "trials", "version_info"})


def check_folder(path: Path, what: str, fix: str, create_parents: bool = False) -> None:
    """`path` exists (created if its parent does, or with `create_parents` any missing folders) and
    accepts a new file; else one-line UserError."""
    path = Path(path)
    if not create_parents and not path.exists() and not path.parent.exists():
        raise UserError(f"{what} {path} cannot be created: {path.parent} does not exist (a typo, or a disk not mounted?); {fix}")
    try:
        path.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=path, prefix=".write-probe-"):
            pass
    except OSError as exc:
        raise UserError(f"{what} {path} is not writable ({exc.strerror or type(exc).__name__}); {fix}") from exc


def check_sqlite(path: Path, tables: frozenset[str], what: str, fix: str) -> None:
    """Refuse a SQLite file that exists but is not `what` (damaged, or another application's); never changes it."""
    path = Path(path)
    check_folder(path.parent, f"the folder of {what}", fix)
    if not path.exists() or path.stat().st_size == 0:
        return  # a new store: the library creates it
    if not os.access(path, os.R_OK | os.W_OK):
        raise UserError(f"{what} {path} is not writable (permission denied); {fix}")
    try:
        # mode=ro: reading the schema must not create, lock for writing or migrate anything.
        con = sqlite3.connect(f"{path.resolve().as_uri()}?mode=ro", uri=True)
        try:
            found = {row[0] for row in con.execute("select name from sqlite_master where type = 'table'")}
        finally:
            con.close()
    except sqlite3.DatabaseError as exc:
        raise UserError(f"{what} {path} is not a SQLite database ({exc}): damaged, or another kind of file; {fix}") from exc
    if not tables <= found:
        shown = ", ".join(sorted(found)[:5]) or "none"
        raise UserError(f"{what} {path} is a SQLite database of another application (tables: {shown}); left untouched; {fix}")


def check_tracking_uri(uri: str, must_exist: bool = False) -> None:
    """A sqlite:/// MLflow store must be an MLflow database or new (or, with must_exist, exist)."""
    if not uri.startswith("sqlite:///"):
        return
    path = Path(uri.removeprefix("sqlite:///"))
    fix = "point tracking.uri (or MLFLOW_TRACKING_URI) at an MLflow store, e.g. sqlite:///outputs/mlflow.db"
    if must_exist and not path.is_file():
        raise UserError(f"MLflow store {path} does not exist; {fix}")
    check_sqlite(path, MLFLOW_TABLES, "MLflow store", fix)


def check_optuna_storage(url: str) -> None:
    if url.startswith("sqlite:///"):
        fix = "point hydra.sweeper.storage at an Optuna database, e.g. sqlite:///outputs/optuna.db"
        check_sqlite(Path(url.removeprefix("sqlite:///")), OPTUNA_TABLES, "Optuna storage", fix)
