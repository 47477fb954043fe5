"""Shared fixtures: offline environment, config composition, running the real command."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from types import ModuleType
from typing import NoReturn

import pytest

ROOT = Path(__file__).resolve().parents[1]
CONF = ROOT / "conf"
SHARED_DATA = ROOT.parent / "shared" / "data"

# No test may touch the network: a Hub id would otherwise spend a minute on retries.
OFFLINE_ENV = {"HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
os.environ.update(OFFLINE_ENV)
# With several xdist workers on a small machine, each test's torch would start one thread per core and
# the workers' threads would contend for the same cores (measured: 30% more CPU time for the same
# tests); one thread per test process keeps the cores busy without that. A value set by the user wins.
if int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1")) > 1:
    os.environ.setdefault("OMP_NUM_THREADS", "1")
for var in ("MLFLOW_TRACKING_URI", "EMBEDSWEEP_OUTPUT_ROOT", "EMBEDSWEEP_OPTUNA_STORAGE", "MLFLOW_TRACKING_PASSWORD", "MLFLOW_TRACKING_TOKEN"):
    os.environ.pop(var, None)


# ---------------------------------------------------------------- services a test needs

# CI (.ci/run, CI=true) claims to run every test against the real services, so there a missing one fails
# the test with one line naming it; on a user's machine (`make test`) the test skips, saying why.
SERVICES_REQUIRED = os.environ.get("CI") == "true"
# The one exception: .ci/run runs the fast suite once more from a clone with no ../shared beside it, to
# show that the tests needing ../shared/data skip there; that step sets this variable (see shared_data).
NO_SHARED_DATA_OK = os.environ.get("EMBEDSWEEP_CI_WITHOUT_SHARED") == "1"


def require(service: str, reason: str) -> NoReturn:
    """Stop a test that cannot run without `service` (PostgreSQL, the SLURM cluster, Chromium, a tmpfs
    mount, a package of the dev extra): pytest.skip(reason) for a user, pytest.fail under CI=true."""
    reason = " ".join(reason.split())  # one line, even for a driver's multi-line error
    if SERVICES_REQUIRED:
        pytest.fail(f"CI=true but {service} is missing: {reason}", pytrace=False)
    pytest.skip(reason)


def require_module(name: str, reason: str) -> ModuleType:
    """pytest.importorskip that fails under CI=true (the dev extra installs every optional package)."""
    import importlib

    try:
        return importlib.import_module(name)
    except ImportError as exc:
        require(f"the Python package {name}", f"{reason} ({exc})")


@pytest.fixture(autouse=True)
def _forget_the_tracking_uri() -> Iterator[None]:
    """mlflow.set_tracking_uri() also exports MLFLOW_TRACKING_URI so that subprocesses inherit it: a
    test that calls it in this process (directly or through the tracker) would otherwise send every
    later command's runs to its own store, and those tests would find theirs empty."""
    yield
    if "mlflow" in sys.modules:
        import mlflow

        mlflow.set_tracking_uri(None)
    os.environ.pop("MLFLOW_TRACKING_URI", None)


@pytest.fixture
def compose() -> Callable[..., object]:
    """Compose conf/train.yaml with overrides, as `python train.py` would (without running it)."""
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir

    def _compose(*overrides: str, hydra_config: bool = False):
        with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
            return hydra_compose("train", overrides=list(overrides), return_hydra_config=hydra_config)

    return _compose


