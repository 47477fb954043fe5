"""Notifications: at the end of a sweep, a hook receives its verdict as JSON.

A Hydra callback (`Notify`, listed first under `hydra.callbacks` in conf/hydra/default.yaml; the options
are conf/notify/*.yaml, `notify=none|command|webhook`) reads `<sweep dir>/verdict.json`, which the end
of the sweep writes from `conclude.verdict.Summary.as_dict()`, and hands it to the hook:

- `command`: a shell command that gets the JSON on its stdin (`mail`, a chat CLI, a script);
- `webhook`: a POST of the JSON to a URL (`EMBEDSWEEP_NOTIFY_URL`: the URL is a secret, see below).

A sweep that wrote no verdict is reported too: `"state": "nothing to do"` when it ran no job (a spent
budget), `"state": "failed"` with the error when it stopped on one (an unreachable store, too many
failed trials, a refused config). Hydra calls `on_multirun_end` only after a sweep that returned, so
our sweepers call it themselves, with `error=`, for a sweep that raised (`sweep_ended`); a sweep that
preflight refused before it began is reported by app.main through `refused`, with the refused config.

A hook that fails (non-zero exit, unreachable URL, HTTP error, timeout) costs one warning line, never
the sweep: the exit code and every record stay as they were. A webhook URL is shown as scheme and host
only, in every line (redaction.endpoint). Single runs (no -m) are not notified.
"""

from __future__ import annotations

import json
import logging
import subprocess
import urllib.error
import urllib.request
from collections import deque
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from embedsweep import redaction
from embedsweep.errors import UserError

from hydra.experimental.callback import Callback as _HydraCallback

log = logging.getLogger(__name__)

VERDICT_FILE = "verdict.json"
HOOKS = ("none", "command", "webhook")
SWEEPER_LOGGER = "hydra_plugins.embedsweep_optuna_sweeper"
LOG_LINES = 40  # the sweeper's last lines that travel with the notification: which study, new data, budget
_KEY = "hydra.callbacks.notify"


