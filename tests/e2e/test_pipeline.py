"""Whole-flow runs: both flows on a tiny random BERT, real Prefect, real MLflow (SQLite), real HTTP."""

from __future__ import annotations

import httpx
import pytest

from components.config import load_config
from components.errors import DataValidationError, GateRejected
from tests.support.tiny import LABELS, SAMPLE

pytestmark = pytest.mark.e2e


def _config(tiny_bert, **overrides):
    base = [f"training.model={tiny_bert}", "training.epochs=3", "training.learning_rate=0.003",
            "training.max_length=48", f"data.path={SAMPLE}", "gate.min_accuracy=0.0", "gate.min_macro_f1=0.0",
            "registry.model_name=e2e-news", "registry.experiment=e2e", "deploy.port=0"]
    return load_config("flows/configs/ci.yaml", base + [f"{k}={v}" for k, v in overrides.items()])


def _registry(home):
    from components.registry.mlflow_registry import MlflowRegistry
    from flows.settings import Settings

    return MlflowRegistry(Settings().mlflow_tracking_uri)


def test_train_register_deploy_and_predict_over_http(prefect_harness, fineship_home, tiny_bert, reviewers):
    from components.package import load_package
    from flows.settings import Settings
    from tests.support.reviewers import approve_as
    from flows.deployment import DeployRequest, deployment_flow
    from flows.training import training_flow

    from components.data.policy import validation_policy

    config = _config(tiny_bert)
    outcome = training_flow(config)
    assert outcome.decision.passed
    assert outcome.validation.policy == validation_policy(config)  # the one DataConfig -> policy mapping
    assert outcome.registered is not None and outcome.registered.version == "1"
    assert "challenger" in outcome.registered.aliases
    version = _registry(fineship_home).get_version("e2e-news", version="1")
    assert version.tags["fineship.split_digest"] == outcome.split_digest
    assert version.tags["fineship.data_fingerprint"] == outcome.dataset.fingerprint
    assert float(version.tags["metric.accuracy"]) == pytest.approx(outcome.candidate.accuracy, abs=1e-4)
    registry = _registry(fineship_home)
    # the classic baseline was fitted on the same split; its scores and the margin are on the run and the version
    baseline = outcome.candidate.baseline
    assert baseline is not None and baseline.baseline.n == outcome.candidate.n
    metrics = registry.client.get_run(outcome.run_id).data.metrics
    assert metrics["baseline_test_accuracy"] == pytest.approx(baseline.baseline.accuracy)
    assert "baseline_test_macro_f1" in metrics
    assert metrics["candidate_margin_over_baseline"] == pytest.approx(
        outcome.candidate.accuracy - baseline.baseline.accuracy)
    assert (metrics["candidate_margin_over_baseline_ci_low"] <= metrics["candidate_margin_over_baseline"]
            <= metrics["candidate_margin_over_baseline_ci_high"])
    assert version.tags["metric.margin_over_baseline"] == f"{baseline.margin:+.4f}"
    assert "Against the classic baseline" in registry.client.get_model_version("e2e-news", "1").description
    assert any("reported only" in r for r in outcome.decision.reasons)  # unset: reported, never enforced
    artifacts = {f.path for f in registry.client.list_artifacts(outcome.run_id, "validation/data_docs")}
    assert "validation/data_docs/index.html" in artifacts  # GX Data Docs, browsable from the MLflow run
    assert registry.load_run_json(outcome.run_id, "data/profile.json")["rows"] == outcome.dataset.rows
    inputs = registry.client.get_run(outcome.run_id).inputs.dataset_inputs
    assert {i.tags[0].value for i in inputs} == {"train", "validation", "test"}
    assert all(i.dataset.digest.startswith(outcome.split_digest) for i in inputs)

    approve_as(registry, "e2e-news", "1", reviewers.signer("ana"), Settings().review_policy())  # a trusted reviewer
    # eager: building and gating the serving variants runs in the SageMaker flow test (v1, backend auto) and in
    # tests/model/test_variants.py
    record = deployment_flow(DeployRequest(model_name="e2e-news", alias="champion", port=0, variants=["eager"]))
    assert record.model_version == "1"
    texts = ["The striker scored twice in the cup final.", "Shares fell after the profit warning."]
    r = httpx.post(f"{record.url}/invocations", json={"inputs": texts}, timeout=30)
    assert r.status_code == 200
    got = [p["label"] for p in r.json()["predictions"]]
    assert set(got) <= set(LABELS)
    local = [p.label for p in load_package(outcome.package_dir).predict(texts)]
    assert got == local
    assert httpx.get(f"{record.url}/ping").status_code == 200


