"""Efficiency figures, GPU settings (torch.cuda monkeypatched where a GPU would be needed), start-up imports."""

from __future__ import annotations

import os
import subprocess
import sys
from types import SimpleNamespace

import pytest
import torch

from conftest import OFFLINE_ENV
from embedsweep.run import efficiency, training
from embedsweep.errors import UserError


# ---------------------------------------------------------------- MFU, tokens, padding


@pytest.mark.parametrize(
    ("name", "tflops"),
    [("NVIDIA H200", 989), ("NVIDIA H100 80GB HBM3", 989), ("NVIDIA H100 PCIe", 756), ("NVIDIA A100-SXM4-80GB", 312),
     ("NVIDIA L4", 121), ("Tesla T4", 65), ("NVIDIA L40S", 362), ("NVIDIA A10G", 70)],
)  # fmt: skip
def test_peak_flops_by_device_name(name: str, tflops: float) -> None:
    assert efficiency.peak_flops(name) == tflops * 1e12


def test_no_peak_for_a_cpu_or_an_unknown_gpu() -> None:
    assert efficiency.peak_flops("cpu") is None
    assert efficiency.peak_flops("Some Future GPU") is None


def test_matmul_params_leave_out_embedding_tables() -> None:
    model = torch.nn.Sequential(torch.nn.Embedding(100, 8), torch.nn.Linear(8, 4))
    assert efficiency.matmul_params(model) == 8 * 4 + 4


def batch(lengths: list[int], width: int) -> dict[str, torch.Tensor]:
    mask = torch.tensor([[1] * n + [0] * (width - n) for n in lengths])
    return {"input_ids": torch.ones_like(mask), "attention_mask": mask}


def test_counts_real_tokens_padding_and_samples_over_all_columns() -> None:
    counts = efficiency.Counts()
    counts.add([batch([3, 5], 5), batch([2, 4], 4)])  # anchor and positive columns of 2 samples
    assert (counts.samples, counts.real_tokens, counts.padded_tokens, counts.batches) == (2, 14, 18, 1)


def test_meter_counts_training_forwards_only_and_reports_mfu_from_the_formula(monkeypatch: pytest.MonkeyPatch) -> None:
    """On an explicit clock: 10 ms of training step, then 50 ms of evaluation, which is left out of the
    loop time. Kills: the evaluation's own log line ending training time (on_log marking on eval_ keys:
    eval 0 s, loop 60 ms); the evaluation not subtracted from the loop."""

    class Loss(torch.nn.Module):
        def forward(self, features, labels=None):  # noqa: ANN001, ANN201
            return torch.tensor(0.0)

    now = [100.0]
    monkeypatch.setattr(efficiency, "time", SimpleNamespace(perf_counter=lambda: now[0]))
    loss = Loss()
    meter = efficiency.EfficiencyMeter(params=1000, device_name="NVIDIA A100-SXM4-40GB").attach(loss)
    args = state = control = None
    meter.on_train_begin(args, state, control)
    loss.train()
    loss([batch([4, 2], 4)], None)
    loss.eval()
    loss([batch([4, 4], 4)], None)  # an evaluation forward: not training work
    now[0] = 100.010
    meter.on_step_end(args, state, control)
    now[0] = 100.060  # the evaluation ran
    meter.on_log(args, state, control, logs={"eval_sts_pearson_cosine": 0.5})  # Trainer.evaluate logs, then calls on_evaluate
    meter.on_evaluate(args, state, control)  # 50 ms of evaluation, left out of the loop time
    meter.on_train_end(args, state, control)
    m = meter.metrics()
    m = {k.removeprefix("efficiency/"): v for k, v in m.items() if k.startswith("efficiency/")}  # all in that section
    assert (m["eval_s"], m["loop_s"]) == (pytest.approx(0.050), pytest.approx(0.010))
    assert m["padding_share"] == pytest.approx(2 / 8)
    assert m["tokens_per_second"] == pytest.approx(6 / m["loop_s"])
    assert m["loop_samples_per_second"] == pytest.approx(2 / m["loop_s"])
    assert m["mfu"] == pytest.approx(6 * 1000 * 6 / m["loop_s"] / 312e12)
    assert m["peak_cpu_rss_mb"] > 10 and len(m) == len(meter.metrics())


def test_padding_share_goes_into_each_loss_log_line() -> None:
    meter = efficiency.EfficiencyMeter(params=1)
    meter.counts.add([batch([1, 3], 4)])
    logs = {"loss": 1.0}
    meter.on_log(None, None, None, logs=logs)
    assert logs["padding_share"] == pytest.approx(0.5)
    later = {"loss": 0.5}
    meter.on_log(None, None, None, logs=later)  # no batch since: no figure rather than a stale one
    assert "padding_share" not in later


