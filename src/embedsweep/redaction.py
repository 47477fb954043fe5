"""One redaction for every secret the project might print or record.

`redact(text)` hides, in any text (a URL, an override, a log line, a traceback, a YAML file):
credentials in URLs (`user:password@`, `:password@`, passwords holding `/` or `@`, a long bare token
as user), secret query parameters (`?password=...`, `token`, `signature`...), `password=...` style
settings, `Bearer`/`Basic` tokens, and every literal secret this process was given through its
environment (MLFLOW_TRACKING_PASSWORD, MLFLOW_TRACKING_TOKEN, PGPASSWORD, the passwords inside
MLFLOW_TRACKING_URI and EMBEDSWEEP_OPTUNA_STORAGE) or has met in a URL. `public_url(url)` drops the
credentials of a URL altogether, for links a browser opens. `RedactingFilter` applies `redact` to
log records; `install()` puts it on every logging handler, so library exception text (MLflow's
"API request to {url} failed") is covered too, and redacts uncaught tracebacks and Python warnings.
A remembered secret is hidden wherever its letters occur: a password that is also a common word
makes that word `***` in every line, which we accept over showing it.

The URL is split with urllib.parse; only the authority needs more than it gives, since a password
someone did not percent-encode may hold `/` (`postgresql://u:p/ss@db/x`), which urllib would read
as the start of the path. Where the reading is ambiguous we hide too much rather than too little.
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import sys
import traceback
import warnings
from types import TracebackType
from typing import TextIO
from urllib.parse import quote, unquote, urlsplit

MASK = "***"
SECRET_ENV = ("MLFLOW_TRACKING_PASSWORD", "MLFLOW_TRACKING_TOKEN", "PGPASSWORD")  # secrets as they are
URL_ENV = ("MLFLOW_TRACKING_URI", "EMBEDSWEEP_OPTUNA_STORAGE")  # URLs that may carry one
MIN_LITERAL = 6  # shorter remembered secrets are hidden inside URLs only, not wherever the letters occur
TOKEN_USER = 20  # a user part this long without a password is taken for a token (https://<token>@host)

# A name that holds a secret: it ends in one of these words (`password`, `db_password`, `HF_TOKEN`),
# so `tokenizer_dir` and `train_tokens_per_second` are left alone.
SECRET_NAME = re.compile(r"(password|passwd|pwd|secret|token|api[_-]?key|access[_-]?key|signature|credential|sig)$", re.IGNORECASE)
_URL = re.compile(r"\b[a-zA-Z][a-zA-Z0-9+.-]*://[^\s'\"<>`]+")
_SETTING = re.compile(
    r"(?P<key>[\w.-]*(?:password|passwd|pwd|secret|token|api[_-]?key|access[_-]?key))(?P<sep>['\"]?\s*[=:]\s*['\"]?)(?P<value>[^\s'\",;&)}\]]+)",
    re.IGNORECASE,
)
_BEARER = re.compile(r"\b(?P<kind>Bearer|Basic)\s+(?P<value>[A-Za-z0-9._~+/=-]{8,})")
_QUERY_PARAM = re.compile(r"(?P<lead>^|[?&;])(?P<key>[^=&;#]+)=(?P<value>[^&;#]*)")

_remembered: set[str] = set()


def redact(text: str) -> str:
    """`text` with every secret in it replaced by ***; idempotent."""
    text = str(text)
    text = _URL.sub(lambda m: _redact_url(m.group(0)), text)
    text = _SETTING.sub(lambda m: m["key"] + m["sep"] + MASK, text)
    text = _BEARER.sub(lambda m: f"{m['kind']} {MASK}", text)
    for secret in _literal_secrets():
        text = text.replace(secret, MASK)
    return text


def public_url(url: str) -> str:
    """`url` without its credentials (userinfo dropped, secret query values hidden): a link to show."""
    scheme, userinfo, rest = _split(url)
    if userinfo is not None:
        _remember_userinfo(userinfo)
    return _redact_query(f"{scheme}://{rest}" if scheme else rest)


def secrets_in(arguments: list[str]) -> list[str]:
    """The command-line arguments that hold a secret, redacted (for a warning that names them)."""
    return [shown for arg in arguments if (shown := redact(arg)) != arg]


def remember(secret: str | None) -> None:
    """Hide `secret` wherever it occurs from now on (its percent-encoded form too)."""
    if secret and len(secret) >= MIN_LITERAL and secret != MASK:
        _remembered.update({secret, quote(secret, safe=""), unquote(secret)})


def _split(url: str) -> tuple[str, str | None, str]:
    """(scheme, userinfo or None, what follows the userinfo) of a URL."""
    scheme, sep, rest = url.partition("://")
    if not sep:
        return "", None, url
    try:
        authority = urlsplit(f"{scheme}://{rest}").netloc
    except ValueError:  # a stray bracket: the authority still ends where the path starts
        authority = re.split(r"[/?#]", rest, maxsplit=1)[0]
    end = len(authority)
    if "@" in authority:  # `u:p@ss@db`: the host follows the last @ (as urllib reads it)
        at = authority.rindex("@")
    elif ":" in authority and "@" in rest[end:]:  # `u:p/ss@db/x`: a password holding / ? or #
        at = rest.rindex("@")
    else:
        return scheme, None, rest
    return scheme, rest[:at], rest[at + 1 :]


def _redact_url(url: str) -> str:
    scheme, userinfo, rest = _split(url)
    if userinfo is not None:
        _remember_userinfo(userinfo)
        user, colon, _password = userinfo.partition(":")
        if colon:
            rest = f"{user}:{MASK}@{rest}"
        elif len(user) >= TOKEN_USER:
            rest = f"{MASK}@{rest}"
        else:
            rest = f"{user}@{rest}"
    return _redact_query(f"{scheme}://{rest}" if scheme else rest)


def _remember_userinfo(userinfo: str) -> None:
    user, colon, password = userinfo.partition(":")
    remember(password if colon else user if len(user) >= TOKEN_USER else None)


def _redact_query(url: str) -> str:
    head, sep, query = url.partition("?")
    if not sep:
        return url
    hidden = _QUERY_PARAM.sub(lambda m: m.group(0) if not SECRET_NAME.search(unquote(m["key"])) else f"{m['lead']}{m['key']}={MASK}", query)
    return f"{head}?{hidden}"


def _literal_secrets() -> list[str]:
    """Secrets given to this process, longest first (so that no part of one is left behind)."""
    for name in URL_ENV:
        _, userinfo, _ = _split(os.environ.get(name, ""))
        if userinfo is not None:
            _remember_userinfo(userinfo)
    given = {os.environ.get(name, "") for name in SECRET_ENV}
    found = set(_remembered) | {s for v in given if len(v) >= MIN_LITERAL for s in (v, quote(v, safe=""))}
    return sorted(found, key=len, reverse=True)


# ---------------------------------------------------------------- logging and uncaught exceptions


class RedactingFilter(logging.Filter):
    """Redact a record's message, exception text and stack before any handler formats it."""

    def filter(self, record: logging.LogRecord) -> bool:
        try:
            message = record.getMessage()
        except Exception:  # noqa: BLE001 - a bad format is the handler's to report, not ours
            return True
        record.msg, record.args = redact(message), ()
        if record.exc_info and not record.exc_text:
            record.exc_text = "".join(traceback.format_exception(*record.exc_info)).rstrip("\n")
        if record.exc_text:
            record.exc_text = redact(record.exc_text)
        if record.stack_info:
            record.stack_info = redact(record.stack_info)
        return True


