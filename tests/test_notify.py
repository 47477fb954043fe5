"""Notifications (embedsweep.notify): the hook gets each sweep's verdict as JSON, or why there is none; a
failing hook costs one warning line and never the sweep; a webhook's URL never reaches a log line."""

from __future__ import annotations

import json
import logging
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from conftest import OFFLINE_ENV, ROOT
from embedsweep.errors import UserError
from embedsweep.notify import Notify

SECRET_PATH = "services/T0123/B0456/s3cretW3bhookT0ken"


class Hook:
    """A local webhook: each POST's JSON body is kept in `received`; it answers `status` after `delay` s."""

    def __init__(self, status: int = 200, delay: float = 0.0) -> None:
        self.status, self.delay = status, delay
        self.received: list[dict] = []
        self.url = ""


@contextmanager
def webhook_server(status: int = 200, delay: float = 0.0) -> Iterator[Hook]:
    """http.server in a thread on a free local port; the hook's URL carries a secret in its path, as
    Slack's and Teams' do."""
    hook = Hook(status, delay)

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:  # noqa: N802 - http.server's name
            body = self.rfile.read(int(self.headers["Content-Length"]))
            hook.received.append({"path": self.path, "content_type": self.headers["Content-Type"], "json": json.loads(body)})
            time.sleep(hook.delay)
            self.send_response(hook.status)
            self.end_headers()
            self.wfile.write(b"ok" if hook.status < 300 else b"broken")

        def log_message(self, *args: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    hook.url = f"http://127.0.0.1:{server.server_address[1]}/{SECRET_PATH}"
    try:
        yield hook
    finally:
        server.shutdown()
        server.server_close()


def _verdict(sweep_dir: Path, **fields: object) -> dict:
    found = {"state": "finished", "objective": "pearson_cosine", "winner": {"name": "batch=32", "value": 0.81}, "counts": {"jobs": 2}} | fields
    sweep_dir.mkdir(parents=True, exist_ok=True)
    (sweep_dir / "verdict.json").write_text(json.dumps(found))
    return found


# ---------------------------------------------------------------- what the hook gets


def test_a_sweep_with_a_verdict_sends_it_whole(tmp_path: Path) -> None:
    """The hook gets verdict.json as the end of the sweep wrote it, plus the sweep folder and the
    sweeper's lines. Kills: a payload rebuilt from parts (a field lost), the sweeper's lines missing."""
    verdict = _verdict(tmp_path / "sweep", promotion={"promoted": False}, drift=None)
    notify = Notify(hook="webhook", url="http://unused.invalid/x")
    notify._lines.append("study 'nightly-data-3f2a' in sqlite:///x: 0 finished trials; this run adds up to 2")
    payload = notify.ended(tmp_path / "sweep")
    assert payload == {"sweep_dir": str(tmp_path / "sweep")} | verdict | {"log": ["study 'nightly-data-3f2a' in sqlite:///x: 0 finished trials; this run adds up to 2"]}


def test_a_sweep_without_a_verdict_says_nothing_to_do_or_failed(tmp_path: Path) -> None:
    """No verdict.json and no job folder: the sweep ran nothing (a spent budget). Job folders but no
    verdict: failed, and says so. A sweep that raised: failed with the error it ended on, its verdict kept
    where it wrote one. Kills: 'nothing to do' for a sweep whose jobs ran, a failure sent without its error."""
    notify = Notify(hook="command", command="cat")
    sweep = tmp_path / "sweep"
    sweep.mkdir()
    nothing = notify.ended(sweep)
    assert (nothing["state"], nothing["sweep_dir"]) == ("nothing to do", str(sweep))
    assert nothing["reason"].startswith("the sweep ran no job (the study's budget is spent")

    refused = notify.stopped(sweep, UserError("tracking.uri=postgresql://alice:pw-123456@db/x is unreachable"))
    assert refused["state"] == "failed" and refused["error"] == "tracking.uri=postgresql://alice:***@db/x is unreachable"
    crashed = notify.stopped(sweep, RuntimeError("more than 50% of the trials failed"))
    assert crashed["error"] == "RuntimeError: more than 50% of the trials failed"
    assert notify.stopped(sweep, KeyboardInterrupt())["error"] == "interrupted (Ctrl-C or SIGTERM)"
    assert notify.stopped(sweep, None)["error"] == "the sweep stopped before its end; the error is in its log"

    (sweep / "0" / ".hydra").mkdir(parents=True)
    (sweep / "1" / ".hydra").mkdir(parents=True)
    lost = notify.ended(sweep)
    assert (lost["state"], lost["error"]) == ("failed", "the sweep ran 2 job(s) but wrote no verdict.json; see its log")

    _verdict(sweep, counts={"jobs": 2, "failed": 2})
    after_jobs = notify.stopped(sweep, RuntimeError("every trial failed"))
    assert (after_jobs["state"], after_jobs["error"], after_jobs["counts"]) == ("failed", "RuntimeError: every trial failed", {"jobs": 2, "failed": 2})


# ---------------------------------------------------------------- delivery


def test_a_webhook_gets_the_json_and_a_failing_one_costs_one_warning(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """200: the body is the verdict as JSON (Content-Type application/json), one INFO line. HTTP 500,
    a closed port, no answer within the timeout: one WARNING line each, naming what went wrong, and
    never the secret part of the URL. Kills: an exception out of the hook, the URL's token in a line."""
    verdict = _verdict(tmp_path / "sweep")
    caplog.set_level(logging.INFO, logger="embedsweep.notify")

    def deliver(url: str, timeout: float = 5.0) -> list[str]:
        caplog.clear()
        notify = Notify(hook="webhook", url=url, timeout=timeout)
        notify._deliver(notify.ended(tmp_path / "sweep"))
        return [f"{r.levelname}: {r.getMessage()}" for r in caplog.records]

    with webhook_server() as hook:
        assert deliver(hook.url) == [f"INFO: notification sent (webhook {hook.url.replace(SECRET_PATH, '***')})"]
    (got,) = hook.received
    assert (got["path"], got["content_type"]) == ("/" + SECRET_PATH, "application/json")
    assert got["json"] == {"sweep_dir": str(tmp_path / "sweep")} | verdict | {"log": []}

    with webhook_server(status=500) as hook:
        shown = hook.url.replace(SECRET_PATH, "***")
        assert deliver(hook.url) == [f"WARNING: notification (webhook {shown}) failed: HTTP 500 Internal Server Error; the sweep and its records are unaffected"]
        assert len(hook.received) == 1
    closed = hook.url  # its server is gone: nothing listens on the port
    (line,) = deliver(closed)
    assert line.startswith("WARNING: notification (webhook http://127.0.0.1:") and "failed: unreachable (" in line
    with webhook_server(delay=3) as hook:
        started = time.monotonic()
        (line,) = deliver(hook.url, timeout=0.5)
        assert time.monotonic() - started < 2.5
    assert line.endswith("failed: no answer within 0.5 s; the sweep and its records are unaffected"), line
    assert all(SECRET_PATH not in r.getMessage() for r in caplog.records)


def test_a_command_gets_the_json_on_its_stdin_and_a_failing_one_costs_one_warning(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """The command reads the JSON on stdin; exit 1 (with its last stderr line) and a command past its
    timeout are one WARNING each. Kills: the JSON passed otherwise (an argument, a file), a raise."""
    verdict = _verdict(tmp_path / "sweep")
    caplog.set_level(logging.INFO, logger="embedsweep.notify")
    out = tmp_path / "got.json"
    Notify(hook="command", command=f"cat > {out}")._deliver(Notify(hook="command", command="x").ended(tmp_path / "sweep"))
    assert json.loads(out.read_text())["winner"] == verdict["winner"]
    assert [r.getMessage() for r in caplog.records] == [f"notification sent (command 'cat > {out}')"]

    caplog.clear()
    Notify(hook="command", command="echo 'mail: no such host' >&2; exit 1")._deliver({"state": "finished"})
    Notify(hook="command", command="sleep 5", timeout=0.3)._deliver({"state": "finished"})
    assert [(r.levelname, r.getMessage()) for r in caplog.records] == [
        ("WARNING", "notification (command \"echo 'mail: no such host' >&2; exit 1\") failed: exit code 1: mail: no such host; the sweep and its records are unaffected"),
        ("WARNING", "notification (command 'sleep 5') failed: no exit within 0.3 s (stopped); the sweep and its records are unaffected"),
    ]  # fmt: skip


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"hook": "slack"}, "hydra.callbacks.notify.hook='slack' is not a hook: pick notify=none, notify=command or notify=webhook"),
        ({"hook": "command"}, "notify=command needs the command to run: hydra.callbacks.notify.command='...' (it gets the verdict JSON on its stdin)"),
        ({"hook": "webhook"}, "notify=webhook needs an http:// or https:// URL (found: not set): set EMBEDSWEEP_NOTIFY_URL in the schedule's env file"),
        ({"hook": "webhook", "url": "ftp://files.example/" + SECRET_PATH}, "notify=webhook needs an http:// or https:// URL (found: ftp://files.example/***)"),
        ({"hook": "webhook", "url": "https://h.example/x", "timeout": 0}, "hydra.callbacks.notify.timeout=0 must be a number of seconds above 0"),
    ],
)
def test_a_hook_that_cannot_work_is_refused_before_the_sweep(options: dict, message: str) -> None:
    with pytest.raises(UserError) as refused:
        Notify(**options).check()
    assert str(refused.value).startswith(message)
    assert SECRET_PATH not in str(refused.value)


