"""`fineship stack up|down|status`: a Prefect server, a process work pool with a worker, and an MLflow
server, all on 127.0.0.1, with PID files, logs and health checks under `<home>/stack/`.

`up` is idempotent: what already runs is reported, not started twice. `down` stops the worker
before the servers. While the stack runs, other `fineship` commands use it automatically.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import typer
from pydantic import BaseModel

from components.procs import pid_alive, terminate_group
from flows.settings import Settings

stack_app = typer.Typer(help="Run the local Prefect + MLflow stack (all on 127.0.0.1).", no_args_is_help=True)
POOL = "fineship-local"
REPO = Path(__file__).resolve().parents[1]


class Service(BaseModel):
    name: str
    pid: int
    url: str | None = None
    log: str


class StackState(BaseModel):
    prefect_api_url: str
    prefect_ui_url: str
    mlflow_url: str
    services: list[Service]


def _dir() -> Path:
    d = Settings().home_dir / "stack"
    d.mkdir(parents=True, exist_ok=True)
    return d


def read_state() -> StackState | None:
    """The running stack's state, or None when no stack was started here."""
    f = Settings().home_dir / "stack" / "stack.json"
    return StackState.model_validate_json(f.read_text()) if f.is_file() else None


def _port_free(port: int) -> bool:
    with socket.socket() as s:
        return s.connect_ex(("127.0.0.1", port)) != 0


def _healthy(url: str) -> bool:
    try:
        return httpx.get(url, timeout=2).status_code == 200
    except httpx.HTTPError:
        return False


def _wait(url: str, proc: subprocess.Popen, log: Path, what: str, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if _healthy(url):
            return
        if proc.poll() is not None:
            raise typer.BadParameter(f"{what} exited during start-up; its log {log} ends with:\n"
                                     + log.read_text(errors="replace")[-1500:])
        time.sleep(0.5)
    raise typer.BadParameter(f"{what} did not answer {url} within {timeout:.0f}s; see {log}")


def _spawn(name: str, cmd: list[str], env: dict[str, str]) -> tuple[subprocess.Popen, Path]:
    log = _dir() / f"{name}.log"
    with open(log, "ab") as out:  # the child keeps its own copy of the descriptor
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=env,
                                start_new_session=True, cwd=REPO)
    (_dir() / f"{name}.pid").write_text(str(proc.pid))
    return proc, log


def stack_env(state: StackState) -> dict[str, str]:
    """Environment that points Prefect, MLflow links and fineship at the stack."""
    return {"PREFECT_API_URL": state.prefect_api_url, "PREFECT_UI_URL": state.prefect_ui_url,
            "FINESHIP_TRACKING_URI": state.mlflow_url, "FINESHIP_MLFLOW_UI_URL": state.mlflow_url}


def up(prefect_port: int = 4200, mlflow_port: int = 5000, deployments: bool = True) -> StackState:
    """Start what is not running yet; return the stack's state."""
    state = read_state()
    if state and all(pid_alive(s.pid) for s in state.services) and _healthy(f"{state.prefect_api_url}/health") \
            and _healthy(f"{state.mlflow_url}/health"):
        typer.echo("stack already running:")
        return state
    if state:
        down(quiet=True)
    for port, what in ((prefect_port, "Prefect"), (mlflow_port, "MLflow")):
        if not _port_free(port):
            raise typer.BadParameter(f"port {port} for {what} is taken by another process; free it or pass "
                                     f"--{what.lower()}-port")
    settings = Settings()
    home = settings.home_dir
    env = {**os.environ, "PREFECT_HOME": str(home / "prefect"), "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
           "DO_NOT_TRACK": "1", "PYTHONPATH": str(REPO)}
    env.pop("PREFECT_API_URL", None)
    bin_dir = Path(sys.executable).parent
    services: list[Service] = []

    api = f"http://127.0.0.1:{prefect_port}/api"
    # The UI is told where its API lives; otherwise it assumes port 4200.
    proc, log = _spawn("prefect-server", [str(bin_dir / "prefect"), "server", "start", "--host", "127.0.0.1",
                                          "--port", str(prefect_port)], {**env, "PREFECT_UI_API_URL": api})
    _wait(f"{api}/health", proc, log, "the Prefect server")
    services.append(Service(name="prefect-server", pid=proc.pid, url=api.removesuffix("/api"), log=str(log)))

    mlflow_url = f"http://127.0.0.1:{mlflow_port}"
    artifacts = home / "mlflow-artifacts"
    proc, log = _spawn("mlflow-server", [
        sys.executable, "-m", "mlflow", "server", "--host", "127.0.0.1", "--port", str(mlflow_port),
        "--backend-store-uri", f"sqlite:///{home / 'mlflow-server.db'}", "--artifacts-destination", str(artifacts),
        "--workers", "1"], env)
    _wait(f"{mlflow_url}/health", proc, log, "the MLflow server")
    services.append(Service(name="mlflow-server", pid=proc.pid, url=mlflow_url, log=str(log)))

    state = StackState(prefect_api_url=api, prefect_ui_url=api.removesuffix("/api"), mlflow_url=mlflow_url,
                       services=services)
    worker_env = {**env, **stack_env(state), "FINESHIP_HOME": str(home)}
    pool = subprocess.run([str(bin_dir / "prefect"), "work-pool", "create", POOL, "--type", "process",
                           "--base-job-template", str(REPO / "infra" / "prefect" / "process.json"), "--overwrite"],
                          env=worker_env, capture_output=True, text=True, cwd=REPO, timeout=120)
    if pool.returncode != 0:
        raise typer.BadParameter(f"could not create work pool {POOL}: {pool.stderr[-800:]}")
    proc, log = _spawn("worker", [str(bin_dir / "prefect"), "worker", "start", "--pool", POOL, "--type", "process",
                                  "--name", "fineship-local-worker"], worker_env)
    time.sleep(1.0)
    if proc.poll() is not None:
        raise typer.BadParameter(f"the worker exited during start-up; see {log}")
    services.append(Service(name="worker", pid=proc.pid, log=str(log)))
    state = state.model_copy(update={"services": services})
    (_dir() / "stack.json").write_text(state.model_dump_json(indent=2))
    if deployments:
        create_deployments(worker_env)
    return state


