"""Shared task plumbing: retries of transient failures (the rule is components/retry.py), artifact keys, and the
one line per stage that a person reads (`report_stage`)."""

from __future__ import annotations

import logging
import re
import time
from typing import Any, Literal

from prefect import get_run_logger
from prefect.cache_policies import NO_CACHE
from prefect.context import TaskRunContext
from prefect.exceptions import MissingContextError
from pydantic import BaseModel

from components.markdown import md_table
from components.retry import is_transient

__all__ = ["STAGE_RECORD", "StageEvent", "artifact_key", "is_transient", "md_table", "report_stage", "retry_transient"]

STAGE_RECORD = "fineship_stage"  # the log record attribute `fineship run` prints a stage line from


class StageEvent(BaseModel):
    """A stage's outcome, as `fineship run` prints it and `--json` reports it."""

    stage: str
    outcome: Literal["ok", "warning", "failed", "rejected", "skipped"] = "ok"
    seconds: float | None = None
    figure: str = ""


def report_stage(stage: str, figure: str, *args: Any, outcome: str = "ok") -> StageEvent:
    """Log the stage's one line on the run's logger (the Prefect run page shows it; `fineship run` prints it with
    the task's duration). `figure` is the key figure, %-formatted with `args` like a log message."""
    text = figure % args if args else figure
    ctx = TaskRunContext.get()
    started = ctx.task_run.start_time if ctx is not None and ctx.task_run is not None else None
    seconds = max(time.time() - started.timestamp(), 0.0) if started is not None else None
    event = StageEvent(stage=stage, outcome=outcome, seconds=seconds, figure=text)
    level = logging.WARNING if outcome in ("warning", "rejected", "failed") else logging.INFO
    try:
        logger: Any = get_run_logger()
    except MissingContextError:  # a task's `.fn` called outside a run (scripts, benchmarks, tests)
        logger = logging.getLogger("fineship")
    logger.log(level, "%s: %s", stage, text, extra={STAGE_RECORD: event})
    return event

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


RETRIED_IO: dict[str, Any] = dict(retries=2, retry_delay_seconds=[2, 10], retry_condition_fn=retry_transient,
                                  cache_policy=NO_CACHE)
"""Task options of a registry or storage call: two retries (2 s, 10 s) of transient I/O errors, never cached."""
