"""A server outage loses nothing: MLflow or the Prefect API going away while the training flow trains.

Real processes: an `mlflow server` (SQLite, free port) SIGKILLed once the run's first metrics have
arrived, then restarted or not; a `prefect server start` SIGKILLed while a flow in a child process
trains. The model is the tiny random BERT, 60 steps, a checkpoint every 5.

What happens when the Prefect API goes away (prefect 3.8.8, observed here and in by-hand runs):
- Task runs are orchestrated client-side: task bodies keep running, training is not interrupted,
  and state events that cannot be sent are dropped with a warning ("event data ... may be lost").
- The first call that needs the API fails once the client's retries are spent
  (PREFECT_CLIENT_MAX_RETRIES, default 5: about 75 s per call): here the fine-tune step's Prefect
  artifact, after the package and the final checkpoint are written. The flow's `except` path still
  runs the end-run task (client-side too), so the MLflow run ends FAILED. Releasing the model lock
  and reporting the flow's state then fail as well and the process exits 1 (with default retries,
  minutes later); the flow run stays "Running" in Prefect's database.
- A re-run resumes from the final checkpoint. Caveat outside this module: the Prefect server keeps
  concurrency leases in memory by default, so after the server restarts on the same database the
  dead run's `model_lock` slot stays taken and a re-run for that model waits for it (up to the
  lock's 6 h timeout).
- Past a lease renewal (225 s into the outage), `model_lock`'s strict concurrency cancels the
  flow by raising into the training thread; the checkpoints are written atomically, so that
  loses at most `checkpoint_every_steps` steps and the end-run step and run markers close the
  MLflow run as above.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
import pytest

from components.errors import GateRejected
from components.procs import free_port
from components.registry.metric_buffer import MetricsUndelivered
from components.registry.mlflow_registry import (
    END_REASON_TAG,
    MlflowRegistry,
    local_tracking_uri,
    mark_run_open,
    read_run_markers,
    reconcile_runs,
)
from tests.e2e.test_pipeline import _config
from tests.support.tiny import REPO, seed_mlflow_db

pytestmark = pytest.mark.e2e

STEPS = 60
RUN = {"training.max_steps": STEPS, "training.checkpoint_every_steps": 5, "training.epochs": 3}
LOGGED_STEPS = list(range(10, STEPS + 1, 10))  # train_loss is logged every 10 steps (and at each evaluation)


class MlflowServer:
    """A real `mlflow server` process that a test can kill and start again on the same port and store."""

    def __init__(self, root: Path) -> None:
        self.root, self.port = root, free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.proc: subprocess.Popen | None = None
        seed_mlflow_db(root / "mlflow.db")

    def start(self, timeout: float = 180) -> None:
        with open(self.root / "server.log", "ab") as log:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "mlflow", "server", "--host", "127.0.0.1", "--port", str(self.port),
                 "--backend-store-uri", f"sqlite:///{self.root / 'mlflow.db'}", "--artifacts-destination",
                 str(self.root / "artifacts"), "--workers", "1"],
                stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        _wait_healthy(f"{self.url}/health", self.proc, timeout, self.root / "server.log")

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(timeout=30)


def _wait_healthy(url: str, proc: subprocess.Popen, timeout: float, log: Path) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if httpx.get(url, timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        if proc.poll() is not None:
            pytest.fail(f"{url} exited during start-up:\n" + log.read_text(errors="replace")[-2000:])
        time.sleep(0.3)
    pytest.fail(f"{url} did not answer within {timeout:.0f}s")


@pytest.fixture(scope="module")
def mlflow_server(tmp_path_factory):
    server = MlflowServer(tmp_path_factory.mktemp("mlflow-outage"))
    server.start()
    yield server
    server.kill()


@pytest.fixture
def outage_home(tmp_path, monkeypatch, mlflow_server):
    """A private FINESHIP_HOME whose runs go to the killable MLflow server; MLflow's client fails fast."""
    home = tmp_path / "home"
    monkeypatch.setenv("FINESHIP_HOME", str(home))
    monkeypatch.setenv("FINESHIP_TRACKING_URI", mlflow_server.url)
    # One attempt per call: the buffer and the end-run step do the retrying (MLflow's own default is ~4 min).
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_TIMEOUT", "30")
    if mlflow_server.proc is None or mlflow_server.proc.poll() is not None:
        mlflow_server.start()
    return home


