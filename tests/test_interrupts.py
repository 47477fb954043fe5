"""A stop signal never cuts a record in half: it waits for the write in progress, then unwinds the run."""

from __future__ import annotations

import os
import signal
import time

import pytest

from embedsweep import app
from embedsweep.interrupts import deferred


@pytest.fixture
def sigterm_unwinds():
    """SIGTERM raises KeyboardInterrupt, as `train.py` sets it up, and so does Ctrl-C (SIGINT), as in a
    terminal: a test run started in the background inherits an ignored SIGINT."""
    previous = signal.signal(signal.SIGTERM, app._interrupt), signal.signal(signal.SIGINT, signal.default_int_handler)
    yield
    signal.signal(signal.SIGTERM, previous[0])
    signal.signal(signal.SIGINT, previous[1])


def _arrives(signum: int) -> None:
    os.kill(os.getpid(), signum)
    time.sleep(0.1)  # without deferral the handler runs here, in the middle of the block


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
def test_a_stop_signal_waits_for_the_block_then_unwinds(sigterm_unwinds, signum: int) -> None:
    steps = []
    with pytest.raises(KeyboardInterrupt):
        with deferred():
            steps.append("write begun")
            _arrives(signum)
            steps.append("write finished")
        steps.append("after the block")  # never: the held signal is delivered as the block ends
    assert steps == ["write begun", "write finished"]
    assert signal.getsignal(signal.SIGTERM) is app._interrupt
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler


def test_without_a_signal_the_block_runs_and_handlers_are_restored(sigterm_unwinds) -> None:
    with deferred():
        with deferred():  # nested writes
            pass
    assert signal.getsignal(signal.SIGTERM) is app._interrupt
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler


def test_a_signal_in_a_nested_block_waits_for_the_outer_one(sigterm_unwinds) -> None:
    steps = []
    with pytest.raises(KeyboardInterrupt, match="SIGTERM"):
        with deferred():
            with deferred():
                _arrives(signal.SIGTERM)
            steps.append("outer block finished")
    assert steps == ["outer block finished"]


def test_a_handler_set_inside_the_block_outlives_it(sigterm_unwinds) -> None:
    with deferred():
        signal.signal(signal.SIGTERM, signal.SIG_IGN)  # as the SLURM requeue handler does
    assert signal.getsignal(signal.SIGTERM) is signal.SIG_IGN
    _arrives(signal.SIGTERM)  # ignored: no KeyboardInterrupt


def test_without_deferral_the_signal_cuts_in(sigterm_unwinds) -> None:
    """The contrast that makes the tests above mean something: the same signal, no deferral."""
    steps = []
    with pytest.raises(KeyboardInterrupt):
        steps.append("write begun")
        _arrives(signal.SIGTERM)
        steps.append("write finished")
    assert steps == ["write begun"]


def test_a_signal_while_the_run_is_first_recorded_ends_it_killed_with_its_record_whole(
    compose, sigterm_unwinds, tmp_path, monkeypatch
) -> None:  # noqa: ANN001
    """SIGTERM lands while the job's params are being written: the params and config are recorded in
    full, the job's body never starts, and the run ends KILLED (not left RUNNING)."""
    import mlflow
    from hydra.core.hydra_config import HydraConfig
    from mlflow import MlflowClient
    from omegaconf import OmegaConf

    from embedsweep.tracking import make_tracker

    uri = f"sqlite:///{tmp_path}/mlflow.db"
    store = [f"tracking.uri={uri}", f"paths.output_root={tmp_path}"]  # artifacts go under the output root
    hydra_cfg = compose(*store, hydra_config=True)
    OmegaConf.update(hydra_cfg, "hydra.runtime.output_dir", str(tmp_path), force_add=True)
    OmegaConf.update(hydra_cfg, "hydra.mode", "RUN", force_add=True)
    cfg = compose(*store)
    log_params = mlflow.log_params

    def log_params_then_signal(params: dict) -> None:
        log_params(params)
        _arrives(signal.SIGTERM)

    monkeypatch.setattr(mlflow, "log_params", log_params_then_signal)
    HydraConfig.instance().set_config(hydra_cfg)
    try:
        with pytest.raises(KeyboardInterrupt, match="SIGTERM"):
            with make_tracker(cfg.tracking).job(cfg):
                pytest.fail("the job's body started although a stop signal had arrived")
    finally:
        HydraConfig.instance().cfg = None
    client = MlflowClient(tracking_uri=uri)
    (run,) = client.search_runs([client.get_experiment_by_name(cfg.tracking.experiment).experiment_id])
    assert run.info.status == "KILLED" and "KeyboardInterrupt" in run.data.tags["error"]
    assert run.data.params["batch"] == "32" and run.data.params["loss"] == "mnr"
    assert [a.path for a in client.list_artifacts(run.info.run_id) if a.path == "config.yaml"] == ["config.yaml"]


def test_a_slurm_requeue_during_a_write_ends_the_attempt_requeued_not_failed(sigterm_unwinds, monkeypatch) -> None:  # noqa: ANN001
    """SLURM preempts with SIGUSR2 while a metric is being written: submitit's handler requeues the job
    and exits, and the SIGTERM that the requeue then sends must be ignored. Before, the end of the write
    put the stop handler back, and that SIGTERM failed the trial the requeued job was about to retry."""

    def submitit_requeue(signum: int, frame: object) -> None:  # submitit's: `scontrol requeue`, then exit
        raise SystemExit(-1)

    steps = []

    def run(cfg: object) -> float:
        try:
            with deferred():  # a write in progress when SLURM preempts
                _arrives(signal.SIGUSR2)
                steps.append("write finished")
        finally:
            _arrives(signal.SIGTERM)  # the requeue stops this attempt while its run is being closed
        return 0.0

    previous = signal.signal(signal.SIGUSR2, submitit_requeue)
    monkeypatch.setattr(app, "run", run)
    try:
        with pytest.raises(app.Requeued, match="requeued by SLURM"):
            app._run_in_worker(None)
    finally:
        signal.signal(signal.SIGUSR2, previous)
    assert steps == ["write finished"]  # the requeue's exit waited for the write
    assert signal.getsignal(signal.SIGTERM) is app._interrupt  # the worker's handlers are put back