def install() -> None:
    """Put a RedactingFilter on every logging handler there is now (the root's, Hydra's, libraries'
    own such as MLflow's and Optuna's), and redact uncaught tracebacks and printed warnings."""
    loggers = [logging.getLogger(), *(lg for lg in logging.Logger.manager.loggerDict.values() if isinstance(lg, logging.Logger))]
    handlers = {h for lg in loggers for h in lg.handlers} | ({logging.lastResort} if logging.lastResort else set())
    for handler in handlers:
        if not any(isinstance(f, RedactingFilter) for f in handler.filters):
            handler.addFilter(RedactingFilter())
    sys.excepthook = _excepthook
    warnings.showwarning = _showwarning


def _showwarning(message: Warning | str, category: type[Warning], filename: str, lineno: int, file: TextIO | None = None, line: str | None = None) -> None:
    """Python's warning printer, redacted: a library's warning may quote a URL."""
    with contextlib.suppress(OSError):  # as Python's own: a closed stderr loses the warning, not the run
        (file or sys.stderr).write(redact(warnings.formatwarning(message, category, filename, lineno, line)))


def redacted_error(exc: BaseException) -> BaseException:
    """`exc`, or one of its type with the secrets taken out of its text when it holds any: an exception
    that is pickled (a launcher's job result, on disk) keeps its text and type but not its traceback."""
    text = redact(str(exc))
    if text == str(exc):
        return exc
    try:
        return type(exc)(text)
    except Exception:  # noqa: BLE001 - a type that takes other arguments
        return RuntimeError(f"{type(exc).__name__}: {text}")


def _excepthook(kind: type[BaseException], value: BaseException, tb: TracebackType | None) -> None:
    sys.stderr.write(redact("".join(traceback.format_exception(kind, value, tb))))


def endpoint(url: str) -> str:
    """A URL that is a secret as a whole (a webhook: Slack's, Teams' and most others carry their token in
    the path) as a log line may show it: scheme, host and port, the rest as ***. The hidden part is
    remembered, so it is hidden wherever else it appears (a library's error text)."""
    scheme, userinfo, rest = _split(url)
    if userinfo is not None:
        _remember_userinfo(userinfo)
    host = re.split(r"[/?#]", rest, maxsplit=1)[0]
    hidden = rest[len(host) :]
    remember(hidden.lstrip("/") or None)
    if not scheme:
        return MASK
    return f"{scheme}://{host}/{MASK}" if hidden.strip("/") else f"{scheme}://{host}"
