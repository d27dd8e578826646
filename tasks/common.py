"""Shared task plumbing: which failures are worth a retry, artifact keys."""

from __future__ import annotations

import re
from typing import Any

from components.errors import FineshipError
from components.markdown import md_table

__all__ = ["artifact_key", "is_transient", "md_table", "retry_transient"]

_TRANSIENT_NAMES = {
    "ConnectionError", "ConnectTimeout", "ReadTimeout", "ConnectError", "RemoteProtocolError",
    "EndpointConnectionError", "ConnectionClosedError", "ThrottlingException", "ServiceUnavailable",
}


def is_transient(exc: BaseException) -> bool:
    """True for network, throttling and server-side (5xx) failures; never for our own typed errors."""
    if isinstance(exc, FineshipError):
        return False
    if type(exc).__name__ in _TRANSIENT_NAMES or isinstance(exc, (ConnectionError, TimeoutError)):
        return True
    code = getattr(exc, "response", None)
    if isinstance(code, dict):
        status = code.get("ResponseMetadata", {}).get("HTTPStatusCode", 0)
        err = code.get("Error", {}).get("Code", "")
        return status >= 500 or err in ("Throttling", "ThrottlingException", "SlowDown", "RequestLimitExceeded")
    status = getattr(exc, "get_http_status_code", None)
    if callable(status):
        try:
            return int(status()) >= 500
        except (TypeError, ValueError):
            return False
    return False


def retry_transient(task: Any, task_run: Any, state: Any) -> bool:
    """Prefect `retry_condition_fn`: retry only transient I/O."""
    try:
        state.result()
    except BaseException as exc:  # the state re-raises the task's exception here
        return is_transient(exc)
    return False


def artifact_key(*parts: str) -> str:
    """Prefect artifact keys allow lower-case letters, digits and dashes only."""
    return re.sub(r"[^a-z0-9-]+", "-", "-".join(parts).lower()).strip("-")[:100]