def test_the_options_compose_under_hydra_callbacks_first_and_never_reach_a_job(compose, monkeypatch: pytest.MonkeyPatch) -> None:
    """notify=none by default; notify=webhook takes its URL from EMBEDSWEEP_NOTIFY_URL; the callback is
    listed first (it hears of a sweep that preflight refuses); a job's config (recorded in MLflow) holds
    no notify key. Kills: the URL in the job's config, notify after preflight."""
    monkeypatch.setenv("EMBEDSWEEP_NOTIFY_URL", "https://hooks.example/" + SECRET_PATH)
    default = compose(hydra_config=True)
    assert list(default.hydra.callbacks)[:2] == ["notify", "preflight"]
    assert dict(default.hydra.callbacks.notify) == {"_target_": "embedsweep.notify.Notify", "hook": "none"}
    webhook = compose("notify=webhook", hydra_config=True).hydra.callbacks.notify
    assert (webhook.hook, webhook.url, webhook.timeout) == ("webhook", "https://hooks.example/" + SECRET_PATH, 30)
    command = compose("notify=command", "hydra.callbacks.notify.command='cat > /tmp/x'", hydra_config=True).hydra.callbacks.notify
    assert (command.hook, command.command) == ("command", "cat > /tmp/x")
    assert "notify" not in compose("notify=webhook")