def test_invalid_data_stops_before_training(prefect_harness, fineship_home, tiny_bert, tmp_path, sample_df):
    from flows.training import training_flow

    bad = tmp_path / "bad.csv"
    sample_df.assign(label=lambda d: d.label.where(d.index % 7 != 0, "weather")).to_csv(bad, index=False)
    with pytest.raises(DataValidationError, match="labels_in_set"):
        training_flow(_config(tiny_bert, **{"data.path": str(bad)}))
    registry = _registry(fineship_home)
    assert registry.find_version("e2e-news", "challenger") is None
    assert not (fineship_home / "endpoints").exists()
    runs = list((fineship_home / "runs").glob("*/package")) if (fineship_home / "runs").exists() else []
    assert runs == []  # training never started


def test_gate_rejection_registers_nothing(prefect_harness, fineship_home, tiny_bert):
    from flows.training import training_flow

    # a near-random candidate cannot beat TF-IDF + LinearSVC by 0.5 accuracy: the floors pass, the baseline rejects
    with pytest.raises(GateRejected, match=r"LinearSVC baseline: accuracy .* < required \+0\.5000") as rejected:
        training_flow(_config(tiny_bert, **{"gate.min_margin_over_baseline": 0.5, "training.max_steps": 3}))
    assert "nothing was registered" in str(rejected.value)
    # (the first run may itself hit a cache entry left by an earlier test on the same data)
    before = {name: _cached_task_runs(name) for name in ("check-data", "split-data")}
    published = _artifact_count("split")
    with pytest.raises(GateRejected, match="nothing was registered"):
        training_flow(_config(tiny_bert, **{"gate.min_accuracy": 1.0, "training.max_steps": 3}))
    assert _registry(fineship_home).find_version("e2e-news", "challenger") is None
    # the second run's validation and split came from the cache keyed on the data's content hash
    assert {name: _cached_task_runs(name) - n for name, n in before.items()} == {"check-data": 1, "split-data": 1}
    assert _artifact_count("split") == published + 1  # a cache hit still publishes the run's split table


def test_second_run_is_gated_against_champion_and_deploy_needs_approval(prefect_harness, fineship_home, tiny_bert,
                                                                       monkeypatch, reviewers):
    from components.errors import DeploymentError
    from flows.deployment import DeployRequest, deployment_flow
    from flows.settings import Settings
    from flows.training import training_flow
    from tests.support.reviewers import approve_as

    monkeypatch.setenv("FINESHIP_AUTO_PROMOTE", "true")  # the operator's policy, for the first version only
    first = training_flow(_config(tiny_bert))
    assert "champion" in first.registered.aliases and first.registered.tags["approved_by"] == "pipeline"
    # auto-promotion stays on, under the operator's default floor: a run that loosens its own gate is registered
    # but not promoted (the gate is run input; the floor is the operator's)
    monkeypatch.setenv("FINESHIP_AUTO_PROMOTE_GATE", "{}")
    second = training_flow(_config(tiny_bert, **{"gate.margin": 0.5, "gate.max_class_recall_drop": 1.0}))
    assert "gate.margin=0.5 (operator floor 0.01)" in second.registered.tags["fineship.auto_promotion"]
    assert "gate.max_class_recall_drop=1.0 (operator floor 0.1)" in second.registered.tags["fineship.auto_promotion"]
    monkeypatch.setenv("FINESHIP_AUTO_PROMOTE", "false")
    # drift was checked against the champion's stored profile (same data: no drift)
    drift = {r.rule: r for r in second.validation.results if r.rule.startswith("drift_")}
    assert set(drift) == {"drift_label_set", "drift_label_distribution", "drift_text_length", "drift_vocabulary"}
    assert all(r.success for r in drift.values())
    # the champion was re-scored on this run's own frozen test split
    assert second.champion is not None and second.champion.split_digest == second.candidate.split_digest
    assert second.decision.champion_version == "1"
    assert any("vs champion v1" in r for r in second.decision.reasons)
    assert second.registered.version == "2" and "champion" not in second.registered.aliases

    registry = _registry(fineship_home)
    with pytest.raises(DeploymentError, match="fineship approve e2e-news 2"):
        deployment_flow(DeployRequest(model_name="e2e-news", version="2", port=0))
    assert not (fineship_home / "endpoints").exists()  # refused before anything was touched
    # v1 was signed by the pipeline: with the operator's policy now off, it does not deploy either.
    with pytest.raises(Exception, match="FINESHIP_AUTO_PROMOTE"):
        deployment_flow(DeployRequest(model_name="e2e-news", version="1", port=0))

    approve_as(registry, "e2e-news", "2", reviewers.signer("reviewer"), Settings().review_policy())
    record = deployment_flow(DeployRequest(model_name="e2e-news", alias="champion", port=0, variants=["eager"]))
    assert record.model_version == "2"
    version = registry.get_version("e2e-news", version="2")
    assert version.tags["approved_by"] == "reviewer"
    assert "vs champion v1" in version.tags["fineship.gate_reasons"]


