"""Riding out MLflow outages: the metric buffer, retried calls, run markers and per-run checkpoint directories.

The buffer's sink here is a small in-process stand-in for `MlflowRegistry.log_metric_batch` that fails on
demand with the exceptions MLflow's client really raises (an unreachable server arrives as an
`MlflowException` with HTTP status 500); tests/e2e/test_outage.py kills a real MLflow server instead.
"""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time

import pytest
import requests
from mlflow.exceptions import MlflowException
from mlflow.protos.databricks_pb2 import INVALID_PARAMETER_VALUE, RESOURCE_DOES_NOT_EXIST, TEMPORARILY_UNAVAILABLE

from components.config import TrainingConfig
from components.registry.metric_buffer import MetricBuffer, MetricsUndelivered, is_transient, with_retries
from components.registry.mlflow_registry import (
    clear_run_marker,
    mark_run_end,
    mark_run_open,
    owner_alive,
    read_run_markers,
)
from components.training.checkpoint import prune_run_dirs, run_checkpoint_dir
from components.training.replay import replayed_metrics
from components.training.trainer import TrainedModel

UNREACHABLE = MlflowException("API request to http://127.0.0.1:1/api/2.0/mlflow/runs/log-batch failed with exception "
                              "HTTPConnectionPool(...): Max retries exceeded (Connection refused)")


class Sink:
    """Records every batch; raises `failures.pop(0)` while the list is non-empty (None: accept)."""

    tracking_uri = "http://127.0.0.1:5000"

    def __init__(self, failures=()):
        self.failures = list(failures)
        self.batches: list[tuple[list, dict]] = []
        self.calls = 0
        self.down = False  # while True, every call fails as an unreachable server does
        self.lock = threading.Lock()

    def log_metric_batch(self, run_id, metrics=(), tags=None):
        with self.lock:
            self.calls += 1
            if self.down:
                raise UNREACHABLE
            if self.failures:
                err = self.failures.pop(0)
                if err is not None:
                    raise err
            self.batches.append((list(metrics), dict(tags or {})))

    def metrics(self):
        return [m for batch, _ in self.batches for m in batch]

    def tags(self):
        return {k: v for _, tags in self.batches for k, v in tags.items()}


def test_metrics_and_tags_arrive_in_batches_with_their_steps_and_times():
    sink = Sink()
    before = int(time.time() * 1000)
    with MetricBuffer(sink, "run1", flush_every_seconds=0.05) as buffer:
        for step in range(1, 2001):
            buffer({"train_loss": 1.0 / step, "learning_rate": 0.1}, step)  # the trainer's on_metrics signature
        buffer.set_tags({"fineship.health": "ok"})
        report = buffer.close(5)
    assert report.pending == report.dropped == report.rejected == report.failed_attempts == 0
    assert report.delivered == 4001
    got = sink.metrics()
    assert len(got) == 4000 and all(len(batch) <= 900 for batch, _ in sink.batches)
    assert {(k, step) for k, _, _, step in got} == {(k, s) for s in range(1, 2001) for k in ("train_loss", "learning_rate")}
    assert all(before <= ts <= int(time.time() * 1000) for _, _, ts, _ in got)
    assert sink.tags() == {"fineship.health": "ok"}


def test_a_transient_outage_never_reaches_the_training_loop_and_nothing_is_lost():
    sink = Sink()
    sink.down = True
    buffer = MetricBuffer(sink, "run1", flush_every_seconds=0.01, backoff_seconds=(0.01, 0.05)).start()
    for step in range(1, 51):
        started = time.monotonic()
        buffer.add({"train_loss": float(step)}, step)  # never raises, never waits on the network
        assert time.monotonic() - started < 0.05
        time.sleep(0.002)
    deadline = time.monotonic() + 5
    while buffer.failed_attempts < 3 and time.monotonic() < deadline:
        time.sleep(0.01)
    assert buffer.failed_attempts >= 3 and sink.metrics() == [] and buffer.pending == 50
    sink.down = False  # the server is back
    report = buffer.close(5)
    assert report.pending == 0 and report.delivered == 50 and report.failed_attempts >= 3
    assert sorted(step for *_, step in sink.metrics()) == list(range(1, 51))


