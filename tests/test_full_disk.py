"""Out of space, anywhere: a full disk under the MLflow store, the Optuna storage or the output root,
at start, mid-training or at the end, is one line naming the place, its path and what ran out; what
was recorded before stays whole, and a later run with room works on the same store.

Real full disks: small tmpfs mounts (root only; elsewhere these tests skip, or fail under CI=true),
grown afterwards with `mount -o remount,size=...`, which keeps their files."""

from __future__ import annotations

import errno
import os
import sqlite3
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from conftest import OFFLINE_ENV, ROOT, require
from embedsweep.checks import stores
from embedsweep.errors import UserError

TINY = ["model=tiny", "trainer.warmup_steps=0", "test=none"]


class Disk:
    """A tmpfs mounted at `path`, of `size` bytes."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def resize(self, size: str) -> None:
        subprocess.run(["mount", "-o", f"remount,size={size}", str(self.path)], check=True, capture_output=True)

    def fill(self, leave: int = 0) -> Path:
        """Fill the disk with a file, leaving about `leave` bytes; returns the file (delete it to give the room back)."""
        filler = self.path / "filler"
        fd = os.open(filler, os.O_WRONLY | os.O_CREAT | os.O_APPEND)
        try:
            st = os.statvfs(self.path)
            todo = max(st.f_bavail * st.f_frsize - leave, 0)
            block = b"\0" * (1 << 16)
            while todo > 0 or not leave:
                try:
                    todo -= os.write(fd, block[: min(len(block), todo)] if leave else block)
                except OSError as exc:
                    assert exc.errno == errno.ENOSPC
                    break
        finally:
            os.close(fd)
        return filler


@pytest.fixture
def disk(tmp_path: Path) -> Iterator[Callable[[str], Disk]]:
    """Mount small tmpfs file systems under tmp_path (unmounted at the end)."""
    mounted: list[Path] = []

    def _mount(size: str, name: str = "disk") -> Disk:
        path = tmp_path / name
        path.mkdir()
        if subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)], capture_output=True).returncode != 0:
            require("a tmpfs mount", "cannot mount a small tmpfs here (needs root)")
        mounted.append(path)
        return Disk(path)

    yield _mount
    for path in reversed(mounted):
        subprocess.run(["umount", "-l", str(path)], check=False)


@pytest.fixture(autouse=True)
def _no_places_from_other_tests() -> Iterator[None]:
    saved = dict(stores._PLACES)
    stores._PLACES.clear()
    yield
    stores._PLACES.clear()
    stores._PLACES.update(saved)


def _places(tmp_path: Path, **where: Path) -> None:
    from omegaconf import OmegaConf

    cfg = OmegaConf.create({
        "tracking": {"uri": f"sqlite:///{where.get('store', tmp_path / 'outputs' / 'mlflow.db')}", "default_uri": None},
        "paths": {"output_root": str(where.get("root", tmp_path / "outputs")), "cache_dir": str(where.get("cache", tmp_path / "outputs" / "cache"))},
    })  # fmt: skip
    stores.register_places(cfg, f"sqlite:///{where.get('storage', tmp_path / 'outputs' / 'optuna.db')}")


# ---------------------------------------------------------------- naming the place


def test_an_oserror_is_named_by_the_place_its_file_lies_under(tmp_path: Path) -> None:
    _places(tmp_path)
    exc = OSError(errno.ENOSPC, "No space left on device", str(tmp_path / "outputs" / "runs" / "x" / "train.log"))
    error = stores.full_disk_error(exc)
    assert isinstance(error, UserError)
    assert str(error).startswith(f"no disk space left on the device of the output root {tmp_path}/outputs/runs/x/train.log (")
    assert str(error).endswith("free some, or set EMBEDSWEEP_OUTPUT_ROOT (or paths.output_root=) to a larger disk; what was recorded before is kept")
    quota = OSError(errno.EDQUOT, "Disk quota exceeded", str(tmp_path / "outputs" / "cache" / "k.json"))
    assert str(stores.full_disk_error(quota)).startswith(f"disk quota exceeded on the device of the cache {tmp_path}/outputs/cache/k.json (")
    assert stores.full_disk_error(OSError(errno.EACCES, "Permission denied")) is None
    assert stores.full_disk_error(ValueError("no")) is None


def test_sqlite_full_is_named_by_the_database_its_statement_wrote(tmp_path: Path) -> None:
    import sqlalchemy

    _places(tmp_path)
    full = sqlite3.OperationalError("database or disk is full")
    optuna = sqlalchemy.exc.OperationalError("INSERT INTO trial_values (trial_id, value) VALUES (?, ?)", {}, full)
    mlflow = sqlalchemy.exc.OperationalError("INSERT INTO metrics (key, value) VALUES (?, ?)", {}, full)
    assert str(stores.full_disk_error(optuna)).startswith(f"no disk space left on the device of the Optuna storage {tmp_path}/outputs/optuna.db (")
    try:  # as MLflow raises it: its own exception, from the driver's
        raise RuntimeError(f"API request failed: {mlflow}") from mlflow
    except RuntimeError as exc:
        assert str(stores.full_disk_error(exc)).startswith(f"no disk space left on the device of the MLflow store {tmp_path}/outputs/mlflow.db (")


def test_without_a_named_file_the_fullest_device_is_named(tmp_path: Path, disk) -> None:  # noqa: ANN001
    small = disk("256k")
    small.fill()
    _places(tmp_path, root=small.path / "outputs")
    error = stores.full_disk_error(RuntimeError("[Errno 28] No space left on device"))
    assert str(error).startswith(f"no disk space left on the device of the output root {small.path}/outputs (0 bytes free of 256.0 KiB)")


def test_inodes_that_ran_out_are_named(tmp_path: Path, disk) -> None:  # noqa: ANN001
    small = disk("1m,nr_inodes=8")
    made = 0
    with pytest.raises(OSError) as info:
        while True:
            (small.path / f"f{made}").touch()
            made += 1
    _places(tmp_path, root=small.path)
    assert str(stores.full_disk_error(info.value)).startswith(f"no inodes (room for new files) left on the device of the output root {small.path}/f{made} (no inodes free, ")


# ---------------------------------------------------------------- a store too small for its tables: nothing half made


def test_an_mlflow_store_cut_short_at_creation_is_removed_and_the_next_try_with_room_works(tmp_path: Path, disk) -> None:  # noqa: ANN001
    from embedsweep.tracking.mlflow_tracker import MlflowTracker

    small = disk("64k")
    store = small.path / "mlflow.db"
    _places(tmp_path, store=store)
    with pytest.raises(Exception) as info:
        MlflowTracker(f"sqlite:///{store}", "embedsweep").connect()
    error = stores.full_disk_error(info.value)
    assert str(error).startswith(f"no disk space left on the device of the MLflow store {store} (")
    assert not store.exists()  # a store cut short in its migrations would fail every later run ("duplicate column")
    small.resize("4m")
    tracker = MlflowTracker(f"sqlite:///{store}", "embedsweep")
    tracker.connect()
    run = tracker.client().create_run(tracker.connect())
    assert tracker.client().get_run(run.info.run_id).info.status == "RUNNING"


def test_an_optuna_storage_cut_short_at_creation_is_one_line_removed_and_the_next_try_works(tmp_path: Path, disk) -> None:  # noqa: ANN001
    from embedsweep.studies.study import open_storage

    small = disk("24k")
    storage = small.path / "optuna.db"
    with pytest.raises(UserError) as info:
        open_storage(f"sqlite:///{storage}")
    assert str(info.value).startswith(f"no disk space left on the device of the Optuna storage {storage} (")
    assert not storage.exists()
    small.resize("4m")
    assert open_storage(f"sqlite:///{storage}").get_all_studies() == []


# ---------------------------------------------------------------- the real command


def _train(tmp_path: Path, *args: str, env: dict[str, str] | None = None) -> subprocess.Popen[str]:
    full = {k: v for k, v in os.environ.items() if k not in ("MLFLOW_TRACKING_URI", "EMBEDSWEEP_OUTPUT_ROOT")} | OFFLINE_ENV | (env or {})
    return subprocess.Popen([sys.executable, str(ROOT / "train.py"), *args], cwd=tmp_path, env=full, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _finish(proc: subprocess.Popen[str], started: float, timeout: float = 600) -> tuple[int, str, str, float]:
    out, err = proc.communicate(timeout=timeout)
    return proc.returncode, out, err, time.monotonic() - started


def _error(err: str) -> str:
    """The command's one error line (a progress bar may still be redrawn after it, as the process exits)."""
    (line,) = [line for line in err.splitlines() if line.startswith("error: ")]
    return line


