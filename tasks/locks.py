"""Per-model mutual exclusion across runs, workers and machines (a Prefect global concurrency limit)."""

from __future__ import annotations

from contextlib import contextmanager
from typing import Iterator

from prefect.client.orchestration import get_client
from prefect.client.schemas.actions import GlobalConcurrencyLimitCreate
from prefect.concurrency.sync import concurrency
from prefect.exceptions import ObjectAlreadyExists, ObjectNotFound

from tasks.common import artifact_key


def lock_name(model_name: str) -> str:
    return artifact_key("fineship-model", model_name)


def ensure_limit(name: str, limit: int = 1) -> None:
    """Create the global concurrency limit if it does not exist yet."""
    with get_client(sync_client=True) as client:
        try:
            client.read_global_concurrency_limit_by_name(name)
        except ObjectNotFound:
            try:
                client.create_global_concurrency_limit(GlobalConcurrencyLimitCreate(name=name, limit=limit))
            except ObjectAlreadyExists:  # another run created it between our read and create
                pass


@contextmanager
def model_lock(model_name: str, timeout_seconds: float = 6 * 3600) -> Iterator[None]:
    """Hold the model's slot: two runs for the same registered model never overlap inside this block."""
    name = lock_name(model_name)
    ensure_limit(name)
    with concurrency(name, occupy=1, timeout_seconds=timeout_seconds, strict=True):
        yield
