"""`fineship stack up|down|status`: a Prefect server, a process work pool with a worker, and an MLflow
server, all on 127.0.0.1, with PID files, logs and health checks under `<home>/stack/`.

`up` is idempotent: what already runs is reported, not started twice. `down` stops the worker
before the servers. While the stack runs, other `fineship` commands use it automatically.

`up --db postgres` keeps both servers' data in PostgreSQL instead of SQLite: a private cluster that fineship runs,
or the server that `FINESHIP_STACK_DB` names (see flows/stack_db.py).

`up --auth` requires logins: MLflow runs its basic-auth app (one admin user) and the Prefect server an
API auth string. The credentials come from `FINESHIP_STACK_*` (see `StackAuthSettings`) or are generated
once; either way they are kept only in `<home>/stack/credentials.json` (mode 0600), from which the worker
and the CLI get them as `MLFLOW_TRACKING_USERNAME` / `MLFLOW_TRACKING_PASSWORD` / `PREFECT_API_AUTH_STRING`.
"""

from __future__ import annotations

import json
import os
import secrets
import subprocess
import sys
import time
from pathlib import Path

import httpx
import typer
from pydantic import BaseModel, Field, SecretStr
from pydantic_settings import BaseSettings, SettingsConfigDict

from components.files import write_private
from components.postgres import PostgresError
from components.procs import pid_alive, port_in_use, terminate_group
from flows import stack_db
from flows.settings import Settings
from flows.stack_db import DbKind, StackDb

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
    auth: bool = False
    credentials_file: str | None = Field(None, description="Where the --auth credentials are (never the values).")
    db: StackDb = Field(default_factory=StackDb, description="Where the servers keep their data.")


class StackAuthSettings(BaseSettings):
    """Credentials for `stack up --auth`, as `FINESHIP_STACK_<NAME>`; what is unset is generated once and kept."""

    model_config = SettingsConfigDict(env_prefix="FINESHIP_STACK_", extra="ignore")

    admin_user: str = Field("admin", min_length=1, description="The MLflow admin user.")
    admin_password: SecretStr | None = Field(None, description="The MLflow admin's password (12+ characters).")
    prefect_auth: SecretStr | None = Field(None, description="The Prefect API auth string, `user:password`.")


class StackCredentials(BaseModel):
    """What the servers are protected with; stored only in the 0600 credentials file."""

    username: str
    mlflow_password: SecretStr
    prefect_auth_string: SecretStr
    flask_secret_key: SecretStr  # MLflow's basic-auth app signs its CSRF tokens with it

    def client_env(self) -> dict[str, str]:
        """The client side: what MLflow clients and Prefect clients read."""
        return {"MLFLOW_TRACKING_USERNAME": self.username,
                "MLFLOW_TRACKING_PASSWORD": self.mlflow_password.get_secret_value(),
                "PREFECT_API_AUTH_STRING": self.prefect_auth_string.get_secret_value()}


def _dir() -> Path:
    d = Settings().home_dir / "stack"
    d.mkdir(parents=True, exist_ok=True)
    return d


def read_state() -> StackState | None:
    """The running stack's state, or None when no stack was started here."""
    f = Settings().home_dir / "stack" / "stack.json"
    return StackState.model_validate_json(f.read_text()) if f.is_file() else None


def _credentials_file(home: Path) -> Path:
    return home / "stack" / "credentials.json"


def _read_credentials(path: Path) -> StackCredentials | None:
    return StackCredentials.model_validate_json(path.read_text()) if path.is_file() else None


def resolve_credentials(home: Path) -> StackCredentials:
    """The credentials `up --auth` starts the servers with: `FINESHIP_STACK_*` where set, else the ones kept
    from an earlier start, else new random ones. `save_credentials` keeps them once the servers took them."""
    wanted = StackAuthSettings()
    kept = _read_credentials(_credentials_file(home))
    password = wanted.admin_password or (kept.mlflow_password if kept else SecretStr(secrets.token_urlsafe(24)))
    prefect = wanted.prefect_auth or (kept.prefect_auth_string if kept
                                      else SecretStr(f"{wanted.admin_user}:{secrets.token_urlsafe(24)}"))
    if len(password.get_secret_value()) < 12:
        raise typer.BadParameter("FINESHIP_STACK_ADMIN_PASSWORD is shorter than 12 characters, which MLflow "
                                 "refuses; set a longer one, or unset it to have one generated")
    if not prefect.get_secret_value().strip():
        raise typer.BadParameter("FINESHIP_STACK_PREFECT_AUTH is empty; set it to `user:password`, or unset it to "
                                 "have one generated")
    return StackCredentials(username=wanted.admin_user, mlflow_password=password, prefect_auth_string=prefect,
                            flask_secret_key=kept.flask_secret_key if kept else SecretStr(secrets.token_hex(32)))