class Notify(_HydraCallback):
    """Hand the sweep's verdict to a hook once the sweep is over (see the module docstring)."""

    def __init__(self, hook: str = "none", command: str | None = None, url: str | None = None, timeout: float = 30.0) -> None:
        self.hook = str(hook)
        self.command = command
        self.url = url
        self.timeout = timeout
        self._sweep_dir: Path | None = None
        self._sent = True  # nothing to send until a sweep starts
        self._lines: deque[str] = deque(maxlen=LOG_LINES)
        self._capture: _Capture | None = None

    def __getstate__(self) -> dict[str, Any]:
        """A copy for a launcher's worker (joblib and submitit pickle Hydra's callbacks with each job):
        without the log handler (a lock cannot be pickled), and sending nothing: the sweep's own process
        sends the one notification."""
        return self.__dict__ | {"_capture": None, "_sent": True}

    # ------------------------------------------------------------ Hydra's callback

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        from embedsweep.checks.preflight import Refused

        try:
            self.check()
        except UserError as exc:
            raise Refused(exc) from exc  # an Exception from a callback would be a mere warning (Hydra)
        if self.hook == "none":
            return
        self._sweep_dir = Path(str(config.hydra.sweep.dir)).resolve()
        self._sent = False
        self._capture = _Capture(self._lines)
        logging.getLogger(SWEEPER_LOGGER).addHandler(self._capture)

    def on_multirun_end(self, config: DictConfig, error: BaseException | None = None, **kwargs: Any) -> None:
        """The sweep is over: it returned (Hydra calls this), or it raised (`error`: our sweepers call
        this themselves, see `sweep_ended`)."""
        if self._sent or self._sweep_dir is None:
            return
        self._deliver(self.ended(self._sweep_dir) if error is None else self.stopped(self._sweep_dir, error))

    # ------------------------------------------------------------ what is sent

    def check(self) -> None:
        """The options, before the sweep: a hook that cannot work is refused now, not after the last job."""
        if self.hook not in HOOKS:
            raise UserError(f"{_KEY}.hook={self.hook!r} is not a hook: pick notify=none, notify=command or notify=webhook")
        if self.hook == "command" and not (self.command and str(self.command).strip()):
            raise UserError(f"notify=command needs the command to run: {_KEY}.command='...' (it gets the verdict JSON on its stdin)")
        if self.hook == "webhook":
            url = str(self.url or "")
            if not url.startswith(("http://", "https://")):
                shown = redaction.endpoint(url) if "://" in url else "not set" if not url else "***"
                raise UserError(
                    f"notify=webhook needs an http:// or https:// URL (found: {shown}): set EMBEDSWEEP_NOTIFY_URL in the "
                    f"schedule's env file, or {_KEY}.url=... (the command line is saved by Hydra: keep secrets out of it)"
                )
        try:
            timeout = float(self.timeout)
        except (TypeError, ValueError):
            timeout = 0.0
        if not timeout > 0:
            raise UserError(f"{_KEY}.timeout={self.timeout!r} must be a number of seconds above 0")

    def ended(self, sweep_dir: Path) -> dict[str, Any]:
        """What a sweep that returned leaves: its verdict, or why there is none."""
        path = sweep_dir / VERDICT_FILE
        if path.is_file():
            try:
                found = json.loads(path.read_text())
            except (OSError, ValueError) as exc:
                return self._payload(sweep_dir, "failed", error=f"could not read {path}: {redaction.redact(str(exc))}")
            if isinstance(found, dict):
                return {"sweep_dir": str(sweep_dir)} | found | {"log": list(self._lines)}
            return self._payload(sweep_dir, "failed", error=f"{path} holds no verdict (a JSON object)")
        jobs = _job_folders(sweep_dir)
        if jobs:
            return self._payload(sweep_dir, "failed", error=f"the sweep ran {jobs} job(s) but wrote no {VERDICT_FILE}; see its log")
        return self._payload(sweep_dir, "nothing to do", reason="the sweep ran no job (the study's budget is spent, or nothing was left to try); see 'log'")

    def stopped(self, sweep_dir: Path, error: BaseException | None) -> dict[str, Any]:
        """What a sweep that raised leaves: its verdict if it wrote one (the jobs ran, then it failed),
        with the error it stopped on."""
        from embedsweep.checks.stores import one_line

        if isinstance(error, KeyboardInterrupt):
            text = "interrupted (Ctrl-C or SIGTERM)"
        elif error is not None:
            text = redaction.redact(one_line(error) if isinstance(error, UserError) else f"{type(error).__name__}: {one_line(error)}")
        else:
            text = "the sweep stopped before its end; the error is in its log"
        payload = self.ended(sweep_dir)
        if payload.get("state") == "nothing to do":
            payload = self._payload(sweep_dir, "failed")
        return payload | {"state": "failed", "error": text}

    def _payload(self, sweep_dir: Path, state: str, **more: str) -> dict[str, Any]:
        return {"state": state, "sweep_dir": str(sweep_dir), **more, "log": list(self._lines)}

    # ------------------------------------------------------------ sending

    def _deliver(self, payload: dict[str, Any]) -> None:
        """Send once; whatever happens, the sweep goes on as if there were no hook."""
        self._sent = True
        if self._capture is not None:
            logging.getLogger(SWEEPER_LOGGER).removeHandler(self._capture)
            self._capture = None
        try:
            outcome = self.send(json.dumps(payload, indent=2, allow_nan=False, default=str))
        except Exception as exc:  # noqa: BLE001 - a failing hook never fails the sweep
            log.warning("notification (%s) failed: %s; the sweep and its records are unaffected", self.target(), redaction.redact(f"{type(exc).__name__}: {exc}"))
            return
        if outcome is None:
            log.info("notification sent (%s)", self.target())
        else:
            log.warning("notification (%s) failed: %s; the sweep and its records are unaffected", self.target(), redaction.redact(outcome))

    def target(self) -> str:
        """The hook as a log line names it: never the webhook's full URL."""
        if self.hook == "webhook":
            return f"webhook {redaction.endpoint(str(self.url))}"
        return f"command {redaction.redact(str(self.command))!r}"

    def send(self, body: str) -> str | None:
        """Hand `body` to the hook; None when it took it, else what went wrong (one line)."""
        if self.hook == "command":
            return run_command(str(self.command), body, float(self.timeout))
        if self.hook == "webhook":
            return post(str(self.url), body, float(self.timeout))
        return None


