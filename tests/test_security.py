"""Issue 22: secrets only through the environment, files only for their owner, clean-up of our own
leftovers only, and a sweep that leaves no byte of its password anywhere (the slow leak test)."""

from __future__ import annotations

import os
import stat
import uuid
from pathlib import Path

import pytest

from embedsweep.checks import claim


def test_the_optuna_storage_comes_from_the_environment_and_hydra_saves_only_the_reference(compose, monkeypatch: pytest.MonkeyPatch) -> None:
    from omegaconf import OmegaConf

    monkeypatch.setenv("EMBEDSWEEP_OPTUNA_STORAGE", "postgresql://u@db.example/optuna")
    cfg = compose("hparams_search=batch_warmup", hydra_config=True)
    assert cfg.hydra.sweeper.storage == "postgresql://u@db.example/optuna"
    saved = OmegaConf.to_yaml(cfg.hydra.sweeper)  # what Hydra writes into hydra.yaml: unresolved
    assert "${oc.env:EMBEDSWEEP_OPTUNA_STORAGE," in saved and "db.example" not in saved
    monkeypatch.delenv("EMBEDSWEEP_OPTUNA_STORAGE")
    assert compose("hparams_search=batch_warmup", hydra_config=True).hydra.sweeper.storage.endswith("/optuna.db")


def test_a_claim_removes_only_the_exact_leftovers_of_a_killed_save(tmp_path: Path) -> None:
    """With hydra.run.dir=. or $HOME the claimed folder holds other people's files: only `.model.partial`
    folders, in the folder or a job folder directly under it, are ours to remove."""
    ours = [tmp_path / ".model.partial", tmp_path / "3" / ".model.partial"]
    theirs = [tmp_path / ".cache.partial", tmp_path / "a" / "b" / ".model.partial", tmp_path / "0" / ".download.partial"]
    for folder in ours + theirs:
        folder.mkdir(parents=True)
        (folder / "weights").write_text("half")
    (tmp_path / "4").mkdir()
    (tmp_path / "4" / ".model.partial").symlink_to(tmp_path / "a")  # a link: not a folder we wrote
    held = claim.claim(tmp_path, "hydra.run.dir")
    try:
        assert [p.exists() for p in ours] == [False, False]
        assert all((p / "weights").is_file() for p in theirs) and (tmp_path / "a" / "b").is_dir()
    finally:
        held.release()


def _group_or_other_bits(root: Path) -> list[str]:
    return [f"{p} {stat.filemode(p.lstat().st_mode)}" for p in [root, *root.rglob("*")] if not p.is_symlink() and p.lstat().st_mode & 0o077]


def test_everything_a_run_writes_is_for_its_owner_only(train_cmd, tmp_path: Path) -> None:
    """umask 077 in the train.py process: the MLflow store and artifacts, Hydra's folder, the log, the
    lock and the saved model are not readable by group or others, whatever the caller's umask."""
    previous = os.umask(0o022)
    try:
        proc = train_cmd("model=tiny", "data=sample", "eval=sample", "test=none", "trainer.max_steps=1", "hydra.run.dir=outputs/run")
    finally:
        os.umask(previous)
    assert proc.returncode == 0, proc.stderr[-3000:]
    written = {p.name for p in (tmp_path / "outputs").rglob("*")}
    assert {"mlflow.db", "config.yaml", "overrides.yaml", "train.log", ".embedsweep.lock", "model.safetensors"} <= written
    assert _group_or_other_bits(tmp_path / "outputs") == []


# ---------------------------------------------------------------- the leak test


def _leaks(data: bytes, secret: bytes) -> bool:
    from urllib.parse import quote

    return secret in data or quote(secret.decode(), safe="").encode() in data


def _lines_leaking(texts: list[str], secret: bytes) -> list[str]:
    """The lines of `texts` that hold the secret (what a failure shows)."""
    return [line[:300] for text in texts for line in text.splitlines() if _leaks(line.encode(), secret)]


