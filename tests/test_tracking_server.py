"""A sweep against a shared MLflow tracking server (PostgreSQL store, proxied artifacts), as on a
cluster: artifacts land where the server keeps them, never on the client's disk."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from conftest import OFFLINE_ENV, ROOT

QUICK = ["model=tiny", "trainer.max_steps=2", "trainer.eval_steps=2", "trainer.logging_steps=1"]


@pytest.mark.slow
def test_artifacts_go_through_the_server_to_its_destination(mlflow_server, tmp_path: Path) -> None:
    import os

    from mlflow import MlflowClient

    uri, server_folder = mlflow_server
    client_dir = tmp_path / "client"  # another working directory than the server's
    client_dir.mkdir()
    proc = subprocess.run(
        [sys.executable, str(ROOT / "train.py"), "-m", "loss=mnr,cosine", *QUICK, f"tracking.uri={uri}"],
        cwd=client_dir, env=os.environ | OFFLINE_ENV, capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]

    client = MlflowClient(tracking_uri=uri)
    experiment = client.get_experiment_by_name("embedsweep")
    assert experiment.artifact_location.startswith("mlflow-artifacts:")  # the server's choice, not a client path
    runs = client.search_runs([experiment.experiment_id])
    (parent,) = [r for r in runs if r.data.tags.get("embedsweep.role") == "sweep"]
    children = [r for r in runs if r.data.tags.get("mlflow.parentRunId") == parent.info.run_id]
    assert sorted(r.info.run_name for r in children) == ["loss=cosine", "loss=mnr"]
    assert {r.info.status for r in children} == {"FINISHED"}

    on_server = {p.relative_to(server_folder) for p in server_folder.rglob("*") if p.is_file()}
    for run in children:
        listed = _files(client, run.info.run_id)
        assert "config.yaml" in listed
        for path in listed:  # the config, and a model or anything else a run logs
            assert any(p.parts[-len(Path(path).parts) - 2 :] == (run.info.run_id, "artifacts", *Path(path).parts) for p in on_server), path
        config = client.download_artifacts(run.info.run_id, "config.yaml", str(tmp_path))
        assert f"name: {run.info.run_name.removeprefix('loss=')}" in Path(config).read_text()

    run_ids = {r.info.run_id for r in runs}
    local = [p for p in client_dir.rglob("*") if run_ids & set(p.parts)]
    assert local == [] and not (client_dir / "outputs" / "mlartifacts").exists()


def _files(client, run_id: str, path: str | None = None) -> list[str]:
    found = []
    for info in client.list_artifacts(run_id, path):
        found += _files(client, run_id, info.path) if info.is_dir else [info.path]
    return found
