"""Models build offline; every loss instantiates from YAML; the softmax head really trains."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from conftest import CONF
from embedsweep import data, losses, models, training


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
