"""Check the composed config before any heavy work: one error line naming the key, the value and
what is allowed.

Types come from a structured schema (dataclasses, checked by OmegaConf); ranges and cross-group
rules (a loss the chosen data cannot feed, a GradCache mini-batch larger than the batch) are
checked here, since OmegaConf schemas express types, not bounds.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import Enum
from pathlib import Path
from types import UnionType
from typing import Any, Optional, get_type_hints

from omegaconf import DictConfig, ListConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from embedsweep.errors import UserError

OBJECTIVES = ("pearson_cosine", "spearman_cosine")
# sentence_transformers' BatchSamplers values (importing it would cost seconds; a test keeps them in step).
BATCH_SAMPLERS = ("batch_sampler", "no_duplicates", "no_duplicates_hashed", "group_by_label")
SOURCES = ("packaged", "local", "hub")
MODEL_SOURCES = ("packaged", "hub", "random_bert")


class Precision(str, Enum):
    auto = "auto"
    fp32 = "fp32"
    fp16 = "fp16"
    bf16 = "bf16"


@dataclass
class TrainerSchema:
    epochs: float = 1.0
    eval_batch_size: int = 64
    lr: float = 5e-5
    warmup_ratio: float | None = 0.1
    warmup_steps: int | None = None
    weight_decay: float = 0.0
    eval_steps: int | None = None
    logging_steps: int = 10
    max_steps: int = -1
    seed: int = 42
    precision: Precision = Precision.auto
    save_model: bool = True
    compile: bool = False
    dataloader_workers: Optional[int] = None


@dataclass
class RunSchema:
    """The typed part of conf/train.yaml; groups not listed here are checked by `validate`."""

    batch: int = 32
    verbose: bool = False
    trainer: TrainerSchema = field(default_factory=TrainerSchema)


# key -> (test, what is allowed); a null value is not tested (keys that may be null say so in the schema)
_BOUNDS: dict[str, tuple[Any, str]] = {
    "batch": (lambda v: v > 0, "a whole number > 0"),
    "trainer.eval_batch_size": (lambda v: v > 0, "a whole number > 0"),
    "trainer.epochs": (lambda v: v > 0, "a number > 0"),
    "trainer.lr": (lambda v: 0 < v < 1, "a number > 0 and < 1"),
    "trainer.warmup_ratio": (lambda v: 0 <= v < 1, "a number >= 0 and < 1 (a share of the training steps)"),
    "trainer.warmup_steps": (lambda v: v >= 0, "a whole number >= 0"),
    "trainer.weight_decay": (lambda v: v >= 0, "a number >= 0"),
    "trainer.eval_steps": (lambda v: v > 0, "a whole number > 0"),
    "trainer.logging_steps": (lambda v: v > 0, "a whole number > 0"),
    "trainer.max_steps": (lambda v: v == -1 or v > 0, "-1 (no cap) or a whole number > 0"),
}


def _field_type(schema: type, key: str) -> Any:
    """The declared type of a dotted key in a dataclass schema (None if not declared)."""
    hints: dict[str, Any] = {}
    for part in key.split("."):
        hints = get_type_hints(schema)
        if part not in hints:
            return None
        schema = hints[part]
    return schema


def _typed(cfg: DictConfig) -> DictConfig:
    schema = OmegaConf.structured(RunSchema)
    subset = OmegaConf.masked_copy(cfg, ["batch", "verbose", "trainer"])
    try:
        return OmegaConf.merge(schema, subset)
    except OmegaConfBaseException as exc:
        key = exc.full_key or "?"
        value = OmegaConf.select(cfg, key, default="?") if exc.full_key else "?"
        expected = _field_type(RunSchema, key)
        nullable = isinstance(expected, UnionType)
        if nullable:
            expected = next(t for t in expected.__args__ if t is not type(None))
        if isinstance(expected, type) and issubclass(expected, Enum):
            allowed = f"one of {', '.join(e.value for e in expected)}"
        else:
            allowed = f"a value of type {getattr(expected, '__name__', expected)}" + (" or null" if nullable else "")
        raise UserError(f"{key}={value!r} is not allowed: must be {allowed}") from None


def validate(cfg: DictConfig, check_machine: bool = True, swept: frozenset[str] = frozenset()) -> None:
    """Raise UserError on the first mistake found; return silently when the config can run.
    `check_machine=False` skips what depends on this machine, its GPU and its files (for jobs that run
    elsewhere: a cluster node may see files that the submitting machine does not). `swept` names the
    keys a sweep will set in each job: a multirun's shared config lacks their values, and each job
    checks its own."""
    typed = _typed(cfg)
    for key, (ok, allowed) in _BOUNDS.items():
        value = OmegaConf.select(typed, key)
        if value is not None and not ok(value):
            raise UserError(f"{key}={value} is not allowed: must be {allowed}")

    # A step count, when given, wins over the ratio (as in transformers' own TrainingArguments), so
    # `trainer.warmup_steps=50` on top of the default's ratio means 50 steps; training.warmup applies it.
    ratio, steps = typed.trainer.warmup_ratio, typed.trainer.warmup_steps
    if ratio is None and steps is None and not {"trainer.warmup_ratio", "trainer.warmup_steps"} & swept:
        raise UserError(
            "trainer.warmup_ratio and trainer.warmup_steps are both null: set one of them "
            "(e.g. trainer.warmup_ratio=0.1, a share of the training steps, or trainer.warmup_ratio=0 for no warmup)"
        )

    objectives = list(cfg.objective) if isinstance(cfg.objective, ListConfig) else [cfg.objective]
    for name in objectives:
        if name not in OBJECTIVES:
            raise UserError(f"objective={name} is not allowed: must be one of {', '.join(OBJECTIVES)}")

    for group in ("data", "eval", "test"):
        node = cfg.get(group)
        if isinstance(node, DictConfig) and "path" in node.keys() and OmegaConf.is_missing(node, "path"):
            raise UserError(f"{group}={node.get('name')} needs a file: pass {group}.path=path/to/file (tsv, csv, jsonl or parquet)")

    from embedsweep.data import SHAPES, SHAPES_NEEDING_LABELS  # here: data.py loads pandas

    loss = cfg.loss
    if loss.shape not in SHAPES:
        raise UserError(f"loss.shape={loss.shape} is not allowed: must be one of {', '.join(SHAPES)}")
    if loss.shape in SHAPES_NEEDING_LABELS and cfg.data.columns.get("label") is None:
        raise UserError(
            f"loss={loss.name} needs NLI labels but data={cfg.data.name} has none (data.columns.label is null); "
            f"use loss=mnr or loss=cached_mnr, or map a label column with data.columns.label=<column>"
        )
    if loss.get("batch_sampler") not in BATCH_SAMPLERS:
        raise UserError(f"loss.batch_sampler={loss.get('batch_sampler')} is not allowed: must be one of {', '.join(BATCH_SAMPLERS)}")
    _check_sources(cfg)
    if check_machine:
        _check_precision(str(typed.trainer.precision.value))
        _check_local_files(cfg)
    mini = loss.module.get("mini_batch_size")
    if mini is not None and not 0 < mini <= typed.batch:
        raise UserError(
            f"loss.module.mini_batch_size={mini} is not allowed with batch={typed.batch}: must be > 0 and <= batch"
        )


def _check_sources(cfg: DictConfig) -> None:
    """Data, eval and model choices that can be judged without reading anything."""
    from embedsweep.data import FORMATS

    for group in ("data", "eval"):
        node = cfg[group]
        if node.get("source") not in SOURCES:
            raise UserError(f"{group}.source={node.get('source')} is not allowed: must be one of {', '.join(SOURCES)}")
        fmt = node.get("format", "auto")
        if fmt not in ("auto", *FORMATS):
            raise UserError(f"{group}.format={fmt} is not allowed: must be one of auto, {', '.join(FORMATS)}")
        limit = node.get("limit")
        if limit is not None and (not isinstance(limit, int) or isinstance(limit, bool) or limit < 1):
            raise UserError(f"{group}.limit={limit} is not allowed: must be null (all rows) or a whole number > 0")
    max_score = cfg.eval.get("max_score")
    if not isinstance(max_score, (int, float)) or isinstance(max_score, bool) or max_score <= 0:
        raise UserError(f"eval.max_score={max_score} is not allowed: must be a number > 0")
    if cfg.model.get("source") not in MODEL_SOURCES:
        raise UserError(f"model.source={cfg.model.get('source')} is not allowed: must be one of {', '.join(MODEL_SOURCES)}")
    seq = cfg.model.get("max_seq_length")
    if seq is not None and (not isinstance(seq, int) or seq < 1):
        raise UserError(f"model.max_seq_length={seq} is not allowed: must be null or a whole number > 0")


def _check_local_files(cfg: DictConfig) -> None:
    """A missing local file is found here, in a second, instead of after loading torch and the model."""
    for group in ("data", "eval", "test"):
        node = cfg.get(group)
        if isinstance(node, DictConfig) and node.get("source") == "local" and node.get("path") is not None:
            path = Path(str(node.path)).expanduser()
            if not path.is_file():
                raise UserError(f"data file not found: {path} ({group}.path)")


def _check_precision(precision: str) -> None:
    """fp16/bf16 need a CUDA GPU, and bf16 one that computes it natively (emulated bf16 is slow)."""
    if precision in ("auto", "fp32"):
        return
    import torch

    if not torch.cuda.is_available():
        raise UserError(f"trainer.precision={precision} is not allowed on this machine: it has no CUDA GPU; use auto or fp32")
    if precision == "bf16" and not torch.cuda.is_bf16_supported(including_emulation=False):
        raise UserError(f"trainer.precision=bf16 is not allowed on {torch.cuda.get_device_name(0)}: no native bf16; use fp16 or auto")
