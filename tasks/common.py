"""Shared task plumbing: retries of transient failures (the rule is components/retry.py), artifact keys."""

from __future__ import annotations

import re
from typing import Any

from components.markdown import md_table
from components.retry import is_transient

__all__ = ["artifact_key", "is_transient", "md_table", "retry_transient"]

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
