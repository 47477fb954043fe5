"""Check the places a run writes to before anything is written there: output folders and SQLite stores.

MLflow and Optuna both create their tables in whatever SQLite file they are given: pointed by mistake
at another application's database they would add (and migrate) tables in it, and a damaged file ends
in a traceback deep inside SQLAlchemy. We open the file read-only with the standard library first and
refuse, in one line naming the path and the fix, anything that is not an empty file or our own kind
of database. A folder is checked by creating it (only below a parent that exists: a missing parent is
more often a typo or an unmounted disk than a wish) and writing a probe file into it.
"""

from __future__ import annotations

import errno
import logging
import os
import re
import sqlite3
import tempfile
from pathlib import Path
from typing import Any

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

    train.py, `python -m embedsweep.conclude.report`, `python -m embedsweep.tracking.liveness` and `make ui` all
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
    """A sqlite:/// Optuna storage must be an Optuna database or new."""
    if (path := sqlite_path(url)) is not None:
        fix = "point hydra.sweeper.storage at an Optuna database, e.g. sqlite:///outputs/optuna.db"
        check_sqlite(path, OPTUNA_TABLES, "Optuna storage", fix)


# ---------------------------------------------------------------- a full disk, anywhere

# The places this process writes to, by what they are (register_places): a full disk is named by them.
_PLACES: dict[str, Path] = {}
_FIXES = {
    "output root": "set EMBEDSWEEP_OUTPUT_ROOT (or paths.output_root=) to a larger disk",
    "MLflow store": "point tracking.uri (or MLFLOW_TRACKING_URI) at a larger disk",
    "Optuna storage": "point hydra.sweeper.storage at a larger disk",
    "cache": "point paths.cache_dir at a larger disk, or set it to null",
}
_OPTUNA_SQL = re.compile(r"\b(trials|trial_\w+|studies|study_\w+|version_info)\b")


def register_places(cfg: Any, optuna_storage: str | None = None) -> None:
    """Remember where this run or sweep writes (its MLflow store and Optuna storage when SQLite files,
    its output root and cache), so that a full disk can be named by what lies on it."""
    tracking = cfg.get("tracking") or {}
    paths = cfg.get("paths") or {}
    try:
        store = sqlite_path(tracking_uri(tracking.get("uri"), tracking.get("default_uri")))
    except UserError:
        store = None
    found = {
        "MLflow store": store,
        "Optuna storage": sqlite_path(optuna_storage) if optuna_storage else None,
        "output root": Path(str(paths.get("output_root"))) if paths.get("output_root") else None,
        "cache": Path(str(paths.get("cache_dir"))) if paths.get("cache_dir") else None,
    }
    _PLACES.update({what: path.expanduser().absolute() for what, path in found.items() if path is not None})


def _chain(exc: BaseException) -> list[BaseException]:
    """`exc` and every exception it came from (causes, contexts, a driver's original error)."""
    found: list[BaseException] = []
    stack: list[Any] = [exc]
    while stack and len(found) < 50:
        e = stack.pop()
        if not isinstance(e, BaseException) or any(e is f for f in found):
            continue
        found.append(e)
        stack += [getattr(e, "orig", None), e.__context__, e.__cause__]
    return found


def ran_out(exc: BaseException) -> str | None:
    """'disk space' or 'disk quota' when `exc` comes from a full disk (an OSError, SQLite's 'database or
    disk is full', a library's wrapping of either); else None."""
    for e in _chain(exc):
        text = str(e)
        if (isinstance(e, OSError) and e.errno == errno.EDQUOT) or "Disk quota exceeded" in text:
            return "disk quota"
        if (isinstance(e, OSError) and e.errno == errno.ENOSPC) or "database or disk is full" in text or "No space left on device" in text:
            return "disk space"
    return None


def _existing(path: Path) -> Path:
    while not path.exists() and path != path.parent:
        path = path.parent
    return path


