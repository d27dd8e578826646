"""The promote flow pauses for a typed approval form and records the reviewer's decision."""

from __future__ import annotations

import threading
import time

import pytest

pytestmark = pytest.mark.e2e


def _run_and_answer(model_name: str, version: str, answer: dict) -> str:
    from prefect import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterState, FlowRunFilterStateName
    from prefect.flow_runs import resume_flow_run

    from flows.promote import promote_flow

    result: dict = {}

    def run() -> None:
        try:
            result["v"] = promote_flow(model_name, version, 0.1)
        except Exception as err:  # re-raised in the test's thread below
            result["error"] = err

    thread = threading.Thread(target=run)
    thread.start()
    deadline = time.monotonic() + 120
    paused = None
    with get_client(sync_client=True) as client:
        while time.monotonic() < deadline and paused is None:
            runs = client.read_flow_runs(flow_run_filter=FlowRunFilter(
                state=FlowRunFilterState(name=FlowRunFilterStateName(any_=["Paused"]))))
            paused = next((r for r in runs if r.parameters.get("version") == version
                           and r.parameters.get("model_name") == model_name), None)
            time.sleep(0.5)
    assert paused is not None, "the promote flow never paused for input"
    resume_flow_run(paused.id, run_input=answer)
    thread.join(timeout=120)
    if "error" in result:
        raise result["error"]
    return result["v"]


def test_approval_form_promotes_and_rejection_records(prefect_harness, fineship_home, tiny_package, reviewers,
                                                      tmp_path):
    from components.registry.mlflow_registry import MlflowRegistry
    from components.registry.review import sign_approval
    from flows.settings import Settings

    registry = MlflowRegistry(Settings().mlflow_tracking_uri)
    for i in range(2):
        run_id = registry.start_run("promote", f"r{i}")
        registry.log_and_register(run_id, tiny_package, "promo", ["hello"], ["torch==2.13.0"],
                                  {"fineship.gate": "passed"}, aliases=())
    policy = Settings().review_policy()
    package = registry.download_package("promo", "1", tmp_path / "p1")
    dana = sign_approval(registry, "promo", "1", reviewers.signer("dana"), package, policy).model_dump_json()
    mallory = sign_approval(registry, "promo", "1", reviewers.signer("mallory", trusted=False), package,
                            policy).model_dump_json()

    # Identity comes from the key: an untrusted signature (whatever name it claims) is refused.
    with pytest.raises(Exception, match="not in the trust store"):
        _run_and_answer("promo", "1", {"approve": True, "signature": mallory})
    with pytest.raises(Exception, match="needs your signature"):
        _run_and_answer("promo", "1", {"approve": True, "signature": ""})
    assert "champion" not in registry.get_version("promo", version="1").aliases

    outcome = _run_and_answer("promo", "1", {"approve": True, "signature": dana, "comment": "ok"})
    assert outcome.approved and outcome.summary().startswith("approved by dana")
    v1 = registry.get_version("promo", version="1")
    assert "champion" in v1.aliases and v1.tags["approved_by"] == "dana"

    outcome = _run_and_answer("promo", "2", {"approve": False, "comment": "worse on tech"})
    assert not outcome.approved and outcome.summary() == "rejected through the promote form"
    v2 = registry.get_version("promo", version="2")
    assert v2.tags["fineship.review"] == "rejected" and "champion" not in v2.aliases
