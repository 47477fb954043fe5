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


# ---------------------------------------------------------------- the MLflow tracking URI, resolved once for every command

# Schemes MLflow 3 opens a tracking store for (SQLAlchemy databases, a tracking server, Databricks);
# a driver may follow the database's name (postgresql+psycopg://).
DATABASE_SCHEMES = ("sqlite", "postgresql", "mysql", "mssql")
SERVER_SCHEMES = ("http", "https", "databricks", "databricks-uc", "uc")
_FILE_STORE_WHY = 'MLflow 3 keeps file stores in "maintenance mode" (no new features) and refuses to open them'


def default_tracking_uri() -> str:
    """The store when nothing names one: sqlite:///<output root>/mlflow.db, the output root being
    $EMBEDSWEEP_OUTPUT_ROOT or outputs (conf/paths/default.yaml)."""
    root = os.environ.get("EMBEDSWEEP_OUTPUT_ROOT", "").strip() or "outputs"
    return f"sqlite:///{root}/mlflow.db"


def tracking_uri(given: str | None = None, default: str | None = None) -> str:
    """The MLflow tracking URI a command uses: `given` (tracking.uri=, --tracking-uri), else
    $MLFLOW_TRACKING_URI, else `default`, else default_tracking_uri(); an empty value counts as unset.

    train.py, `python -m embedsweep.report`, `python -m embedsweep.liveness` and `make ui` all
    resolve their store here, so that one URI means the same store everywhere: `~` is expanded and a
    relative SQLite path is made absolute (from the folder the command starts in); spaces and
    non-ASCII letters are kept as they are. A file store (`./mlruns`, `file://...`, a plain path) and an
    unknown scheme are refused in one line (UserError), before MLflow is imported."""
    for candidate in (given, os.environ.get("MLFLOW_TRACKING_URI"), default):
        if candidate is not None and str(candidate).strip():
            uri = str(candidate).strip()
            break
    else:
        uri = default_tracking_uri()
    scheme = uri.split("://", 1)[0].lower() if "://" in uri else ""
    base = scheme.split("+", 1)[0]
    if base == "sqlite":
        return _sqlite_uri(uri)
    if base in DATABASE_SCHEMES or scheme in SERVER_SCHEMES or uri in ("databricks", "databricks-uc"):
        return uri
    if scheme in ("", "file"):
        path = uri.removeprefix("file://") if scheme else uri
        if path.endswith((".db", ".sqlite", ".sqlite3")):  # meant as a SQLite file
            instead = f"sqlite:///{path} for a SQLite file"
        else:
            instead = (
                "tracking.uri=sqlite:///outputs/mlflow.db (with neither it nor MLFLOW_TRACKING_URI set: the output root's "
                f"mlflow.db); to keep runs already in {path}: mlflow migrate-filestore --source {path} --target sqlite:///<a new file>.db"
            )
        raise UserError(f"MLflow tracking URI {uri} is a file store: {_FILE_STORE_WHY}; use a database instead, e.g. {instead}")
    allowed = ", ".join(f"{s}://" for s in (*DATABASE_SCHEMES, "http", "https")) + ", databricks"
    raise UserError(f"MLflow tracking URI {uri}: unknown scheme {scheme}://; allowed: {allowed}")


def _sqlite_uri(uri: str) -> str:
    """sqlite:///<path> with `~` expanded and the path absolute. `sqlite://` with no path (in memory)
    is refused: its runs would vanish with the process, and a sweep's jobs would not see each other's."""
    scheme, rest = uri.split("://", 1)
    if not rest.startswith("/") or rest in ("/", "/:memory:"):
        raise UserError(f"MLflow tracking URI {uri} names no file; give one, e.g. sqlite:///outputs/mlflow.db")
    path, sep, query = rest[1:].partition("?")
    absolute = Path(path).expanduser().absolute()
    return f"{scheme}:///{absolute}{sep}{query}"


def sqlite_path(uri: str) -> Path | None:
    """The file of a sqlite:/// URI (resolved by tracking_uri or not), else None."""
    if not uri.lower().split("://", 1)[0].split("+", 1)[0] == "sqlite" or "://" not in uri:
        return None
    path = uri.split("://", 1)[1].removeprefix("/").partition("?")[0]
    return Path(path).expanduser() if path else None


def check_tracking_uri(uri: str, must_exist: bool = False) -> None:
    """A sqlite:/// MLflow store must be an MLflow database or new (or, with must_exist, exist)."""
    path = sqlite_path(uri)
    if path is None:
        return
    fix = "point tracking.uri (or MLFLOW_TRACKING_URI) at an MLflow store, e.g. sqlite:///outputs/mlflow.db"
    if must_exist and not path.is_file():
        raise UserError(f"MLflow store {path} does not exist; {fix}")
    check_sqlite(path, MLFLOW_TABLES, "MLflow store", fix)


def check_optuna_storage(url: str) -> None:
    if url.startswith("sqlite:///"):
        fix = "point hydra.sweeper.storage at an Optuna database, e.g. sqlite:///outputs/optuna.db"
        check_sqlite(Path(url.removeprefix("sqlite:///")), OPTUNA_TABLES, "Optuna storage", fix)
