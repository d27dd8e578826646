"""Data capture (SageMaker's layout, sampling, rotation, bounded disk), reading it back, and the drift measures."""

from __future__ import annotations

import base64
import json
import random
from datetime import UTC, datetime
from pathlib import Path

import pandas as pd
import pytest

from components.config import MonitorConfig
from components.errors import MonitoringError
from components.monitoring.capture import (CaptureOptions, CaptureWriter, capture_record, parse_record, read_capture,
                                           resolve_capture_source)
from components.monitoring.drift import compare
from components.monitoring.reference import build_reference
from components.monitoring.text import oov_stats

T0 = datetime(2026, 3, 1, 9, 58, tzinfo=UTC).timestamp()
ANSWER = json.dumps({"predictions": [{"label": "sport", "score": 0.9, "scores": {"sport": 0.9}}]}).encode()


def _request(i: int) -> bytes:
    return json.dumps({"inputs": [f"request {i} about the match"]}).encode()


def _write(root: Path, n: int, step: float = 60.0, **options) -> CaptureWriter:
    clock = [T0]
    writer = CaptureWriter(CaptureOptions(directory=str(root), **options), clock=lambda: clock[0],
                           rng=random.Random(0))
    writer.start()
    for i in range(n):
        if writer.sampled():
            writer.submit(_request(i), "application/json", ANSWER, "application/json")
        clock[0] += step
    writer.close()
    return writer


def test_a_record_has_sagemakers_capture_layout():
    rec = capture_record(b'{"inputs": ["a"]}', "application/json", ANSWER, "application/json", when=T0,
                         event_id="e1")
    assert set(rec) == {"captureData", "eventMetadata", "eventVersion"} and rec["eventVersion"] == "0"
    inp, out = rec["captureData"]["endpointInput"], rec["captureData"]["endpointOutput"]
    assert inp == {"observedContentType": "application/json", "mode": "INPUT", "data": '{"inputs": ["a"]}',
                   "encoding": "JSON"}
    assert out["mode"] == "OUTPUT" and json.loads(out["data"]) == json.loads(ANSWER)
    assert rec["eventMetadata"] == {"eventId": "e1", "inferenceTime": "2026-03-01T09:58:00.000Z"}
    # Content types other than JSON and CSV are stored base64, as SageMaker does; they read back the same.
    lines = capture_record(b'{"inputs": "x"}\n{"inputs": "y"}\n', "application/jsonlines", b'{"label": "a", '
                           b'"score": 0.5}\n{"label": "b", "score": 0.7}\n', "application/jsonlines", when=T0)
    assert lines["captureData"]["endpointInput"]["encoding"] == "BASE64"
    assert base64.b64decode(lines["captureData"]["endpointInput"]["data"]).startswith(b'{"inputs": "x"}')
    when, texts, labels, scores = parse_record(json.dumps(lines))
    assert (texts, labels, scores) == (["x", "y"], ["a", "b"], [0.5, 0.7]) and when.tzinfo is not None
    with pytest.raises(ValueError):
        parse_record('{"captureData": {}}')


def test_files_rotate_by_size_and_hour_and_disk_use_stays_bounded(tmp_path):
    writer = _write(tmp_path / "cap", 300, step=15.0, max_file_bytes=2048, max_total_bytes=64 * 1024)
    files = sorted((tmp_path / "cap").rglob("*.jsonl"))
    assert writer.written == 300 and writer.dropped == 0
    assert sum(f.stat().st_size for f in files) <= 64 * 1024  # the oldest files were deleted
    assert all(f.stat().st_size <= 2048 for f in files) and len(files) > 5
    hours = {f.parent.relative_to(tmp_path / "cap").as_posix() for f in files}
    assert hours == {"2026/03/01/10", "2026/03/01/11"}  # yyyy/mm/dd/hh; older hours went with their files
    assert not (tmp_path / "cap" / "2026" / "03" / "01" / "09").exists()  # emptied hour folders are removed
    assert all(f.stat().st_mode & 0o077 == 0 for f in files)  # captured texts are readable by the owner only
    # Positive control: a budget large enough keeps everything.
    kept = _write(tmp_path / "all", 300, step=15.0, max_file_bytes=2048, max_total_bytes=10 * 1024 * 1024)
    assert read_capture(tmp_path / "all").requests == kept.written == 300


def test_sampling_follows_capture_percent(tmp_path):
    assert _write(tmp_path / "none", 200, percent=0).written == 0
    assert _write(tmp_path / "all", 200, percent=100).written == 200
    some = _write(tmp_path / "some", 2000, percent=25).written
    assert 400 < some < 600


def test_a_full_queue_drops_records_without_blocking(tmp_path):
    writer = CaptureWriter(CaptureOptions(directory=str(tmp_path), max_queue=3))  # not started: nothing drains
    assert [writer.submit(b"{}", "application/json", ANSWER, "application/json") for _ in range(5)] == \
        [True, True, True, False, False]
    assert writer.dropped == 2
    small = CaptureWriter(CaptureOptions(directory=str(tmp_path), max_queue_bytes=1024))  # and bounded in bytes
    assert small.submit(b"x" * 600, "application/json", b"", "application/json")
    assert not small.submit(b"x" * 600, "application/json", b"", "application/json") and small.dropped == 1


