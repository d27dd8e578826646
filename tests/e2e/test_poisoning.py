"""Poisoned data cannot win the gate: a retrain on data whose labels were swapped stops before training (label
consistency against the champion) and, with that rule off, is still rejected on the champion's frozen reference
set; a healthy retrain on the same data passes and becomes champion. Tiny random BERT, real Prefect and MLflow."""

from __future__ import annotations

import pytest
import yaml

from components.config import load_config
from components.errors import ConfigError, GateRejected, LabelConsistencyError
from tests.support.tiny import SAMPLE

pytestmark = pytest.mark.e2e

# A champion good enough that its per-class recall means something: 20 epochs without early stopping bring the tiny
# model to about 0.8 validation accuracy on the sample (8 epochs with early stopping left it near 0.4 on some CPUs,
# where which classes it had learned, and so the consistency verdict, depended on the float kernels).
TRAIN = {"training.epochs": 20, "training.learning_rate": 0.005, "training.max_steps": "null",
         "training.early_stopping_patience": 100}


def _config(tiny_bert, **overrides):
    base = [f"training.model={tiny_bert}", "training.max_length=48",
            f"data.path={SAMPLE}", "gate.min_accuracy=0.0", "gate.min_macro_f1=0.0", "registry.model_name=e2e-news",
            "registry.experiment=e2e", "deploy.port=0"]
    return load_config("flows/configs/ci.yaml", base + [f"{k}={v}" for k, v in {**TRAIN, **overrides}.items()])


def _registry():
    from components.registry.mlflow_registry import MlflowRegistry
    from flows.settings import Settings

    return MlflowRegistry(Settings().mlflow_tracking_uri)


def _swapped(sample_df, tmp_path):
    path = tmp_path / "swapped.csv"
    sample_df.assign(label=sample_df.label.replace({"business": "politics", "politics": "business"})).to_csv(
        path, index=False)
    return str(path)


def _champion(tiny_bert, monkeypatch):
    from flows.training import training_flow

    monkeypatch.setenv("FINESHIP_AUTO_PROMOTE", "true")  # operator policy: a gated candidate becomes champion
    first = training_flow(_config(tiny_bert))
    assert "champion" in first.registered.aliases
    return first


def test_swapped_labels_stop_before_training_and_a_healthy_retrain_still_wins(
        prefect_harness, fineship_home, tiny_bert, tmp_path, sample_df, monkeypatch):
    from components.evaluation.reference import REFERENCE_ARTIFACT, read_reference_set
    from flows.training import training_flow

    first = _champion(tiny_bert, monkeypatch)
    registry = _registry()
    stored = read_reference_set(registry.client.download_artifacts(first.run_id, REFERENCE_ARTIFACT, str(tmp_path)))
    assert stored.rows == first.candidate.n and stored.labels == first.candidate.y_true  # the frozen test split

    with pytest.raises(LabelConsistencyError, match="labels 'business' and 'politics' look swapped") as err:
        training_flow(_config(tiny_bert, **{"data.path": _swapped(sample_df, tmp_path)}))
    assert err.value.swaps == [("business", "politics")] and err.value.classes == ["business", "politics"]
    assert "rows labelled 'politics' are predicted 'business' by the champion" in str(err.value)
    failed = registry.client.search_runs([registry.experiment_id("e2e")],
                                         "tags.`fineship.label_consistency` = 'failed'")
    assert len(failed) == 1 and failed[0].info.status == "FAILED"
    assert registry.load_run_json(failed[0].info.run_id, "validation/label_consistency.json")["swaps"] == [
        ["business", "politics"]]
    assert not (fineship_home / "runs" / failed[0].info.run_id / "package").exists()  # training never started
    assert registry.get_version("e2e-news", alias="champion").version == "1"
    assert [v.version for v in registry.list_versions("e2e-news")] == ["1"]

    checks = tmp_path / "checks.yaml"
    sport = sample_df.text[sample_df.label == "sport"].iloc[0]
    checks.write_text(yaml.safe_dump([{"text": sport, "expected": "sport"},
                                      {"text": "Manchester won the derby.", "replace": {"from": "Manchester",
                                                                                        "to": "Liverpool"}}]))
    healthy = training_flow(_config(tiny_bert, **{"gate.margin": 0.5, "gate.max_class_recall_drop": 1.0,
                                                  "gate.behaviour_checks": str(checks),
                                                  "gate.behaviour_min_pass_rate": 0.0}))
    assert healthy.decision.passed and "champion" in healthy.registered.aliases
    assert [r.kind for r in healthy.decision.behaviour.results] == ["minimum functionality", "invariance"]
    assert any(r.startswith("behaviour (invariance): ") for r in healthy.decision.reasons)
    assert [c.scope.split(" (")[0] for c in healthy.decision.comparisons] == [
        "new test split", "champion v1's reference set"]
    assert registry.client.get_run(healthy.run_id).data.tags["fineship.label_consistency"] == "passed"
    description = registry.client.get_model_version("e2e-news", healthy.registered.version).description  # the card
    assert "on the new test split and on the champion's frozen reference set" in description
    assert "## Behavioural checks" in description


@pytest.mark.slow  # two trainings (~40 s on 2 cores): run by .ci/run (RUN_SLOW=1)
def test_with_the_consistency_rule_off_the_reference_set_still_rejects_a_poisoned_candidate(
        prefect_harness, fineship_home, tiny_bert, tmp_path, sample_df, monkeypatch):
    from flows.training import training_flow

    bad = tmp_path / "checks.yaml"
    bad.write_text("- text: The striker scored.\n  expected: football\n")
    with pytest.raises(ConfigError, match=r"checks.yaml, case 1 .*'football' is not one of the model's labels"):
        training_flow(_config(tiny_bert, **{"gate.behaviour_checks": str(bad)}))
    assert not list((fineship_home / "runs").glob("*/package"))  # a bad file stops the run before training

    _champion(tiny_bert, monkeypatch)
    with pytest.raises(GateRejected, match="nothing was registered") as err:
        training_flow(_config(tiny_bert, **{"data.path": _swapped(sample_df, tmp_path),
                                            "gate.max_label_agreement_drop": "null"}))
    new_split, reference = err.value.decision.comparisons
    # On its own, equally poisoned, test split the candidate looks far better than on the champion's frozen set
    # (whether it clears the non-inferiority margin there depends on how well the tiny models learned).
    assert new_split.difference > reference.difference + 0.2
    assert not reference.passed and reference.scope.startswith("champion v1's reference set")
    assert any(r.startswith("champion v1's reference set") and "may be worse than the champion" in r
               for r in err.value.decision.reasons)
    assert any(r.startswith("champion v1's reference set") and "recall of 'business' drops" in r
               for r in err.value.decision.reasons)
    registry = _registry()
    assert registry.get_version("e2e-news", alias="champion").version == "1"
    assert [v.version for v in registry.list_versions("e2e-news")] == ["1"]
