"""Work that trials share, done once: keyed by content, kept on disk under `paths.cache_dir`.

- The untouched model's baseline score on an eval set: keyed by the model's weights and modules, the
  eval pairs, the evaluator's settings, the device and library versions. Every trial of a sweep
  starts from the same model, so only the first one evaluates it; other processes on the machine
  (joblib workers, later sweeps) find the score too.
- The training rows shaped for a loss: keyed by the content of the rows (after hold-outs and the
  overlap guard, data.load_run_data), the shape, the seed and the code that shapes them. Stored with `Dataset.save_to_disk`, read back
  memory-mapped.

Entries are written to a temporary name and renamed, so a reader never sees half an entry and two
writers of the same key simply both write the same thing. `paths.cache_dir=null` turns caching off.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from omegaconf import DictConfig, OmegaConf

if TYPE_CHECKING:
    import pandas as pd
    from datasets import Dataset
    from sentence_transformers import SentenceTransformer

log = logging.getLogger(__name__)


def digest(*parts: Any) -> str:
    h = hashlib.blake2b(digest_size=16)
    for part in parts:
        h.update(part if isinstance(part, bytes) else json.dumps(part, sort_keys=True, default=str).encode())
        h.update(b"\0")
    return h.hexdigest()


def model_fingerprint(model: "SentenceTransformer") -> str:
    """The model's modules, truncation, tokenizer and every weight's bytes."""
    import torch

    tokenizer = getattr(model, "tokenizer", None)
    h = hashlib.blake2b(digest_size=16)
    h.update(repr(model).encode())
    h.update(json.dumps([model.max_seq_length, type(tokenizer).__name__, len(tokenizer) if tokenizer is not None else None]).encode())
    for name, tensor in model.state_dict().items():
        h.update(name.encode())
        h.update(str(tensor.dtype).encode())
        t = tensor.detach().cpu().contiguous()
        h.update(t.view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()


def file_fingerprint(path: Path) -> str:
    h = hashlib.blake2b(digest_size=16)
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _write_atomic(path: Path, write: Callable[[Path], None]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", dir=path.parent))
    try:
        write(tmp / "entry")
        try:
            os.replace(tmp / "entry", path)
        except OSError:  # a directory entry another writer already put in place: theirs is the same
            if not path.exists():
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def baseline_key(model: "SentenceTransformer", sentence1: list[str], sentence2: list[str], scores: list[float], evaluator_settings: dict[str, Any], device: str) -> str:
    import sentence_transformers
    import torch

    return digest(
        model_fingerprint(model), sentence1, sentence2, scores, evaluator_settings, device, torch.__version__, sentence_transformers.__version__
    )


def cached_json(cache_dir: str | None, kind: str, key: Callable[[], str], compute: Callable[[], dict[str, float]]) -> tuple[dict[str, float], bool]:
    """`compute()`'s result, from `<cache_dir>/<kind>/<key()>.json` when present; and whether it was cached.
    The key is a function: hashing weights costs time that a run without cache should not spend."""
    if not cache_dir:
        return compute(), False
    path = Path(cache_dir) / kind / f"{key()}.json"
    if path.is_file():
        try:
            return json.loads(path.read_text()), True
        except (OSError, json.JSONDecodeError):
            log.warning("ignoring an unreadable cache entry %s", path)
    value = compute()
    _write_atomic(path, lambda tmp: tmp.write_text(json.dumps(value)))
    return value, False


def shaped_data_key(rows: "pd.DataFrame", kind: str, shape: str, seed: int) -> str:
    """The key of a shaped training set: the exact rows it is made from, in order (after hold-outs and
    the overlap guard), how they are shaped, and the code that shapes them."""
    import pandas as pd

    from embedsweep import data

    content = pd.util.hash_pandas_object(rows, index=False).to_numpy().tobytes()
    return digest(list(rows.columns), content, kind, shape, seed, file_fingerprint(Path(data.__file__)))


def cached_dataset(cache_dir: str | None, key: Callable[[], str], build: Callable[[], "Dataset"]) -> tuple["Dataset", bool]:
    """A Dataset, from `<cache_dir>/data/<key()>` when present; and whether it was cached."""
    if not cache_dir:
        return build(), False
    name = key()
    from datasets import load_from_disk

    path = Path(cache_dir) / "data" / name
    if (path / "info.json").is_file():
        try:
            return load_from_disk(str(path / "rows")), True
        except (OSError, ValueError, FileNotFoundError):
            log.warning("ignoring an unreadable cache entry %s", path)
    dataset = build()

    def write(tmp: Path) -> None:
        dataset.save_to_disk(str(tmp / "rows"))
        (tmp / "info.json").write_text(json.dumps({"rows": len(dataset)}))  # written last: the entry is whole

    _write_atomic(path, write)
    return load_from_disk(str(path / "rows")), False