def _integrity(db: Path) -> str:
    con = sqlite3.connect(db)
    try:
        return con.execute("pragma integrity_check").fetchone()[0]
    finally:
        con.close()


def _runs(store: Path) -> list:
    from mlflow import MlflowClient

    client = MlflowClient(tracking_uri=f"sqlite:///{store}")
    experiment = client.get_experiment_by_name("embedsweep")
    return [] if experiment is None else list(client.search_runs([experiment.experiment_id], order_by=["attributes.start_time ASC"]))


def _logged(store: Path, key: str) -> bool:
    """Whether a run in the store has logged `key` (read-only, with the standard library: an MLflow client
    in this process would run the store's migrations while the command is creating it)."""
    try:
        con = sqlite3.connect(f"{store.as_uri()}?mode=ro", uri=True)
        try:
            return con.execute("select count(*) from metrics where key = ?", (key,)).fetchone()[0] > 0
        finally:
            con.close()
    except sqlite3.Error:
        return False


def _wait_for(condition: Callable[[], bool], timeout: float = 400) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.5)


@pytest.mark.slow
def test_an_mlflow_store_on_a_disk_too_small_for_its_tables_is_one_line_and_nothing_half_made(tmp_path: Path, disk) -> None:  # noqa: ANN001
    small = disk("64k")
    store = small.path / "mlflow.db"
    started = time.monotonic()
    code, _, err, seconds = _finish(_train(tmp_path, *TINY, "trainer.max_steps=2", f"tracking.uri=sqlite:///{store}"), started)
    assert code == 2 and "Traceback" not in err, err[-3000:]
    assert _error(err).startswith(f"error: no disk space left on the device of the MLflow store {store} (")
    assert not store.exists()
    print(f"MLflow store too small at start: message after {seconds:.1f} s")
    small.resize("8m")
    code, _, err, _ = _finish(_train(tmp_path, *TINY, "trainer.max_steps=2", f"tracking.uri=sqlite:///{store}"), time.monotonic())
    assert code == 0, err[-3000:]
    assert [r.info.status for r in _runs(store)] == ["FINISHED"]


