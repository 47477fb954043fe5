"""Every form of tracking URI gets a run or one line, the same in train.py, the report, the liveness
command and `make ui` (embedsweep.checks.stores.tracking_uri): empty means unset, a file store is refused
before MLflow is imported, `~`, relative paths, spaces and non-ASCII letters name the same store."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from conftest import OFFLINE_ENV, ROOT
from embedsweep.checks import stores
from embedsweep.errors import UserError

FILE_STORE = 'is a file store: MLflow 3 keeps file stores in "maintenance mode" (no new features) and refuses to open them; use a database instead'


@pytest.fixture
def env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Path:
    """No MLflow or output-root setting from outside; HOME and the working folder in tmp_path."""
    for var in ("MLFLOW_TRACKING_URI", "EMBEDSWEEP_OUTPUT_ROOT"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.chdir(tmp_path)
    return tmp_path


def test_empty_means_unset_and_the_default_follows_the_output_root(env: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    assert stores.tracking_uri() == f"sqlite:///{env}/outputs/mlflow.db"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "")
    assert stores.tracking_uri("") == stores.tracking_uri("  ") == f"sqlite:///{env}/outputs/mlflow.db"
    monkeypatch.setenv("EMBEDSWEEP_OUTPUT_ROOT", "runs here/ünï")
    assert stores.tracking_uri() == f"sqlite:///{env}/runs here/ünï/mlflow.db"
    assert stores.tracking_uri("", default="sqlite:///other.db") == f"sqlite:///{env}/other.db"  # train.py's config default
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://mlflow.example:5000")
    assert stores.tracking_uri("") == "http://mlflow.example:5000"
    assert stores.tracking_uri("sqlite:///given.db") == f"sqlite:///{env}/given.db"  # the flag wins over the environment


def test_sqlite_paths_are_absolute_with_home_expanded_and_kept_otherwise(env: Path) -> None:
    assert stores.tracking_uri("sqlite:///~/my store ü.db") == f"sqlite:///{env}/home/my store ü.db"
    assert stores.tracking_uri("sqlite:///../x.db?timeout=30") == f"sqlite:///{env}/../x.db?timeout=30"
    assert stores.tracking_uri(f"sqlite:///{env}/a b/ß.db") == f"sqlite:///{env}/a b/ß.db"
    assert stores.sqlite_path(stores.tracking_uri("sqlite:///~/m.db")) == env / "home" / "m.db"
    for uri in ("postgresql+psycopg://u@db/mlflow", "http://127.0.0.1:5000", "https://mlflow.example", "databricks"):
        assert stores.tracking_uri(uri) == uri


@pytest.mark.parametrize("uri", ["./mlruns", "mlruns", "file:///tmp/mlruns", "/srv/mlflow/mlruns", "~/mlruns"])
def test_a_file_store_is_one_line_naming_it_why_and_what_to_use(env: Path, uri: str) -> None:
    with pytest.raises(UserError) as info:
        stores.tracking_uri(uri)
    message = str(info.value)
    path = uri.removeprefix("file://")
    assert message.startswith(f"MLflow tracking URI {uri} {FILE_STORE}, e.g. tracking.uri=sqlite:///outputs/mlflow.db")
    assert message.endswith(f"mlflow migrate-filestore --source {path} --target sqlite:///<a new file>.db") and "\n" not in message


def test_a_plain_path_to_a_db_file_is_pointed_at_sqlite(env: Path) -> None:
    with pytest.raises(UserError, match=r"^MLflow tracking URI outputs/mlflow.db is a file store: .* e.g. sqlite:///outputs/mlflow.db for a SQLite file$"):
        stores.tracking_uri("outputs/mlflow.db")


@pytest.mark.parametrize(
    ("uri", "message"),
    [
        ("ftp://host/x", "MLflow tracking URI ftp://host/x: unknown scheme ftp://; allowed: sqlite://, postgresql://, mysql://, mssql://, http://, https://, databricks"),
        ("sqlite://", "MLflow tracking URI sqlite:// names no file; give one, e.g. sqlite:///outputs/mlflow.db"),
        ("sqlite:///:memory:", "MLflow tracking URI sqlite:///:memory: names no file; give one, e.g. sqlite:///outputs/mlflow.db"),
    ],
)
def test_other_unusable_uris_are_one_line(env: Path, uri: str, message: str) -> None:
    with pytest.raises(UserError) as info:
        stores.tracking_uri(uri)
    assert str(info.value) == message


def test_the_tracker_resolves_the_same_way(env: Path) -> None:
    from embedsweep.tracking.mlflow_tracker import MlflowTracker

    assert MlflowTracker("", "e", default_uri="sqlite:///outputs/mlflow.db").uri == f"sqlite:///{env}/outputs/mlflow.db"
    assert MlflowTracker("sqlite:///~/t.db", "e").uri == f"sqlite:///{env}/home/t.db"
    with pytest.raises(UserError, match="is a file store"):
        MlflowTracker("./mlruns", "e")


def test_the_config_default_and_an_empty_environment_variable(compose, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "")
    cfg = compose("paths.output_root=/data/out")
    assert (cfg.tracking.uri, cfg.tracking.default_uri) == ("", "sqlite:////data/out/mlflow.db")
    assert stores.tracking_uri(cfg.tracking.uri, cfg.tracking.default_uri) == "sqlite:////data/out/mlflow.db"


# ---------------------------------------------------------------- the commands


def _cli(tmp_path: Path, *args: str, env: dict[str, str] | None = None) -> tuple[subprocess.CompletedProcess[str], float]:
    full = {k: v for k, v in os.environ.items() if k not in ("MLFLOW_TRACKING_URI", "EMBEDSWEEP_OUTPUT_ROOT")}
    started = time.monotonic()
    proc = subprocess.run([sys.executable, *args], cwd=tmp_path, env=full | OFFLINE_ENV | (env or {}), capture_output=True, text=True, timeout=300)
    return proc, time.monotonic() - started


# Each command run in a Python that says, at its exit, whether MLflow or torch were imported.
WATCH = "import atexit, runpy, sys; atexit.register(lambda: print('imported:', sorted({'mlflow', 'torch'} & set(sys.modules))))"
COMMANDS = {
    "train": f"{WATCH}; sys.argv = ['train.py', 'model=tiny']; sys.path.insert(0, {str(ROOT)!r}); runpy.run_path({str(ROOT / 'train.py')!r}, run_name='__main__')",
    "sweep": f"{WATCH}; sys.argv = ['train.py', '-m', 'model=tiny', 'loss=mnr,cosine']; runpy.run_path({str(ROOT / 'train.py')!r}, run_name='__main__')",
    "report": f"{WATCH}; sys.argv = ['report']; runpy.run_module('embedsweep.conclude.report', run_name='__main__')",
    "liveness": f"{WATCH}; sys.argv = ['liveness']; runpy.run_module('embedsweep.tracking.liveness', run_name='__main__')",
    "ui": f"{WATCH}; sys.argv = ['ui', '--dry-run']; runpy.run_module('embedsweep.tracking.ui', run_name='__main__')",
}


@pytest.mark.parametrize("command", list(COMMANDS))
@pytest.mark.parametrize("uri", ["./mlruns", "file:///tmp/mlruns"])
def test_every_command_refuses_a_file_store_in_one_line_before_importing_mlflow(tmp_path: Path, command: str, uri: str) -> None:
    proc, seconds = _cli(tmp_path, "-c", COMMANDS[command], env={"MLFLOW_TRACKING_URI": uri})
    assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr[-3000:]
    assert proc.stderr.strip().splitlines() == [proc.stderr.strip()]  # one line
    assert proc.stderr.startswith(f"error: MLflow tracking URI {uri} {FILE_STORE}")
    assert proc.stdout.strip().splitlines()[-1] == "imported: []"
    assert sorted(p.name for p in tmp_path.iterdir()) == []  # no folder, no store, no mlruns/
    assert seconds < 60, f"{seconds:.0f} s to the message"


@pytest.mark.slow
def test_one_store_with_spaces_non_ascii_and_a_relative_root_serves_every_command(tmp_path: Path) -> None:
    """EMBEDSWEEP_OUTPUT_ROOT relative, with a space and non-ASCII letters, MLFLOW_TRACKING_URI set but
    empty: the sweep writes there, and the report, the liveness command and `make ui` find the same store."""
    env = {"EMBEDSWEEP_OUTPUT_ROOT": "my runs/ünïcødé", "MLFLOW_TRACKING_URI": "", "HOME": str(tmp_path / "home")}
    store = tmp_path / "my runs" / "ünïcødé" / "mlflow.db"
    (tmp_path / "my runs").mkdir()  # an output root is created only below a folder that exists
    proc, _ = _cli(tmp_path, str(ROOT / "train.py"), "-m", "model=tiny", "trainer.max_steps=2", "trainer.warmup_steps=0", "batch=16,32", "test=none", env=env)
    assert proc.returncode == 0 and "Traceback" not in proc.stderr, proc.stderr[-3000:]
    assert store.is_file() and not (tmp_path / "outputs").exists()

    report, _ = _cli(tmp_path, "-m", "embedsweep.conclude.report", env=env)
    assert report.returncode == 0, report.stderr[-3000:]
    assert "batch" in report.stdout and str(tmp_path / "my runs") not in report.stderr
    live, _ = _cli(tmp_path, "-m", "embedsweep.tracking.liveness", "--dry-run", env=env)
    assert live.returncode == 0 and live.stdout.strip().splitlines()[-1] == f"0 run(s) would end; sqlite:///{store} experiment 'embedsweep'"
    ui, _ = _cli(tmp_path, "-m", "embedsweep.tracking.ui", "--dry-run", env=env)
    assert ui.returncode == 0, ui.stderr
    assert ui.stdout.splitlines()[0].startswith("open: http://127.0.0.1:5000/#/experiments/")
    assert ui.stdout.splitlines()[1].endswith(f"ui --backend-store-uri sqlite:///{store} --host 127.0.0.1 --port 5000")

    # `~` in the URI: the same store, by another name
    home = tmp_path / "home"
    home.mkdir(exist_ok=True)  # the libraries may have made it (HOME/.cache)
    (home / "my store ü.db").symlink_to(store)
    live, _ = _cli(tmp_path, "-m", "embedsweep.tracking.liveness", "--dry-run", "--uri", "sqlite:///~/my store ü.db", env=env)
    assert live.returncode == 0 and live.stdout.strip().endswith(f"0 run(s) would end; sqlite:///{home}/my store ü.db experiment 'embedsweep'")


@pytest.mark.slow
def test_a_run_with_a_tilde_uri_lands_in_home(tmp_path: Path) -> None:
    env = {"HOME": str(tmp_path / "home"), "MLFLOW_TRACKING_URI": "sqlite:///~/mlflow stores/ü.db"}
    (tmp_path / "home").mkdir()
    proc, _ = _cli(tmp_path, str(ROOT / "train.py"), "model=tiny", "trainer.max_steps=2", "trainer.warmup_steps=0", "test=none", env=env)
    assert proc.returncode == 0 and "Traceback" not in proc.stderr, proc.stderr[-3000:]
    assert (tmp_path / "home" / "mlflow stores" / "ü.db").is_file() and not (tmp_path / "~").exists()
