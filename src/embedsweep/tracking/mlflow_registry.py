"""MLflow's model registry behind the seam's `Registry`: versions, aliases, tags, and loading a version.

A version is loaded as data: its artifacts are downloaded and the saved SentenceTransformer folder in
them is loaded by `run.models.load_folder`. Never `mlflow.sentence_transformers.load_model`, which
always trusts remote code and puts the version's own code paths on sys.path: whoever can register a
version would run code here.
"""

from __future__ import annotations

import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING

from embedsweep.errors import UserError
from embedsweep.interrupts import deferred
from embedsweep.redaction import redact
from embedsweep.tracking import ModelVersion

if TYPE_CHECKING:
    from mlflow import MlflowClient
    from sentence_transformers import SentenceTransformer

MODEL_ARTIFACT = "model"  # where a run's model is logged (runs:/<id>/model)


class MlflowRegistry:
    def __init__(self, client: "MlflowClient") -> None:
        self.client = client

    def version(self, name: str, alias: str) -> ModelVersion | None:
        from mlflow.exceptions import MlflowException

        try:
            found = self.client.get_model_version_by_alias(name, alias)
        except MlflowException:
            return None
        return ModelVersion(name, str(found.version), dict(found.tags or {}))

    def register(self, model: "SentenceTransformer", run_id: str, name: str, tags: Mapping[str, str]) -> ModelVersion:
        from mlflow.exceptions import MlflowException

        info = log_model(model, run_id)
        try:
            self.client.create_registered_model(name)
        except MlflowException:
            pass  # already there
        clean = {k: redact(str(v)) for k, v in tags.items()}
        # model_id: a tracking server checks that the source (models:/m-...) is that logged model.
        with deferred():
            created = self.client.create_model_version(name, info.model_uri, run_id=run_id, tags=clean, model_id=info.model_id)
        return ModelVersion(name, str(created.version), clean)

    def set_alias(self, name: str, alias: str, version: str) -> None:
        with deferred():
            self.client.set_registered_model_alias(name, alias, version)

    def tag_version(self, name: str, version: str, tags: Mapping[str, str]) -> None:
        with deferred():
            for key, value in tags.items():
                self.client.set_model_version_tag(name, version, key, redact(str(value)))

    def load(self, name: str, version: str, trust_remote_code: bool = False) -> "SentenceTransformer":
        return registered_model(name, version, trust_remote_code)


def log_model(model: "SentenceTransformer", run_id: str):  # noqa: ANN201 - mlflow's ModelInfo
    """Log a SentenceTransformer as the run's `model` artifact (MLflow's sentence_transformers flavor)."""
    import mlflow
    import mlflow.sentence_transformers
    import sentence_transformers
    import torch
    import transformers

    # Pinning the requirements skips MLflow's inference of them, which loads the model again in a subprocess.
    requirements = [
        f"sentence-transformers=={sentence_transformers.__version__}",
        f"transformers=={transformers.__version__}",
        f"torch=={torch.__version__.split('+')[0]}",
    ]
    active = mlflow.active_run()
    if active is not None and active.info.run_id == run_id:  # a job logging its own model
        return mlflow.sentence_transformers.log_model(model, name=MODEL_ARTIFACT, pip_requirements=requirements)
    with mlflow.start_run(run_id=run_id, nested=active is not None):
        return mlflow.sentence_transformers.log_model(model, name=MODEL_ARTIFACT, pip_requirements=requirements)


def registered_model(name: str, version: str, trust_remote_code: bool = False) -> "SentenceTransformer":
    """A registered model version, loaded as data (see the module docstring), from the tracking URI
    the tracker set."""
    import mlflow.artifacts
    import yaml
    from mlflow.sentence_transformers import SENTENCE_TRANSFORMERS_DATA_PATH

    from embedsweep.run import models

    with tempfile.TemporaryDirectory(prefix="embedsweep-registered-") as tmp:
        root = Path(mlflow.artifacts.download_artifacts(artifact_uri=f"models:/{name}/{version}", dst_path=tmp))
        flavors = (yaml.safe_load((root / "MLmodel").read_text()) or {}).get("flavors", {})
        # The folder MLflow's log_model writes (model.sentence_transformer/), a fixed name as in its loader.
        folder = root / SENTENCE_TRANSFORMERS_DATA_PATH
        if "sentence_transformers" not in flavors or folder.is_symlink() or not (folder / "modules.json").is_file():
            raise UserError(f"{name} version {version} is not a sentence-transformers model logged by MLflow (no {SENTENCE_TRANSFORMERS_DATA_PATH}/modules.json)")
        return models.load_folder(folder, trust_remote_code)