@pytest.mark.slow
def test_a_full_output_root_at_start_is_one_line(tmp_path: Path, disk) -> None:  # noqa: ANN001
    small = disk("512k")
    small.fill()
    started = time.monotonic()
    code, _, err, seconds = _finish(_train(tmp_path, *TINY, "trainer.max_steps=2", f"tracking.uri=sqlite:///{tmp_path}/mlflow.db",
                                           env={"EMBEDSWEEP_OUTPUT_ROOT": str(small.path / "outputs")}), started)  # fmt: skip
    assert code == 2 and "Traceback" not in err, err[-3000:]
    assert _error(err).startswith(f"error: no disk space left on the device of the output root {small.path}/outputs")
    print(f"output root full at start: message after {seconds:.1f} s")
    assert not (tmp_path / "mlflow.db").exists() or _runs(tmp_path / "mlflow.db") == []


@pytest.mark.slow
def test_an_mlflow_store_that_fills_mid_training_is_one_line_keeps_what_it_had_and_works_again(tmp_path: Path, disk) -> None:  # noqa: ANN001
    small = disk("3m")
    store = small.path / "mlflow.db"
    args = [*TINY, "trainer.max_steps=400", "trainer.logging_steps=1", "trainer.eval_steps=50", f"tracking.uri=sqlite:///{store}"]
    proc = _train(tmp_path, *args)

    _wait_for(lambda: _logged(store, "history/loss"))
    before = _runs(store)[0]
    filler = small.fill()
    filled = time.monotonic()
    code, _, err, seconds = _finish(proc, filled)
    assert code == 2 and "Traceback" not in err, err[-3000:]
    assert _error(err).startswith(f"error: no disk space left on the device of the MLflow store {store} ("), err[-3000:]
    print(f"MLflow store full mid-training: message {seconds:.1f} s after the disk filled")
    assert _integrity(store) == "ok"
    (after,) = _runs(store)
    assert after.data.params == before.data.params and set(before.data.metrics) <= set(after.data.metrics)  # nothing lost

    filler.unlink()  # room again: the same store takes the next run, which ends the one left RUNNING
    code, _, err, _ = _finish(_train(tmp_path, *TINY, "trainer.max_steps=2", f"tracking.uri=sqlite:///{store}"), time.monotonic())
    assert code == 0, err[-3000:]
    first, second = _runs(store)
    assert (first.info.status, second.info.status) == ("FAILED", "FINISHED")
    assert _integrity(store) == "ok"


