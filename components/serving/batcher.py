"""Server-side dynamic micro-batching: requests that arrive together share one forward pass."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

log = logging.getLogger(__name__)


class QueueFull(Exception):
    """The batcher's queue is at capacity; the server answers 503."""


class PredictionFailed(Exception):
    """The model raised on a request's texts; the server answers 500 and keeps serving."""


@dataclass
class _Job:
    texts: list[str]
    future: asyncio.Future
    enqueued: float = field(default_factory=time.perf_counter)


class MicroBatcher:
    """Collect texts from concurrent requests for up to `max_wait_ms` or `max_batch` texts, run once.

    Requests already queued always join the batch (up to `max_batch` texts). Waiting for more is
    adaptive: the batcher waits (at most `max_wait_ms`) only until as many requests as recent batches
    held have arrived, so a lone client never waits and 16 concurrent clients still share one pass.
    """

    def __init__(self, predict: Callable[[Sequence[str]], list], max_batch: int = 32, max_wait_ms: float = 5.0,
                 max_queue: int = 256) -> None:
        self.predict = predict
        self.max_batch = max_batch
        self.max_wait = max_wait_ms / 1000
        self.queue: asyncio.Queue[_Job] = asyncio.Queue(maxsize=max_queue)
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="predict")
        self._task: asyncio.Task | None = None
        self._concurrency = 1.0  # moving average of requests per batch: how many to wait for

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._run())

    async def stop(self) -> None:
        if self._task:
            self._task.cancel()
            try:
                await self._task
            except asyncio.CancelledError:
                pass
        self._executor.shutdown(wait=False, cancel_futures=True)

    async def submit(self, texts: list[str]) -> list:
        fut = asyncio.get_running_loop().create_future()
        try:
            self.queue.put_nowait(_Job(texts, fut))
        except asyncio.QueueFull:
            raise QueueFull from None
        return await fut

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            first = await self.queue.get()
            jobs, n = [first], len(first.texts)
            deadline = loop.time() + self.max_wait
            expected = round(self._concurrency)
            while n < self.max_batch:
                try:
                    job = self.queue.get_nowait()
                except asyncio.QueueEmpty:
                    timeout = deadline - loop.time()
                    if len(jobs) >= expected or timeout <= 0:
                        break
                    try:
                        job = await asyncio.wait_for(self.queue.get(), timeout)
                    except TimeoutError:
                        break
                jobs.append(job)
                n += len(job.texts)
            self._concurrency = 0.5 * self._concurrency + 0.5 * len(jobs)
            live = [j for j in jobs if not j.future.done()]
            if not live:
                continue
            texts = [t for j in live for t in j.texts]
            try:
                preds = await loop.run_in_executor(self._executor, self.predict, texts)
            except Exception:
                log.exception("prediction failed for a batch of %d texts from %d requests", len(texts), len(live))
                if len(live) > 1:
                    # One request's texts must not fail the requests that happened to share its batch.
                    for j in live:
                        await self._run_alone(loop, j)
                else:
                    self._fail(live[0])
                continue
            pos = 0
            for j in live:
                if not j.future.done():
                    j.future.set_result(preds[pos:pos + len(j.texts)])
                pos += len(j.texts)

    async def _run_alone(self, loop: asyncio.AbstractEventLoop, job: _Job) -> None:
        if job.future.done():
            return
        try:
            preds = await loop.run_in_executor(self._executor, self.predict, job.texts)
        except Exception:
            log.exception("prediction failed for a request of %d texts", len(job.texts))
            self._fail(job)
            return
        if not job.future.done():
            job.future.set_result(preds)

    @staticmethod
    def _fail(job: _Job) -> None:
        if not job.future.done():
            job.future.set_exception(PredictionFailed(f"the model failed on this request's {len(job.texts)} texts"))


def plan_batches(lengths: Sequence[int], max_batch: int, overhead_tokens: float = 16.0,
                 max_batch_tokens: int | None = None) -> list[list[int]]:
    """Split texts of token `lengths` into forward passes of similar length, at least cost.

    A forward pass over n texts padded to length L costs about `overhead_tokens + n * L` token
    positions (the overhead is the fixed cost of one pass, in tokens). Sorted by length, the cheapest
    split into contiguous runs of at most `max_batch` texts is found exactly (dynamic programming,
    O(n * max_batch)). With `max_batch_tokens`, a pass also holds at most that many padded token
    positions (n * L; a single text longer than that still gets its own pass): long texts then go in
    smaller passes, whose attention matrices stay in cache. Returns lists of indices into `lengths`,
    shortest texts first.
    """
    order = sorted(range(len(lengths)), key=lambda i: lengths[i])
    n = len(order)
    best = [0.0] + [float("inf")] * n
    cut = [0] * (n + 1)
    for j in range(1, n + 1):
        longest = lengths[order[j - 1]]  # the run order[i:j] is padded to its last (longest) text
        for i in range(max(0, j - max_batch), j):
            if max_batch_tokens is not None and j - i > 1 and (j - i) * longest > max_batch_tokens:
                continue
            cost = best[i] + overhead_tokens + (j - i) * longest
            if cost < best[j]:
                best[j], cut[j] = cost, i
    runs, j = [], n
    while j > 0:
        runs.append(order[cut[j]:j])
        j = cut[j]
    return runs[::-1]