def create_deployments(env: dict[str, str]) -> None:
    """Create (or update) the deployments of prefect.yaml on the stack's Prefect server."""
    bin_dir = Path(sys.executable).parent
    result = subprocess.run([str(bin_dir / "prefect"), "--no-prompt", "deploy", "--all"],
                            env={**env, "FINESHIP_PROJECT_DIR": str(REPO)}, cwd=REPO, capture_output=True,
                            text=True, timeout=300)
    if result.returncode != 0:
        raise typer.BadParameter(f"prefect deploy --all failed: {(result.stdout + result.stderr)[-1500:]}")


def down(quiet: bool = False) -> list[str]:
    """Stop the worker first, then the servers; remove PID files. Returns what was stopped."""
    state = read_state()
    stopped: list[str] = []
    d = Settings().home_dir / "stack"
    from components.deploy.local import list_records, stop_endpoint

    endpoints = Settings().endpoints_dir
    for record in list_records(endpoints):  # endpoints started by flow runs on this stack
        if stop_endpoint(endpoints, record.endpoint_name, forget=False):
            stopped.append(f"endpoint {record.endpoint_name}")
    if state is not None:
        order = sorted(state.services, key=lambda s: 0 if s.name == "worker" else 1)
        for s in order:
            if pid_alive(s.pid):
                terminate_group(s.pid, grace=20)
                stopped.append(s.name)
        (d / "stack.json").unlink(missing_ok=True)
    for pid_file in d.glob("*.pid") if d.is_dir() else []:
        pid_file.unlink(missing_ok=True)
    if not quiet:
        typer.echo("stopped: " + (", ".join(stopped) if stopped else "nothing was running"))
    return stopped


def _print(state: StackState) -> None:
    for s in state.services:
        health = "running" if pid_alive(s.pid) else "DEAD"
        typer.echo(f"  {s.name:15s} pid {s.pid:<7d} {health:8s} {s.url or ''}  (log: {s.log})")
    typer.echo(f"\n  Prefect UI: {state.prefect_ui_url}\n  MLflow UI:  {state.mlflow_url}")
    typer.echo("  stop with:  make down   (or fineship stack down)")


@stack_app.command("up")
def up_cmd(prefect_port: int = typer.Option(4200, "--prefect-port"),
           mlflow_port: int = typer.Option(5000, "--mlflow-port"),
           deployments: bool = typer.Option(True, "--deployments/--no-deployments",
                                            help="Create the prefect.yaml deployments on the server.")) -> None:
    """Start the Prefect server, the work pool and its worker, and the MLflow server."""
    state = up(prefect_port, mlflow_port, deployments)
    _print(state)


@stack_app.command("down")
def down_cmd() -> None:
    """Stop the worker, then the servers."""
    down()


@stack_app.command("status")
def status_cmd() -> None:
    """Show what runs, with health."""
    state = read_state()
    if state is None:
        typer.echo("no stack running (start it with: make up)")
        raise typer.Exit(1)
    _print(state)


def json_state() -> str:
    state = read_state()
    return json.dumps(state.model_dump() if state else None)