@pytest.mark.slow
def test_an_optuna_storage_that_fills_mid_sweep_is_one_line_and_the_study_resumes(tmp_path: Path, disk) -> None:  # noqa: ANN001
    import optuna

    small = disk("2m")
    storage = small.path / "optuna.db"
    sweep = ["-m", "hydra/sweeper=optuna", *TINY, "trainer.max_steps=60", "trainer.eval_steps=2", "trainer.lr=choice(1e-3,2e-3)",
             "hydra.sweeper.n_trials=3", "hydra/sweeper/pruner=none", f"hydra.sweeper.storage=sqlite:///{storage}",
             "hydra.sweeper.study_name=embedsweep"]  # fmt: skip  # named: the resume below runs shorter trials in the same study
    proc = _train(tmp_path, *sweep)

    def reporting() -> bool:
        try:
            trials = optuna.load_study(study_name="embedsweep", storage=f"sqlite:///{storage}").trials
        except Exception:  # noqa: BLE001 - not created yet
            return False
        return any(t.intermediate_values for t in trials)

    _wait_for(reporting)
    filler = small.fill()
    filled = time.monotonic()
    code, _, err, seconds = _finish(proc, filled)
    assert code == 2 and "Traceback" not in err, err[-3000:]
    assert _error(err).startswith(f"error: no disk space left on the device of the Optuna storage {storage} ("), err[-3000:]
    print(f"Optuna storage full mid-sweep: message {seconds:.1f} s after the disk filled")
    assert _integrity(storage) == "ok"
    before = {t.number: (t.state.name, dict(t.intermediate_values)) for t in optuna.load_study(study_name="embedsweep", storage=f"sqlite:///{storage}").trials}
    filler.unlink()  # room again: the same study resumes (a shorter trial: an explicit study_name keeps it the same study)
    code, _, err, _ = _finish(_train(tmp_path, *sweep, "trainer.max_steps=4", "hydra.sweeper.n_trials=1"), time.monotonic())
    assert code == 0, err[-3000:]
    trials = optuna.load_study(study_name="embedsweep", storage=f"sqlite:///{storage}").trials
    assert [t.state.name for t in trials][len(before):] == ["COMPLETE"]
    for t in trials[: len(before)]:  # what was recorded is kept; a trial the full disk cut short ended FAIL
        assert dict(t.intermediate_values) == before[t.number][1] and t.state.name in ("COMPLETE", "FAIL")


