"""The deployment's variant tasks against a real MLflow store: the version's test split is found through its run,
and the variant report is mirrored on the version (tags) and logged to the run (JSON)."""

from __future__ import annotations


import pandas as pd
import pytest

from components.evaluation.reference import write_reference_set
from components.export.choice import VariantReport, VariantResult
from tasks.deploy import VARIANTS_ARTIFACT, load_test_split, record_serving_variants

MODEL = "variants-m"


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory):
    from components.registry.mlflow_registry import MlflowRegistry, local_tracking_uri
    from tests.support.tiny import seed_mlflow_db

    home = tmp_path_factory.mktemp("variants-registry")
    registry = MlflowRegistry(local_tracking_uri(seed_mlflow_db(home / "mlflow.db")), home / "artifacts")
    run = registry.start_run("variants", "tiny")
    frame = pd.DataFrame({"body": ["a match", "a vote", "a film"], "topic": ["sport", "politics", "entertainment"]})
    (home / "data").mkdir()
    registry.log_artifact(run, write_reference_set(frame, "body", "topic", home / "data" / "reference_test.jsonl"),
                          "data")
    registry.end_run(run)
    registry.client.create_registered_model(MODEL)
    registry.client.create_model_version(MODEL, str(home / "data"), run_id=run)  # v1: trained in that run
    registry.client.create_model_version(MODEL, str(home / "data"))              # v2: registered without a run
    return registry


def test_the_test_split_is_read_from_the_versions_run(store):
    split = load_test_split.fn(store, store.get_version(MODEL, version="1"))
    assert split.texts == ["a match", "a vote", "a film"] and split.labels == ["sport", "politics", "entertainment"]
    assert load_test_split.fn(store, store.get_version(MODEL, version="2")) is None  # no run: only eager serves


def test_the_variant_report_is_recorded_on_the_version_and_its_run(store):
    version = store.get_version(MODEL, version="1")
    report = VariantReport(package_sha256="x", n_texts=3, eager_accuracy=1.0, machine="test cpu", chosen="onnx",
                           variants=[VariantResult(name="eager", built=True, passed=True, agreement=1, accuracy=1,
                                                   accuracy_drop=0, rows_per_s=10),
                                     VariantResult(name="onnx", built=True, passed=True, agreement=1, accuracy=1,
                                                   accuracy_drop=0, rows_per_s=30),
                                     VariantResult(name="onnx-int8", built=True, passed=False, agreement=0.9,
                                                   accuracy=0.8, accuracy_drop=0.2, reason="under the floor")])
    record_serving_variants.fn(store, version, report)
    tags = store.get_version(MODEL, version="1").tags
    assert tags["fineship.serving.backend"] == "onnx"
    assert tags["fineship.serving.onnx"].startswith("passed:") and "30.0 rows/s" in tags["fineship.serving.onnx"]
    assert tags["fineship.serving.onnx-int8"].startswith("refused: under the floor")
    logged = VariantReport.model_validate(store.load_run_json(version.run_id, VARIANTS_ARTIFACT))
    assert logged == report