def save_credentials(home: Path, creds: StackCredentials) -> Path:
    """Keep `creds` in the credentials file (mode 0600) for the next start, the worker and the CLI."""
    path = _credentials_file(home)
    path.parent.mkdir(parents=True, exist_ok=True)
    write_private(path, json.dumps({k: v.get_secret_value() if isinstance(v, SecretStr) else v
                                     for k, v in creds}, indent=2))
    return path


def _require_mlflow_auth_extra() -> None:
    import importlib.util

    if importlib.util.find_spec("flask_wtf") is None:  # MLflow's basic-auth app signs CSRF tokens with it
        raise typer.BadParameter("--auth needs MLflow's auth extra (Flask-WTF); install it with: "
                                 "pip install 'mlflow[auth]==3.17.2'")


def _mlflow_auth_config(home: Path, username: str) -> Path:
    """The basic-auth app's ini. It holds no secret: the admin password goes to the server in its environment.

    Checked credentials are cached for a minute: without it every request of the UI pays a PBKDF2 hash (seconds
    on a busy laptop), and with the stack's single worker a password change still applies at once."""
    ini = home / "stack" / "mlflow-auth.ini"
    ini.parent.mkdir(parents=True, exist_ok=True)
    ini.write_text(f"[mlflow]\ndefault_permission = READ\ndatabase_uri = sqlite:///{home / 'mlflow-auth.db'}\n"
                   f"admin_username = {username}\nauth_cache_ttl_seconds = 60\n")
    return ini


def _healthy(url: str) -> bool:
    return _status(url) == 200


def _status(url: str, auth: tuple[str, str] | None = None, timeout: float = 2) -> int | None:
    try:
        return httpx.get(url, timeout=timeout, auth=auth).status_code
    except httpx.HTTPError:
        return None


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
    """Environment that points Prefect, MLflow links and fineship at the stack (with its client credentials
    when it runs with --auth)."""
    env = {"PREFECT_API_URL": state.prefect_api_url, "PREFECT_UI_URL": state.prefect_ui_url,
           "FINESHIP_TRACKING_URI": state.mlflow_url, "FINESHIP_MLFLOW_UI_URL": state.mlflow_url}
    if state.auth:
        path = Path(state.credentials_file or _credentials_file(Settings().home_dir))
        try:
            creds = _read_credentials(path)
        except OSError as err:
            raise typer.BadParameter(f"the stack runs with --auth but its credentials file {path} cannot be read "
                                     f"({err.strerror}); run as the user who started it") from err
        if creds is None:
            raise typer.BadParameter(f"the stack runs with --auth but its credentials file {path} is gone; "
                                     "restart it: fineship stack down && fineship stack up --auth")
        env.update(creds.client_env())
    return env


def _server_auth(home: Path, creds: StackCredentials | None) -> tuple[dict[str, str], dict[str, str], list[str]]:
    """The servers' side of --auth: the Prefect server's environment, the MLflow server's environment and its
    extra arguments (all empty without credentials)."""
    if creds is None:
        return {}, {}, []
    prefect = {"PREFECT_SERVER_API_AUTH_STRING": creds.prefect_auth_string.get_secret_value()}
    mlflow = {"MLFLOW_AUTH_CONFIG_PATH": str(_mlflow_auth_config(home, creds.username)),
              "MLFLOW_AUTH_ADMIN_PASSWORD": creds.mlflow_password.get_secret_value(),
              "MLFLOW_FLASK_SERVER_SECRET_KEY": creds.flask_secret_key.get_secret_value()}
    return prefect, mlflow, ["--app-name", "basic-auth"]


