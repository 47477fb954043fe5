"""Fail fast, and helpfully, when the Hugging Face Hub cannot be reached.

Without network, `datasets` and `huggingface_hub` retry DNS and HTTP for about a minute before
giving up with an error that does not say what to do instead. We check reachability with a
three-second TCP connect first, and name the offline alternative in the error.
"""

from __future__ import annotations

import os
import socket
from collections.abc import Callable
from typing import TypeVar
from urllib.parse import urlparse

from embedsweep.errors import UserError

T = TypeVar("T")

_TRUE = {"1", "true", "yes", "on"}


def is_offline() -> bool:
    return any(os.environ.get(v, "").lower() in _TRUE for v in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE"))


def endpoint() -> str:
    return os.environ.get("HF_ENDPOINT", "https://huggingface.co")


def _reachable(url: str, timeout: float = 3.0) -> str | None:
    """None if a TCP connection to the endpoint opens within `timeout`, else the reason."""
    parsed = urlparse(url)
    port = parsed.port or (443 if parsed.scheme == "https" else 80)
    try:
        with socket.create_connection((parsed.hostname, port), timeout=timeout):
            return None
    except OSError as exc:
        return f"{type(exc).__name__}: {exc}"


def from_hub(load: Callable[[], T], what: str, alternative: str) -> T:
    """Run `load` (which reads `what` from the Hub), turning "no network" into one clear error.

    With HF_HUB_OFFLINE=1 the libraries look only in the local cache and fail at once on a miss;
    otherwise we refuse to start a load that would spend a minute on retries.
    """
    if not is_offline():
        reason = _reachable(endpoint())
        if reason is not None:
            raise UserError(
                f"cannot reach the Hugging Face Hub ({endpoint()}) to load {what} ({reason}); "
                f"offline alternative: {alternative}"
            )
    try:
        return load()
    except UserError:
        raise
    except Exception as exc:  # the libraries raise many types for "not cached / not reachable"
        if is_offline():
            raise UserError(
                f"{what} is not in the local Hugging Face cache and HF_HUB_OFFLINE=1 forbids downloading it "
                f"({type(exc).__name__}); offline alternative: {alternative}"
            ) from exc
        raise