# Slow: two trainings, one of 12 epochs (~17 s on 2 cores); run by .ci/run (RUN_SLOW=1). The gate's statistics
# have fast unit tests, and test_poisoning.py covers a poisoned retrain end to end in make test.
@pytest.mark.slow
def test_candidate_trained_on_shuffled_labels_is_rejected(prefect_harness, fineship_home, tiny_bert, tmp_path,
                                                          sample_df, monkeypatch):
    from flows.training import training_flow

    monkeypatch.setenv("FINESHIP_AUTO_PROMOTE", "true")

    good = training_flow(_config(tiny_bert, **{"training.epochs": 12,
                                               "training.early_stopping_patience": 4}))
    assert "champion" in good.registered.aliases
    shuffled = tmp_path / "shuffled.csv"
    sample_df.assign(label=sample_df.label.sample(frac=1, random_state=0).to_numpy()).to_csv(shuffled, index=False)
    with pytest.raises(GateRejected) as err:
        training_flow(_config(tiny_bert, **{"data.path": str(shuffled), "training.epochs": 12, "training.early_stopping_patience": 4,
                                            "gate.margin": 0.02}))
    assert "may be worse than the champion" in str(err.value)
    registry = _registry(fineship_home)
    assert registry.get_version("e2e-news", alias="champion").version == good.registered.version
    assert [v.version for v in registry.list_versions("e2e-news")] == [good.registered.version]


def test_label_set_drift_against_champion_stops_the_run(prefect_harness, fineship_home, tiny_bert, tmp_path,
                                                        sample_df, monkeypatch):
    from flows.training import training_flow

    monkeypatch.setenv("FINESHIP_AUTO_PROMOTE", "true")
    training_flow(_config(tiny_bert, **{"training.max_steps": 5}))
    renamed = tmp_path / "renamed.csv"
    sample_df.assign(label=sample_df.label.replace({"tech": "science"})).to_csv(renamed, index=False)
    with pytest.raises(DataValidationError, match="drift_label_set"):
        training_flow(_config(tiny_bert, **{"data.path": str(renamed), "training.max_steps": 5,
                                            "data.labels": "[business, entertainment, politics, sport, science]"}))
    assert [v.version for v in _registry(fineship_home).list_versions("e2e-news")] == ["1"]


def _artifact_count(key: str) -> int:
    from prefect import get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterKey

    with get_client(sync_client=True) as client:
        return len(client.read_artifacts(artifact_filter=ArtifactFilter(key=ArtifactFilterKey(any_=[key]))))


def _cached_task_runs(name: str) -> int:
    from prefect import get_client
    from prefect.client.schemas.filters import TaskRunFilter, TaskRunFilterName

    with get_client(sync_client=True) as client:
        runs = client.read_task_runs(task_run_filter=TaskRunFilter(name=TaskRunFilterName(like_=name)))
    return sum(1 for r in runs if r.state and r.state.name == "Cached")