def test_a_value_mlflow_refuses_is_dropped_not_retried_forever():
    refused = MlflowException("bad metric", error_code=INVALID_PARAMETER_VALUE)
    sink = Sink(failures=[refused])
    buffer = MetricBuffer(sink, "run1")  # never started: close() flushes in the caller
    buffer.add({"a": 1.0}, 1)
    report = buffer.close(1)
    assert report.rejected == 1 and report.pending == 0 and report.delivered == 0 and sink.calls == 1
    buffer2 = MetricBuffer(sink, "run1")
    buffer2.add({"b": 2.0}, 2)
    assert buffer2.close(1).delivered == 1  # the next batch goes through


def test_memory_stays_bounded_during_a_long_outage_oldest_values_go_first(caplog):
    sink = Sink()
    sink.down = True
    buffer = MetricBuffer(sink, "run1", max_pending=5)
    with caplog.at_level("WARNING"):
        for step in range(1, 13):
            buffer.add({"train_loss": float(step)}, step)
    assert buffer.pending == 5 and buffer.dropped == 7
    assert sum("dropped (oldest first)" in r.message for r in caplog.records) == 1  # one warning, not one per value
    sink.down = False
    report = buffer.close(1)
    assert report.dropped == 7 and report.delivered == 5
    assert [step for *_, step in sink.metrics()] == [8, 9, 10, 11, 12]


def test_close_gives_up_after_its_timeout_and_says_what_was_lost_and_what_to_do():
    sink = Sink()
    sink.down = True
    buffer = MetricBuffer(sink, "run-9", backoff_seconds=(0.05, 0.2)).start()
    buffer.add({"train_loss": 0.5, "val_loss": 0.6}, 10)
    buffer.set_tags({"fineship.resumed_from_step": "5"})
    started = time.monotonic()
    report = buffer.close(0.6)
    assert 0.5 <= time.monotonic() - started < 3
    assert report.pending == 3 and report.delivered == 0 and report.failed_attempts >= 2
    with pytest.raises(MetricsUndelivered) as err:
        report.raise_if_pending("run the flow again to resume")
    message = str(err.value)
    assert "http://127.0.0.1:5000" in message and "run-9" in message and "3 metric/tag values" in message
    assert "Connection refused" in message and message.endswith("run the flow again to resume")
    MetricBuffer(Sink(), "ok").close(0.1).raise_if_pending("never raised")  # nothing pending: no error


def test_which_failures_are_transient():
    assert is_transient(UNREACHABLE)  # connection refused: MLflow reports it as a 500
    assert is_transient(MlflowException("busy", error_code=TEMPORARILY_UNAVAILABLE))
    assert is_transient(requests.exceptions.ConnectionError("refused"))
    assert is_transient(requests.exceptions.ReadTimeout("slow"))
    assert not is_transient(MlflowException("no such run", error_code=RESOURCE_DOES_NOT_EXIST))
    assert not is_transient(MlflowException("bad value", error_code=INVALID_PARAMETER_VALUE))
    assert not is_transient(ValueError("a bug"))


def test_with_retries_waits_out_a_short_outage_and_stops_at_its_bound():
    attempts = []

    def flaky():
        attempts.append(time.monotonic())
        if len(attempts) < 3:
            raise UNREACHABLE
        return "ended"

    assert with_retries(flaky, 5, "ending the run", initial=0.01, maximum=0.02) == "ended" and len(attempts) == 3
    started = time.monotonic()
    with pytest.raises(MlflowException):
        with_retries(lambda: (_ for _ in ()).throw(UNREACHABLE), 0.3, "ending the run", initial=0.05, maximum=0.1)
    assert 0.25 <= time.monotonic() - started < 2
    calls = []
    with pytest.raises(MlflowException):  # not transient: no retry
        with_retries(lambda: calls.append(1) or (_ for _ in ()).throw(
            MlflowException("gone", error_code=RESOURCE_DOES_NOT_EXIST)), 5, "x")
    assert calls == [1]


def test_run_markers_record_an_open_run_its_owner_and_a_deferred_end(tmp_path):
    pending = tmp_path / "pending"
    mark_run_open(pending, "r1", "http://mlflow")
    [marker] = read_run_markers(pending)
    assert marker.status is None and marker.pid == os.getpid() and owner_alive(marker)
    mark_run_end(pending, "r1", "http://mlflow", "FAILED", "MLflow was unreachable")
    [marker] = read_run_markers(pending)
    assert (marker.status, marker.reason) == ("FAILED", "MLflow was unreachable")
    (pending / "junk.json").write_text("{not json")
    assert [m.run_id for m in read_run_markers(pending)] == ["r1"]  # unreadable markers are skipped
    clear_run_marker(pending, "r1")
    clear_run_marker(pending, "r1")  # idempotent
    assert read_run_markers(pending) == []


