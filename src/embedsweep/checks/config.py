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
from typing import Any, Optional, Sequence, get_type_hints

from omegaconf import DictConfig, ListConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from embedsweep.errors import UserError

OBJECTIVES = ("pearson_cosine", "spearman_cosine")
# sentence_transformers' BatchSamplers values (importing it would cost seconds; a test keeps them in step).
BATCH_SAMPLERS = ("batch_sampler", "no_duplicates", "no_duplicates_hashed", "group_by_label")
SOURCES = ("packaged", "local", "hub")
HELD_OUT = "holdout"  # eval/test source: pairs kept aside from the training file (splits.py)
MODEL_SOURCES = ("packaged", "hub", "random_bert")


def config_dir() -> str:
    """The checkout's conf/ when running from source, else the copy packaged into the wheel."""
    package = Path(__file__).resolve().parents[1]  # src/embedsweep
    source = package.parents[1] / "conf"
    return str(source if source.is_dir() else package / "conf")


def _loss_shape(name: str) -> str | None:
    path = Path(config_dir(), "loss", f"{name}.yaml")
    return OmegaConf.load(path).get("shape") if path.is_file() else None  # an unknown option: Hydra names it


def losses_for(shapes: list[str]) -> list[str]:
    """The loss options (conf/loss/*.yaml) that train on one of `shapes`: named in refusals."""
    found = []
    for path in sorted(Path(config_dir(), "loss").glob("*.yaml")):
        if OmegaConf.load(path).get("shape") in shapes:
            found.append(path.stem)
    return found


class Precision(str, Enum):
    """The precision names, here only: the schema refuses others, run.training resolves `auto`."""

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


def typed_section(key: str) -> bool:
    """Whether `key` lies in a section that the schema types whole (trainer): a key added there is refused."""
    from dataclasses import is_dataclass

    parent = key.rpartition(".")[0]
    return bool(parent) and is_dataclass(_field_type(RunSchema, parent))


def _typed(cfg: DictConfig) -> DictConfig:
    schema = OmegaConf.structured(RunSchema)
    subset = OmegaConf.masked_copy(cfg, ["batch", "verbose", "trainer"])
    try:
        return OmegaConf.merge(schema, subset)
    except OmegaConfBaseException as exc:
        key = exc.full_key or "?"
        value = OmegaConf.select(cfg, key, default="?") if exc.full_key else "?"
        expected = _field_type(RunSchema, key)
        if expected is None and exc.full_key:  # a key the schema lacks (`+trainer.lrr=1e-4`): a typo, most likely
            from embedsweep.checks.overrides import unknown_key

            raise UserError(unknown_key(key, cfg)) from None
        nullable = isinstance(expected, UnionType)
        if nullable:
            expected = next(t for t in expected.__args__ if t is not type(None))
        if isinstance(expected, type) and issubclass(expected, Enum):
            allowed = f"one of {', '.join(e.value for e in expected)}"
        else:
            allowed = f"a value of type {getattr(expected, '__name__', expected)}" + (" or null" if nullable else "")
        raise UserError(f"{key}={value!r} is not allowed: must be {allowed}") from None


