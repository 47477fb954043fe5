"""TrainerCallbacks: hooks into the training loop (metric history; later pruning and guards)."""

from __future__ import annotations

from collections.abc import Callable, Mapping

from transformers import TrainerCallback, TrainerControl, TrainerState, TrainingArguments

from embedsweep.run import metric_names as names
from embedsweep.run.evaluate import metrics_from

LogFn = Callable[[Mapping[str, float], int], None]


class MlflowMetrics(TrainerCallback):
    """Training-loss curve and intermediate STS evaluations, logged as metric history by step (history/)."""

    def __init__(self, log: LogFn) -> None:
        self.log = log

    def on_log(self, args: TrainingArguments, state: TrainerState, control: TrainerControl, logs=None, **kwargs):  # noqa: ANN001
        curve = {names.history(k): v for k, v in (logs or {}).items() if k in ("loss", "learning_rate", "grad_norm", "padding_share")}
        if curve:
            self.log(curve, state.global_step)

    def on_evaluate(self, args: TrainingArguments, state: TrainerState, control: TrainerControl, metrics=None, **kwargs):  # noqa: ANN001
        sts = metrics_from(metrics or {}, prefix="eval_")
        if sts:
            self.log({names.history(k): v for k, v in sts.items()}, state.global_step)


class LastEvaluation(TrainerCallback):
    """Keeps the trainer's latest STS evaluation, so that the final model, when the trainer has just
    evaluated it at its last step, is not evaluated a second time."""

    def __init__(self) -> None:
        self.step: int | None = None
        self.metrics: dict[str, float] = {}

    def on_evaluate(self, args: TrainingArguments, state: TrainerState, control: TrainerControl, metrics=None, **kwargs):  # noqa: ANN001
        sts = metrics_from(metrics or {}, prefix="eval_")
        if sts:
            self.step, self.metrics = state.global_step, sts

    def at(self, step: int) -> dict[str, float] | None:
        """The scores of the evaluation at `step`, if the trainer made one there."""
        return dict(self.metrics) if self.step == step else None