@pytest.mark.slow
def test_an_output_root_that_fills_mid_training_is_one_line_at_the_save_and_the_scores_are_kept(tmp_path: Path, disk) -> None:  # noqa: ANN001
    """The run's scores go to the MLflow store (another disk here); the log file stops with a warning
    if it needs room, and the model's save is refused in one line."""
    small = disk("3m")
    store = tmp_path / "mlflow.db"
    proc = _train(tmp_path, *TINY, "trainer.max_steps=30", "trainer.logging_steps=1", "trainer.eval_steps=10",
                  f"tracking.uri=sqlite:///{store}", env={"EMBEDSWEEP_OUTPUT_ROOT": str(small.path / "outputs")})  # fmt: skip
    _wait_for(lambda: _logged(store, "history/loss"))
    small.fill()
    filled = time.monotonic()
    code, _, err, seconds = _finish(proc, filled)
    assert code == 2 and "Traceback" not in err and "Logging error" not in err, err[-3000:]
    (run_dir,) = small.path.glob("outputs/runs/*/*")
    assert _error(err).startswith(f"error: no space left on the device of {run_dir / 'model'} to save the trained model (its scores are in MLflow)")
    print(f"output root full mid-training: message {seconds:.1f} s after the disk filled (at the save)")
    assert not (run_dir / ".model.partial").exists() and not (run_dir / "model").exists()
    (run,) = _runs(store)
    assert run.info.status == "FAILED" and "answer/pearson_cosine" in run.data.metrics


def test_a_log_file_on_a_full_disk_is_one_warning_not_a_traceback_per_line(tmp_path: Path, disk, capsys: pytest.CaptureFixture[str]) -> None:  # noqa: ANN001
    import logging

    from embedsweep.console import LogFile

    small = disk("64k")
    handler = LogFile(small.path / "train.log")
    logger = logging.getLogger("test_full_disk.log_file")
    logger.addHandler(handler)
    logger.propagate = False
    try:
        logger.warning("before the disk filled")
        small.fill()
        for i in range(200):  # more than the file's last page holds
            logger.warning("line %d of a log that no longer fits: %s", i, "x" * 100)
    finally:
        logger.removeHandler(handler)
        handler.close()
    err = capsys.readouterr().err
    assert err.splitlines() == [f"WARNING: no disk space left on the device ({small.path / 'train.log'}): the rest of this log is not written"]
    assert (small.path / "train.log").read_text().startswith("before the disk filled\n")


def test_a_cache_on_a_full_disk_costs_a_warning_not_the_run(tmp_path: Path, disk, caplog: pytest.LogCaptureFixture) -> None:  # noqa: ANN001
    from datasets import Dataset

    from embedsweep.run import cache

    small = disk("64k")
    small.fill()
    assert cache.cached_json(str(small.path / "cache"), "baseline", lambda: "k", lambda: {"pearson_cosine": 0.5}) == ({"pearson_cosine": 0.5}, False)
    rows = Dataset.from_dict({"anchor": [f"a{i}" for i in range(2000)], "positive": [f"p{i}" for i in range(2000)]})
    dataset, cached = cache.cached_dataset(str(small.path / "cache"), lambda: "key", lambda: rows)
    assert (cached, len(dataset)) == (False, 2000)
    warnings = [r.getMessage() for r in caplog.records if r.name == "embedsweep.run.cache" and r.levelname == "WARNING"]
    assert len(warnings) == 2 and all(w.startswith("could not keep cache entry ") and w.endswith(": this run goes on without it") for w in warnings), warnings
    assert not [p for p in (small.path / "cache").rglob("*") if p.is_file()]  # no half entry left