class Saboteur(threading.Thread):
    """Kills the MLflow server once the run's first training-loss value has arrived; with `restart`, starts it
    again after training has moved on by 10 more steps (or ended).

    `hold_training` makes the kill land while the model trains on any machine: the trainer's metrics callback
    waits, after the first loss it reports, until the server is dead (the tiny model can otherwise finish its 60
    steps between two polls here; CI once saw the kill land during evaluation instead). Nothing is mocked: the
    callback still feeds the real buffer, which still sends to the real server."""

    def __init__(self, server: MlflowServer, home: Path, restart: bool) -> None:
        super().__init__(daemon=True)
        self.server, self.home, self.restart = server, home, restart
        self.run_id: str | None = None
        self.killed_at: float | None = None
        self.killed = threading.Event()
        self.package_at_kill = True
        self.error: BaseException | None = None

    def hold_training(self, monkeypatch: pytest.MonkeyPatch) -> None:
        from components.registry.metric_buffer import MetricBuffer

        report = MetricBuffer.__call__

        def paced(buffer: MetricBuffer, metrics, step: int) -> None:
            report(buffer, metrics, step)
            if "train_loss" in metrics and not self.killed.wait(timeout=300):
                raise AssertionError("the saboteur did not kill MLflow within 300 s of the first loss")

        monkeypatch.setattr(MetricBuffer, "__call__", paced)

    def run(self) -> None:
        try:
            self._run()
        except BaseException as err:  # reported by the test
            self.error = err

    def _run(self) -> None:
        from mlflow import MlflowClient

        client, deadline = MlflowClient(self.server.url), time.monotonic() + 600
        while self.killed_at is None:
            assert time.monotonic() < deadline, "no training loss reached MLflow within 600 s"
            time.sleep(0.2)
            exp = client.get_experiment_by_name("e2e")
            runs = client.search_runs([exp.experiment_id], "attributes.status = 'RUNNING'") if exp else []
            for run in runs:
                if client.get_metric_history(run.info.run_id, "train_loss"):
                    self.run_id = run.info.run_id
                    self.package_at_kill = self._trained()
                    self.server.kill()
                    self.killed_at = time.monotonic()
                    self.killed.set()
        if not self.restart:
            return
        steps = self._checkpoint_step()
        while not self._trained() and self._checkpoint_step() < steps + 10:
            assert time.monotonic() < deadline, "training made no progress while MLflow was down"
            time.sleep(0.1)
        self.server.start()

    def _trained(self) -> bool:
        return self.run_id is not None and (self.home / "runs" / self.run_id / "package" / "config.json").exists()

    def _checkpoint_step(self) -> int:
        steps = [int(p.name.split("-")[1]) for p in self.home.glob("checkpoints/*/*/step-*")]
        return max(steps, default=0)


def _steps(registry: MlflowRegistry, run_id: str, key: str) -> list[int]:
    return sorted(m.step for m in registry.client.get_metric_history(run_id, key))


def _running(registry: MlflowRegistry) -> list[str]:
    exp = registry.client.get_experiment_by_name("e2e")
    return [r.info.run_id for r in registry.client.search_runs([exp.experiment_id], "attributes.status = 'RUNNING'")]


# Slow: an MLflow server start, a restart and a whole flow run; 1-2 min on 2 shared cores (a restart alone
# takes 10-60 s there), over the ~90 s budget for tests that always run.
@pytest.mark.slow
def test_mlflow_restarted_during_training_every_metric_arrives(prefect_harness, outage_home, mlflow_server,
                                                               tiny_bert, monkeypatch):
    from flows.training import training_flow

    monkeypatch.setenv("FINESHIP_MLFLOW_OUTAGE_WAIT_SECONDS", "240")  # the restart may land after training
    saboteur = Saboteur(mlflow_server, outage_home, restart=True)
    saboteur.hold_training(monkeypatch)
    saboteur.start()
    with pytest.raises(GateRejected):  # a floor no model reaches: the run ends FINISHED without registering
        training_flow(_config(tiny_bert, **RUN, **{"gate.min_accuracy": 1.0}))
    saboteur.join(timeout=60)
    assert saboteur.error is None and saboteur.killed_at is not None
    assert not saboteur.package_at_kill  # MLflow went down while the model was training

    registry = MlflowRegistry(mlflow_server.url)
    run = registry.client.get_run(saboteur.run_id)
    assert run.info.status == "FINISHED"
    evals = _steps(registry, saboteur.run_id, "val_macro_f1")
    assert len(evals) == 3  # two epoch ends and the last step
    # every value, none twice: every 10 steps, plus each evaluation's record
    assert _steps(registry, saboteur.run_id, "train_loss") == sorted(LOGGED_STEPS + evals)
    assert {"train_seconds", "health_warnings", "candidate_test_accuracy"} <= set(run.data.metrics)
    assert "metrics delivered late" in run.data.tags["fineship.mlflow_outage"]  # the buffer did see the outage
    assert run.data.tags["fineship.health"]
    assert _running(registry) == []


