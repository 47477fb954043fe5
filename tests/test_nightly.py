"""Three nights of the real nightly command (deploy/nightly.sh, as cron, systemd and SLURM run it) on a
small real dataset (the packaged SNLI sample as the training file, a tiny model, two trials a night),
each night's verdict POSTed to a local webhook:

1. a study for the data, its winner registered and made @champion (nothing to beat yet);
2. rows appended to the training file: a new study for the new data version, whose first trial is night
   1's best configuration (warm start); the champion scored on today's test pairs first (drift); the
   winner promoted only by the existing rule (a paired interval above zero);
3. the same data and a spent budget: nothing to do, and the notification says so.

A second test: a webhook that answers HTTP 500 leaves the night green (exit 0, every record kept)."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import OFFLINE_ENV, ROOT
from test_notify import SECRET_PATH, webhook_server

pytestmark = pytest.mark.slow

PACKAGED_SNLI = ROOT / "src" / "embedsweep" / "resources" / "snli" / "train_1pct.tsv"
FIRST_ROWS, APPENDED_ROWS = 300, 60
# Small and quick: a 2-layer random-init BERT, 4 steps, two trials a night, a study budget of two trials.
# model=tiny is a smoke-test model, so its registration is asked for (promote.register_random_init).
TINY = [
    "model=tiny", "trainer.max_steps=4", "trainer.eval_steps=2", "trainer.logging_steps=2", "trainer.lr=1e-3",
    "batch=choice(16,32)", "trainer.warmup_ratio=interval(0,0.3)", "hydra.sweeper.sampler.seed=7",
    "hydra.sweeper.n_trials=2", "hydra.sweeper.max_trials=2", "hydra.sweeper.warm_start.top_k=1",
    "promote.register_random_init=true",
]  # fmt: skip
MODEL = "tiny-nli"  # the registered name: <model>-<task>


def _training_file(path: Path, rows: int) -> None:
    """The first `rows` rows of the packaged SNLI sample (header kept): night 2 appends more of them."""
    lines = PACKAGED_SNLI.read_text().splitlines(keepends=True)
    path.write_text("".join(lines[: rows + 1]))


def _night(tmp_path: Path, train: Path, url: str) -> subprocess.CompletedProcess[str]:
    """deploy/nightly.sh as a schedule runs it: settings in the environment (the webhook URL too),
    the data and the small budget as arguments."""
    env = {"PATH": "/usr/bin:/bin", "HOME": os.environ.get("HOME", "/root"), "OMP_NUM_THREADS": "1"} | OFFLINE_ENV | {
        "EMBEDSWEEP_PYTHON": sys.executable, "EMBEDSWEEP_OUTPUT_ROOT": str(tmp_path / "outputs"), "EMBEDSWEEP_NOTIFY_URL": url,
    }  # fmt: skip
    if os.environ.get("PYTHONPATH"):  # .ci/run's clone without ../shared runs its own src/
        env["PYTHONPATH"] = os.environ["PYTHONPATH"]
    args = [str(ROOT / "deploy" / "nightly.sh"), "data=local", f"data.path={train}", *TINY]
    return subprocess.run(args, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=1500)


def _verdict_lines(out: str) -> list[str]:
    """What a night says at its end: the verdict's closing lines, or the sweeper's 'nothing to do'."""
    keep = ("sweep verdict", "best:", "drift", "registered ", "not promoted", "nothing to do", "new study", "warm start", "study '")
    return [line for line in out.splitlines() if line.lstrip().startswith(keep) or "champion" in line]


def _studies(tmp_path: Path) -> dict[str, list]:
    import optuna

    storage = f"sqlite:///{tmp_path}/outputs/optuna.db"
    return {s.study_name: optuna.load_study(study_name=s.study_name, storage=storage).trials for s in optuna.get_all_study_summaries(storage)}


def _champion(tmp_path: Path) -> str:
    from mlflow import MlflowClient

    return str(MlflowClient(tracking_uri=f"sqlite:///{tmp_path}/outputs/mlflow.db").get_model_version_by_alias(MODEL, "champion").version)


@pytest.mark.timeout(3000)  # three sweeps of two trials each, on a busy 2-core machine
def test_three_nights_follow_the_data_and_notify_each_verdict(tmp_path: Path) -> None:
    train = tmp_path / "train.tsv"
    _training_file(train, FIRST_ROWS)
    said: dict[int, list[str]] = {}
    with webhook_server() as hook:
        # ---------------------------------------------------------------- night 1: a study, a champion
        first = _night(tmp_path, train, hook.url)
        out = first.stdout + first.stderr
        assert first.returncode == 0, out[-5000:]
        said[1] = _verdict_lines(out)
        assert "sweep verdict, ranked by pearson_cosine (2 jobs):" in out
        (night1,) = [r["json"] for r in hook.received]
        (study1,) = _studies(tmp_path)
        assert night1["state"] == "finished" and night1["study"] == study1 and night1["counts"] == {"jobs": 2, "finished": 2, "failed": 0, "pruned": 0}
        best1 = max(_studies(tmp_path)[study1], key=lambda t: t.value)
        assert night1["winner"]["value"] == pytest.approx(best1.value)
        assert night1["promotion"]["registered_model"] == MODEL and night1["promotion"]["version"] == "1"
        assert night1["promotion"]["champion"] is True and _champion(tmp_path) == "1"  # nothing to beat: not worse than untouched
        assert night1["drift"] is None  # no champion yet when the night started
        assert any(line.startswith(f"study {study1!r}: search ") for line in night1["log"])

        # ---------------------------------------------------------------- night 2: new rows, new study, warm start
        _training_file(train, FIRST_ROWS + APPENDED_ROWS)
        second = _night(tmp_path, train, hook.url)
        out = second.stdout + second.stderr
        assert second.returncode == 0, out[-5000:]
        said[2] = _verdict_lines(out)
        night2 = hook.received[1]["json"]
        studies = _studies(tmp_path)
        (study2,) = set(studies) - {study1}
        assert night2["study"] == study2 and night2["data_version"] != night1["data_version"]
        assert re.search(rf"new study '{re.escape(study2)}' for this data: study '{re.escape(study1)}' holds the same search on other data \(.*train", out), out[-5000:]
        trials2 = sorted(studies[study2], key=lambda t: t.number)
        assert trials2[0].params == best1.params  # warm start: night 1's best configuration first
        assert trials2[1].params != trials2[0].params  # then a new point: the new study does not replay night 1's
        assert night2["counts"]["finished"] == 2
        # Drift: the champion (version 1) on today's test pairs, the same pairs as at its promotion.
        assert night2["drift"] is not None and night2["drift"]["line"].startswith(f"champion {MODEL} v1")
        # Promotion by the existing rule: @champion moves only if the paired 95% interval of the test
        # difference to the champion lies above 0.
        promotion = night2["promotion"]
        (note,) = [n for n in promotion["notes"] if n.startswith(f"registered {MODEL} version 2")]
        low, high = map(float, re.search(r"paired 95% interval \[([-+.\d]+), ([-+.\d]+)\]", note).groups())
        assert promotion["champion"] is (low > 0), note
        assert _champion(tmp_path) == ("2" if low > 0 else "1")
        verdict = "better beyond noise" if low > 0 else "worse beyond noise" if high < 0 else "not better beyond noise"
        assert note.endswith(f"{verdict}, so it becomes @champion" if low > 0 else f"{verdict}, so @champion stays on version 1")

        # ---------------------------------------------------------------- night 3: same data, budget spent
        third = _night(tmp_path, train, hook.url)
        out = third.stdout + third.stderr
        assert third.returncode == 0, out[-5000:]
        said[3] = _verdict_lines(out)
        assert f"study {study2!r} already holds 2 finished trials (max_trials=2): nothing to do" in out
        assert "sweep verdict" not in out
        night3 = hook.received[2]["json"]
        assert night3["state"] == "nothing to do"
        assert f"study {study2!r} already holds 2 finished trials (max_trials=2): nothing to do" in night3["log"]
        assert len(_studies(tmp_path)[study2]) == 2 and len(hook.received) == 3

    # For the record (run with -s): each night's verdict lines and night 2's notification.
    for number, lines in said.items():
        print(f"\n--- night {number}\n" + "\n".join(lines))
    print("\n--- night 2's notification\n" + json.dumps(night2, indent=2))
    assert all(r["path"] == "/" + SECRET_PATH for r in hook.received)
    assert SECRET_PATH not in first.stdout + first.stderr + second.stdout + second.stderr + third.stdout + third.stderr


def test_a_failing_webhook_leaves_the_night_green(tmp_path: Path) -> None:
    """The hook answers HTTP 500: one warning line, exit 0, the verdict and the MLflow runs as without a
    hook. Kills: a hook error that fails the command or is swallowed without a word."""
    from mlflow import MlflowClient

    train = tmp_path / "train.tsv"
    _training_file(train, FIRST_ROWS)
    with webhook_server(status=500) as hook:
        night = _night(tmp_path, train, hook.url)
    out = night.stdout + night.stderr
    assert night.returncode == 0, out[-5000:]
    shown = hook.url.replace(SECRET_PATH, "***")
    assert f"WARNING: notification (webhook {shown}) failed: HTTP 500 Internal Server Error; the sweep and its records are unaffected" in out
    assert len(hook.received) == 1 and hook.received[0]["json"]["state"] == "finished"
    (sweep_dir,) = (tmp_path / "outputs" / "multiruns").glob("*/*")
    assert json.loads((sweep_dir / "verdict.json").read_text())["counts"]["finished"] == 2
    client = MlflowClient(tracking_uri=f"sqlite:///{tmp_path}/outputs/mlflow.db")
    runs = client.search_runs([client.get_experiment_by_name("embedsweep").experiment_id])
    assert sorted(r.info.status for r in runs) == ["FINISHED"] * 3  # the parent and its two jobs
    assert SECRET_PATH not in out
