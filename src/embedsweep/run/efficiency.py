"""How well a run uses its machine: tokens/s, padding, samples/s, peak memory, and MFU on a GPU.

Counting is done by a forward pre-hook on the loss (every training batch passes through it, already
tokenised and padded; evaluation encodes through the model, not the loss) and a TrainerCallback that
times the training loop and subtracts the time spent in evaluations.

MFU (model FLOPs utilisation) = achieved model FLOP/s / the device's peak dense bf16 (fp16) FLOP/s,
with model FLOPs = 6 x N x T for a forward and backward pass (Kaplan et al. 2020, "Scaling laws",
section 2.1), where N is the number of parameters outside embedding tables (a lookup is not a matmul)
and T the real tokens processed (padding excluded: it is work, but not useful work). The attention
score term (12 x layers x width x sequence length per token) is left out: under 2% for sentences of
under 128 tokens on a BERT-base-sized model.
"""

from __future__ import annotations

import resource
import sys
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from transformers import TrainerCallback

from embedsweep.run.metric_names import efficiency

if TYPE_CHECKING:
    import torch

# Peak dense tensor-core TFLOP/s in bf16 (fp16 where the GPU has no bf16), from the vendors' data sheets,
# without sparsity. Matched as substrings of torch.cuda.get_device_name(), first match wins.
PEAK_TFLOPS: tuple[tuple[str, float], ...] = (
    ("H200", 989.0),
    ("GH200", 989.0),
    ("H100 PCIe", 756.0),
    ("H100 NVL", 835.0),
    ("H100", 989.0),  # SXM
    ("H20", 148.0),
    ("B200", 2250.0),
    ("A100", 312.0),
    ("A800", 312.0),
    ("L40S", 362.0),
    ("L40", 181.0),
    ("L4", 121.0),
    ("A10G", 70.0),
    ("A10", 125.0),
    ("A6000", 155.0),
    ("RTX 4090", 165.0),
    ("RTX 3090", 71.0),
    ("V100", 125.0),  # fp16
    ("T4", 65.0),  # fp16
)


def peak_flops(device_name: str) -> float | None:
    """Peak dense bf16/fp16 FLOP/s of a GPU by its name; None for a CPU or a GPU not in the table."""
    for key, tflops in PEAK_TFLOPS:
        if key in device_name:
            return tflops * 1e12
    return None


def matmul_params(model: "torch.nn.Module") -> int:
    """Parameters that take part in matmuls: all but embedding tables."""
    import torch

    embedding = {id(p) for m in model.modules() if isinstance(m, torch.nn.Embedding) for p in m.parameters()}
    return sum(p.numel() for p in model.parameters() if id(p) not in embedding)


def peak_rss_mb() -> float:
    """This process's peak resident memory (Linux reports KiB, macOS bytes)."""
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / 2**20 if sys.platform == "darwin" else peak / 2**10


@dataclass
class Counts:
    samples: int = 0
    real_tokens: int = 0
    padded_tokens: int = 0  # real + padding
    batches: int = 0
    window_real: int = 0  # since the last log line
    window_padded: int = 0

    def add(self, features: list[dict[str, Any]]) -> None:
        """One training batch: a list of tokenised columns (anchor, positive, ...), each padded."""
        for i, feature in enumerate(features):
            mask = feature.get("attention_mask")
            ids = feature["input_ids"]
            real = int(mask.sum()) if mask is not None else int(ids.numel())
            self.real_tokens += real
            self.padded_tokens += int(ids.numel())
            self.window_real += real
            self.window_padded += int(ids.numel())
            if i == 0:
                self.samples += int(ids.shape[0])
        self.batches += 1


@dataclass
class EfficiencyMeter(TrainerCallback):
    """Counts training tokens through a hook on the loss and times the loop without its evaluations.

    `metrics()` gives the run's efficiency figures (efficiency/); `padding_share` also goes to the loss
    curve's log lines as history (`history/padding_share` by step).
    """

    params: int
    device_name: str = "cpu"
    counts: Counts = field(default_factory=Counts)
    _started: float | None = None
    _loop_s: float = 0.0
    _eval_s: float = 0.0
    _last_mark: float = 0.0

    def attach(self, loss: "torch.nn.Module") -> "EfficiencyMeter":
        loss.register_forward_pre_hook(self._on_loss_forward)
        return self

    def _on_loss_forward(self, module: "torch.nn.Module", args: tuple[Any, ...]) -> None:
        if module.training and args and isinstance(args[0], (list, tuple)):
            self.counts.add(list(args[0]))

    # The trainer calls on_step_end, then logs (on_log), then evaluates (on_evaluate at its end):
    # an evaluation took from the last of those marks to on_evaluate.
    def on_train_begin(self, args, state, control, **kwargs):  # noqa: ANN001
        self._started = self._last_mark = time.perf_counter()

    def on_step_end(self, args, state, control, **kwargs):  # noqa: ANN001
        self._last_mark = time.perf_counter()

    def on_log(self, args, state, control, logs=None, **kwargs):  # noqa: ANN001
        # Trainer.evaluate logs its metrics just before on_evaluate: that line ends no training time.
        if not any(k.startswith("eval_") for k in logs or {}):
            self._last_mark = time.perf_counter()
        if logs is not None and "loss" in logs and self.counts.window_padded:
            logs["padding_share"] = 1.0 - self.counts.window_real / self.counts.window_padded
            self.counts.window_real = self.counts.window_padded = 0

    def on_evaluate(self, args, state, control, **kwargs):  # noqa: ANN001
        now = time.perf_counter()
        if self._started is not None:
            self._eval_s += now - self._last_mark
        self._last_mark = now

    def on_train_end(self, args, state, control, **kwargs):  # noqa: ANN001
        if self._started is not None:
            self._loop_s = time.perf_counter() - self._started - self._eval_s

    def metrics(self) -> dict[str, float]:
        c, loop = self.counts, self._loop_s
        out = {"loop_s": loop, "eval_s": self._eval_s, "peak_cpu_rss_mb": peak_rss_mb()}
        if loop > 0 and c.padded_tokens:
            out |= {
                "loop_samples_per_second": c.samples / loop,
                "tokens_per_second": c.real_tokens / loop,
                "padding_share": 1.0 - c.real_tokens / c.padded_tokens,
                "model_tflops_per_second": 6 * self.params * c.real_tokens / loop / 1e12,
            }
            peak = peak_flops(self.device_name)
            if peak is not None:
                out["mfu"] = 6 * self.params * c.real_tokens / loop / peak
        return {efficiency(k): v for k, v in out.items()}
