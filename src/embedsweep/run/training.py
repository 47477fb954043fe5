"""Train with SentenceTransformerTrainer: arguments from conf/trainer, precision chosen for the device."""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from omegaconf import DictConfig

from embedsweep.checks.config import Precision
from embedsweep.errors import UserError

if TYPE_CHECKING:
    import torch
    from datasets import Dataset
    from sentence_transformers import SentenceTransformer, SentenceTransformerTrainer
    from transformers import TrainerCallback

def device_name() -> str:
    import torch

    return torch.cuda.get_device_name(0) if torch.cuda.is_available() else "cpu"


def native_bf16() -> bool:
    """bf16 in hardware (Ampere and newer). `is_bf16_supported()` alone also counts the emulated bf16 of
    older GPUs, which runs slower than fp16 there."""
    import torch

    return bool(torch.cuda.is_bf16_supported(including_emulation=False))


def tf32_capable() -> bool:
    """TF32 tensor cores: compute capability 8.0 (Ampere) and newer."""
    import torch

    return torch.cuda.is_available() and torch.cuda.get_device_capability(0)[0] >= 8


def dataloader_workers(requested: int | None) -> int:
    """`trainer.dataloader_workers`, or by default: none on CPU (the main process tokenises between
    steps at no loss there), up to 4 on a GPU so that tokenising overlaps the GPU's work."""
    import os

    import torch

    if requested is not None:
        return int(requested)
    if not torch.cuda.is_available():
        return 0
    return max(0, min(4, (os.cpu_count() or 1) // max(1, torch.cuda.device_count()) - 1))


def resolve_precision(precision: str) -> str:
    """auto -> bf16 on GPUs with native bf16, fp16 on other GPUs, fp32 on CPU."""
    import torch

    allowed = [p.value for p in Precision]  # the names the config schema accepts
    if precision not in allowed:
        raise UserError(f"trainer.precision={precision!r} is not allowed; allowed: {', '.join(allowed)}")
    on_gpu = torch.cuda.is_available()
    if precision == "auto":
        if not on_gpu:
            return "fp32"
        return "bf16" if native_bf16() else "fp16"
    if precision != "fp32" and not on_gpu:
        raise UserError(f"trainer.precision={precision} needs a CUDA GPU; use precision=auto or fp32 on CPU")
    return precision


def warmup(cfg: DictConfig) -> int | float:
    """The `warmup_steps` argument for the trainer: the step count, or else the ratio as a float < 1,
    which transformers 5 reads as a share of the training steps (it dropped `warmup_ratio`; on
    transformers 4, sentence-transformers >= 6.2 turns such a float back into `warmup_ratio`).
    conf/trainer sets exactly one of the two (checked by embedsweep.checks.config)."""
    return int(cfg.warmup_steps) if cfg.warmup_steps is not None else float(cfg.warmup_ratio)


def precision_of(trainer: "SentenceTransformerTrainer") -> str:
    """The precision a trainer was built with (after `auto` was resolved)."""
    return "bf16" if trainer.args.bf16 else "fp16" if trainer.args.fp16 else "fp32"


@dataclass(frozen=True)
class TrainStats:
    steps: int
    train_loss: float
    runtime_s: float
    samples_per_second: float
    peak_gpu_memory_mb: float | None


def make_trainer(
    model: "SentenceTransformer",
    loss: "torch.nn.Module",
    train_dataset: "Dataset",
    cfg: DictConfig,
    batch_size: int,
    batch_sampler: str,
    output_dir: Path,
    evaluator: Any = None,
    callbacks: list["TrainerCallback"] | None = None,
) -> "SentenceTransformerTrainer":
    import torch
    from sentence_transformers import SentenceTransformerTrainer, SentenceTransformerTrainingArguments

    from embedsweep.run.distributed import world_size

    precision = resolve_precision(cfg.precision)
    # Under torchrun without GPUs, accelerate starts DDP only when told the run is on CPU (gloo backend).
    cpu_ddp = not torch.cuda.is_available() and world_size() > 1
    args = SentenceTransformerTrainingArguments(
        output_dir=str(output_dir),
        num_train_epochs=cfg.epochs,
        max_steps=cfg.max_steps,
        per_device_train_batch_size=batch_size,
        per_device_eval_batch_size=cfg.eval_batch_size,
        learning_rate=cfg.lr,
        warmup_steps=warmup(cfg),
        weight_decay=cfg.weight_decay,
        bf16=precision == "bf16",
        fp16=precision == "fp16",
        batch_sampler=batch_sampler,
        # Without eval_steps the trainer does not evaluate at all: the task scores the model before
        # and after training itself (with steps, transformers also evaluates at the last step).
        eval_strategy="steps" if evaluator is not None and cfg.eval_steps is not None else "no",
        eval_steps=cfg.eval_steps,
        logging_steps=cfg.logging_steps,
        logging_first_step=True,
        save_strategy="no",  # the final model is saved once by the task; checkpoints would only cost disk
        seed=cfg.seed,
        report_to="none",  # embedsweep.tracking logs to MLflow itself, with its own names
        disable_tqdm=False,  # a progress bar; embedsweep.console keeps it from printing log dicts
        dataloader_pin_memory=torch.cuda.is_available(),
        dataloader_num_workers=dataloader_workers(cfg.get("dataloader_workers")),
        dataloader_persistent_workers=dataloader_workers(cfg.get("dataloader_workers")) > 0,
        tf32=True if tf32_capable() else None,  # None leaves torch's default (off) where TF32 does not exist
        torch_compile=bool(cfg.get("compile", False)),
        use_cpu=cpu_ddp,
        ddp_backend="gloo" if cpu_ddp else None,
    )
    return SentenceTransformerTrainer(
        model=model, args=args, train_dataset=train_dataset, loss=loss, evaluator=evaluator, callbacks=callbacks
    )


def train(trainer: "SentenceTransformerTrainer") -> TrainStats:
    import torch

    if torch.cuda.is_available():
        torch.cuda.reset_peak_memory_stats()
    started = time.perf_counter()
    try:
        output = trainer.train()
    except torch.cuda.OutOfMemoryError as exc:
        batch = trainer.args.per_device_train_batch_size
        raise UserError(
            f"out of GPU memory training with batch={batch}: use a smaller batch (e.g. batch={max(1, batch // 2)}), "
            f"or loss=cached_mnr, which computes the same loss in mini-batches (loss.module.mini_batch_size)"
        ) from exc
    runtime = time.perf_counter() - started
    peak = torch.cuda.max_memory_allocated() / 2**20 if torch.cuda.is_available() else None
    return TrainStats(
        steps=int(output.global_step),
        train_loss=float(output.training_loss),
        runtime_s=runtime,
        samples_per_second=float(output.metrics.get("train_samples_per_second", 0.0)),
        peak_gpu_memory_mb=peak,
    )