def _files_leaking(root: Path, secret: bytes) -> tuple[list[str], int]:
    """(files under root holding the secret, files searched)."""
    files = [p for p in root.rglob("*") if p.is_file() and not p.is_symlink()]
    return [str(p) for p in files if _leaks(p.read_bytes(), secret)], len(files)


def _mlflow_records(uri: str, experiment: str, tmp: Path) -> tuple[list[str], int]:
    """Every record of the experiment through MLflow's API: run names, params, tags, metric names,
    dataset inputs, every artifact's bytes; the registry's models and versions. Returns (texts, runs)."""
    from mlflow import MlflowClient

    client = MlflowClient(tracking_uri=uri)
    found = client.get_experiment_by_name(experiment)
    assert found is not None, f"no experiment {experiment} on the server"
    runs = client.search_runs([found.experiment_id], max_results=1000)
    texts = [repr(found)]
    for run in runs:
        texts += [repr(run.info), repr(run.data.params), repr(run.data.tags), repr(sorted(run.data.metrics)), repr(run.inputs)]
        pending = [""]
        while pending:
            for item in client.list_artifacts(run.info.run_id, pending.pop() or None):
                if item.is_dir:
                    pending.append(item.path)
                else:
                    path = Path(client.download_artifacts(run.info.run_id, item.path, str(tmp)))
                    texts.append(path.read_bytes().decode("utf-8", "replace"))
    for model in client.search_registered_models():
        texts.append(repr(model))
        texts += [repr(v) for v in client.search_model_versions(f"name = '{model.name}'")]
    texts += [repr(m) for m in client.search_logged_models([found.experiment_id])]
    return texts, len(runs)


def _database_rows(url: str) -> list[str]:
    """Every row of every table of a PostgreSQL database, as text."""
    import psycopg

    conninfo = url.replace("postgresql+psycopg://", "postgresql://")
    with psycopg.connect(conninfo) as conn:
        tables = [r[0] for r in conn.execute("SELECT tablename FROM pg_tables WHERE schemaname = 'public'")]
        return [row[0] for t in tables for row in conn.execute(f'SELECT t::text FROM "{t}" t')]


