"""The validation/split cache: keyed on the data, the suite version and the rules' code; results stored as JSON."""

from __future__ import annotations

import json

import pytest

from components.config import load_config
from tests.support.tiny import SAMPLE

pytestmark = pytest.mark.e2e


def _run(storage, docs):
    """Validate and split the sample data in a flow: the two cached tasks' states and results."""
    from prefect import flow
    from prefect.settings import PREFECT_LOCAL_STORAGE_PATH, temporary_settings

    from components.data.policy import validation_policy
    from tasks.data import check_data, compute_split, load_inputs

    config = load_config("flows/configs/ci.yaml", [f"data.path={SAMPLE}"])

    @flow(name="data-cache-probe")
    def probe() -> list:
        inputs = load_inputs(config.data, lambda: None)
        return [check_data(inputs.main.frame, inputs.main.ref.fingerprint, validation_policy(config),
                           inputs.main.ref.uri, None, None, None, str(docs), return_state=True),
                compute_split(inputs.main.frame, inputs.fingerprints, "text", "label", 0.8, 0.1, 0.1, 42,
                              near_duplicate_threshold=config.split.near_duplicate_threshold, return_state=True)]

    with temporary_settings(updates={PREFECT_LOCAL_STORAGE_PATH: str(storage)}):
        states = probe()
        return [s.name for s in states], states[0].result(), states[1].result()


def test_cache_hits_on_same_code_and_misses_when_the_rules_change(prefect_harness, tmp_path, monkeypatch):
    import tasks.results

    storage, docs = tmp_path / "results", tmp_path / "docs"
    first, check, splits = _run(storage, docs)
    assert first == ["Completed", "Completed"] and check.report.passed
    again, check2, splits2 = _run(storage, docs)
    assert again == ["Cached", "Cached"]  # same data, same code: read back from the JSON results
    assert check2 == check and splits2.manifest == splits.manifest
    assert splits2.train.equals(splits.train) and list(splits2.test.index) == list(splits.test.index)
    # Every persisted result is JSON written by the fineship serializer: nothing on disk is a pickle.
    files = [p for p in storage.rglob("*") if p.is_file()]
    assert len(files) == 2
    for p in files:
        record = json.loads(p.read_bytes())
        assert record["metadata"]["serializer"]["type"] == "fineship-json", p

    # A change to the validation/split code (or the suite version) is a new key: the data is checked again.
    monkeypatch.setattr(tasks.results, "data_code_key", lambda: "suite-9.9.9-code-changed")
    changed, check3, _ = _run(storage, docs)
    assert changed == ["Completed", "Completed"] and check3.report.passed


def test_result_serializer_refuses_other_objects_and_foreign_kinds():
    from tasks.results import ResultJSONSerializer

    ser = ResultJSONSerializer()
    with pytest.raises(TypeError, match="DataCheck and Splits"):
        ser.dumps({"anything": 1})
    with pytest.raises(ValueError, match="not a fineship result"):
        ser.loads(json.dumps({"kind": "os.system", "data": "echo owned"}).encode())