def _check_mlflow_login(mlflow_url: str, creds: StackCredentials, home: Path) -> None:
    login = (creds.username, creds.mlflow_password.get_secret_value())
    # A generous timeout: the first check of a password runs a deliberately slow hash.
    if _status(f"{mlflow_url}/api/2.0/mlflow/experiments/search?max_results=1", login, timeout=30) != 200:
        # MLflow sets the admin password only when it creates the user; an older user store keeps its own.
        raise typer.BadParameter(f"MLflow refused the admin password: its user store {home / 'mlflow-auth.db'} was "
                                 "created with another one. Set FINESHIP_STACK_ADMIN_PASSWORD to that password, or "
                                 "delete the file to start with a new admin user")


def _start_worker(env: dict[str, str]) -> Service:
    """Create (or update) the process work pool and start its worker."""
    bin_dir = Path(sys.executable).parent
    pool = subprocess.run([str(bin_dir / "prefect"), "work-pool", "create", POOL, "--type", "process",
                           "--base-job-template", str(REPO / "infra" / "prefect" / "process.json"), "--overwrite"],
                          env=env, capture_output=True, text=True, cwd=REPO, timeout=120)
    if pool.returncode != 0:
        raise typer.BadParameter(f"could not create work pool {POOL}: {pool.stderr[-800:]}")
    proc, log = _spawn("worker", [str(bin_dir / "prefect"), "worker", "start", "--pool", POOL, "--type", "process",
                                  "--name", "fineship-local-worker"], env)
    time.sleep(1.0)
    if proc.poll() is not None:
        raise typer.BadParameter(f"the worker exited during start-up; see {log}")
    return Service(name="worker", pid=proc.pid, log=str(log))