@pytest.mark.slow
def test_a_sweep_leaves_no_byte_of_its_password_anywhere(train_cmd, mlflow_server, postgres_db, tmp_path: Path) -> None:
    """A unique password in the tracking URI and in the study's storage URL (both given through the
    environment, as the README says), a 2-trial Optuna sweep, a second one that compares with the
    champion, the report and the liveness command: the password is in no console line, no file under
    outputs/ (Hydra's files, logs, summary.md, results), no MLflow record or artifact on the server, no
    row of either database, no Optuna attribute. The server ignores credentials (no auth) and
    PostgreSQL trusts 127.0.0.1, so both accept any password: it really travels with every request."""
    import optuna

    server, artifacts = mlflow_server
    secret = f"pw{uuid.uuid4().hex}"
    tracking = server.replace("http://", f"http://leak:{secret}@")
    storage_db = postgres_db()
    storage = storage_db.replace("postgres@", f"postgres:{secret}@")
    experiment = f"leak-{uuid.uuid4().hex[:8]}"
    env = {"MLFLOW_TRACKING_URI": tracking, "EMBEDSWEEP_OPTUNA_STORAGE": storage, "OMP_NUM_THREADS": "1"}
    sweep = ["-m", "hparams_search=batch_warmup", "model=tiny", "data=sample", "eval=sample", "trainer.max_steps=2",
             f"tracking.experiment={experiment}", "hydra.sweeper.study_name=leak", "promote.register_random_init=true"]  # fmt: skip
    import subprocess
    import sys

    from mlflow import MlflowClient

    consoles = []
    for trials in ("2", "1"):
        proc = train_cmd(*sweep, f"hydra.sweeper.n_trials={trials}", env=env)
        consoles.append(proc.stdout + proc.stderr)
        assert proc.returncode == 0 and "registered tiny-nli version" in consoles[-1], consoles[-1][-4000:]
        # The second sweep re-scores the champion: downloaded from the registry through the URI.
        MlflowClient(tracking_uri=server).set_registered_model_alias("tiny-nli", "champion", "1")
    assert "vs @champion (version 1)" in consoles[-1], consoles[-1][-3000:]
    report = ["--experiment", experiment, "--out", str(tmp_path / "report")]
    for module, args in (("embedsweep.conclude.report", report), ("embedsweep.conclude.report", ["--link", "--experiment", experiment]),
                         ("embedsweep.tracking.liveness", ["--experiment", experiment])):  # fmt: skip
        done = subprocess.run([sys.executable, "-m", module, *args], cwd=tmp_path, env=os.environ | env, capture_output=True, text=True, timeout=600)
        consoles.append(done.stdout + done.stderr)
        assert done.returncode == 0, consoles[-1][-3000:]

    password = secret.encode()
    assert _lines_leaking(consoles, password) == []
    leaking, searched = _files_leaking(tmp_path, password)
    assert leaking == [] and searched > 20
    for name in ("multirun.yaml", "hydra.yaml", "overrides.yaml", "train.log", "summary.md", "optimization_results.yaml"):
        assert list(tmp_path.rglob(name)), f"no {name} under {tmp_path}: the search would prove nothing"
    assert _files_leaking(artifacts, password)[0] == []
    (tmp_path / "downloaded").mkdir()
    records, runs = _mlflow_records(server, experiment, tmp_path / "downloaded")
    assert runs >= 5 and _lines_leaking(records, password) == []
    study = optuna.load_study(study_name="leak", storage=storage)
    # (the study's system attributes have no public reader in Optuna 5: they are in the database rows below)
    attributes = [repr(study.user_attrs)] + [repr((t.user_attrs, t.system_attrs, t.params)) for t in study.trials]
    assert len(study.trials) == 3 and _lines_leaking(attributes, password) == []
    rows = _database_rows(storage_db) + [row for db in _server_databases(experiment) for row in _database_rows(db)]
    assert len(rows) > 100 and _lines_leaking(rows, password) == []
    # The search can see a leak: a file holding the secret is found.
    (tmp_path / "outputs" / "canary.txt").write_text(f"x {tracking} y")
    assert _files_leaking(tmp_path, password)[0] == [str(tmp_path / "outputs" / "canary.txt")]
    (tmp_path / "outputs" / "canary.txt").unlink()
    assert _group_or_other_bits(tmp_path / "outputs") == []  # umask 077 for a whole sweep too


def _server_databases(experiment: str) -> list[str]:
    """The tracking server's backend database (made by the mlflow_server fixture): the one holding the experiment."""
    import psycopg

    admin = "postgresql://postgres@127.0.0.1:5432/postgres"
    with psycopg.connect(admin) as conn:
        names = [r[0] for r in conn.execute("SELECT datname FROM pg_database WHERE datname LIKE 'embedsweep_%'")]
    found = []
    for name in names:
        url = f"postgresql://postgres@127.0.0.1:5432/{name}"
        with psycopg.connect(url) as conn:
            has = conn.execute("SELECT to_regclass('public.experiments') IS NOT NULL").fetchone()[0]
            if has and conn.execute("SELECT 1 FROM experiments WHERE name = %s", (experiment,)).fetchone():
                found.append(url)
    assert found, f"no database of the tracking server holds experiment {experiment}"
    return found


def test_a_secret_on_the_command_line_gets_a_warning_that_does_not_repeat_it(train_cmd) -> None:
    proc = train_cmd("batch=0", "tracking.uri=http://u:s3cretpw@127.0.0.1:9")
    assert proc.returncode == 2
    assert proc.stderr.startswith(
        "warning: tracking.uri=http://u:***@127.0.0.1:9 on the command line: `ps` shows it and Hydra saves it as typed in "
        ".hydra/overrides.yaml; give secrets through the environment or ~/.pgpass (README: Secrets)\n"
    ), proc.stderr
    assert "s3cretpw" not in proc.stdout + proc.stderr
