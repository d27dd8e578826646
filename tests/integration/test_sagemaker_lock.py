"""The deployment lock (components/deploy/sagemaker/lock.py) against the session's moto S3 over HTTP.

moto honours `If-None-Match: *` and `If-Match` on PutObject and DeleteObject; `moto_s3_integrity` (loaded with
the other plugins) makes each conditional write atomic, as on S3, so racing threads here are racing for real.
"""

from __future__ import annotations

import json
import threading
import time
import uuid
from datetime import UTC, datetime, timedelta

import boto3
import pytest
from botocore.exceptions import ReadTimeoutError

from components.deploy.sagemaker import LOCK, DeploymentLock
from components.errors import DeploymentError, DeploymentStepError

BUCKET = "fineship-lock-tests"


@pytest.fixture(scope="module")
def s3(moto_endpoint: str):
    client = boto3.client("s3")
    client.create_bucket(Bucket=BUCKET)
    return client


@pytest.fixture
def keys() -> list[str]:
    """Fresh lock keys, as `plan.lock_keys` makes them."""
    tag = uuid.uuid4().hex[:8]
    return [f"fineship/deployments/locks/endpoint/ep-{tag}.json", f"fineship/deployments/locks/model/m-{tag}.json"]


def _lock(s3, keys, deploy_id: str, **kwargs) -> DeploymentLock:
    return DeploymentLock(s3, BUCKET, keys, deploy_id=deploy_id, journal_key=f"journals/{deploy_id}.json", **kwargs)


def _doc(s3, key: str) -> dict:
    return json.loads(s3.get_object(Bucket=BUCKET, Key=key)["Body"].read())


def _exists(s3, key: str) -> bool:
    return s3.list_objects_v2(Bucket=BUCKET, Prefix=key).get("KeyCount", 0) > 0


def test_a_lock_names_its_holder_and_is_released(s3, keys):
    lock = _lock(s3, keys, "d1", owner="ana@ci pid 1")
    assert lock.acquire(timeout=0, poll=0.1) == []
    doc = _doc(s3, keys[0])
    assert (doc["owner"], doc["deploy_id"], doc["journal"]) == ("ana@ci pid 1", "d1", "journals/d1.json")
    assert datetime.fromisoformat(doc["expires_at"]) > datetime.now(UTC) + timedelta(seconds=200)
    lock.release()
    assert not any(_exists(s3, k) for k in keys)


def test_a_second_deployment_fails_at_once_naming_the_holder(s3, keys):
    first = _lock(s3, keys, "d-first", owner="ana@ci pid 1")
    first.acquire(timeout=0, poll=0.1)
    try:
        started = time.monotonic()
        with pytest.raises(DeploymentStepError) as err:
            _lock(s3, keys, "d-second").acquire(timeout=0, poll=0.1)
        assert time.monotonic() - started < 5
        assert err.value.step == LOCK
        message = str(err.value)
        assert "is being deployed by another deployment: deploy d-first by ana@ci pid 1" in message
        assert "sagemaker.lock_timeout_seconds" in message
        assert _doc(s3, keys[0])["deploy_id"] == "d-first"  # untouched
    finally:
        first.release()


def test_a_waiting_deployment_gets_the_lock_when_the_holder_releases_it(s3, keys):
    first = _lock(s3, keys, "d-first")
    first.acquire(timeout=0, poll=0.1)
    threading.Timer(0.6, first.release).start()
    second = _lock(s3, keys, "d-second")
    started = time.monotonic()
    second.acquire(timeout=30, poll=0.1)
    assert 0.5 < time.monotonic() - started < 10
    assert _doc(s3, keys[0])["deploy_id"] == "d-second"
    second.release()


