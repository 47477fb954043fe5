"""Shared fixtures: offline environment, config composition, running the real command."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
CONF = ROOT / "conf"
SHARED_DATA = ROOT.parent / "shared" / "data"

# No test may touch the network: a Hub id would otherwise spend a minute on retries.
OFFLINE_ENV = {"HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
os.environ.update(OFFLINE_ENV)
for var in ("MLFLOW_TRACKING_URI", "EMBEDSWEEP_OUTPUT_ROOT"):
    os.environ.pop(var, None)


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
        # tests/helpers is importable by the command, for faulty losses plugged in through YAML.
        full_env = os.environ | OFFLINE_ENV | {"PYTHONPATH": str(ROOT / "tests" / "helpers")} | (env or {})
        return subprocess.run(
            [sys.executable, str(ROOT / "train.py"), *args],
            cwd=tmp_path, env=full_env, capture_output=True, text=True, timeout=timeout,
        )  # fmt: skip

    return _run


@pytest.fixture
def mlflow_runs(tmp_path: Path) -> Callable[[], list]:
    """All runs in tmp_path/outputs/mlflow.db, oldest first."""

    def _runs() -> list:
        from mlflow import MlflowClient

        client = MlflowClient(tracking_uri=f"sqlite:///{tmp_path}/outputs/mlflow.db")
        experiment = client.get_experiment_by_name("embedsweep")
        assert experiment is not None, "no embedsweep experiment in the MLflow store"
        runs = client.search_runs([experiment.experiment_id], order_by=["attributes.start_time ASC"])
        return list(runs)

    return _runs


@pytest.fixture
def shared_data() -> Path:
    if not (SHARED_DATA / "mnli" / "train.tsv").is_file():
        pytest.skip(f"real data not found at {SHARED_DATA} (the shared/ folder next to the checkout)")
    return SHARED_DATA
