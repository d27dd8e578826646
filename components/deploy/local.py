"""Local endpoints: the inference server as a real background process speaking the SageMaker contract.

Redeployments are blue/green (`deploy_local`): the new version is checked beside the old one and then
takes over its port (components/serving/handover.py); a failing new version never takes traffic.

Each endpoint has a JSON record (pid, port, model version) in a state directory, so the CLI
can report, stop or roll back what an earlier process started. One deployment of an endpoint runs at a
time: `deploy_local` holds an exclusive lock on `<state_dir>/<name>.lock` from start to prune
(`endpoint_lock`), so two deployments never both hand over the port or prune each other's files.
"""

from __future__ import annotations

import fcntl
import json
import logging
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

import httpx
from pydantic import BaseModel, ConfigDict, Field

from components.errors import DeploymentError, DeploymentStepError
from components.monitoring.capture import local_capture_dir
from components.procs import free_port, pid_alive, port_in_use, terminate_group

log = logging.getLogger(__name__)

# The steps of a local deployment, named like the SageMaker deployer's (errors and records carry them).
START = "endpoint-start"
SMOKE = "smoke-test"
HANDOVER = "port-handover"
LOCK = "endpoint-lock"
# A downloaded package younger than this is never pruned: another deployment of the endpoint may be about to
# start it (it was downloaded before that deployment waited for the lock).
PRUNE_GRACE_S = 2 * 3600
LOCK_TIMEOUT_S = 300.0
"""How long a deployment (or `fineship endpoint stop`) waits for another deployment of the endpoint."""


class DeploymentRecord(BaseModel):
    """A deployed endpoint: where it answers and which model version it serves."""

    model_config = ConfigDict(frozen=True)

    endpoint_name: str
    target: str = "local"
    url: str
    admin_url: str | None = Field(None, description="Private loopback address of the server (blue/green checks).")
    model_name: str | None = None
    model_version: str | None = None
    package_dir: str
    pid: int | None = None
    host: str = "127.0.0.1"
    port: int
    log_file: str | None = None
    backend: str = Field("auto", description="What the server runs: a variant, or auto (the package's recorded "
                         "choice, see components/export/choice.py).")
    deployed_at: float = Field(default_factory=time.time)


class LocalTarget(BaseModel):
    """Where a local endpoint runs."""

    model_config = ConfigDict(frozen=True)

    endpoint_name: str
    state_dir: str = Field(description="Directory of the endpoints' records and logs.")
    host: str = "127.0.0.1"
    port: int = 0
    capture_percent: float = Field(0, ge=0, le=100, description="Data capture for `fineship monitor`; 0: off.")
    capture_max_mb: int = Field(100, ge=1, description="Total size of the endpoint's capture files.")
    lock_timeout: float = Field(LOCK_TIMEOUT_S, ge=0, description="Seconds to wait while another deployment of this endpoint "
                                "runs before giving up.")


class SmokeResult(BaseModel):
    model_config = ConfigDict(frozen=True)

    url: str
    n: int
    agreed: int
    predictions: list[dict]
    seconds: float


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


def _spawn(package_dir: str | Path, name: str, state: Path, host: str, port: int, model_name: str | None,
           model_version: str | None, standby: bool = False, timeout: float = 180,
           capture: tuple[float, int] = (0, 100), backend: str = "auto") -> DeploymentRecord:
    """Start a server process and wait until `/ping` answers 200; with `standby`, on a private loopback port,
    ready to take over `host:port` (not yet answering there)."""
    state.mkdir(parents=True, exist_ok=True)
    admin = free_port("127.0.0.1") if standby else None
    if not standby and port_in_use(port, host):
        raise DeploymentError(f"port {port} on {host} is taken by another process; set deploy.port to a free port "
                              "(0 picks one)")
    log_file = state / f"{name}.log"
    cmd = [sys.executable, "-m", "components.serving", "--model-dir", str(Path(package_dir).resolve()),
           "--host", host, "--port", str(admin or port), "--backend", backend] \
        + (["--standby-port", str(port)] if standby else [])
    if capture[0] > 0:  # (percent, max MB): sampled requests and answers for `fineship monitor`
        cmd += ["--capture-dir", str(local_capture_dir(state, name)), "--capture-percent", str(capture[0]),
                "--capture-max-mb", str(capture[1])]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(Path(__file__).resolve().parents[2]),
                                                                       os.environ.get("PYTHONPATH")]))}
    with open(log_file, "ab") as out:
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                start_new_session=True, env=env)
    url, admin_url = f"http://{host}:{port}", f"http://127.0.0.1:{admin}" if admin else None
    try:
        wait_ready(admin_url or url, timeout, proc, log_file)
    except DeploymentError:
        terminate_group(proc.pid)
        raise
    return DeploymentRecord(endpoint_name=name, url=url, admin_url=admin_url, model_name=model_name,
                            model_version=model_version, package_dir=str(Path(package_dir).resolve()), pid=proc.pid,
                            host=host, port=port, log_file=str(log_file), backend=backend)