def test_no_mfu_on_cpu() -> None:
    meter = efficiency.EfficiencyMeter(params=10, device_name="cpu")
    meter.counts.add([batch([2], 2)])
    meter._loop_s = 1.0
    assert "efficiency/mfu" not in meter.metrics() and meter.metrics()["efficiency/model_tflops_per_second"] > 0


# ---------------------------------------------------------------- precision and GPU settings


@pytest.fixture
def fake_gpu(monkeypatch: pytest.MonkeyPatch):  # noqa: ANN201
    """A CUDA device as torch would describe it: set `capability` and `native_bf16` per test."""
    gpu = SimpleNamespace(capability=(8, 0), native_bf16=True, emulated_bf16=True, count=1)

    def is_bf16_supported(including_emulation: bool = True) -> bool:
        return gpu.native_bf16 or (including_emulation and gpu.emulated_bf16)

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", is_bf16_supported)
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: gpu.capability)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: gpu.count)
    return gpu


def test_auto_precision_is_bf16_on_ampere_and_newer(fake_gpu) -> None:  # noqa: ANN001
    assert training.resolve_precision("auto") == "bf16"
    assert training.tf32_capable()


def test_auto_precision_is_fp16_where_bf16_would_be_emulated(fake_gpu) -> None:  # noqa: ANN001
    fake_gpu.capability, fake_gpu.native_bf16 = (7, 5), False  # a T4: torch counts emulated bf16 as supported
    assert torch.cuda.is_bf16_supported()
    assert training.resolve_precision("auto") == "fp16"
    assert not training.tf32_capable()


