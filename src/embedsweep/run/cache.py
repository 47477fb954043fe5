"""Work that trials share, done once: keyed by content, kept on disk under `paths.cache_dir`.

- The untouched model's baseline score on an eval set: keyed by the model's weights and modules, the
  eval pairs, the evaluator's settings, the device and library versions. Every trial of a sweep
  starts from the same model, so only the first one evaluates it; other processes on the machine
  (joblib workers, later sweeps) find the score too.
- The training rows shaped for a loss: keyed by the content of the rows (after hold-outs and the
  overlap guard, data.load_run_data), the shape, the seed and the code that shapes them. Stored with
  `Dataset.save_to_disk`, read back memory-mapped.

Entries are written to a temporary name and renamed, so a reader never sees half an entry and two
writers of the same key simply both write the same thing. Every entry also carries what proves it
whole, for the cases a rename does not cover (a full disk, an interrupted copy of the cache folder, a
crash on a file system without atomic rename, a bit flip): a JSON entry holds its value's checksum; a
dataset entry ends with `manifest.json`, written last, which lists every file of the entry with its
size and checksum. An entry that fails its check is reported in one warning line, removed and
recomputed. `paths.cache_dir=null` turns caching off.
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


def _keep(path: Path, write: Callable[[Path], None]) -> bool:
    """Write an entry; a cache that cannot be written (a full disk, a read-only folder) costs the next
    run the work again, not this run: one warning line, and False."""
    try:
        _write_atomic(path, write)
        return True
    except OSError as exc:
        log.warning("could not keep cache entry %s (%s): this run goes on without it", path, exc.strerror or exc)
        return False


class Damaged(Exception):
    """A cache entry that is not whole: why, in a few words."""


class Outdated(Exception):
    """A whole entry in the format of an earlier version (no checksum): replaced without a warning."""


def _discard(path: Path, why: object) -> None:
    """One warning line (none for an Outdated entry), then the entry goes: renamed away first (atomic),
    so that no reader finds half of it."""
    reason = " ".join(str(why).split())[:300]
    if isinstance(why, Outdated):
        log.debug("cache entry %s is in an earlier format: recomputing it", path)
    else:
        log.warning("cache entry %s is damaged (%s): removed, recomputing it", path.absolute(), reason)
    gone = path.with_name(f".{path.name}.damaged-{os.getpid()}")
    try:
        os.replace(path, gone)
    except OSError:  # already removed (or replaced) by another process
        return
    if gone.is_dir():
        shutil.rmtree(gone, ignore_errors=True)
    else:
        gone.unlink(missing_ok=True)


def _checksum(data: bytes) -> str:
    return hashlib.blake2b(data, digest_size=16).hexdigest()


def _json_entry(value: dict[str, float]) -> str:
    body = json.dumps(value, sort_keys=True)
    return json.dumps({"value": value, "checksum": _checksum(body.encode())}, sort_keys=True)


def _read_json_entry(path: Path) -> dict[str, float]:
    """The value of a JSON entry, or Damaged."""
    try:
        entry = json.loads(path.read_text())
    except UnicodeDecodeError as exc:
        raise Damaged("not text") from exc
    except json.JSONDecodeError as exc:
        raise Damaged(f"not JSON: {exc}") from exc
    if isinstance(entry, dict) and entry and not {"value", "checksum"} & set(entry) and all(isinstance(v, float) for v in entry.values()):
        raise Outdated()  # a bare {metric: value} from before checksums
    if not isinstance(entry, dict) or not {"value", "checksum"} <= set(entry):
        raise Damaged("no checksum")
    if _checksum(json.dumps(entry["value"], sort_keys=True).encode()) != entry["checksum"]:
        raise Damaged("checksum mismatch")
    return entry["value"]


def baseline_key(model: "SentenceTransformer", sentence1: list[str], sentence2: list[str], scores: list[float], evaluator_settings: dict[str, Any], device: str) -> str:
    import sentence_transformers
    import torch

    return digest(
        model_fingerprint(model), sentence1, sentence2, scores, evaluator_settings, device, torch.__version__, sentence_transformers.__version__
    )


def cached_json(cache_dir: str | None, kind: str, key: Callable[[], str], compute: Callable[[], dict[str, float]]) -> tuple[dict[str, float], bool]:
    """`compute()`'s result, from `<cache_dir>/<kind>/<key()>.json` when present and whole; and whether it was cached.
    The key is a function: hashing weights costs time that a run without cache should not spend."""
    if not cache_dir:
        return compute(), False
    path = Path(cache_dir) / kind / f"{key()}.json"
    try:
        return _read_json_entry(path), True
    except FileNotFoundError:
        pass
    except (Damaged, Outdated) as exc:
        _discard(path, exc)
    except OSError as exc:  # unreadable (permissions, I/O error): computed, and written anew if we can
        _discard(path, exc.strerror or exc)
    value = compute()
    _keep(path, lambda tmp: tmp.write_text(_json_entry(value)))
    return value, False


def shaped_data_key(rows: "pd.DataFrame", kind: str, shape: str, seed: int) -> str:
    """The key of a shaped training set: the exact rows it is made from, in order (after hold-outs and
    the overlap guard), how they are shaped, and the code that shapes them."""
    import pandas as pd

    from embedsweep.run import data

    content = pd.util.hash_pandas_object(rows, index=False).to_numpy().tobytes()
    return digest(list(rows.columns), content, kind, shape, seed, file_fingerprint(Path(data.__file__)))


MANIFEST = "manifest.json"  # written last into a dataset entry: its files, sizes and checksums


def _entry_files(entry: Path) -> dict[str, dict[str, Any]]:
    return {
        str(f.relative_to(entry)): {"size": f.stat().st_size, "checksum": file_fingerprint(f)}
        for f in sorted(entry.rglob("*")) if f.is_file() and f.name != MANIFEST
    }  # fmt: skip


def _check_dataset_entry(entry: Path) -> None:
    """Damaged unless the manifest is there, whole, and lists exactly the entry's files, each with its size and checksum."""
    try:
        manifest = json.loads((entry / MANIFEST).read_text())
        files = manifest["files"]
    except FileNotFoundError as exc:
        if (entry / "info.json").is_file():  # whole, by an earlier version's completion marker
            raise Outdated() from exc
        raise Damaged(f"no {MANIFEST}: never finished") from exc
    except (ValueError, KeyError, TypeError) as exc:
        raise Damaged(f"{MANIFEST} unreadable: {exc}") from exc
    found = _entry_files(entry)
    if found != files:
        wrong = sorted(set(found) ^ set(files) | {name for name in set(found) & set(files) if found[name] != files[name]})
        raise Damaged(f"{', '.join(wrong[:3])} {'differs' if len(wrong) == 1 else 'differ'} from {MANIFEST}")


def cached_dataset(cache_dir: str | None, key: Callable[[], str], build: Callable[[], "Dataset"]) -> tuple["Dataset", bool]:
    """A Dataset, from `<cache_dir>/data/<key()>` when present and whole; and whether it was cached."""
    if not cache_dir:
        return build(), False
    name = key()
    from datasets import load_from_disk

    path = Path(cache_dir) / "data" / name
    if path.exists():
        try:
            _check_dataset_entry(path)
            return load_from_disk(str(path / "rows")), True
        except (Damaged, Outdated) as exc:
            _discard(path, exc)
        except (OSError, ValueError) as exc:  # checked whole, yet unreadable (another version of datasets)
            _discard(path, f"{type(exc).__name__}: {exc}")
    dataset = build()

    def write(tmp: Path) -> None:
        dataset.save_to_disk(str(tmp / "rows"))
        files = _entry_files(tmp)
        (tmp / MANIFEST).write_text(json.dumps({"rows": len(dataset), "files": files}))  # written last: the entry is whole

    if not _keep(path, write):
        return dataset, False
    try:
        return load_from_disk(str(path / "rows")), False  # memory-mapped, like a cached one
    except (OSError, ValueError):  # removed meanwhile by another process that found it damaged
        return dataset, False
