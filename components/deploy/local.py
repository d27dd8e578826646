"""Local endpoints: the inference server as a real background process speaking the SageMaker contract.

Each endpoint has a JSON record (pid, port, model version) in a state directory, so the CLI
can report, stop or roll back what an earlier process started.
"""

from __future__ import annotations

import json
import logging
import os
import socket
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path

import httpx
from pydantic import BaseModel, ConfigDict, Field

from components.errors import DeploymentError
from components.procs import free_port, pid_alive, terminate_group

log = logging.getLogger(__name__)


class DeploymentRecord(BaseModel):
    """A deployed endpoint: where it answers and which model version it serves."""

    model_config = ConfigDict(frozen=True)

    endpoint_name: str
    target: str = "local"
    url: str
    model_name: str | None = None
    model_version: str | None = None
    package_dir: str
    pid: int | None = None
    host: str = "127.0.0.1"
    port: int
    log_file: str | None = None
    deployed_at: float = Field(default_factory=time.time)


class SmokeResult(BaseModel):
    model_config = ConfigDict(frozen=True)

    url: str
    n: int
    agreed: int
    predictions: list[dict]
    seconds: float


def _port_in_use(host: str, port: int) -> bool:
    with socket.socket() as s:
        s.settimeout(0.2)
        return s.connect_ex((host, port)) == 0


def _record_path(state_dir: Path, name: str) -> Path:
    return state_dir / f"{name}.json"


def read_record(state_dir: str | Path, name: str) -> DeploymentRecord | None:
    """The endpoint's record, or None when it was never deployed here."""
    p = _record_path(Path(state_dir), name)
    if not p.is_file():
        return None
    return DeploymentRecord.model_validate_json(p.read_text())


def list_records(state_dir: str | Path) -> list[DeploymentRecord]:
    d = Path(state_dir)
    return [DeploymentRecord.model_validate_json(p.read_text()) for p in sorted(d.glob("*.json"))] if d.is_dir() else []


def is_running(record: DeploymentRecord) -> bool:
    return pid_alive(record.pid)


def wait_ready(url: str, timeout: float, proc: subprocess.Popen | None = None, log_file: Path | None = None) -> None:
    """Poll `GET /ping` until 200; fail early when the process dies."""
    deadline = time.monotonic() + timeout
    last = "no answer"
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            tail = log_file.read_text(errors="replace")[-2000:] if log_file and log_file.exists() else ""
            raise DeploymentError(f"the endpoint process exited with code {proc.returncode} before it was ready:\n{tail}")
        try:
            r = httpx.get(f"{url}/ping", timeout=2)
            if r.status_code == 200:
                return
            last = f"HTTP {r.status_code}: {r.text[:200]}"
            if r.status_code == 500:
                raise DeploymentError(f"the endpoint at {url} could not load its model: {last}")
        except httpx.HTTPError as err:
            last = type(err).__name__
        time.sleep(0.25)
    raise DeploymentError(f"the endpoint at {url} was not ready within {timeout:.0f}s (last: {last})")


def start_endpoint(package_dir: str | Path, name: str, state_dir: str | Path, host: str = "127.0.0.1",
                   port: int = 0, model_name: str | None = None, model_version: str | None = None,
                   timeout: float = 180) -> DeploymentRecord:
    """Start a server process for `package_dir` and wait until `/ping` answers 200.

    An endpoint of the same name that is already running is stopped first.
    """
    state = Path(state_dir)
    state.mkdir(parents=True, exist_ok=True)
    previous = read_record(state, name)
    if previous and is_running(previous):
        stop_endpoint(state, name, forget=False)
    port = port or free_port(host)
    if _port_in_use(host, port):
        raise DeploymentError(f"port {port} on {host} is taken by another process; set deploy.port to a free port "
                              "(0 picks one)")
    log_file = state / f"{name}.log"
    cmd = [sys.executable, "-m", "components.serving", "--model-dir", str(Path(package_dir).resolve()),
           "--host", host, "--port", str(port)]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(Path(__file__).resolve().parents[2]),
                                                                       os.environ.get("PYTHONPATH")]))}
    with open(log_file, "ab") as out:
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                start_new_session=True, env=env)
    url = f"http://{host}:{port}"
    try:
        wait_ready(url, timeout, proc, log_file)
    except DeploymentError:
        terminate_group(proc.pid)
        raise
    record = DeploymentRecord(endpoint_name=name, url=url, model_name=model_name, model_version=model_version,
                              package_dir=str(Path(package_dir).resolve()), pid=proc.pid, host=host, port=port,
                              log_file=str(log_file))
    _record_path(state, name).write_text(record.model_dump_json(indent=2))
    log.info("endpoint %s serving %s v%s at %s (pid %d)", name, model_name, model_version, url, proc.pid)
    return record


def stop_endpoint(state_dir: str | Path, name: str, forget: bool = True) -> bool:
    """Stop the endpoint's process; return whether one was running."""
    record = read_record(state_dir, name)
    if record is None:
        return False
    running = is_running(record)
    if running and record.pid:
        terminate_group(record.pid)
    if forget:
        _record_path(Path(state_dir), name).unlink(missing_ok=True)
    return running


def invoke(url: str, texts: Sequence[str], timeout: float = 60) -> list[dict]:
    """POST texts to `/invocations` and return the predictions."""
    r = httpx.post(f"{url}/invocations", json={"inputs": list(texts)}, timeout=timeout)
    if r.status_code != 200:
        raise DeploymentError(f"the endpoint at {url} answered HTTP {r.status_code}: {r.text[:300]}")
    return r.json()["predictions"]


def smoke_test(url: str, texts: Sequence[str], expected: Sequence[str]) -> SmokeResult:
    """Send held-out texts over HTTP; every prediction must equal the registered model's local one."""
    start = time.perf_counter()
    preds = invoke(url, texts)
    got = [p["label"] for p in preds]
    agreed = sum(a == b for a, b in zip(got, expected))
    if agreed != len(expected) or len(got) != len(expected):
        diffs = [f"{t[:60]!r}: endpoint {g}, model {e}" for t, g, e in zip(texts, got, expected) if g != e][:3]
        raise DeploymentError(f"smoke test failed: the endpoint agreed with the model on {agreed}/{len(expected)} "
                              f"texts ({'; '.join(diffs)})")
    return SmokeResult(url=url, n=len(texts), agreed=agreed, predictions=preds,
                       seconds=time.perf_counter() - start)


def record_json(record: DeploymentRecord) -> str:
    return json.dumps(record.model_dump(), indent=2)