def validate(cfg: DictConfig, check_machine: bool = True, swept: frozenset[str] = frozenset(), losses: Sequence[str] = ()) -> None:
    """Raise UserError on the first mistake found; return silently when the config can run.
    `check_machine=False` skips what depends on this machine, its GPU and its files (for jobs that run
    elsewhere: a cluster node may see files that the submitting machine does not). `swept` names the
    keys a sweep will set in each job: a multirun's shared config lacks their values, and each job
    checks its own; `losses` lists the loss options a sweep tries, each checked against the data here."""
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

    from embedsweep.run.data import DERIVATIONS, KINDS, SHAPES, SHAPES_NEEDING_LABELS, shapes_for  # here: data.py loads pandas

    loss, kind = cfg.loss, cfg.data.get("kind", "nli")
    if kind not in KINDS:
        raise UserError(f"data.kind={kind} is not allowed: must be one of {', '.join(KINDS)}")
    if loss.shape not in SHAPES:
        raise UserError(f"loss.shape={loss.shape} is not allowed: must be one of {', '.join(SHAPES)}")
    if "data" not in swept:
        for name, shape in [(n, _loss_shape(n)) for n in losses] if "loss" in swept else [(loss.name, loss.shape)]:
            if shape is not None and (kind, shape) not in DERIVATIONS:
                what = {"nli": "NLI rows", "scored": "scored pairs"}[kind]
                raise UserError(
                    f"loss={name} trains on {shape}, which cannot be made from {what} (data={cfg.data.name}); "
                    f"with {what} use loss={' or loss='.join(losses_for(shapes_for(kind)))}"
                )
    if kind == "nli" and loss.shape in SHAPES_NEEDING_LABELS and cfg.data.columns.get("label") is None:
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
    from embedsweep.run.data import FORMATS

    allowed = {"data": SOURCES, "eval": (*SOURCES, HELD_OUT), "test": (*SOURCES, HELD_OUT, "none")}
    for group, sources in allowed.items():
        node = cfg.get(group)
        if node is None:
            continue
        if node.get("source") not in sources:
            raise UserError(f"{group}.source={node.get('source')} is not allowed: must be one of {', '.join(sources)}")
        if node.source in SOURCES:
            fmt = node.get("format", "auto")
            if fmt not in ("auto", *FORMATS):
                raise UserError(f"{group}.format={fmt} is not allowed: must be one of auto, {', '.join(FORMATS)}")
            limit = node.get("limit")
            if limit is not None and (not isinstance(limit, int) or isinstance(limit, bool) or limit < 1):
                raise UserError(f"{group}.limit={limit} is not allowed: must be null (all rows) or a whole number > 0")
        if (group != "data" and node.source in SOURCES) or (group == "data" and node.get("kind") == "scored"):
            max_score = node.get("max_score")
            if not isinstance(max_score, (int, float)) or isinstance(max_score, bool) or max_score <= 0:
                raise UserError(f"{group}.max_score={max_score} is not allowed: must be a number > 0 (the top of the file's score scale)")
    _check_holdouts(cfg)
    if cfg.model.get("source") not in MODEL_SOURCES:
        raise UserError(f"model.source={cfg.model.get('source')} is not allowed: must be one of {', '.join(MODEL_SOURCES)}")
    seq = cfg.model.get("max_seq_length")
    if seq is not None and (not isinstance(seq, int) or seq < 1):
        raise UserError(f"model.max_seq_length={seq} is not allowed: must be null or a whole number > 0")
    if not isinstance(trust := cfg.model.get("trust_remote_code", False), bool):
        raise UserError(f"model.trust_remote_code={trust} is not allowed: must be true or false")


def _check_holdouts(cfg: DictConfig) -> None:
    """eval=holdout and test=holdout keep scored pairs of the training file aside: they need scored
    training data, shares that leave rows to train on, and one split (the same seed) between them."""
    held = {g: cfg[g] for g in ("eval", "test") if cfg.get(g) is not None and cfg[g].get("source") == HELD_OUT}
    if not held:
        return
    if cfg.data.get("kind", "nli") != "scored":
        group = next(iter(held))
        raise UserError(
            f"{group}={HELD_OUT} holds out scored pairs of the training data, but data={cfg.data.name} holds NLI rows; "
            f"use scored training pairs (e.g. data=stsb_train_local) or another {group} set"
        )
    for group, node in held.items():
        share = node.get("fraction")
        if not isinstance(share, (int, float)) or isinstance(share, bool) or not 0 < share < 1:
            raise UserError(f"{group}.fraction={share} is not allowed: must be a number > 0 and < 1 (the share of pairs held out)")
    if sum(float(n.fraction) for n in held.values()) >= 0.9:
        raise UserError(f"eval.fraction + test.fraction = {sum(float(n.fraction) for n in held.values()):g} is not allowed: must be < 0.9, leaving pairs to train on")
    if len(held) == 2 and cfg.eval.seed != cfg.test.seed:
        raise UserError(f"eval.seed={cfg.eval.seed} and test.seed={cfg.test.seed} differ: one split holds out both, so they must be equal")


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