def up(prefect_port: int = 4200, mlflow_port: int = 5000, deployments: bool = True, auth: bool = False,
       db: DbKind | None = None) -> StackState:
    """Start what is not running yet; return the stack's state. `auth` requires logins on both servers; `db` (or
    FINESHIP_STACK_DB) chooses where the servers keep their data (default SQLite)."""
    try:
        choice = stack_db.choose(db)
    except PostgresError as err:
        raise typer.BadParameter(str(err)) from None
    state = read_state()
    if state and all(pid_alive(s.pid) for s in state.services) and _healthy(f"{state.prefect_api_url}/health") \
            and _healthy(f"{state.mlflow_url}/health"):
        if auth and not state.auth:  # never leave a stack open that was asked to require logins
            raise typer.BadParameter("the stack already runs without --auth; stop it first with: fineship stack down")
        if choice is not None and not state.db.matches(choice):
            raise typer.BadParameter(f"the stack already runs on {state.db.describe()}; stop it first with: "
                                     "fineship stack down")
        typer.echo("stack already running:")
        return state
    if state:
        down(quiet=True)
    if auth:
        _require_mlflow_auth_extra()
    for port, what in ((prefect_port, "Prefect"), (mlflow_port, "MLflow")):
        if port_in_use(port):
            raise typer.BadParameter(f"port {port} for {what} is taken by another process; free it or pass "
                                     f"--{what.lower()}-port")
    settings = Settings()
    home = settings.home_dir
    env = {**os.environ, "PREFECT_HOME": str(home / "prefect"), "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
           "DO_NOT_TRACK": "1", "MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR": "false",
           # Concurrency leases (the per-model lock) on disk: a server restart does not strand a dead run's slot.
           "PREFECT_SERVER_CONCURRENCY_LEASE_STORAGE": "prefect.server.concurrency.lease_storage.filesystem", "PYTHONPATH": str(REPO)}
    env.pop("PREFECT_API_URL", None)
    # No child needs the raw FINESHIP_STACK_* secrets: the servers get their own variables below.
    for name in ("FINESHIP_STACK_ADMIN_PASSWORD", "FINESHIP_STACK_PREFECT_AUTH", "FINESHIP_STACK_DB"):
        env.pop(name, None)
    creds = resolve_credentials(home) if auth else None
    prefect_auth, mlflow_auth, mlflow_app = _server_auth(home, creds)
    try:
        backends = stack_db.prepare(home, choice)  # the database first: a bad one fails before any server starts
    except PostgresError as err:
        raise typer.BadParameter(str(err)) from None
    bin_dir = Path(sys.executable).parent
    api = f"http://127.0.0.1:{prefect_port}/api"
    mlflow_url = f"http://127.0.0.1:{mlflow_port}"
    # Both servers start at once, then each is waited for. The UI is told where its API lives (else it assumes
    # port 4200).
    prefect_proc, prefect_log = _spawn("prefect-server", [
        str(bin_dir / "prefect"), "server", "start", "--host", "127.0.0.1", "--port", str(prefect_port)],
        {**env, "PREFECT_UI_API_URL": api, **prefect_auth, **backends.server_env, **backends.prefect_env})
    mlflow_proc, mlflow_log = _spawn("mlflow-server", [
        sys.executable, "-m", "mlflow", "server", "--host", "127.0.0.1", "--port", str(mlflow_port),
        "--backend-store-uri", backends.mlflow_store,  # never with a password: PGPASSFILE has it
        "--artifacts-destination", str(home / "mlflow-artifacts"), "--workers", "1", *mlflow_app],
        {**env, **mlflow_auth, **backends.server_env})
    services = [Service(name="prefect-server", pid=prefect_proc.pid, url=api.removesuffix("/api"),
                        log=str(prefect_log)),
                Service(name="mlflow-server", pid=mlflow_proc.pid, url=mlflow_url, log=str(mlflow_log))]
    if backends.cluster_pid is not None:
        services.append(Service(name="postgres", pid=backends.cluster_pid, url=f"postgresql://{backends.db.server}",
                                log=backends.cluster_log))
    try:
        _wait(f"{api}/health", prefect_proc, prefect_log, "the Prefect server")
        _wait(f"{mlflow_url}/health", mlflow_proc, mlflow_log, "the MLflow server")
        if creds:
            _check_mlflow_login(mlflow_url, creds, home)
            save_credentials(home, creds)  # only now: a refused password must not replace the one that works
        state = StackState(prefect_api_url=api, prefect_ui_url=api.removesuffix("/api"), mlflow_url=mlflow_url,
                           services=services, auth=auth,
                           credentials_file=str(_credentials_file(home)) if auth else None, db=backends.db)
        worker_env = {**env, **stack_env(state), "FINESHIP_HOME": str(home)}
        services.append(_start_worker(worker_env))
    except BaseException:  # a failed start or Ctrl-C: leave nothing half-started behind, then re-raise
        for service in services:
            if service.name != "postgres":
                terminate_group(service.pid, grace=10)
        stack_db.stop(home)  # the database last, after the servers that use it
        raise
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
        order = sorted((s for s in state.services if s.name != "postgres"), key=lambda s: s.name != "worker")
        for s in order:
            if pid_alive(s.pid):
                terminate_group(s.pid, grace=20)
                stopped.append(s.name)
        (d / "stack.json").unlink(missing_ok=True)
    if stack_db.stop(Settings().home_dir):  # the private cluster, after the servers (also one a failed `up` left)
        stopped.append("postgres")
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
    typer.echo(f"  database:   {state.db.describe()}")
    if state.auth:
        typer.echo(f"  auth:       on: MLflow basic-auth and a Prefect API auth string; credentials in "
                   f"{state.credentials_file} (mode 0600)")
    else:
        typer.echo("  auth:       off (fineship stack up --auth requires logins)")
    typer.echo("  stop with:  make down   (or fineship stack down)")


@stack_app.command("up")
def up_cmd(prefect_port: int = typer.Option(4200, "--prefect-port"),
           mlflow_port: int = typer.Option(5000, "--mlflow-port"),
           deployments: bool = typer.Option(True, "--deployments/--no-deployments",
                                            help="Create the prefect.yaml deployments on the server."),
           auth: bool = typer.Option(False, "--auth", help="Require logins: MLflow basic auth and a Prefect API auth "
                                     "string, from FINESHIP_STACK_ADMIN_USER / FINESHIP_STACK_ADMIN_PASSWORD / "
                                     "FINESHIP_STACK_PREFECT_AUTH or generated; kept in <home>/stack/credentials.json "
                                     "(0600)."),
           db: DbKind | None = typer.Option(None, "--db", case_sensitive=False, show_default=False,
                                            help="Where both servers keep their data: sqlite (default) or postgres "
                                            "(a private PostgreSQL cluster in <home>/stack/postgres, or the server "
                                            "whose URL FINESHIP_STACK_DB holds). FINESHIP_STACK_DB may also be "
                                            "sqlite or postgres.")) -> None:
    """Start the Prefect server, the work pool and its worker, and the MLflow server."""
    state = up(prefect_port, mlflow_port, deployments, auth, db)
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
