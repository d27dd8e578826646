"""A dataset with only fixable faults trains end to end once data.rules say how to fix them."""

from __future__ import annotations

import hashlib

import pytest

from components.data.policy import validation_policy
from components.data.validation import validate_frame
from tests.e2e.test_pipeline import _config, _registry
from tests.unit.test_rule_policies import dirty

pytestmark = pytest.mark.e2e


def test_conflicting_labels_dropped_and_control_characters_repaired_then_trained(
        prefect_harness, fineship_home, tiny_bert, tmp_path, sample_df):
    from prefect.artifacts import Artifact

    from flows.training import training_flow

    path = tmp_path / "dirty.csv"
    df = dirty(sample_df)  # control characters in 45 texts; 10 texts under two labels (20 rows)
    df.to_csv(path, index=False)
    by_default = validate_frame(df, validation_policy(_config(tiny_bert, **{"data.path": str(path)})), "dirty")
    assert {r.rule for r in by_default.errors} == {"control_characters", "conflicting_labels"}

    config = _config(tiny_bert, **{"data.path": str(path), "training.max_steps": 5,
                                   "data.rules.conflicting_labels": "drop", "data.rules.control_characters": "repair"})
    outcome = training_flow(config)
    assert outcome.registered is not None and outcome.validation.passed
    assert outcome.dataset.fingerprint == hashlib.sha256(path.read_bytes()).hexdigest()  # the input file's
    cleaning = outcome.validation.cleaning
    assert cleaning.removed == {"conflicting_labels": 20} and cleaning.repaired == {"control_characters": 45}

    markdown = Artifact.get("validation").data
    assert "## Cleaned before validation" in markdown
    assert "| data.rules.conflicting_labels | drop | 20 |" in markdown
    assert "| data.rules.control_characters | repair | 45 |" in markdown
    dropped = cleaning.rules[1].examples[0]
    assert f"'row': {dropped['row']}" in markdown and dropped["text"][:40] in markdown

    registry = _registry(fineship_home)
    manifest = registry.load_run_json(outcome.run_id, "data/split_manifest.json")
    assert manifest["removed"] == {"conflicting_labels": 20} and manifest["repaired"] == {"control_characters": 45}
    assert len(manifest["removed_rows"]["conflicting_labels"]) == 20
    assert sum(manifest["sizes"].values()) == len(df) - 20
    kept = {h for rows in manifest["row_hashes"].values() for h in rows}
    assert not kept & set(manifest["removed_rows"]["conflicting_labels"])
    docs = {f.path for f in registry.client.list_artifacts(outcome.run_id, "validation/data_docs")}
    assert "validation/data_docs/cleaning.html" in docs
