"""The places a run writes to: one writer per output folder, nothing finished overwritten, and a
sentence (exit 2, no traceback, nothing changed) for a folder or store that cannot be used."""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest

from conftest import OFFLINE_ENV, ROOT, require
from embedsweep.checks import claim, stores
from embedsweep.errors import UserError

TINY = ["model=tiny", "trainer.warmup_steps=0"]


def last_line(proc: subprocess.CompletedProcess[str]) -> str:
    return proc.stderr.strip().splitlines()[-1]


# ---------------------------------------------------------------- one folder, one writer


def test_a_claimed_folder_is_refused_naming_the_folder_and_its_owner(tmp_path: Path) -> None:
    held = claim.claim(tmp_path / "sweep", "hydra.sweep.dir")
    owner = json.loads((tmp_path / "sweep" / claim.LOCK_FILE).read_text())
    assert owner["pid"] == os.getpid()
    with pytest.raises(UserError) as info:
        claim.claim(tmp_path / "sweep", "hydra.sweep.dir")
    assert str(info.value).startswith(f"output folder {tmp_path / 'sweep'} is in use by another run or sweep ({{\"host\": ")
    assert str(info.value).endswith("wait for it to end, or give this one another hydra.sweep.dir")
    held.release()
    claim.claim(tmp_path / "sweep", "hydra.sweep.dir").release()  # free again


def test_a_claim_dies_with_its_process_even_on_kill_9(tmp_path: Path) -> None:
    code = f"from embedsweep.checks import claim; c = claim.claim({str(tmp_path)!r}, 'k'); print('held', flush=True); import time; time.sleep(60)"
    holder = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    assert holder.stdout.readline().strip() == "held"
    with pytest.raises(UserError, match=f'"pid": {holder.pid}'):
        claim.claim(tmp_path, "k")
    os.kill(holder.pid, signal.SIGKILL)
    holder.wait()
    claim.claim(tmp_path, "k").release()


def test_a_claim_cleans_leftover_partial_models(tmp_path: Path) -> None:
    (tmp_path / "0" / ".model.partial").mkdir(parents=True)
    (tmp_path / "0" / ".model.partial" / "weights").write_text("half")
    claim.claim(tmp_path, "hydra.sweep.dir").release()
    assert not (tmp_path / "0" / ".model.partial").exists()


def test_a_run_folder_holding_a_model_is_refused_at_start(train_cmd, tmp_path: Path) -> None:
    run_dir = tmp_path / "run"
    (run_dir / "model").mkdir(parents=True)
    (run_dir / "model" / "model.safetensors").write_bytes(b"trained weights")
    proc = train_cmd(*TINY, f"hydra.run.dir={run_dir}")
    assert proc.returncode == 2
    assert last_line(proc) == (
        f"error: {run_dir / 'model'} already holds a trained model; this run would fail to save its own at the end. "
        "Give it a new output folder (hydra.run.dir=...), or set trainer.save_model=false"
    )
    assert not (tmp_path / "outputs" / "mlflow.db").exists()  # refused at start: no run was even opened
    assert (run_dir / "model" / "model.safetensors").read_bytes() == b"trained weights"