def test_a_refused_sweep_still_notifies_with_its_error(tmp_path: Path) -> None:
    """A real `train.py -m` that preflight refuses (a bad value): exit code 2 and its one-line error as
    before, and the command hook got {"state": "failed", "error": <that line>}. Kills: no notification
    for a sweep that never started (Hydra skips on_multirun_end), a hook that changes the exit code."""
    out = tmp_path / "got.json"
    proc = subprocess.run(
        [sys.executable, str(ROOT / "train.py"), "-m", "model=tiny", "batch=0", "trainer.seed=1,2", "notify=command", f"hydra.callbacks.notify.command='cat > {out}'"],
        cwd=tmp_path, env=OFFLINE_ENV | {"PATH": "/usr/bin:/bin"}, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    (error,) = [line for line in proc.stderr.splitlines() if line.startswith("error: ")]
    assert proc.returncode == 2, proc.stderr
    got = json.loads(out.read_text())
    assert got["state"] == "failed" and got["error"] == error.removeprefix("error: ")
    assert Path(got["sweep_dir"]).parent.parent == tmp_path / "outputs" / "multiruns"


@pytest.mark.slow  # a real sweep in a subprocess: the fast suite stays as fast as before this round
def test_a_sweep_that_fails_midway_notifies_with_its_error(tmp_path: Path) -> None:
    """A real grid sweep whose job fails (a training file without its label column): the sweep raises,
    Hydra skips on_multirun_end, and the sweeper tells the hook itself (notify.sweep_ended), once.
    Kills: a failed night that nobody hears of."""
    data = tmp_path / "train.tsv"
    data.write_text("premise\thypothesis\n" + "".join(f"a man walks {i}\ta person moves {i}\n" for i in range(40)))
    out = tmp_path / "got.json"
    proc = subprocess.run(
        [sys.executable, str(ROOT / "train.py"), "-m", "model=tiny", "data=local", f"data.path={data}", "trainer.seed=1",
         "notify=command", f"hydra.callbacks.notify.command='cat >> {out}'"],
        cwd=tmp_path, env=OFFLINE_ENV | {"PATH": "/usr/bin:/bin"}, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert proc.returncode == 2, proc.stderr
    got = json.loads(out.read_text())  # one JSON document: sent once
    assert got["state"] == "failed" and "lacks column(s) ['label']" in got["error"], got
    assert [j["state"] for j in got["jobs"]] == ["FAILED"] and got["failures"][0]["error"], got


def test_the_webhook_endpoint_is_shown_as_scheme_and_host() -> None:
    from embedsweep.redaction import endpoint, redact

    assert endpoint("https://hooks.slack.com/" + SECRET_PATH) == "https://hooks.slack.com/***"
    assert redact("POST to https://hooks.slack.com/" + SECRET_PATH + " failed") == "POST to https://hooks.slack.com/*** failed"
    assert endpoint("http://u:pw-998877@127.0.0.1:8080") == "http://127.0.0.1:8080"


def test_a_started_hook_travels_to_a_launchers_worker_and_sends_nothing_there(tmp_path: Path) -> None:
    """joblib and submitit pickle Hydra's callbacks with every job: a Notify whose sweep started (it holds
    a log handler, whose lock cannot be pickled) must pickle, and its copy must not send a second
    notification. Kills: 'cannot pickle _thread.RLock' for every job of a launcher=joblib|slurm sweep."""
    import pickle

    from omegaconf import OmegaConf

    out = tmp_path / "got.json"
    notify = Notify(hook="command", command=f"cat > {out}")
    notify.on_multirun_start(OmegaConf.create({"hydra": {"sweep": {"dir": str(tmp_path / "sweep")}}}))
    try:
        copy = pickle.loads(pickle.dumps(notify))
        copy.on_multirun_end(OmegaConf.create({}))
        copy.on_multirun_end(OmegaConf.create({}), error=RuntimeError("boom"))
        assert not out.exists()
    finally:
        notify.on_multirun_end(OmegaConf.create({}))  # the sweep's own: sends, and detaches its handler
    assert json.loads(out.read_text())["state"] == "nothing to do"
