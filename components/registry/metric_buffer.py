"""Deliver a run's metrics and tags to MLflow through server outages.

Training must not stop, stall or fail because MLflow is unreachable for a while. `MetricBuffer`
takes what the training loop reports and a background thread sends it in `log_batch` calls. A
transient failure (connection refused, timeout, 5xx, 429) keeps the values and retries with
exponential backoff; values MLflow refuses outright (4xx) are dropped with a warning, since no
retry can help. Memory is bounded: beyond `max_pending` values the oldest go first, counted and
warned. `close()` waits a bounded time for the rest and reports what could not be delivered, so
the caller can fail the run with a clear error instead of losing metrics silently.

`with_retries` is the same policy for one call (closing a run).
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from itertools import islice
from typing import Protocol, TypeVar

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

from components.errors import RegistryError
from components.retry import is_transient

__all__ = ["MetricBuffer", "MetricsUndelivered", "OutageSettings", "backoff", "is_transient", "with_retries"]

log = logging.getLogger(__name__)

T = TypeVar("T")
MAX_BATCH_METRICS = 900  # MLflow takes at most 1000 entities (metrics + tags) per log_batch
MAX_BATCH_TAGS = 100


class OutageSettings(BaseSettings):
    """How long a run waits out an unreachable MLflow; every field can be set as `FINESHIP_MLFLOW_OUTAGE_<NAME>`."""

    model_config = SettingsConfigDict(env_prefix="FINESHIP_MLFLOW_OUTAGE_", extra="ignore")

    wait_seconds: float = Field(300.0, ge=0, description="How long the end of training waits for buffered metrics "
                                "to reach MLflow, and the end-run step for MLflow to close the run, before giving up.")


class MetricsUndelivered(RegistryError):
    """MLflow stayed unreachable: some metrics or tags of a run could not be delivered in the time allowed."""


class MetricSink(Protocol):
    """What the buffer sends to: `MlflowRegistry` (metrics as (key, value, timestamp_ms, step))."""

    tracking_uri: str

    def log_metric_batch(self, run_id: str, metrics: Sequence[tuple[str, float, int, int]] = (),
                         tags: Mapping[str, str] | None = None) -> None: ...


def backoff(initial: float = 1.0, maximum: float = 30.0) -> Iterator[float]:
    """Delays between attempts: initial, doubling, capped at maximum."""
    delay = initial
    while True:
        yield delay
        delay = min(delay * 2, maximum)


def with_retries(call: Callable[[], T], wait_seconds: float, what: str, *, initial: float = 1.0,
                 maximum: float = 30.0) -> T:
    """`call()`, retrying transient failures with backoff for up to `wait_seconds`; then the last error is raised."""
    deadline = time.monotonic() + wait_seconds
    delays = backoff(initial, maximum)
    while True:
        try:
            return call()
        except Exception as err:
            remaining = deadline - time.monotonic()
            if not is_transient(err) or remaining <= 0:
                raise
            delay = min(next(delays), remaining)
            log.warning("%s failed (%s); retrying in %.1fs", what, _short(err), delay)
            time.sleep(delay)


@dataclass(frozen=True)
class DeliveryReport:
    """What happened to the values given to a `MetricBuffer`."""

    run_id: str
    tracking_uri: str
    delivered: int
    pending: int  # still undelivered when the buffer was closed
    dropped: int  # oldest values discarded beyond the memory cap
    rejected: int  # values MLflow refused (4xx): retrying cannot help
    failed_attempts: int
    last_error: str | None
    waited_seconds: float

    def raise_if_pending(self, hint: str = "") -> None:
        """Raise `MetricsUndelivered` when values are still pending; `hint` says what the caller can do."""
        if self.pending:
            raise MetricsUndelivered(
                f"MLflow at {self.tracking_uri} did not accept {self.pending} metric/tag values of run {self.run_id} "
                f"within {self.waited_seconds:.0f}s after training ({self.failed_attempts} failed attempts; last "
                f"error: {self.last_error}). {hint}".strip())


class MetricBuffer:
    """Metrics and tags of one MLflow run, sent in batches by a background thread that rides out outages.

    `add` and `set_tags` never raise and never block on the network. Use as a context manager (the
    thread starts on entry); call `close(timeout)` for the final, bounded flush and its report.
    """

    def __init__(self, sink: MetricSink, run_id: str, *, flush_every_seconds: float = 2.0,
                 max_pending: int = 100_000, backoff_seconds: tuple[float, float] = (1.0, 30.0)) -> None:
        self.sink, self.run_id = sink, run_id
        self.flush_every_seconds, self.max_pending = flush_every_seconds, max_pending
        self.backoff_seconds = backoff_seconds
        self._cond = threading.Condition()
        self._metrics: deque[tuple[int, str, float, int, int]] = deque()  # (seq, key, value, timestamp_ms, step)
        self._tags: dict[str, str] = {}
        self._seq = 0
        self._wake = False
        self._deadline: float | None = None  # set by close()
        self._thread: threading.Thread | None = None
        self._closed_report: DeliveryReport | None = None
        self.delivered = self.dropped = self.rejected = self.failed_attempts = 0
        self.last_error: str | None = None

    # -- the training side --------------------------------------------------------------------
    def add(self, metrics: Mapping[str, float], step: int = 0) -> None:
        """Queue `metrics` at `step`, stamped now (MLflow keeps the original time however late they arrive)."""
        ts = int(time.time() * 1000)
        with self._cond:
            for key, value in metrics.items():
                self._seq += 1
                self._metrics.append((self._seq, key, float(value), ts, int(step)))
            excess = len(self._metrics) - self.max_pending
            for _ in range(max(excess, 0)):
                self._metrics.popleft()
            if excess > 0:
                before, self.dropped = self.dropped, self.dropped + excess
                if before == 0 or before // 10_000 != self.dropped // 10_000:
                    log.warning("MLflow has been unreachable long enough that %d metric values of run %s were "
                                "dropped (oldest first) to keep memory bounded at %d", self.dropped, self.run_id,
                                self.max_pending)

    def set_tags(self, tags: Mapping[str, str]) -> None:
        """Queue tags (a later value of a key replaces an undelivered earlier one)."""
        with self._cond:
            self._tags.update({k: str(v)[:5000] for k, v in tags.items()})

    @property
    def pending(self) -> int:
        with self._cond:
            return len(self._metrics) + len(self._tags)

    def __call__(self, metrics: Mapping[str, float], step: int) -> None:
        """The trainer's `on_metrics` callback."""
        self.add(metrics, step)

    # -- lifecycle ----------------------------------------------------------------------------
    def start(self) -> MetricBuffer:
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name=f"mlflow-metrics-{self.run_id[:8]}", daemon=True)
            self._thread.start()
        return self

    def __enter__(self) -> MetricBuffer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        if self._closed_report is None:  # left by an error: deliver what can be delivered quickly
            report = self.close(10.0)
            if report.pending:
                log.warning("run %s: %d metric/tag values were not delivered to MLflow", self.run_id, report.pending)

    def close(self, timeout_seconds: float) -> DeliveryReport:
        """Deliver what is pending, retrying for up to `timeout_seconds`, stop the thread and report."""
        if self._closed_report is not None:
            return self._closed_report
        started = time.monotonic()
        with self._cond:
            self._deadline = started + timeout_seconds
            self._wake = True
            self._cond.notify_all()
        if self._thread is None:
            self._run()  # never started: flush in the caller
        else:  # a call in flight past the deadline is abandoned (the thread is a daemon)
            self._thread.join(max(0.0, self._deadline - time.monotonic()) + 1.0)
        with self._cond:
            self._closed_report = DeliveryReport(
                run_id=self.run_id, tracking_uri=self.sink.tracking_uri, delivered=self.delivered,
                pending=len(self._metrics) + len(self._tags), dropped=self.dropped, rejected=self.rejected,
                failed_attempts=self.failed_attempts, last_error=self.last_error,
                waited_seconds=time.monotonic() - started)
        return self._closed_report

    # -- the sending thread -------------------------------------------------------------------
    def _run(self) -> None:
        delays = backoff(*self.backoff_seconds)
        wait, outage_started = self.flush_every_seconds, None
        while True:
            with self._cond:
                if wait > 0 and not self._wake:
                    self._cond.wait(wait)
                self._wake = False
                deadline = self._deadline
                metrics = list(islice(self._metrics, MAX_BATCH_METRICS))
                tags = dict(islice(self._tags.items(), MAX_BATCH_TAGS))
            if not metrics and not tags:
                if deadline is not None:
                    return
                wait = self.flush_every_seconds
                continue
            try:
                self.sink.log_metric_batch(self.run_id, [m[1:] for m in metrics], tags)
            except Exception as err:
                if not is_transient(err):
                    log.warning("MLflow refused %d metric/tag values of run %s; dropped: %s", len(metrics) + len(tags),
                                self.run_id, _short(err))
                    self._remove(metrics, tags, delivered=False)
                    wait = 0
                    if self._past(deadline):
                        return
                    continue
                self.failed_attempts += 1
                self.last_error = _short(err)
                if outage_started is None:
                    outage_started = time.monotonic()
                    log.warning("MLflow is unreachable (%s); keeping run %s's metrics and retrying", self.last_error,
                                self.run_id)
                if self._past(deadline):  # closing, and out of time: what is left stays pending
                    return
                wait = next(delays)
                if deadline is not None:
                    wait = min(wait, deadline - time.monotonic())
                continue
            self._remove(metrics, tags, delivered=True)
            if outage_started is not None:
                log.info("MLflow is reachable again after %.1fs; run %s's held-back metrics are being delivered",
                         time.monotonic() - outage_started, self.run_id)
                outage_started, delays = None, backoff(*self.backoff_seconds)
            wait = 0  # more may be pending: send it now
            if self._past(deadline):
                return

    @staticmethod
    def _past(deadline: float | None) -> bool:
        return deadline is not None and time.monotonic() >= deadline

    def _remove(self, metrics: list[tuple[int, str, float, int, int]], tags: dict[str, str], delivered: bool) -> None:
        with self._cond:
            last = metrics[-1][0] if metrics else 0
            while self._metrics and self._metrics[0][0] <= last:
                self._metrics.popleft()
            for key, value in tags.items():
                if self._tags.get(key) == value:
                    del self._tags[key]
            if delivered:
                self.delivered += len(metrics) + len(tags)
            else:
                self.rejected += len(metrics) + len(tags)


def _short(err: BaseException) -> str:
    text = f"{type(err).__name__}: {err}"
    return text if len(text) <= 300 else text[:297] + "..."