def test_of_many_racing_deployments_exactly_one_gets_the_lock(s3, keys):
    winners, losers, barrier = [], [], threading.Barrier(8)

    def race(i: int) -> None:
        lock = _lock(s3, keys, f"d{i}")
        barrier.wait()
        try:
            lock.acquire(timeout=0, poll=0.1)
            winners.append(lock)
        except DeploymentStepError:
            losers.append(i)

    threads = [threading.Thread(target=race, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(winners) == 1 and len(losers) == 7
    winners[0].release()
    assert not any(_exists(s3, k) for k in keys)  # a loser never left half of the locks behind


def _expire(s3, key: str) -> None:
    """What a lock of a process that died looks like once its TTL has passed."""
    doc = _doc(s3, key)
    doc["expires_at"] = (datetime.now(UTC) - timedelta(seconds=1)).isoformat()
    etag = s3.head_object(Bucket=BUCKET, Key=key)["ETag"]
    s3.put_object(Bucket=BUCKET, Key=key, Body=json.dumps(doc).encode(), IfMatch=etag)


def test_a_stale_lock_is_taken_over_once_and_its_journal_handed_on(s3, keys):
    dead = _lock(s3, keys, "d-dead", owner="bob@laptop pid 9")
    dead.acquire(timeout=0, poll=0.1)
    dead._stop.set()  # the process died: no renewal, no release
    for key in keys:
        _expire(s3, key)
    taken, refused = [], []

    def take(i: int) -> None:
        lock = _lock(s3, keys, f"d-new{i}")
        try:
            taken.append((lock, lock.acquire(timeout=0, poll=0.1)))
        except DeploymentStepError:
            refused.append(i)

    threads = [threading.Thread(target=take, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(taken) == 1 and len(refused) == 3  # If-Match on the stale version: one takeover
    lock, stale = taken[0]
    assert {h.deploy_id for h in stale} == {"d-dead"} and {h.journal for h in stale} == {"journals/d-dead.json"}
    assert "bob@laptop pid 9" in stale[0].describe()
    lock.release()


def test_a_lost_answer_to_our_own_lock_write_is_read_back_not_taken_for_another_holder(s3, keys):
    """The PutObject reached S3 but its answer was lost: botocore retries, S3 answers 412 (the key exists)."""
    import urllib3

    http, sent = urllib3.PoolManager(), []

    def lose_first_answer(request, **_):
        if not sent:
            sent.append(request.url)
            http.request(request.method, request.url, body=request.body, headers=dict(request.headers))
            raise ReadTimeoutError(endpoint_url=request.url)
        return None

    s3.meta.events.register("before-send.s3.PutObject", lose_first_answer)
    try:
        lock = _lock(s3, keys[:1], "d-lost")
        assert lock.acquire(timeout=0, poll=0.1) == []  # no "busy", no takeover of itself
    finally:
        s3.meta.events.unregister("before-send.s3.PutObject", lose_first_answer)
    assert sent and _doc(s3, keys[0])["deploy_id"] == "d-lost"
    lock.release()
    assert not _exists(s3, keys[0])


def test_renewal_keeps_a_lock_alive_and_a_taken_over_lock_is_lost_not_released(s3, keys):
    lock = _lock(s3, keys[:1], "d-slow", ttl=1, renew_every=3600)
    lock.acquire(timeout=0, poll=0.1)
    before = _doc(s3, keys[0])["expires_at"]
    time.sleep(1.1)
    lock.renew()
    assert _doc(s3, keys[0])["expires_at"] > before
    lock.check()
    # it stopped renewing for longer than its TTL and another deployment took it over
    time.sleep(1.1)
    successor = _lock(s3, keys[:1], "d-successor")
    assert [h.deploy_id for h in successor.acquire(timeout=0, poll=0.1)] == ["d-slow"]
    lock.renew()
    with pytest.raises(DeploymentError, match="taken over by deploy d-successor"):
        lock.check()
    lock.release()
    assert _doc(s3, keys[0])["deploy_id"] == "d-successor"  # the successor's lock stays
    successor.release()