# Slow: two whole flow runs around an MLflow server restart; 1-3 min on 2 shared cores.
@pytest.mark.slow
def test_mlflow_still_down_after_training_fails_cleanly_and_the_rerun_resumes(prefect_harness, outage_home,
                                                                               mlflow_server, tiny_bert, monkeypatch):
    from flows.training import training_flow

    monkeypatch.setenv("FINESHIP_MLFLOW_OUTAGE_WAIT_SECONDS", "3")
    config = _config(tiny_bert, **RUN)
    saboteur = Saboteur(mlflow_server, outage_home, restart=False)
    saboteur.hold_training(monkeypatch)
    saboteur.start()
    with pytest.raises(MetricsUndelivered, match=f"resumes from step {STEPS} instead of training again"):
        training_flow(config)
    saboteur.join(timeout=60)
    assert saboteur.error is None and not saboteur.package_at_kill
    failed = saboteur.run_id
    # Training itself finished: the package and the final checkpoint are on disk, and the run's end is recorded.
    assert (outage_home / "runs" / failed / "package" / "config.json").is_file()
    [ckpt] = (outage_home / "checkpoints" / "e2e-news").iterdir()
    assert (ckpt / f"step-{STEPS:08d}" / "state.json").is_file()
    [marker] = read_run_markers(outage_home / "pending")
    assert (marker.run_id, marker.status) == (failed, "FAILED") and "unreachable" in marker.reason

    mlflow_server.start()
    registry = MlflowRegistry(mlflow_server.url)
    assert registry.client.search_model_versions("name='e2e-news'") == []  # nothing was registered
    assert registry.client.get_run(failed).info.status == "RUNNING"  # until the next run reconciles it

    started = time.monotonic()
    outcome = training_flow(config)  # the same flow again: ends the stale run, resumes, registers
    rerun_seconds = time.monotonic() - started
    old, new = registry.client.get_run(failed), registry.client.get_run(outcome.run_id)
    assert old.info.status == "FAILED" and "MLflow was unreachable" in old.data.tags[END_REASON_TAG]
    assert new.info.status == "FINISHED"
    assert new.data.tags["fineship.resumed_from_step"] == str(STEPS)  # nothing was trained again
    evals = _steps(registry, outcome.run_id, "val_macro_f1")  # the curve the checkpoint carried
    assert len(evals) == 3 and _steps(registry, outcome.run_id, "train_loss") == sorted(LOGGED_STEPS + evals)
    assert outcome.registered is not None and outcome.registered.version == "1"
    assert not ckpt.exists()  # the checkpoints go once the model is registered
    assert read_run_markers(outage_home / "pending") == [] and _running(registry) == []
    print(f"re-run after the outage: {rerun_seconds:.1f}s")


def test_a_run_whose_process_died_is_ended_failed_by_the_next_run(tmp_path):
    """The open-run marker: a flow process killed outright (SIGKILL, a lost worker) leaves its run RUNNING."""
    registry = MlflowRegistry(local_tracking_uri(seed_mlflow_db(tmp_path / "mlflow.db")), tmp_path / "artifacts")
    dead = registry.start_run("e2e", "killed")
    alive = registry.start_run("e2e", "still-training")
    other = registry.start_run("e2e", "other-store")
    pending = tmp_path / "pending"
    subprocess.run([sys.executable, "-c", "import sys; from components.registry.mlflow_registry import mark_run_open; "
                    "mark_run_open(*sys.argv[1:])", str(pending), dead, registry.tracking_uri], cwd=REPO, check=True,
                   timeout=120)  # a process that opened the run and is gone
    mark_run_open(pending, alive, registry.tracking_uri)  # this process: alive
    mark_run_open(pending, other, "http://another-tracking-server")
    settled = reconcile_runs(registry, pending)
    assert [m.run_id for m in settled] == [dead]
    assert registry.client.get_run(dead).info.status == "FAILED"
    assert "ended without closing the run" in registry.client.get_run(dead).data.tags[END_REASON_TAG]
    assert {registry.client.get_run(r).info.status for r in (alive, other)} == {"RUNNING"}
    assert sorted(m.run_id for m in read_run_markers(pending)) == sorted([alive, other])