@pytest.mark.slow
def test_a_second_sweep_into_a_busy_folder_is_refused_and_the_first_loses_nothing(tmp_path: Path) -> None:
    """The first sweep's first job waits inside training until the test lets it go (a loss that waits
    for a file: tests/helpers), so the second command surely meets a running first sweep."""
    folder = tmp_path / "shared_sweep"
    started, gate = tmp_path / "started", tmp_path / "gate"
    (tmp_path / "extra_conf" / "loss").mkdir(parents=True)
    module = {"_target_": "faulty_losses.GatedLoss", "started": str(started), "gate": str(gate)}
    loss = {"name": "gated", "shape": "pair_score", "batch_sampler": "batch_sampler", "module": module}
    (tmp_path / "extra_conf" / "loss" / "gated.yaml").write_text(json.dumps(loss))  # JSON is YAML
    cmd = [sys.executable, str(ROOT / "train.py"), "-m", *TINY, "loss=gated,cosine", "trainer.max_steps=3", f"hydra.sweep.dir={folder}",
           f"hydra.searchpath=[file://{tmp_path / 'extra_conf'}]"]  # fmt: skip
    pythonpath = os.pathsep.join(p for p in (str(ROOT / "tests" / "helpers"), os.environ.get("PYTHONPATH")) if p)
    env = os.environ | OFFLINE_ENV | {"PYTHONPATH": pythonpath}
    first = subprocess.Popen(cmd, cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 600  # the first command's start-up: seconds, minutes on a loaded machine
        while not started.exists():  # the first job is training, and waits for the gate
            assert time.monotonic() < deadline and first.poll() is None, first.stderr.read()[-3000:] if first.poll() is not None else "no start"
            time.sleep(0.2)
        second = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
        assert first.poll() is None  # refused while the first still runs (it cannot end before the gate opens)
    finally:
        gate.write_text("go")
    assert second.returncode == 2
    assert last_line(second).startswith(f"error: output folder {folder} is in use by another run or sweep (")
    assert f'"pid": {first.pid}' in last_line(second)
    _, err = first.communicate(timeout=600)
    assert first.returncode == 0, err[-2000:]
    assert sorted(p.parent.parent.name for p in folder.glob("*/model/config.json")) == ["0", "1"]


# ---------------------------------------------------------------- broken places


def _foreign_db(path: Path) -> bytes:
    with sqlite3.connect(path) as con:
        con.execute("create table invoices (id integer primary key, amount real)")
        con.execute("insert into invoices (amount) values (12.5)")
    return path.read_bytes()


def test_another_applications_sqlite_file_is_refused_and_left_byte_identical(train_cmd, tmp_path: Path) -> None:
    db = tmp_path / "books.db"
    before = _foreign_db(db)
    proc = train_cmd(*TINY, f"tracking.uri=sqlite:///{db}")
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert last_line(proc) == (
        f"error: MLflow store {db} is a SQLite database of another application (tables: invoices); left untouched; "
        "point tracking.uri (or MLFLOW_TRACKING_URI) at an MLflow store, e.g. sqlite:///outputs/mlflow.db"
    )
    assert db.read_bytes() == before


def test_a_damaged_store_is_one_line(train_cmd, tmp_path: Path) -> None:
    db = tmp_path / "mlflow.db"
    db.write_bytes(os.urandom(4096))
    before = db.read_bytes()
    proc = train_cmd(*TINY, f"tracking.uri=sqlite:///{db}")
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert last_line(proc).startswith(f"error: MLflow store {db} is not a SQLite database (file is not a database)")
    assert db.read_bytes() == before


def test_a_foreign_optuna_storage_is_refused_before_any_sweep_work(train_cmd, tmp_path: Path) -> None:
    db = tmp_path / "other.db"
    before = _foreign_db(db)
    proc = train_cmd("-m", "hparams_search=batch_warmup", *TINY, f"hydra.sweeper.storage=sqlite:///{db}")
    assert proc.returncode == 2
    assert last_line(proc).startswith(f"error: Optuna storage {db} is a SQLite database of another application")
    assert db.read_bytes() == before
    assert not (tmp_path / "outputs" / "mlflow.db").exists()  # no parent run was opened


def test_an_output_root_below_a_missing_folder_is_one_line(train_cmd, tmp_path: Path) -> None:
    root = tmp_path / "not_mounted" / "outputs"
    proc = train_cmd(*TINY, env={"EMBEDSWEEP_OUTPUT_ROOT": str(root)})
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert last_line(proc) == (
        f"error: output root {root} cannot be created: {tmp_path / 'not_mounted'} does not exist (a typo, or a disk not "
        "mounted?); set EMBEDSWEEP_OUTPUT_ROOT (or paths.output_root=) to a writable folder"
    )
    assert not (tmp_path / "not_mounted").exists()


@pytest.fixture
def read_only_dir(tmp_path: Path):
    """A read-only file system (root ignores file modes, so chmod cannot make one)."""
    path = tmp_path / "ro"
    path.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "ro,size=1m", "tmpfs", str(path)], capture_output=True).returncode != 0:
        require("a tmpfs mount", "cannot mount a read-only tmpfs here (needs root); the check is covered by test_check_folder_*")
    yield path
    subprocess.run(["umount", str(path)], check=True)


def test_a_read_only_output_root_is_one_line(train_cmd, read_only_dir: Path) -> None:
    proc = train_cmd(*TINY, env={"EMBEDSWEEP_OUTPUT_ROOT": str(read_only_dir)})
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert last_line(proc).startswith(f"error: output root {read_only_dir} is not writable (Read-only file system); set EMBEDSWEEP_OUTPUT_ROOT")


def test_check_folder_refuses_a_file_in_the_way(tmp_path: Path) -> None:
    (tmp_path / "f").write_text("x")
    with pytest.raises(UserError, match=r"out .*/f/sub is not writable \(.*\); fix"):
        stores.check_folder(tmp_path / "f" / "sub", "out", "fix")


@pytest.mark.slow
def test_a_full_disk_at_the_model_save_is_one_line_and_the_scores_are_kept(train_cmd, small_disk: Path, tmp_path: Path) -> None:
    store = f"sqlite:///{tmp_path}/mlflow.db"
    proc = train_cmd(*TINY, "trainer.max_steps=2", f"tracking.uri={store}", env={"EMBEDSWEEP_OUTPUT_ROOT": str(small_disk)})
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert last_line(proc).startswith("error: no space left on the device of ")
    assert not list(small_disk.glob("runs/*/*/.model.partial"))  # the space is given back
    from mlflow import MlflowClient

    client = MlflowClient(tracking_uri=store)
    (run,) = client.search_runs([client.get_experiment_by_name("embedsweep").experiment_id])
    assert run.info.status == "FAILED" and "answer/pearson_cosine" in run.data.metrics


def test_a_claim_travels_to_parallel_workers_as_an_inert_copy(tmp_path: Path) -> None:
    import pickle

    held = claim.claim(tmp_path, "hydra.sweep.dir")
    copy = pickle.loads(pickle.dumps(held))  # what joblib does with Hydra's callbacks
    copy.release()  # does nothing: the lock stays with its owner
    with pytest.raises(UserError, match="is in use"):
        claim.claim(tmp_path, "hydra.sweep.dir")
    held.release()