@pytest.fixture
def train_cmd(tmp_path: Path) -> Callable[..., subprocess.CompletedProcess[str]]:
    """Run `python train.py ARGS` in tmp_path (so outputs/ lands there); returns the finished process."""

    def _run(*args: str, timeout: float = 600, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
        # tests/helpers is importable by the command, for faulty losses plugged in through YAML; a PYTHONPATH
        # already set is kept after it (.ci/run points it at a second clone's src/).
        pythonpath = os.pathsep.join(p for p in (str(ROOT / "tests" / "helpers"), os.environ.get("PYTHONPATH")) if p)
        full_env = os.environ | OFFLINE_ENV | {"PYTHONPATH": pythonpath} | (env or {})
        return subprocess.run(
            [sys.executable, str(ROOT / "train.py"), *args],
            cwd=tmp_path, env=full_env, capture_output=True, text=True, timeout=timeout,
        )  # fmt: skip

    return _run


@pytest.fixture
def mlflow_runs(tmp_path: Path) -> Callable[..., list]:
    """All runs of an experiment (default: embedsweep) in tmp_path/outputs/mlflow.db, oldest first."""

    def _runs(name: str = "embedsweep") -> list:
        from mlflow import MlflowClient

        client = MlflowClient(tracking_uri=f"sqlite:///{tmp_path}/outputs/mlflow.db")
        experiment = client.get_experiment_by_name(name)
        assert experiment is not None, f"no {name} experiment in the MLflow store"
        runs = client.search_runs([experiment.experiment_id], order_by=["attributes.start_time ASC"])
        return list(runs)

    return _runs


# The config groups that can read a local file (source: local, a path), as embedsweep.checks.config checks them.
LOCAL_GROUPS = ("data", "eval", "test")


def local_files(cfg) -> dict[str, Path]:
    """{group: path} of every local file a composed config reads (an `experiment=*_offline` preset's
    files under paths.data_dir, a data=local path, ...)."""
    files = {}
    for group in LOCAL_GROUPS:
        node = cfg.get(group)
        if node is not None and hasattr(node, "get") and node.get("source") == "local" and node.get("path") is not None:
            files[group] = Path(str(node.path)).expanduser()
    return files


def write_local_files(cfg) -> dict[str, Path]:
    """Write a small TSV at each local path of a composed config, with the columns its group maps (24
    rows: enough for data.load_nli / load_sts), so that a preset which reads ../shared/data composes and
    validates without it: compose with `paths.data_dir=<a tmp folder>`, then call this. Returns local_files(cfg)."""
    files = local_files(cfg)
    for group, path in files.items():
        columns = {ours: theirs for ours, theirs in (cfg[group].get("columns") or {}).items() if theirs is not None}
        rows = [[{"label": str(i % 3), "score": str(i % 6)}.get(ours, f"A {ours} sentence number {i}.") for ours in columns] for i in range(24)]
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text("".join("\t".join(row) + "\n" for row in [list(columns.values()), *rows]))
    return files


@pytest.fixture
def shared_data() -> Path:
    if not (SHARED_DATA / "mnli" / "train.tsv").is_file():
        reason = f"real data not found at {SHARED_DATA} (the shared/ folder next to the checkout)"
        if NO_SHARED_DATA_OK:  # .ci/run's step without ../shared: skipping is what it checks
            pytest.skip(reason)
        require("../shared/data", reason)
    return SHARED_DATA


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    """A real 1 MiB file system (tmpfs): room for a run's logs and configs, not for a model. Needs root
    (mount); skips without it (fails under CI=true)."""
    path = tmp_path / "small"
    path.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(path)], capture_output=True).returncode != 0:
        require("a tmpfs mount", "cannot mount a small tmpfs here (needs root)")
    yield path
    subprocess.run(["umount", str(path)], check=True)


def fill(disk: Path) -> None:
    """Fill a small file system to the last byte (a real ENOSPC for whatever writes there next)."""
    import errno

    with open(disk / "filler", "wb", buffering=0) as f:
        try:
            while True:
                f.write(b"\0" * 4096)
        except OSError as exc:
            assert exc.errno == errno.ENOSPC, exc
        try:
            while True:
                f.write(b"\0")
        except OSError as exc:
            assert exc.errno == errno.ENOSPC, exc


# ---------------------------------------------------------------- servers: PostgreSQL, an MLflow tracking server


