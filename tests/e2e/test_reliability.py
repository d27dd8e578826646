"""Notifications, per-model locking and idempotent registration."""

from __future__ import annotations

import threading
import time

import pytest

from components.errors import GateRejected
from tests.e2e.test_pipeline import _config, _registry
from tests.support.webhook import webhook_receiver

pytestmark = pytest.mark.e2e


def test_gate_rejection_posts_reasons_to_the_webhook(prefect_harness, fineship_home, tiny_bert, monkeypatch):
    from flows.training import training_flow

    with webhook_receiver() as (url, received):
        monkeypatch.setenv("FINESHIP_WEBHOOK_URL", url)
        with pytest.raises(GateRejected):
            training_flow(_config(tiny_bert, **{"gate.min_accuracy": 1.0, "training.max_steps": 5}))
        deadline = time.monotonic() + 10
        while not received and time.monotonic() < deadline:
            time.sleep(0.1)
    assert len(received) == 1
    payload = received[0]
    assert payload["flow"] == "training" and payload["error_type"] == "GateRejected"
    assert any("accuracy" in r and "< floor 1.0000" in r for r in payload["reasons"])
    assert "gate rejected the candidate" in payload["text"]


def test_model_lock_serialises_runs_for_one_model(prefect_harness):
    from tasks.locks import model_lock

    spans: list[tuple[str, float, float]] = []

    def hold(who: str, model: str) -> None:
        with model_lock(model, timeout_seconds=60):
            start = time.monotonic()
            time.sleep(1.0)
            spans.append((who, start, time.monotonic()))

    threads = [threading.Thread(target=hold, args=(w, "locked-model")) for w in ("a", "b")]
    threads.append(threading.Thread(target=hold, args=("other", "another-model")))
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    same = sorted((s for s in spans if s[0] in ("a", "b")), key=lambda s: s[1])
    assert len(same) == 2 and same[0][2] <= same[1][1]  # no overlap for one model
    other = next(s for s in spans if s[0] == "other")
    assert other[1] < same[-1][2]  # a different model was not blocked


def test_registration_is_idempotent_per_key(fineship_home, tiny_package):
    registry = _registry(fineship_home)
    run_id = registry.start_run("idem", "r")
    first = registry.log_and_register(run_id, tiny_package, "idem", ["hello"], ["torch==2.13.0"], {},
                                      idempotency_key="prefect-flow-run:abc")
    again = registry.log_and_register(run_id, tiny_package, "idem", ["hello"], ["torch==2.13.0"], {},
                                      idempotency_key="prefect-flow-run:abc")
    other = registry.log_and_register(run_id, tiny_package, "idem", ["hello"], ["torch==2.13.0"], {},
                                      idempotency_key="prefect-flow-run:def")
    assert first.version == again.version == "1" and other.version == "2"
    assert [v.version for v in registry.list_versions("idem")] == ["2", "1"]


def test_failed_deployment_posts_the_reason(prefect_harness, fineship_home, tiny_package, monkeypatch):
    from components.errors import DeploymentError
    from flows.deployment import DeployRequest, deployment_flow

    registry = _registry(fineship_home)
    run_id = registry.start_run("notify", "r")
    registry.log_and_register(run_id, tiny_package, "notify-m", ["hello"], ["torch==2.13.0"], {})
    with webhook_receiver() as (url, received):
        monkeypatch.setenv("FINESHIP_WEBHOOK_URL", url)
        with pytest.raises(DeploymentError):
            deployment_flow(DeployRequest(model_name="notify-m", version="1", port=0))
        deadline = time.monotonic() + 10
        while not received and time.monotonic() < deadline:
            time.sleep(0.1)
    assert [p["error_type"] for p in received] == ["DeploymentError"]
    assert "deployment failed" in received[0]["text"] and "fineship approve notify-m 1" in received[0]["message"]
    assert url not in received[0]["text"]  # the webhook URL (a secret) is never echoed
