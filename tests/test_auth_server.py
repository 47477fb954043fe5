"""A shared MLflow server with logins (`mlflow server --app-name basic-auth`, as deploy/README.md sets it
up, on the local PostgreSQL): a sweep with MLFLOW_TRACKING_USERNAME/PASSWORD works; a wrong password
stops before training in one line; the password is in no param, tag, artifact, log file or console line."""

from __future__ import annotations

import os
import secrets
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from conftest import OFFLINE_ENV, ROOT, require_module, running_mlflow_server

pytestmark = [pytest.mark.slow, pytest.mark.timeout(1200)]

QUICK = ["model=tiny", "trainer.max_steps=2", "trainer.warmup_steps=0", "test=none"]
USER = "alice"


@pytest.fixture
def auth_server(postgres_db: Callable[[], str], tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, str]]:
    """`mlflow server --app-name basic-auth`: runs and users in their own PostgreSQL databases, an admin,
    and a user alice. Yields (uri, alice's password)."""
    import requests

    require_module("flask_wtf", "Flask-WTF, which MLflow's basic-auth app needs, is not installed (pip install -e '.[dev]')")
    folder = tmp_path_factory.mktemp("auth-server")
    admin_password, password = secrets.token_urlsafe(16), secrets.token_urlsafe(16)
    ini = folder / "basic_auth.ini"
    ini.write_text(
        "[mlflow]\ndefault_permission = READ\n"
        f"database_uri = {postgres_db()}\nadmin_username = admin\nadmin_password = {admin_password}\n"
        "authorization_function = mlflow.server.auth:authenticate_request_basic_auth\n"
    )
    env = {"MLFLOW_AUTH_CONFIG_PATH": str(ini), "MLFLOW_FLASK_SERVER_SECRET_KEY": secrets.token_hex(16)}
    with running_mlflow_server(folder, postgres_db(), "--app-name", "basic-auth", env=env) as uri:
        made = requests.post(f"{uri}/api/2.0/mlflow/users/create", json={"username": USER, "password": password}, auth=("admin", admin_password), timeout=30)
        assert made.ok, made.text
        yield uri, password


def _train(tmp_path: Path, uri: str, password: str, *args: str) -> tuple[subprocess.CompletedProcess[str], float]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("MLFLOW_")} | OFFLINE_ENV
    env |= {"MLFLOW_TRACKING_URI": uri, "MLFLOW_TRACKING_USERNAME": USER, "MLFLOW_TRACKING_PASSWORD": password}
    started = time.monotonic()
    proc = subprocess.run([sys.executable, str(ROOT / "train.py"), *args], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=900)
    return proc, time.monotonic() - started


def _runs(uri: str, password: str, monkeypatch: pytest.MonkeyPatch) -> list:
    from mlflow import MlflowClient

    monkeypatch.setenv("MLFLOW_TRACKING_USERNAME", USER)
    monkeypatch.setenv("MLFLOW_TRACKING_PASSWORD", password)
    client = MlflowClient(tracking_uri=uri)
    experiment = client.get_experiment_by_name("embedsweep")
    return [] if experiment is None else list(client.search_runs([experiment.experiment_id]))


def test_a_sweep_logs_in_a_wrong_password_is_one_line_and_the_password_is_nowhere(auth_server, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    uri, password = auth_server
    wrong = secrets.token_urlsafe(16)
    refused, seconds = _train(tmp_path, uri, wrong, "-m", *QUICK, "loss=mnr,cosine")
    assert refused.returncode == 2 and "Traceback" not in refused.stderr, refused.stderr[-3000:]
    assert refused.stderr.strip().splitlines()[-1] == (
        f"error: MLflow tracking server {uri} refused the login of user 'alice' (401 Unauthorized); "
        "set MLFLOW_TRACKING_USERNAME and MLFLOW_TRACKING_PASSWORD to an account of that server (see deploy/README.md)"
    )
    assert "train" not in refused.stdout and _runs(uri, password, monkeypatch) == []  # stopped before any run or training
    print(f"wrong password: one line after {seconds:.1f} s")

    proc, _ = _train(tmp_path, uri, password, "-m", *QUICK, "loss=mnr,cosine")
    assert proc.returncode == 0 and "Traceback" not in proc.stderr, proc.stderr[-3000:]
    runs = _runs(uri, password, monkeypatch)
    assert len(runs) == 3 and {r.info.status for r in runs} == {"FINISHED"}  # the sweep's parent and its two jobs

    # The password is in no param, tag, metric name, artifact, file of the run's folders, or console line.
    from mlflow import MlflowClient

    client = MlflowClient(tracking_uri=uri)
    artifacts = tmp_path / "artifacts"
    for run in runs:
        (artifacts / run.info.run_id).mkdir(parents=True)
        client.download_artifacts(run.info.run_id, "", str(artifacts / run.info.run_id))
    files = [p for folder in (artifacts, tmp_path / "outputs") for p in folder.rglob("*") if p.is_file()]
    assert any(p.name == "train.log" for p in files) and any(p.name == "config.yaml" for p in files)
    for secret in (password, wrong):
        assert secret not in refused.stdout + refused.stderr + proc.stdout + proc.stderr
        for run in runs:
            assert not any(secret in f"{k}={v}" for k, v in (run.data.params | run.data.tags).items())
        assert not [p for p in files if secret.encode() in p.read_bytes()]
