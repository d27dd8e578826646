"""A run that cannot get its model's lock in time fails with a message naming the lock and the Prefect commands to
inspect or free it (issue #13, audit G9), not with Prefect's bare timeout."""

from __future__ import annotations

import time

import pytest

pytestmark = pytest.mark.e2e


def test_a_lock_timeout_names_the_lock_and_how_to_free_it(prefect_harness):
    from components.errors import ModelLockTimeout
    from tasks.locks import lock_name, model_lock

    name = lock_name("Busy Model")
    with model_lock("Busy Model", timeout_seconds=30):  # the holder
        start = time.monotonic()
        with pytest.raises(ModelLockTimeout) as err, model_lock("Busy Model", timeout_seconds=0.5):
            pytest.fail("a second holder got the lock")
        assert time.monotonic() - start < 15
    message = str(err.value)
    assert isinstance(err.value, TimeoutError)
    assert f"prefect gcl inspect {name}" in message and f"prefect gcl update {name} --active-slots 0" in message
    assert "'Busy Model'" in message and "PREFECT_SERVER_CONCURRENCY_LEASE_STORAGE" in message
    # Positive control: released, the lock is free again at once; a TimeoutError from inside the block is the
    # block's own and passes through unchanged.
    with pytest.raises(TimeoutError) as inner, model_lock("Busy Model", timeout_seconds=5):
        raise TimeoutError("the block's own")
    assert not isinstance(inner.value, ModelLockTimeout)
