"""Models build offline; every loss instantiates from YAML; the softmax head really trains."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from conftest import CONF
from embedsweep.run import data, losses, models, training


def test_tiny_model_is_a_random_bert_with_the_uncased_vocab(compose) -> None:
    model = models.build_model(compose("model=tiny").model, seed=0)
    assert len(model.tokenizer) == models.BERT_UNCASED_VOCAB
    assert model.get_embedding_dimension() == 32
    assert model.tokenizer.tokenize("Hello World") == ["hello", "world"]
    same = models.build_model(compose("model=tiny").model, seed=0)
    a, b = model.encode(["a sentence"]), same.encode(["a sentence"])
    assert (a == b).all()  # seeded: the same random init twice


def test_minilm_loads_from_the_packaged_wheel(compose) -> None:
    cfg = compose().model
    assert models.packaged_model_dir(cfg.package) is not None
    model = models.build_model(cfg, seed=0)
    assert model.get_embedding_dimension() == 384
    e = model.encode(["A man is playing a guitar.", "Someone plays an instrument.", "The stock market fell."])
    sim = model.similarity(e, e)
    assert sim[0, 1] > sim[0, 2] + 0.2  # a real trained model, not random weights


@pytest.mark.parametrize("loss", sorted(p.stem for p in (CONF / "loss").glob("*.yaml")))
def test_every_loss_builds_from_its_yaml(compose, loss: str) -> None:
    cfg = compose("model=tiny", f"loss={loss}")
    module = losses.build_loss(cfg.loss, models.build_model(cfg.model, seed=0))
    assert type(module).__name__ == cfg.loss.module._target_.rsplit(".", 1)[1]


def test_softmax_classifier_head_is_trained(compose, tmp_path: Path) -> None:
    """The recipe's published 0.37 came from a version that never trained this head."""
    cfg = compose("model=tiny", "loss=softmax", "trainer.warmup_ratio=0", "trainer.max_steps=4", "batch=16")
    model = models.build_model(cfg.model, seed=0)
    loss = losses.build_loss(cfg.loss, model)
    assert loss.classifier.in_features == 3 * model.get_embedding_dimension()
    before = loss.classifier.weight.detach().clone()
    train_set = data.shape_for_loss(data.load_nli(cfg.data), cfg.loss.shape, seed=0)
    trainer = training.make_trainer(model, loss, train_set, cfg.trainer, cfg.batch, cfg.loss.batch_sampler, tmp_path)
    stats = training.train(trainer)
    assert stats.steps == 4
    assert not torch.equal(before, loss.classifier.weight.detach())


def test_precision_auto_is_fp32_on_cpu_and_gpu_only_precisions_are_refused() -> None:
    from embedsweep.errors import UserError

    if torch.cuda.is_available():
        pytest.skip("CPU-only behaviour")
    assert training.resolve_precision("auto") == "fp32"
    with pytest.raises(UserError, match="trainer.precision=fp16 needs a CUDA GPU"):
        training.resolve_precision("fp16")
    with pytest.raises(UserError, match="allowed: auto, fp32, fp16, bf16"):
        training.resolve_precision("fp8")


# ---------------------------------------------------------------- models are data, not code


@pytest.fixture
def saved_tiny(compose, tmp_path: Path) -> Path:
    folder = tmp_path / "model"
    models.build_model(compose("model=tiny").model, seed=0).save(str(folder))
    return folder


def _edit_json(path: Path, **changes: object) -> None:
    import json

    path.write_text(json.dumps(json.loads(path.read_text()) | changes))


def test_a_saved_model_is_loaded_with_trust_remote_code_false(saved_tiny: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import sentence_transformers

    seen = {}

    def spy(path: str, **kwargs: object) -> str:
        seen.update(kwargs, path=path)
        return "loaded"

    monkeypatch.setattr(sentence_transformers, "SentenceTransformer", spy)
    assert models.load_folder(saved_tiny) == "loaded"
    assert seen["trust_remote_code"] is False and seen["path"] == str(saved_tiny)


@pytest.mark.parametrize(
    ("where", "change", "named"),
    [
        ("config.json", {"auto_map": {"AutoModel": "modeling_evil.EvilModel"}}, "config.json has an auto_map"),
        ("tokenizer_config.json", {"auto_map": {"AutoTokenizer": ["tok_evil.T", None]}}, "tokenizer_config.json has an auto_map"),
        ("1_Pooling/config.json", {"auto_map": {"AutoConfig": "evil.C"}}, "1_Pooling/config.json has an auto_map"),
    ],
)
def test_a_model_folder_that_needs_remote_code_is_refused_naming_the_option(saved_tiny: Path, where: str, change: dict, named: str) -> None:
    _edit_json(saved_tiny / where, **change)
    with pytest.raises(models.UserError) as refused:
        models.load_folder(saved_tiny)
    assert str(refused.value) == (
        f"model {saved_tiny} needs code of its own to load ({named}); refused. model.trust_remote_code=true allows it for this run only"
    )


def test_a_module_class_outside_sentence_transformers_is_refused(saved_tiny: Path) -> None:
    import json

    modules = json.loads((saved_tiny / "modules.json").read_text())
    modules[1]["type"] = "evil_package.Pooling"
    (saved_tiny / "modules.json").write_text(json.dumps(modules))
    with pytest.raises(models.UserError, match=r"modules.json names the class 'evil_package.Pooling'\); refused. model.trust_remote_code=true"):
        models.load_folder(saved_tiny)


def test_trust_remote_code_must_be_a_boolean(compose) -> None:
    from embedsweep.checks import config

    with pytest.raises(models.UserError, match=r"^model.trust_remote_code=yes is not allowed: must be true or false$"):
        config.validate(compose("model=tiny", "model.trust_remote_code=yes"))


def test_the_champion_is_loaded_from_its_artifacts_never_by_mlflows_loader(saved_tiny: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The registry's model is downloaded and its sentence-transformers folder (MLflow 3's layout:
    model.sentence_transformer/) loaded as data; mlflow.sentence_transformers.load_model (trust_remote_code
    always True, code paths on sys.path) is never called. A version whose files were changed to need
    remote code is refused."""
    import sys

    import mlflow
    import mlflow.sentence_transformers
    from mlflow import MlflowClient
    from sentence_transformers import SentenceTransformer

    from embedsweep.tracking import mlflow_registry as promote

    mlflow.set_tracking_uri(f"sqlite:///{tmp_path}/mlflow.db")
    experiment = mlflow.create_experiment("e", artifact_location=(tmp_path / "artifacts").as_uri())
    with mlflow.start_run(experiment_id=experiment):
        info = mlflow.sentence_transformers.log_model(SentenceTransformer(str(saved_tiny)), name="model", pip_requirements=["torch"])
    client = MlflowClient()
    client.create_registered_model("m")
    client.create_model_version("m", info.model_uri, run_id=info.run_id)
    monkeypatch.setattr(mlflow.sentence_transformers, "load_model", lambda *a, **k: pytest.fail("MLflow's loader was used"))
    path_before = list(sys.path)

    model = promote.registered_model("m", "1")
    assert model.get_embedding_dimension() == 32 and sys.path == path_before

    stored = next((tmp_path / "artifacts").rglob("model.sentence_transformer/config.json"))
    _edit_json(stored, auto_map={"AutoModel": "modeling_evil.EvilModel"})
    with pytest.raises(models.UserError, match=r"needs code of its own to load \(config.json has an auto_map\); refused. model.trust_remote_code=true"):
        promote.registered_model("m", "1")
