"""The deploy files do what they say: the systemd units pass `systemd-analyze verify`, the timer and the
cron line fire at the same time, and the cron line's command runs (with a stand-in checkout), holds its
lock and skips a second start while the first holds it."""

from __future__ import annotations

import fcntl
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import OFFLINE_ENV, ROOT, require

DEPLOY = ROOT / "deploy"
UNITS = sorted([*DEPLOY.glob("*.service"), *DEPLOY.glob("*.timer")])


def _systemd_analyze() -> str:
    tool = shutil.which("systemd-analyze")
    if tool is None:
        require("systemd-analyze", "systemd-analyze is not installed (apt-get install systemd; .ci/run installs it)")
    return tool


def test_the_systemd_units_verify_without_a_warning(tmp_path: Path) -> None:
    """`systemd-analyze verify` exits 0 even for an unknown key (it only warns, "ignoring"), so any
    output fails the test too. Kills: a misspelt key (TimeoutStartSecs=), a bad OnCalendar=, an
    ExecStart= binary that does not exist, a timer whose service is missing."""
    tool = _systemd_analyze()
    assert [u.name for u in UNITS] == ["embedsweep-sweep.service", "embedsweep-sweep.timer"]
    for unit in UNITS:  # side by side, as installed: the timer finds its service by name
        shutil.copy(unit, tmp_path / unit.name)
    proc = subprocess.run([tool, "verify", "--man=no", *(f"./{u.name}" for u in UNITS)], cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert (proc.returncode, proc.stdout + proc.stderr) == (0, ""), proc.stdout + proc.stderr


def _cron_line() -> tuple[str, str]:
    """(schedule, command) of the one line in deploy/cron.txt that is not a comment."""
    (line,) = [line for line in (DEPLOY / "cron.txt").read_text().splitlines() if line.strip() and not line.startswith("#")]
    fields = line.split(maxsplit=5)
    return " ".join(fields[:5]), fields[5]


def test_the_timer_and_the_cron_line_fire_at_the_same_time() -> None:
    """Both at 02:15 every night. Kills: either schedule changed alone."""
    tool = _systemd_analyze()
    schedule, _ = _cron_line()
    assert schedule == "15 2 * * *"
    (calendar,) = re.findall(r"^OnCalendar=(.+)$", (DEPLOY / "embedsweep-sweep.timer").read_text(), re.M)
    proc = subprocess.run([tool, "calendar", calendar], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert re.search(r"Normalized form: \*-\*-\* 02:15:00$", proc.stdout, re.M), proc.stdout


def _checkout(tmp_path: Path, venv: Path | None) -> tuple[Path, str]:
    """A stand-in for /opt/embedsweep (its .venv: `venv`, else a stub python that records how it was
    called) and /etc/embedsweep/sweep.env; returns (checkout, the cron command pointed at them)."""
    checkout, etc = tmp_path / "opt" / "embedsweep", tmp_path / "etc" / "embedsweep"
    checkout.mkdir(parents=True)
    etc.mkdir(parents=True)
    if venv is None:
        (checkout / ".venv" / "bin").mkdir(parents=True)
        stub = checkout / ".venv" / "bin" / "python"
        stub.write_text(
            '#!/bin/sh\n{ echo "cwd=$PWD"; echo "args=$*"; echo "offline=$HF_HUB_OFFLINE"; echo "storage=$EMBEDSWEEP_OPTUNA_STORAGE"; '
            f'echo "umask=$(umask)"; }} > {tmp_path}/called\necho "the sweep ran"\n'
        )
        stub.chmod(0o755)
    else:
        (checkout / ".venv").symlink_to(venv)  # the folder: its python finds its pyvenv.cfg
        (checkout / "train.py").symlink_to(ROOT / "train.py")
    (checkout / "deploy").mkdir()
    shutil.copy2(DEPLOY / "nightly.sh", checkout / "deploy" / "nightly.sh")  # as installed: the checkout's own copy
    outputs = checkout / "outputs"
    (etc / "sweep.env").write_text(
        f"EMBEDSWEEP_OPTUNA_STORAGE=sqlite:///{outputs}/optuna.db\nMLFLOW_TRACKING_URI=sqlite:///{outputs}/mlflow.db\n"
    )
    _, command = _cron_line()
    absolute = re.findall(r"(?<![\w.])/[\w./-]+", command)
    assert all(p.startswith(("/opt/embedsweep", "/etc/embedsweep/")) for p in absolute), absolute  # nothing else to stand in for
    return checkout, command.replace("/opt/embedsweep", str(checkout)).replace("/etc/embedsweep/", f"{etc}/")


def _cron(command: str) -> subprocess.CompletedProcess[str]:
    """The command as cron runs it: /bin/sh -c, a bare environment."""
    env = {"PATH": "/usr/bin:/bin", "HOME": os.environ.get("HOME", "/root"), "SHELL": "/bin/sh"}
    return subprocess.run(["/bin/sh", "-c", command], env=env, capture_output=True, text=True, timeout=120)


NIGHTLY_ARGS = (
    "train.py -m hparams_search=batch_warmup loss=mnr hydra.sweeper.on_new_data=new_study "
    "hydra.sweeper.warm_start.from_study=auto promote.check_drift=true"
)


def test_every_schedule_runs_the_same_nightly_command() -> None:
    """cron, the systemd unit, the SLURM driver and `make nightly` all run deploy/nightly.sh (the
    SLURM driver adds only its launcher); none runs train.py itself. Kills: a schedule that drifts
    from the others (its own train.py line, its own defaults)."""
    _, cron = _cron_line()
    assert re.search(r"(^|&& )deploy/nightly\.sh >> outputs/sweep-cron\.log 2>&1$", cron), cron
    (exec_start,) = re.findall(r"^ExecStart=(.+)$", (DEPLOY / "embedsweep-sweep.service").read_text(), re.M)
    assert exec_start == "/bin/bash /opt/embedsweep/deploy/nightly.sh"
    sbatch = [line for line in (DEPLOY / "sweep.sbatch").read_text().splitlines() if not line.startswith("#")]
    assert [line for line in sbatch if "nightly.sh" in line or "train.py" in line] == ['exec deploy/nightly.sh launcher=slurm hydra.sweeper.n_jobs=4 "$@"']
    make = (ROOT / "Makefile").read_text()
    assert re.search(r"^nightly: venv\n\tEMBEDSWEEP_PYTHON=\$\(BIN\)/python deploy/nightly\.sh \$\(ARGS\)$", make, re.M), "make nightly"
    assert os.access(DEPLOY / "nightly.sh", os.X_OK)


def test_the_cron_line_composes_and_its_lock_skips_a_second_start(tmp_path: Path) -> None:
    """The cron command, run by /bin/sh with cron's bare environment in a stand-in checkout: it runs
    deploy/nightly.sh, which runs `.venv/bin/python train.py -m <the nightly defaults>` in the checkout,
    offline, with the settings of the env file, under umask 077, its output appended to
    outputs/sweep-cron.log. While another process holds the lock (outputs/.sweep.lock), a second start
    exits 75 at once with one line in the log, without running anything.
    Kills: a `cd` or env file path that does not resolve, the lock on another path, a second start that
    runs anyway (`flock` without -n, or no flock), a silent skip."""
    checkout, command = _checkout(tmp_path, venv=None)
    proc = _cron(command)
    assert (proc.returncode, proc.stdout, proc.stderr) == (0, "", "")
    called = (tmp_path / "called").read_text().splitlines()
    assert called == [
        f"cwd={checkout}", f"args={NIGHTLY_ARGS}", "offline=1", f"storage=sqlite:///{checkout}/outputs/optuna.db", "umask=0077",
    ]  # fmt: skip
    log = checkout / "outputs" / "sweep-cron.log"
    assert log.read_text() == "the sweep ran\n"

    (tmp_path / "called").unlink()
    with open(checkout / "outputs" / ".sweep.lock", "a") as held:
        fcntl.flock(held, fcntl.LOCK_EX | fcntl.LOCK_NB)  # last night's sweep, still running
        second = _cron(command)
    assert second.returncode == 75
    assert not (tmp_path / "called").exists()  # nothing started
    assert log.read_text() == "the sweep ran\nembedsweep-nightly: another sweep holds outputs/.sweep.lock; not starting a second one\n"
    assert _cron(command).returncode == 0 and (tmp_path / "called").is_file()  # the lock is free again


def test_the_nightly_command_takes_overrides_and_a_webhook_from_its_environment(tmp_path: Path) -> None:
    """Arguments come after the nightly defaults (Hydra keeps the last value: they win);
    EMBEDSWEEP_NOTIFY_URL in the env file adds notify=webhook, and the URL stays off the command line.
    Kills: arguments that replace the defaults (warm start lost), a URL passed as an argument."""
    checkout, command = _checkout(tmp_path, venv=None)
    env_file = tmp_path / "etc" / "embedsweep" / "sweep.env"
    env_file.write_text(env_file.read_text() + "EMBEDSWEEP_NOTIFY_URL=https://hooks.example/services/T0/B0/s3cr3t\n")
    proc = _cron(command.replace("deploy/nightly.sh", "deploy/nightly.sh hydra.sweeper.n_trials=2 loss=cosine"))
    assert proc.returncode == 0, (checkout / "outputs" / "sweep-cron.log").read_text()
    args = (tmp_path / "called").read_text().splitlines()[1]
    assert args == f"args={NIGHTLY_ARGS} notify=webhook hydra.sweeper.n_trials=2 loss=cosine"


@pytest.mark.slow
def test_the_cron_line_runs_a_real_sweep(tmp_path: Path) -> None:
    """The cron command with this checkout's Python and train.py, and a tiny sweep appended to its
    arguments: one trial finishes, in the study of the env file's storage, and the log holds the verdict."""
    import optuna

    checkout, command = _checkout(tmp_path, venv=Path(sys.prefix))
    tiny = "model=tiny trainer.max_steps=2 trainer.eval_steps=2 trainer.save_model=false test=none hydra.sweeper.n_trials=1"
    assert command.count(" >> ") == 1
    command = command.replace(" >> ", f" {tiny} >> ")
    env = {"PATH": "/usr/bin:/bin", "HOME": os.environ.get("HOME", "/root")} | OFFLINE_ENV | {"OMP_NUM_THREADS": "1"}
    if os.environ.get("PYTHONPATH"):  # .ci/run's clone without ../shared runs its own src/
        env["PYTHONPATH"] = os.environ["PYTHONPATH"]
    proc = subprocess.run(["/bin/sh", "-c", command], env=env, capture_output=True, text=True, timeout=900)
    log = (checkout / "outputs" / "sweep-cron.log").read_text()
    assert proc.returncode == 0, log[-3000:]
    assert "sweep verdict, ranked by pearson_cosine (1 jobs):" in log, log[-3000:]
    (summary,) = optuna.get_all_study_summaries(f"sqlite:///{checkout}/outputs/optuna.db")
    assert summary.n_trials == 1
