"""Data capture by the inference server (in-process ASGI and a real local endpoint process) and read back from S3."""

from __future__ import annotations

import json
from datetime import UTC, datetime

import pytest

from components.monitoring.capture import CaptureOptions, read_capture


@pytest.fixture(scope="module")
def package(tiny_bert, tmp_path_factory):
    from tests.support.monitoring import random_package

    return random_package(tiny_bert, tmp_path_factory.mktemp("capture") / "package")


@pytest.fixture(scope="module")
def classifier(package):
    from components.package import load_package

    return load_package(package)


def _serve(classifier, directory, percent):
    from starlette.testclient import TestClient

    from components.serving.app import ServerOptions, create_app

    options = ServerOptions(capture=CaptureOptions(directory=str(directory), percent=percent))
    return TestClient(create_app(options=options, classifier=classifier))


def test_the_server_captures_each_answered_request_in_sagemakers_layout(classifier, tmp_path):
    cap = tmp_path / "capture"
    answers = []
    with _serve(classifier, cap, 100) as client:  # the lifespan starts and (on exit) flushes the writer
        answers.append(client.post("/invocations", json={"inputs": ["The striker scored twice.", "Shares fell."]}))
        answers.append(client.post("/invocations", content=b'"Rates rose"\n', headers={"content-type": "text/csv"}))
        answers.append(client.post("/invocations", content=b'{"inputs": "a film"}\n',
                                   headers={"content-type": "application/jsonlines",
                                            "accept": "application/jsonlines"}))
        bad = client.post("/invocations", content=b"{not json", headers={"content-type": "application/json"})
    assert [a.status_code for a in answers] == [200, 200, 200] and bad.status_code == 400
    files = list(cap.rglob("*.jsonl"))
    assert len(files) == 1 and len(files[0].relative_to(cap).parts) == 5  # yyyy/mm/dd/hh/<file>.jsonl
    records = [json.loads(line) for line in files[0].read_text().splitlines()]
    assert len(records) == 3  # answered requests only: the 400 is not traffic the model saw
    assert [r["captureData"]["endpointInput"]["encoding"] for r in records] == ["JSON", "CSV", "BASE64"]
    assert records[0]["captureData"]["endpointOutput"]["data"] == answers[0].text
    traffic = read_capture(cap)
    assert traffic.texts == ["The striker scored twice.", "Shares fell.", "Rates rose", "a film"]
    sent = answers[0].json()["predictions"] + answers[1].json()["predictions"] + [json.loads(answers[2].text)]
    assert traffic.labels == [p["label"] for p in sent]
    assert traffic.confidences == pytest.approx([p["score"] for p in sent])


def test_capture_off_writes_nothing(classifier, tmp_path):
    with _serve(classifier, tmp_path / "capture", 0) as client:
        assert client.post("/invocations", json={"inputs": ["a text"]}).status_code == 200
    assert not (tmp_path / "capture").exists()


def test_a_deployed_local_endpoint_captures_when_deploy_asks(package, classifier, tmp_path):
    """The deploy settings reach the spawned server process: its smoke test is the first captured request."""
    from components.deploy.local import LocalTarget, deploy_local, stop_endpoint
    from components.monitoring.capture import local_capture_dir

    texts = ["The striker scored twice.", "Shares fell sharply."]
    expected = [p.label for p in classifier.predict(texts)]
    state = tmp_path / "endpoints"
    target = LocalTarget(endpoint_name="cap-ep", state_dir=str(state), capture_percent=100, capture_max_mb=5)
    try:
        deploy_local(target, package, "m", "1", texts, expected)
    finally:
        stop_endpoint(state, "cap-ep")  # SIGTERM: the server flushes its capture on shutdown
    traffic = read_capture(local_capture_dir(state, "cap-ep"))
    assert traffic.texts == texts and traffic.labels == expected


def test_capture_is_read_from_s3_with_since(moto_endpoint, classifier, tmp_path):
    """The SageMaker endpoint's capture (`<destination>/<endpoint>/<variant>/yyyy/mm/dd/hh/*.jsonl`) read with boto3.
    Its own bucket on the shared moto server (a reset would empty the session's deployment bucket too)."""
    import boto3

    from components.monitoring.capture import capture_record

    s3 = boto3.client("s3")
    if "fineship-capture" not in [b["Name"] for b in s3.list_buckets()["Buckets"]]:
        s3.create_bucket(Bucket="fineship-capture")
    prefix = "fineship/data-capture/ep"
    answer = json.dumps({"predictions": [{"label": "sport", "score": 0.8, "scores": {}}]}).encode()
    for hour in (8, 9, 10):
        when = datetime(2026, 3, 1, hour, 30, tzinfo=UTC).timestamp()
        body = "\n".join(json.dumps(capture_record(json.dumps({"inputs": [f"text at {hour}"]}).encode(),
                                                   "application/json", answer, "application/json", when=when))
                         for _ in range(4)) + "\n"
        s3.put_object(Bucket="fineship-capture", Key=f"{prefix}/ep/AllTraffic/2026/03/01/{hour:02d}/30-00-000-x.jsonl",
                      Body=body.encode())
    s3.put_object(Bucket="fineship-capture", Key=f"{prefix}/ep/AllTraffic/notes.txt", Body=b"not capture")
    everything = read_capture(f"s3://fineship-capture/{prefix}", s3_client=s3)
    assert everything.requests == 12 and everything.files == 3 and everything.skipped == 0
    recent = read_capture(f"s3://fineship-capture/{prefix}", since=datetime(2026, 3, 1, 9, 0), s3_client=s3)
    assert recent.requests == 8 and set(recent.texts) == {"text at 9", "text at 10"}