def _free(path: Path) -> tuple[int, int, bool]:
    """Free bytes and total bytes of the device of `path`, and whether its inodes ran out."""
    where = _existing(path)
    st = os.statvfs(where)
    return st.f_bavail * st.f_frsize, st.f_blocks * st.f_frsize, st.f_files > 0 and st.f_favail == 0


def _size(n: float) -> str:
    for unit in ("bytes", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "bytes" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} TiB"  # pragma: no cover


def _full_place(exc: BaseException) -> tuple[str, Path] | None:
    """Which registered place the full disk is under: the one an OSError names, the SQLite database the
    failed statement wrote (MLflow or Optuna tables), else the one whose device has least room left."""
    chain = _chain(exc)
    for e in chain:
        name = getattr(e, "filename", None)
        if isinstance(e, OSError) and name:
            target = Path(os.fsdecode(name)).absolute()
            for what, place in sorted(_PLACES.items(), key=lambda item: -len(str(item[1]))):
                if target == place or place in target.parents:
                    return what, target
    if any("database or disk is full" in str(e) for e in chain):
        optuna = any(_OPTUNA_SQL.search(str(getattr(e, "statement", "") or "")) for e in chain)
        what = "Optuna storage" if optuna else "MLflow store"
        if what in _PLACES:
            return what, _PLACES[what]
    candidates = []
    for what, place in _PLACES.items():
        try:
            free, total, inodes_out = _free(place)
        except OSError:
            continue
        # Places on one device have the same room: the output root, which holds the others by default, first.
        candidates.append((not inodes_out, free, list(_FIXES).index(what), what, place))
    return min(candidates)[3:] if candidates else None


def full_disk_error(exc: BaseException, place: tuple[str, Path] | None = None) -> UserError | None:
    """One line for an error that comes from a full disk: which place (MLflow store, Optuna storage,
    output root, cache; `place` when the caller knows), its path, what ran out (disk space, inodes,
    quota) and what to do; else None."""
    try:
        what_ran_out = ran_out(exc)
    except Exception:  # noqa: BLE001 - an exception whose text cannot be read: not ours to explain
        return None
    if what_ran_out is None:
        return None
    place = place or _full_place(exc)
    if place is None:
        first = next((e for e in _chain(exc) if ran_out(e)), exc)
        return UserError(f"no {what_ran_out} left on a device ({' '.join(str(first).split())[:200]}); free some and run again")
    what, path = place
    try:
        free, total, inodes_out = _free(path)
        room = f"{_size(free)} free of {_size(total)}"
    except OSError:
        inodes_out, room = False, "unknown room"
    if inodes_out:
        what_ran_out, room = "inodes (room for new files)", f"no inodes free, {_size(free)} free"
    lead = "disk quota exceeded" if what_ran_out == "disk quota" else f"no {what_ran_out} left"
    kept = "what it recorded before is kept, and the next run ends FAILED any run left RUNNING" if what == "MLflow store" else "what was recorded before is kept"
    return UserError(f"{lead} on the device of the {what} {path} ({room}): free some, or {_FIXES[what]}; {kept}")


def one_line(exc: BaseException) -> str:
    """An error as one short line for a warning: a full disk as what ran out, anything else its text
    collapsed (a database error's text spans its SQL and parameters over many lines)."""
    if (what := ran_out(exc)) is not None:
        name = next((e.filename for e in _chain(exc) if isinstance(e, OSError) and e.filename), None)
        where = f" of {os.fsdecode(name)}" if name else ""
        return f"disk quota exceeded{where}" if what == "disk quota" else f"no {what} left on the device{where}"
    text = " ".join(str(exc).split())
    return (text[:300] + "...") if len(text) > 300 else text or type(exc).__name__


def not_disk_full(record: logging.LogRecord) -> bool:
    """A logging filter: drops a library's record of a full disk (MLflow logs each failed statement with
    its traceback before raising it); the command reports the full disk itself, in one line."""
    exc = record.exc_info[1] if record.exc_info else None
    return not ((exc is not None and ran_out(exc)) or "database or disk is full" in record.getMessage())