def start_endpoint(package_dir: str | Path, name: str, state_dir: str | Path, host: str = "127.0.0.1",
                   port: int = 0, model_name: str | None = None, model_version: str | None = None,
                   timeout: float = 180) -> DeploymentRecord:
    """Start a server process for `package_dir` on `host:port` and wait until `/ping` answers 200.

    An endpoint of the same name that is already running is stopped first (`deploy_local` does not stop
    it before the new one is ready).
    """
    state = Path(state_dir)
    previous = read_record(state, name)
    if previous and is_running(previous):
        stop_endpoint(state, name, forget=False)
    record = _spawn(package_dir, name, state, host, port or free_port(host), model_name, model_version,
                    timeout=timeout)
    _record_path(state, name).write_text(record.model_dump_json(indent=2))
    log.info("endpoint %s serving %s v%s at %s (pid %d)", name, model_name, model_version, record.url, record.pid)
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


def _listening(pid: int, port: int) -> bool:
    """Whether process `pid` listens on TCP `port`."""
    import psutil

    try:
        conns = psutil.Process(pid).net_connections(kind="inet")
    except psutil.Error:
        return False
    return any(c.status == psutil.CONN_LISTEN and c.laddr and c.laddr.port == port for c in conns)


def _hand_over(green: DeploymentRecord, blue: DeploymentRecord, timeout: float = 15) -> bool:
    """Tell green to take over the public port; True once it listens there (blue still runs)."""
    os.kill(green.pid, signal.SIGUSR1)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if _listening(green.pid, blue.port):
            return True
        time.sleep(0.1)
    return False


def _lock_holder(path: Path) -> str:
    """Who holds the endpoint's lock, as the holder wrote it (pid, since when), for the error message."""
    try:
        info = json.loads(path.read_text() or "{}")
        since = time.strftime("%H:%M:%S", time.localtime(float(info["since"])))
        return f"pid {int(info['pid'])}, since {since}"
    except (OSError, ValueError, KeyError, TypeError):
        return "pid unknown"


@contextmanager
def endpoint_lock(state_dir: str | Path, name: str, timeout: float) -> Iterator[Path]:
    """Hold the endpoint's exclusive lock (`<state_dir>/<name>.lock`, `flock`), waiting at most `timeout` seconds.

    The holder's pid is written into the file for the error of whoever waits. The lock goes with the open file:
    a deployment that dies releases it. Raises `DeploymentStepError` (step `LOCK`) when the wait runs out.
    """
    state = Path(state_dir)
    state.mkdir(parents=True, exist_ok=True)
    path = state / f"{name}.lock"
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        deadline = time.monotonic() + timeout
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() >= deadline:
                    raise DeploymentStepError(
                        f"endpoint {name} is being deployed by another process ({_lock_holder(path)}); waited "
                        f"{timeout:.0f}s for it to finish: run this deployment again when that one is done (the "
                        f"lock {path} is released when its holder ends, even if it crashes)", LOCK) from None
                time.sleep(0.2)
        os.ftruncate(fd, 0)
        os.write(fd, json.dumps({"pid": os.getpid(), "since": time.time()}).encode())
        yield path
    finally:
        os.close(fd)  # releases the lock