def test_since_leaves_out_older_traffic_and_malformed_lines_are_skipped(tmp_path):
    _write(tmp_path, 120, step=60.0)  # 09:58 .. 11:57
    newest = sorted(tmp_path.rglob("*.jsonl"))[-1]
    with open(newest, "ab") as f:
        f.write(b'{"captureData": "half a rec')  # a file being written may end mid-line
    everything = read_capture(tmp_path)
    assert everything.requests == 120 and everything.skipped == 1
    since = datetime(2026, 3, 1, 11, 30, tzinfo=UTC)
    recent = read_capture(tmp_path, since=since)
    assert recent.requests == 28 and recent.first == since and recent.texts[-1] == "request 119 about the match"
    naive = read_capture(tmp_path, since=since.replace(tzinfo=None))  # no offset: UTC
    assert naive.requests == 28


def test_capture_location_is_confined_to_the_home(tmp_path):
    home, endpoints = tmp_path / "home", tmp_path / "home" / "endpoints"
    assert resolve_capture_source(None, home, endpoints, "ep") == str(endpoints / "capture" / "ep")
    assert resolve_capture_source(str(home / "copied"), home, endpoints, "ep") == str((home / "copied").resolve())
    assert resolve_capture_source("s3://bucket-1/data-capture/ep", home, endpoints, "ep") == \
        "s3://bucket-1/data-capture/ep"
    assert resolve_capture_source("sagemaker", home, endpoints, "ep", "s3://b/p") == "s3://b/p"
    # A run parameter cannot point the monitor at other files of the machine.
    for bad in ("/etc", str(home / ".." / "elsewhere"), "file:///etc/passwd", "s3://"):
        with pytest.raises(MonitoringError):
            resolve_capture_source(bad, home, endpoints, "ep")
    with pytest.raises(MonitoringError, match="FINESHIP_ARTIFACT_BUCKET"):
        resolve_capture_source("sagemaker", home, endpoints, "ep", None)


def test_oov_rate_matches_the_data_profiles():
    from components.data.profile import oov_rate

    vocab = ["the", "match", "striker", "scored"]
    texts = ["The striker scored twice!", "Shares fell 3% in early trading", "the match"]
    assert oov_stats(vocab, texts).rate == pytest.approx(oov_rate(vocab, pd.Series(texts)))
    assert oov_stats(vocab, texts).top_unknown[0][1] == 1


def _reference(n: int = 300):
    rng = random.Random(1)
    texts = [" ".join(rng.choice(["the", "match", "striker", "scored", "goal"]) for _ in range(rng.randint(20, 60)))
             for _ in range(n)]
    labels = [rng.choice(["sport", "sport", "tech"]) for _ in range(n)]
    scores = [rng.uniform(0.6, 1.0) for _ in range(n)]
    return texts, labels, scores, build_reference(texts, labels, scores, ["sport", "tech"],
                                                  ["the", "match", "striker", "scored", "goal"])


def _traffic(texts, labels, scores):
    from components.monitoring.capture import CapturedTraffic

    return CapturedTraffic(source="test", texts=texts, labels=labels, confidences=scores, requests=len(texts))


def test_compare_flags_each_measure_and_passes_the_same_traffic():
    texts, labels, scores, ref = _reference()
    same = compare(ref, _traffic(texts, labels, scores), MonitorConfig(), "m", "1")
    assert same.enough_traffic and same.drifted == [] and [m.name for m in same.measures] == [
        "text_length", "oov_rate", "predicted_labels", "confidence"]
    other = compare(ref, _traffic(["u r gr8 lol c u l8r"] * 300, ["tech"] * 300, [0.4] * 300), MonitorConfig(),
                    "m", "1")
    assert other.drifted == ["text_length", "oov_rate", "predicted_labels", "confidence"]
    assert "DRIFT in text_length, oov_rate" in other.summary()
    # Too little traffic: measured, never judged.
    few = compare(ref, _traffic(["u r gr8"] * 10, ["tech"] * 10, [0.4] * 10), MonitorConfig(), "m", "1")
    assert not few.enough_traffic and few.drifted == [] and "no verdict" in few.summary()


def test_thresholds_are_strict_equal_passes():
    texts, labels, scores, ref = _reference()
    shifted = [t + " gooal" for t in texts]  # one unknown word per text
    value = compare(ref, _traffic(shifted, labels, scores), MonitorConfig(), "m", "1").measures[1].value
    at = compare(ref, _traffic(shifted, labels, scores), MonitorConfig(max_oov_increase=value), "m", "1")
    below = compare(ref, _traffic(shifted, labels, scores), MonitorConfig(max_oov_increase=value * 0.99), "m", "1")
    assert "oov_rate" not in at.drifted and "oov_rate" in below.drifted