# Slow: a Prefect server of its own, a flow in a child process and a re-run; 2-3 min on 2 shared cores.
@pytest.mark.slow
def test_prefect_api_gone_during_fine_tune_run_ends_failed_and_the_rerun_resumes(prefect_harness, tiny_bert,
                                                                                 tmp_path, monkeypatch):
    from flows.settings import Settings
    from flows.training import training_flow

    home, port = tmp_path / "home", free_port()
    seed_mlflow_db(home / "mlflow.db")
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PREFECT_API", "FINESHIP_", "MLFLOW_HTTP"))}
    env.update({"PREFECT_HOME": str(tmp_path / "prefect"), "PREFECT_SERVER_ANALYTICS_ENABLED": "false"})
    with open(tmp_path / "prefect.log", "ab") as log:
        server = subprocess.Popen([str(Path(sys.executable).parent / "prefect"), "server", "start", "--host",
                                   "127.0.0.1", "--port", str(port)], env=env, stdout=log, stderr=subprocess.STDOUT,
                                  start_new_session=True)
    try:
        _wait_healthy(f"http://127.0.0.1:{port}/api/health", server, 180, tmp_path / "prefect.log")
        overrides = [f"{k}={v}" for k, v in RUN.items()]
        flow_env = {**env, "PREFECT_API_URL": f"http://127.0.0.1:{port}/api", "FINESHIP_HOME": str(home),
                    "PREFECT_CLIENT_MAX_RETRIES": "0"}  # fail fast once the API is gone (default: ~75 s a call)
        code = ("import sys; from flows.training import training_flow; from tests.e2e.test_pipeline import _config; "
                "training_flow(_config(sys.argv[1], **dict(a.split('=', 1) for a in sys.argv[2:])))")
        with open(tmp_path / "flow.log", "wb") as out:
            proc = subprocess.Popen([sys.executable, "-c", code, str(tiny_bert), *overrides], cwd=REPO, env=flow_env,
                                    stdout=out, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 300
        while not list(home.glob("checkpoints/*/*/step-*")):  # training has started
            assert proc.poll() is None, (tmp_path / "flow.log").read_text()[-3000:]
            assert time.monotonic() < deadline, "no checkpoint within 300 s"
            time.sleep(0.1)
        os.killpg(server.pid, signal.SIGKILL)
        server.wait(timeout=30)
        rc = proc.wait(timeout=300)
    finally:
        if server.poll() is None:
            os.killpg(server.pid, signal.SIGKILL)
    output = (tmp_path / "flow.log").read_text(errors="replace")
    assert rc != 0, output[-3000:]
    monkeypatch.setenv("FINESHIP_HOME", str(home))
    monkeypatch.delenv("FINESHIP_TRACKING_URI", raising=False)
    registry = MlflowRegistry(Settings().mlflow_tracking_uri)
    [failed] = [r for r in registry.client.search_runs([registry.client.get_experiment_by_name("e2e").experiment_id])]
    # Training was not disturbed: the package and the final checkpoint are complete; the MLflow run was ended FAILED
    # by the flow's except path (tasks run client-side), or is recorded for the next run to end.
    assert (home / "runs" / failed.info.run_id / "package" / "config.json").is_file(), output[-3000:]
    [ckpt] = (home / "checkpoints" / "e2e-news").iterdir()
    assert (ckpt / f"step-{STEPS:08d}" / "state.json").is_file()
    print("flow process after the Prefect API went away:", rc, failed.info.status,
          [m.model_dump() for m in read_run_markers(home / "pending")])

    outcome = training_flow(_config(tiny_bert, **RUN))  # the re-run, on a working Prefect server
    assert registry.client.get_run(failed.info.run_id).info.status == "FAILED"
    new = registry.client.get_run(outcome.run_id)
    assert new.info.status == "FINISHED" and new.data.tags["fineship.resumed_from_step"] == str(STEPS)
    assert outcome.registered is not None and outcome.registered.version == "1"
    assert _running(registry) == [] and read_run_markers(home / "pending") == []