def deploy_local(target: LocalTarget, package_dir: str | Path, model_name: str, version: str,
                 texts: Sequence[str], expected: Sequence[str],
                 backend: str = "auto") -> tuple[DeploymentRecord, SmokeResult]:
    """Deploy `package_dir` on the target's endpoint, blue/green when a version already serves there.

    The new version starts beside the old one on a private loopback port, passes its health check and
    the smoke test there, then takes over the endpoint's port; only then does the old one stop. A new
    version that fails to load or disagrees is stopped and the old one never stopped answering. Raises
    `DeploymentStepError` naming the step that failed (`START`, `SMOKE` or `HANDOVER`). `backend` is what
    the server runs (`components.serving.backends`); `expected` must be that backend's predictions.

    Holds the endpoint's lock throughout (`endpoint_lock`): a second deployment of the same endpoint waits up
    to `target.lock_timeout` seconds and then takes over from the first, or fails with `DeploymentStepError`
    (step `LOCK`) naming the other deployment's pid.
    """
    if not texts:
        raise DeploymentStepError("no smoke-test texts: the version has no input example; pass smoke_texts", START)
    if Path(package_dir).is_dir():
        os.utime(package_dir)  # fresh while this deployment waits: a running one does not prune it
    with endpoint_lock(target.state_dir, target.endpoint_name, target.lock_timeout):
        return _deploy_locked(target, package_dir, model_name, version, texts, expected, backend)


def _deploy_locked(target: LocalTarget, package_dir: str | Path, model_name: str, version: str,
                   texts: Sequence[str], expected: Sequence[str], backend: str) -> tuple[DeploymentRecord, SmokeResult]:
    """`deploy_local` under the endpoint's lock: the record read here is the one this deployment replaces."""
    state = Path(target.state_dir)
    blue = read_record(state, target.endpoint_name)
    live = blue is not None and is_running(blue) and blue.host == target.host and target.port in (0, blue.port)
    port = blue.port if live else (target.port or free_port(target.host))
    step, green = START, None
    try:
        green = _spawn(package_dir, target.endpoint_name, state, target.host, port, model_name, version,
                       standby=live, capture=(target.capture_percent, target.capture_max_mb), backend=backend)
        step = SMOKE
        smoke = smoke_test(green.admin_url or green.url, texts, expected)
        if live:
            step = HANDOVER
            if not _hand_over(green, blue):  # blue listens without SO_REUSEPORT (an older server): stop it first
                stop_endpoint(state, target.endpoint_name, forget=False)
                if not _hand_over(green, blue):
                    raise DeploymentError(f"the new server could not take over port {port}")
            stop_endpoint(state, target.endpoint_name, forget=False)
    except DeploymentError as err:
        if green is not None:
            terminate_group(green.pid)
        failure = f"deploying {model_name} v{version} failed at {step}: {err}"
        if live and not is_running(blue):  # the handover fallback had stopped it: start it again
            try:
                start_endpoint(blue.package_dir, blue.endpoint_name, state, blue.host, blue.port, blue.model_name,
                               blue.model_version)
            except DeploymentError as restore_err:
                raise DeploymentStepError(f"{failure}; restarting {blue.model_name} v{blue.model_version} failed too: "
                                          f"{restore_err}", step, left_behind=[f"port {port} is down"]) from err
        kept = [f"{blue.model_name} v{blue.model_version} still serves at {blue.url}"] if live else []
        raise DeploymentStepError(failure + (f"; {kept[0]}" if kept else ""), step, kept) from err
    if blue is not None and not live and is_running(blue):  # the endpoint moved to another address: the old
        terminate_group(blue.pid)                              # process is not left running without a record
    record = green.model_copy(update={"url": f"http://{target.host}:{port}", "port": port})
    _record_path(state, target.endpoint_name).write_text(record.model_dump_json(indent=2))
    prune_packages(state / target.endpoint_name, keep={record.package_dir, blue.package_dir if blue else ""})
    log.info("%s v%s serving at %s (pid %d)%s", model_name, version, record.url, record.pid,
             f", took over from v{blue.model_version}" if live else "")
    return record, smoke


def prune_packages(parent: Path, keep: set[str], grace: float = PRUNE_GRACE_S) -> list[Path]:
    """Delete downloaded packages of this endpoint that neither the new nor the previous version uses.

    Never deleted: what the endpoint's record says serves (read again here), the packages in `keep`, and any
    package touched within `grace` seconds (another deployment may have downloaded it and wait for the lock).
    """
    serving = read_record(parent.parent, parent.name)
    keep = {k for k in keep | {serving.package_dir if serving else ""} if k}
    now, removed = time.time(), []
    for d in parent.iterdir() if parent.is_dir() else ():
        if not d.is_dir() or now - d.stat().st_mtime < grace:
            continue
        here = str(d.resolve())
        if here in keep or any(k.startswith(here + os.sep) for k in keep):
            continue
        shutil.rmtree(d, ignore_errors=True)
        removed.append(d)
    return removed