@pytest.fixture
def postgres_db() -> Callable[[], str]:
    """Make fresh PostgreSQL databases on 127.0.0.1:5432 (trust auth): each call returns a
    `postgresql+psycopg://` URL; all are dropped at the end. Skips (fails under CI=true) when the server is absent."""
    import uuid

    psycopg = require_module("psycopg", "psycopg is not installed (pip install -e '.[postgres]')")
    try:
        admin = psycopg.connect("host=127.0.0.1 port=5432 user=postgres dbname=postgres connect_timeout=3", autocommit=True)
    except psycopg.OperationalError as exc:
        require("PostgreSQL", f"PostgreSQL at 127.0.0.1:5432 (user postgres, trust auth) is unreachable: {exc}")
    made: list[str] = []

    def _new() -> str:
        name = f"embedsweep_{uuid.uuid4().hex[:10]}"
        admin.execute(f"CREATE DATABASE {name}")
        made.append(name)
        return f"postgresql+psycopg://postgres@127.0.0.1:5432/{name}"

    yield _new
    for name in made:
        admin.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")
    admin.close()


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def require_slurm() -> None:
    """A SLURM cluster whose node takes jobs, and the submitit launcher; else skip, saying which (fail under CI=true)."""
    import shutil

    if shutil.which("sinfo") is None or shutil.which("sbatch") is None:
        require("the SLURM cluster", "SLURM is not installed (sinfo/sbatch not found); sudo deploy/local-cluster.sh installs and starts one")
    states = subprocess.run(["sinfo", "-h", "-o", "%T"], capture_output=True, text=True, timeout=30)
    if states.returncode != 0 or not {"idle", "mixed", "allocated"} & set(states.stdout.split()):
        require("the SLURM cluster", f"no SLURM node takes jobs (sinfo: {(states.stdout + states.stderr).strip()!r}); run sudo deploy/local-cluster.sh")
    require_module("hydra_plugins.hydra_submitit_launcher", "hydra-submitit-launcher is not installed (pip install -e '.[slurm]')")


@contextmanager
def running_mlflow_server(folder: Path, backend_uri: str, *extra: str, env: dict[str, str] | None = None) -> Iterator[str]:
    """`mlflow server` (with `extra` arguments, e.g. `--app-name basic-auth`) on a free loopback port,
    artifacts in folder/artifacts, its log in folder/server.log; yields its URI once /health answers,
    and stops its process group on the way out."""
    import signal
    import time
    import urllib.request

    port = free_port()
    log = open(folder / "server.log", "w")
    cmd = [str(Path(sys.executable).with_name("mlflow")), "server", *extra, "--backend-store-uri", backend_uri,
           "--artifacts-destination", str(folder / "artifacts"), "--host", "127.0.0.1", "--port", str(port), "--workers", "1"]  # fmt: skip
    # No job runner (a dozen worker processes for MLflow's GenAI jobs): training runs never use it.
    full_env = os.environ | {"MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"} | (env or {})
    proc = subprocess.Popen(cmd, cwd=folder, env=full_env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    uri = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 300  # the server's start-up: minutes on a loaded machine
        while True:
            try:
                urllib.request.urlopen(f"{uri}/health", timeout=2)
                break
            except OSError:
                if proc.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"mlflow server did not start:\n{(folder / 'server.log').read_text()[-3000:]}") from None
                time.sleep(0.5)
        yield uri
    finally:
        # The server runs workers in its own session: signal the group it leads, by its id.
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
        log.close()


@pytest.fixture
def mlflow_server(postgres_db: Callable[[], str], tmp_path_factory: pytest.TempPathFactory):
    """`mlflow server` on a free loopback port: a PostgreSQL backend store and its own artifacts
    folder (proxied artifacts). Yields (uri, artifacts folder); stopped by its process id."""
    folder = tmp_path_factory.mktemp("mlflow-server")
    with running_mlflow_server(folder, postgres_db()) as uri:
        yield uri, folder / "artifacts"