def sweep_ended(hydra_context: Any, config: DictConfig, error: BaseException) -> None:
    """Tell Hydra's callbacks that a sweep ended on `error`: Hydra 1.3 calls `on_multirun_end` only for a
    sweep that returned, and the notification of a failed night matters most. Called by our sweepers."""
    callbacks = getattr(hydra_context, "callbacks", None)
    if callbacks is not None:
        callbacks.on_multirun_end(config=config, error=error)


def refused(config: DictConfig | None, error: BaseException) -> None:
    """Notify of a sweep that preflight refused before it began (app.main calls this with the config
    the refusal carries): the hook still learns that tonight's sweep did not run, and why."""
    options = OmegaConf.select(config, _KEY) if config is not None else None
    mode = OmegaConf.select(config, "hydra.mode") if config is not None else None
    if options is None or getattr(mode, "name", str(mode)) != "MULTIRUN":
        return
    hook = Notify(**{k: v for k, v in OmegaConf.to_container(options, resolve=True).items() if k != "_target_"})
    try:
        hook.check()
    except UserError:
        return  # the refusal was of the hook itself: nothing to send it with
    if hook.hook == "none":
        return
    sweep_dir = Path(str(config.hydra.sweep.dir)).resolve()
    hook._deliver(hook._payload(sweep_dir, "failed", error=redaction.redact(str(error))))


def run_command(command: str, body: str, timeout: float) -> str | None:
    """Run `command` in a shell with `body` on its stdin; None if it exited 0."""
    try:
        proc = subprocess.run(command, shell=True, input=body, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        return f"no exit within {timeout:g} s (stopped)"
    if proc.returncode == 0:
        return None
    said = (proc.stderr or proc.stdout).strip().splitlines()
    return f"exit code {proc.returncode}" + (f": {said[-1][:300]}" if said else "")


def post(url: str, body: str, timeout: float) -> str | None:
    """POST `body` as JSON to `url`; None on a 2xx answer."""
    request = urllib.request.Request(
        url, data=body.encode(), method="POST", headers={"Content-Type": "application/json", "User-Agent": "embedsweep-notify"}
    )
    try:
        with urllib.request.urlopen(request, timeout=timeout) as answer:  # noqa: S310 - the user's own URL, http(s) checked
            status = answer.status
    except urllib.error.HTTPError as exc:
        return f"HTTP {exc.code} {exc.reason}"
    except urllib.error.URLError as exc:
        reason = exc.reason
        return f"no answer within {timeout:g} s" if isinstance(reason, TimeoutError) else f"unreachable ({reason})"
    except TimeoutError:
        return f"no answer within {timeout:g} s"
    return None if 200 <= status < 300 else f"HTTP {status}"


def _job_folders(sweep_dir: Path) -> int:
    """Hydra's job folders in a sweep folder (0/, 1/, ..., each with its .hydra/)."""
    try:
        return sum(1 for p in sweep_dir.iterdir() if p.name.isdigit() and (p / ".hydra").is_dir())
    except OSError:
        return 0


class _Capture(logging.Handler):
    """Keeps the sweeper's lines (study, data version, budget) for the notification, secrets hidden."""

    def __init__(self, lines: deque[str]) -> None:
        super().__init__(logging.INFO)
        self.lines = lines

    def emit(self, record: logging.LogRecord) -> None:
        try:
            self.lines.append(redaction.redact(record.getMessage()))
        except Exception:  # noqa: BLE001 - a line lost from the notification, never the sweep
            pass
