"""Per-model mutual exclusion across runs, workers and machines (a Prefect global concurrency limit)."""

from __future__ import annotations

from contextlib import ExitStack, contextmanager
from typing import Iterator

from prefect.client.orchestration import get_client
from prefect.client.schemas.actions import GlobalConcurrencyLimitCreate
from prefect.concurrency.sync import concurrency
from prefect.exceptions import ObjectAlreadyExists, ObjectNotFound

from components.errors import ModelLockTimeout
from tasks.common import artifact_key

DEFAULT_LOCK_TIMEOUT_SECONDS = 6 * 3600


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


def lock_timeout_message(model_name: str, name: str, timeout_seconds: float) -> str:
    return (f"gave up after waiting {timeout_seconds:g} s for the lock of model {model_name!r} (Prefect global "
            f"concurrency limit {name!r}): another run for this model holds it. See who: `prefect gcl inspect "
            f"{name}` and `prefect flow-run ls --state Running`. If no run for the model is running, a dead run's "
            f"slot is stranded (a Prefect server without PREFECT_SERVER_CONCURRENCY_LEASE_STORAGE="
            f"prefect.server.concurrency.lease_storage.filesystem loses leases on restart): free it with "
            f"`prefect gcl update {name} --active-slots 0`, then start the run again")


@contextmanager
def model_lock(model_name: str, timeout_seconds: float = DEFAULT_LOCK_TIMEOUT_SECONDS) -> Iterator[None]:
    """Hold the model's slot: two runs for the same registered model never overlap inside this block. Waiting
    longer than `timeout_seconds` raises ModelLockTimeout naming the limit and the commands to inspect or free it."""
    name = lock_name(model_name)
    ensure_limit(name)
    with ExitStack() as stack:
        try:  # only the acquisition: a TimeoutError from the locked block itself passes through unchanged
            stack.enter_context(concurrency(name, occupy=1, timeout_seconds=timeout_seconds, strict=True))
        except TimeoutError as err:  # Prefect's AcquireConcurrencySlotTimeoutError
            raise ModelLockTimeout(lock_timeout_message(model_name, name, timeout_seconds)) from err
        yield