def test_auto_precision_is_fp32_on_cpu(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert training.resolve_precision("auto") == "fp32"
    with pytest.raises(UserError, match="needs a CUDA GPU"):
        training.resolve_precision("bf16")


def test_dataloader_workers_default_to_none_on_cpu_and_some_per_gpu(monkeypatch: pytest.MonkeyPatch, fake_gpu) -> None:  # noqa: ANN001
    monkeypatch.setattr(os, "cpu_count", lambda: 16)
    assert training.dataloader_workers(None) == 4
    fake_gpu.count = 8
    assert training.dataloader_workers(None) == 1
    assert training.dataloader_workers(3) == 3
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert training.dataloader_workers(None) == 0


# ---------------------------------------------------------------- start-up


HEAVY = ("torch", "sentence_transformers", "pandas", "transformers", "mlflow")
PROBE = (
    "import atexit, sys\n"
    f"atexit.register(lambda: print('HEAVY', sorted(m for m in {HEAVY!r} if m in sys.modules), file=sys.stderr))\n"
    "sys.argv = ['train.py', *sys.argv[1:]]\n"
    "from embedsweep.app import main\n"
    "main()\n"
)


@pytest.mark.parametrize(("args", "rc"), [(["--help"], 0), (["--cfg", "job"], 0), (["batch=0"], 2), (["trainer.precision=fp8"], 2)])
def test_help_cfg_and_config_errors_load_no_heavy_library(tmp_path, args: list[str], rc: int) -> None:  # noqa: ANN001
    proc = subprocess.run(
        [sys.executable, "-c", PROBE, *args], cwd=tmp_path, env=os.environ | OFFLINE_ENV, capture_output=True, text=True, timeout=120
    )
    assert proc.returncode == rc, proc.stderr[-2000:]
    assert "HEAVY []" in proc.stderr, proc.stderr[-2000:]
    if rc == 2:
        assert proc.stderr.strip().splitlines()[-2].startswith("error: ")


# ---------------------------------------------------------------- one evaluation per model state; ranks


def test_last_evaluation_serves_the_final_score_only_for_its_own_step() -> None:
    from embedsweep.run.callbacks import LastEvaluation

    last = LastEvaluation()
    assert last.at(6) is None  # no evaluation yet: the task evaluates itself
    last.on_evaluate(None, SimpleNamespace(global_step=3), None, metrics={"eval_sts_pearson_cosine": 0.5})
    last.on_evaluate(None, SimpleNamespace(global_step=6), None, metrics={"eval_sts_pearson_cosine": 0.7, "eval_sts_spearman_cosine": 0.6})
    assert last.at(6) == {"pearson_cosine": 0.7, "spearman_cosine": 0.6}
    assert last.at(7) is None  # the model changed since


@pytest.mark.parametrize(("env", "main", "size"), [({}, True, 1), ({"RANK": "0", "WORLD_SIZE": "2"}, True, 2), ({"RANK": "1", "WORLD_SIZE": "2"}, False, 2)])
def test_only_rank_zero_is_the_main_process(monkeypatch: pytest.MonkeyPatch, env: dict[str, str], main: bool, size: int) -> None:
    from embedsweep.run import distributed

    monkeypatch.delenv("RANK", raising=False)
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    assert (distributed.is_main_process(), distributed.world_size()) == (main, size)
    assert distributed.broadcast_from_main("x") == "x"  # no process group: the value itself


def test_a_rank_without_the_trial_follows_rank_zeros_pruning_decision(monkeypatch: pytest.MonkeyPatch) -> None:
    import optuna

    from embedsweep.run import distributed

    from embedsweep.studies import pruning

    metrics = {"eval_sts_pearson_cosine": 0.1}
    follower = pruning.report_to(None, "pearson_cosine")
    monkeypatch.setattr(distributed, "broadcast_from_main", lambda value: False)
    follower.on_evaluate(None, SimpleNamespace(global_step=3), None, metrics=metrics)  # rank 0 said go on
    monkeypatch.setattr(distributed, "broadcast_from_main", lambda value: True)
    with pytest.raises(optuna.TrialPruned):
        follower.on_evaluate(None, SimpleNamespace(global_step=6), None, metrics=metrics)


DDP_SCRIPT = """
import json, sys
from types import SimpleNamespace

import optuna
import torch.distributed as dist

from embedsweep.run import distributed

from embedsweep.studies import pruning

dist.init_process_group("gloo")
rank = dist.get_rank()


class Trial:  # rank 0's Optuna trial: it calls the trial hopeless at its second evaluation
    number = 7

    def __init__(self):
        self.reported = []

    def report(self, value, step):
        self.reported.append([step, value])

    def should_prune(self):
        return len(self.reported) >= 2


trial = Trial() if distributed.is_main_process() else None
seen = {"rank": rank, "main": distributed.is_main_process(), "world": distributed.world_size(),
        "broadcast": distributed.broadcast_from_main(f"from rank {rank}"), "evaluated": []}
report = pruning.report_to(trial, "pearson_cosine")
try:
    for step in (3, 6, 9):
        # Each rank's own score differs; only rank 0's reaches the trial, and its decision every rank.
        report.on_evaluate(None, SimpleNamespace(global_step=step), None, metrics={"eval_sts_pearson_cosine": 0.5 - 0.1 * rank})
        seen["evaluated"].append(step)
except optuna.TrialPruned as exc:
    seen["pruned"] = str(exc)
seen["reported"] = trial.reported if trial else None
with open(sys.argv[1] + f"/rank{rank}.json", "w") as f:
    json.dump(seen, f)
dist.destroy_process_group()
"""


def test_rank_zeros_pruning_decision_reaches_every_rank_of_a_real_two_process_group(tmp_path) -> None:  # noqa: ANN001
    """Two real processes (torchrun, gloo on CPU): rank 1 has no trial and follows rank 0, which reports
    its own score and is told to prune at its second evaluation; both stop at step 6, none goes on to 9.
    Kills: broadcast_from_main returning each rank's own value (rank 1 never prunes and trains on alone)."""
    import json

    from conftest import free_port

    script = tmp_path / "ddp_prune.py"
    script.write_text(DDP_SCRIPT)
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", f"--master_port={free_port()}", str(script), str(tmp_path)]
    proc = subprocess.run(cmd, env=os.environ | OFFLINE_ENV | {"OMP_NUM_THREADS": "1"}, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-4000:]
    rank0, rank1 = (json.loads((tmp_path / f"rank{r}.json").read_text()) for r in (0, 1))
    assert (rank0["main"], rank1["main"], rank0["world"], rank1["world"]) == (True, False, 2, 2)
    assert rank0["broadcast"] == rank1["broadcast"] == "from rank 0"
    assert rank0["reported"] == [[3, 0.5], [6, 0.5]] and rank1["reported"] is None
    assert rank0["evaluated"] == rank1["evaluated"] == [3]  # both went on after step 3, neither after step 6
    assert rank0["pruned"] == "trial 7 pruned at step 6 (pearson_cosine=0.5000)"
    assert rank1["pruned"] == "trial  pruned at step 6 (pearson_cosine=0.4000)"


def test_a_rank_other_than_zero_records_nothing_through_every_method_of_a_job_run() -> None:
    """Ranks other than 0 get the null tracker; its run must answer every JobRun method that a job
    calls (a method added to JobRun but not to the null run failed every torchrun job on rank 1:
    `'_NullRun' object has no attribute 'log_datasets'`, found by the slow torchrun test)."""
    import inspect

    from embedsweep import tracking

    wanted = {name for name, _ in inspect.getmembers(tracking.JobRun, inspect.isfunction) if not name.startswith("_")}
    assert "log_datasets" in wanted and wanted <= {name for name in dir(tracking._NullRun) if not name.startswith("_")}