def test_an_open_run_whose_process_is_gone_has_no_live_owner(tmp_path):
    child = subprocess.run([sys.executable, "-c", "import sys; sys.path.insert(0, '.'); "
                            "from components.registry.mlflow_registry import mark_run_open; "
                            f"mark_run_open({str(tmp_path)!r}, 'r2', 'http://mlflow')"],
                           cwd=os.path.dirname(os.path.dirname(os.path.dirname(__file__))), timeout=120)
    assert child.returncode == 0
    [marker] = read_run_markers(tmp_path)
    assert marker.pid != os.getpid() and not owner_alive(marker)
    assert owner_alive(marker.model_copy(update={"host": "another-host"}))  # cannot tell: left to that host
    reused = marker.model_copy(update={"pid": os.getpid()})  # a live PID that started at another time
    assert not owner_alive(reused)


def _cfg(**kw):
    return TrainingConfig(model="m", max_steps=60, **kw)


def test_a_rerun_of_the_same_config_and_data_finds_the_same_checkpoint_directory(tmp_path):
    data = (["a text", "b text"], ["x", "y"], ["v"], ["x"])
    same = run_checkpoint_dir(tmp_path, _cfg(), ["x", "y"], *data)
    assert same == run_checkpoint_dir(tmp_path, _cfg(), ["x", "y"], *data)
    assert same.parent == tmp_path and len(same.name) == 25
    # where and how often to checkpoint does not make a run different
    assert same == run_checkpoint_dir(tmp_path, _cfg(checkpoint_every_steps=5, keep_checkpoints=3), ["x", "y"], *data)
    others = {run_checkpoint_dir(tmp_path, _cfg(learning_rate=1e-3), ["x", "y"], *data),
              run_checkpoint_dir(tmp_path, _cfg(), ["x", "y", "z"], *data),
              run_checkpoint_dir(tmp_path, _cfg(), ["x", "y"], ["a text", "b text!"], *data[1:]),
              run_checkpoint_dir(tmp_path, _cfg(), ["x", "y"], *data[:3], ["y"])}
    assert len(others) == 4 and same not in others


def test_old_run_directories_are_pruned_the_current_one_never(tmp_path):
    dirs = []
    for i in range(4):
        d = tmp_path / f"run{i}"
        d.mkdir()
        os.utime(d, (1000 + i, 1000 + i))
        dirs.append(d)
    removed = prune_run_dirs(tmp_path, keep=2, current=dirs[0])  # the oldest is the current run
    assert sorted(p.name for p in removed) == ["run1", "run2"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["run0", "run3"]
    assert prune_run_dirs(tmp_path / "missing", keep=2) == []


def test_a_resumed_run_replays_the_curve_its_checkpoint_carried():
    steps = [{"step": float(s), "loss": float(s), "learning_rate": 0.01 * s, "grad_norm": 1.0} for s in range(1, 26)]
    history = [{"epoch": 0.5, "step": 12.0, "train_loss": 6.5, "val_loss": 1.0, "val_accuracy": 0.5},
               {"epoch": 1.0, "step": 25.0, "train_loss": 19.0, "val_loss": 0.9, "val_accuracy": 0.6}]
    trained = TrainedModel(package_dir="p", labels=["x"], base_model="m", device="cpu", steps=25, best_step=25,
                           best_val_macro_f1=None, train_seconds=1.0, samples_per_second=1.0, history=history,
                           steps_log=steps)
    calls = replayed_metrics(trained, 20)
    assert [step for _, step in calls] == [10, 12, 20]
    assert calls[0][0] == {"train_loss": 5.5, "learning_rate": 0.1, "grad_norm": 1.0}  # mean of steps 1-10
    assert calls[1][0] == {"train_loss": 6.5, "val_loss": 1.0, "val_accuracy": 0.5}
    assert calls[2][0]["train_loss"] == 15.5
    assert [step for _, step in replayed_metrics(trained, 25)] == [10, 12, 20, 25, 25]  # the last step is logged too
    assert replayed_metrics(trained, 0) == []
