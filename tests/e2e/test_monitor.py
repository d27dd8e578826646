"""`fineship monitor` end to end: a registered version's stored profile, traffic captured by the server, the verdict
(exit code, MLflow run linked to the version, Prefect artifact, webhook)."""

from __future__ import annotations

import json
from types import SimpleNamespace

import pytest

from tests.support.cli import run_cli
from tests.support.monitoring import random_package, sms_texts
from tests.support.webhook import webhook_receiver

NAME = "mon-news"


def _send(classifier, directory, texts: list[str], per_request: int = 5) -> None:
    """Send `texts` through the inference app with capture on, as live traffic."""
    from starlette.testclient import TestClient

    from components.monitoring.capture import CaptureOptions
    from components.serving.app import ServerOptions, create_app

    app = create_app(options=ServerOptions(capture=CaptureOptions(directory=str(directory))), classifier=classifier)
    with TestClient(app) as client:
        for i in range(0, len(texts), per_request):
            assert client.post("/invocations", json={"inputs": texts[i:i + per_request]}).status_code == 200


def _backdated(directory, texts: list[str], hours_ago: float) -> None:
    """Capture records of `texts` as an endpoint would have written them `hours_ago` hours ago."""
    import time

    from components.monitoring.capture import CaptureOptions, CaptureWriter

    answer = json.dumps({"predictions": [{"label": "tech", "score": 0.5, "scores": {}}]}).encode()
    writer = CaptureWriter(CaptureOptions(directory=str(directory)), clock=lambda: time.time() - hours_ago * 3600)
    writer.start()
    for text in texts:
        writer.submit(json.dumps({"inputs": [text]}).encode(), "application/json", answer, "application/json")
    writer.close()


@pytest.fixture(scope="module")
def served(prefect_harness, tiny_bert, sample_df, tmp_path_factory):
    """A version registered through the `register-model` task (which stores its monitoring profile), made champion,
    with news-like traffic captured at the local endpoint's capture directory and SMS traffic in another."""
    from prefect import flow

    from components.data.profile import build_profile
    from components.data.split import split_frame
    from components.evaluation.reference import REFERENCE_ARTIFACT, write_reference_set
    from components.monitoring.capture import local_capture_dir
    from components.monitoring.reference import PROFILE_ARTIFACT
    from components.package import load_package
    from components.registry.mlflow_registry import MlflowRegistry
    from tasks.registry import register_model
    from tests.support.tiny import seed_mlflow_db

    root = tmp_path_factory.mktemp("monitor")
    home = root / "home"
    seed_mlflow_db(home / "mlflow.db")
    package = random_package(tiny_bert, root / "package")
    registry = MlflowRegistry(f"sqlite:///{(home / 'mlflow.db').resolve()}", home / "artifacts")
    split = split_frame(sample_df, "text", "label", 0.8, 0.1, 0.1, 42)
    run_id = registry.start_run("fineship", "train-mon")
    registry.log_dict(run_id, build_profile(sample_df, "text", "label").model_dump(), PROFILE_ARTIFACT)
    registry.log_artifact(run_id, write_reference_set(split.test, "text", "label", root / "reference_test.jsonl"),
                          "data")
    assert REFERENCE_ARTIFACT == "data/reference_test.jsonl"

    @flow
    def register():
        return register_model(registry, str(package), NAME, run_id, split.test.text.head(3).tolist(), {}, "card")

    version = register()
    registry.set_alias(NAME, "champion", version.version)
    classifier = load_package(package)
    _send(classifier, local_capture_dir(home / "endpoints", "fineship-local"), split.train.text.tolist()[:250])
    _send(classifier, home / "sms-capture", sms_texts(300))
    _backdated(home / "old-capture", sms_texts(100), hours_ago=48)
    return SimpleNamespace(home=home, registry=registry, version=version, run_id=run_id, rows=len(sample_df))


def _monitor(served, *args: str, **env: str):
    return run_cli(["monitor", "--model", NAME, *args], served.home.parent, FINESHIP_HOME=str(served.home), **env)


def test_news_like_traffic_passes_and_sms_traffic_drifts(served):
    from prefect.artifacts import Artifact

    from components.monitoring.reference import MONITOR_REFERENCE_ARTIFACT

    # Registration stored the profile the monitor compares with.
    stored = served.registry.load_run_json(served.run_id, MONITOR_REFERENCE_ARTIFACT)
    # The version's scores on its test split, the lengths of the whole dataset.
    assert stored["rows"] > 30 and len(stored["length_sample"]) == served.rows
    with webhook_receiver() as (url, received):
        ok = _monitor(served, FINESHIP_WEBHOOK_URL=url)
        assert ok.returncode == 0, ok.stdout + ok.stderr
        assert "no drift in 250 texts (50 requests)" in ok.stdout and received == []
        drift = _monitor(served, "--capture", str(served.home / "sms-capture"), FINESHIP_WEBHOOK_URL=url)
    assert drift.returncode == 1, drift.stdout + drift.stderr
    assert "DRIFT in text_length, oov_rate" in drift.stdout
    assert len(received) == 1 and {"text_length", "oov_rate"} <= set(received[0]["drifted"])
    assert received[0]["model"] == NAME and "fineship monitor" in received[0]["text"]
    # The MLflow run is linked to the version both ways, with the report and the plot.
    version = served.registry.get_version(NAME, version=served.version.version)
    assert version.tags["fineship.monitor.drifted"].startswith("text_length,oov_rate")
    run = served.registry.client.get_run(version.tags["fineship.monitor.last_run_id"])
    assert run.data.tags["fineship.model_version"] == served.version.version and run.info.status == "FINISHED"
    assert run.data.metrics["monitor_text_length"] > 0.5
    files = {f.path for d in ("plots", "monitoring") for f in served.registry.client.list_artifacts(run.info.run_id, d)}
    assert {"plots/monitor.png", "monitoring/report.json"} <= files
    artifact = Artifact.get(f"monitor-{NAME}")
    assert artifact is not None and "DRIFT" in artifact.data and "| text_length | KS" in artifact.data


def test_since_json_and_bad_arguments(served):
    later = _monitor(served, "--capture", str(served.home / "sms-capture"), "--since", "2999-01-01T00:00", "--json")
    assert later.returncode == 0, later.stdout + later.stderr
    doc = json.loads(later.stdout)
    assert doc["report"]["texts"] == 0 and doc["report"]["enough_traffic"] is False and doc["report"]["drifted"] == []
    assert _monitor(served, "--since", "yesterday").returncode == 2
    assert _monitor(served, "--set", "max_label_psi=-1").returncode == 2
    outside = _monitor(served, "--capture", "/etc")
    assert outside.returncode == 4 and "outside the fineship home" in outside.stderr


def test_a_scheduled_monitor_reads_only_its_window(served, monkeypatch):
    from flows.monitor import MonitorRequest, monitor_flow

    monkeypatch.setenv("FINESHIP_HOME", str(served.home))
    old = str(served.home / "old-capture")
    assert monitor_flow(MonitorRequest(model_name=NAME, capture=old, window_hours=24)).texts == 0
    assert monitor_flow(MonitorRequest(model_name=NAME, capture=old, window_hours=72)).texts == 100
