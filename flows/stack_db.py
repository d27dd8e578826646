"""Where the stack's MLflow and Prefect servers keep their data.

- `sqlite` (the default): `<home>/mlflow-server.db` and `<home>/prefect/prefect.db`.
- `postgres`: a private PostgreSQL cluster that fineship creates and runs in `<home>/stack/postgres` (127.0.0.1
  only, a free port, scram-sha-256; its generated password only in `<home>/stack/postgres.pgpass`, mode 0600),
  with the databases `mlflow` and `prefect`. `stack down` stops it after the servers; its data stays.
- `postgresql://user:password@host:port/postgres`: an operator's server, from `FINESHIP_STACK_DB` only (never a
  command line, where `ps` would show the password). fineship creates the two databases there if missing and
  nothing else; the password goes to `<home>/stack/server.pgpass` (0600) while the stack runs.

The servers get URLs without a password and `PGPASSFILE`, so it never shows on a command line or in a log.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, Field, SecretStr
from pydantic_settings import BaseSettings, SettingsConfigDict

from components.postgres import (SUPERUSER, LocalCluster, PostgresError, ServerAddress, cluster_user,
                                 ensure_databases, find_bin_dir, new_password, parse_server_url, read_pgpass,
                                 write_pgpass)
from components.procs import free_port, port_in_use

DATABASES = ("mlflow", "prefect")


class DbKind(StrEnum):
    sqlite = "sqlite"
    postgres = "postgres"


class StackDbSettings(BaseSettings):
    """`FINESHIP_STACK_DB`: `sqlite`, `postgres` (a private cluster) or a PostgreSQL server's URL."""

    model_config = SettingsConfigDict(env_prefix="FINESHIP_STACK_", extra="ignore")

    db: SecretStr | None = Field(None, description="`sqlite`, `postgres`, or postgresql://user:password@host:port/db "
                                 "(kept secret: it may hold a password).")


@dataclass(frozen=True)
class DbChoice:
    """What `stack up` was asked for: SQLite, a private cluster (`url` None) or the server at `url`."""

    kind: DbKind
    url: SecretStr | None = None


class StackDb(BaseModel):
    """The stack's database as `stack.json` records it: never a password."""

    kind: Literal["sqlite", "postgres"] = "sqlite"
    managed: bool = Field(False, description="A private cluster that fineship runs (and stops).")
    server: str | None = Field(None, description="user@host:port of the PostgreSQL server.")
    passfile: str | None = Field(None, description="The libpq password file the servers read (mode 0600).")
    data_dir: str | None = Field(None, description="The private cluster's data directory.")

    def matches(self, choice: DbChoice) -> bool:
        if choice.kind != self.kind:
            return False
        if choice.kind == DbKind.sqlite:
            return True
        if choice.url is None:
            return self.managed
        address, _ = parse_server_url(choice.url.get_secret_value())
        return not self.managed and self.server == address.describe()

    def describe(self) -> str:
        if self.kind == "sqlite":
            return "SQLite (files in the home)"
        where = f"a private PostgreSQL cluster, {self.server}" if self.managed else f"PostgreSQL at {self.server}"
        return where + (f" (password in {self.passfile}, mode 0600)" if self.passfile else "")


def choose(cli: DbKind | None) -> DbChoice | None:
    """The database asked for by `--db` and `FINESHIP_STACK_DB` (None when neither says). `--db sqlite` wins over
    the variable; `--db postgres` uses the server the variable names, if it names one."""
    raw = StackDbSettings().db
    value = raw.get_secret_value().strip() if raw else ""
    url = SecretStr(value) if "://" in value else None
    if value and url is None and value.lower() not in ("sqlite", "postgres", "postgresql"):
        shown = value if not set(value) & set(":@/") else "not shown"
        raise PostgresError(f"FINESHIP_STACK_DB must be `sqlite`, `postgres` or a PostgreSQL server's URL "
                            f"(postgresql://user:password@host:5432/postgres); its value ({shown}) is none of these")
    if url is not None:
        parse_server_url(value)  # a malformed URL fails here, before anything starts
    if cli == DbKind.sqlite or (cli is None and value.lower() == "sqlite"):
        return DbChoice(DbKind.sqlite)
    if cli == DbKind.postgres or value:
        return DbChoice(DbKind.postgres, url)
    return None


@dataclass
class Backends:
    """What the servers are started with: the MLflow backend store, the extra environment of both servers (and of
    the Prefect server alone), and the private cluster's postmaster when one runs."""

    db: StackDb
    mlflow_store: str
    server_env: dict[str, str] = field(default_factory=dict)
    prefect_env: dict[str, str] = field(default_factory=dict)
    cluster_pid: int | None = None
    cluster_log: str | None = None


def cluster_root(home: Path) -> Path:
    return home / "stack" / "postgres"


def _local_cluster(home: Path) -> LocalCluster:
    return LocalCluster(cluster_root(home), find_bin_dir(), cluster_user())


def _on_postgres(db: StackDb, server: ServerAddress, passfile: Path | None) -> Backends:
    env = {"PGPASSFILE": str(passfile)} if passfile else {}  # libpq (MLflow) and asyncpg (Prefect) both read it
    prefect = {"PREFECT_SERVER_DATABASE_CONNECTION_URL": server.url("prefect", "postgresql+asyncpg")}
    return Backends(db=db, mlflow_store=server.url("mlflow"), server_env=env, prefect_env=prefect)


def prepare(home: Path, choice: DbChoice | None) -> Backends:
    """Make the chosen database ready for the servers: start the private cluster (creating it the first time) or
    check the operator's server, and create the databases `mlflow` and `prefect` where missing."""
    if choice is None or choice.kind == DbKind.sqlite:
        return Backends(db=StackDb(), mlflow_store=f"sqlite:///{home / 'mlflow-server.db'}")
    if choice.url is not None:
        server, password = parse_server_url(choice.url.get_secret_value())
        ensure_databases(server, password, DATABASES)  # before anything is written or started
        passfile = write_pgpass(home / "stack" / "server.pgpass", server, password) if password else None
        db = StackDb(kind="postgres", server=server.describe(), passfile=str(passfile) if passfile else None)
        return _on_postgres(db, server, passfile)
    return _start_cluster(home)


def _start_cluster(home: Path) -> Backends:
    cluster = _local_cluster(home)
    passfile = home / "stack" / "postgres.pgpass"
    kept = read_pgpass(passfile, SUPERUSER)
    if cluster.initialized() and kept is None:
        raise PostgresError(f"the cluster in {cluster.data_dir} was created with a password kept in {passfile}, "
                            f"which is gone: restore that file, or delete {cluster.root} to start a new, empty "
                            "cluster")
    password = kept[1] if kept else new_password()
    cluster.prepare_root()  # before anything is written: as root, the `postgres` user must be able to reach it
    if not cluster.initialized():
        write_pgpass(passfile, ServerAddress("127.0.0.1", 0), password)  # kept before initdb uses it
        cluster.init(password)
    running = cluster.status()
    started = running is None
    if running is None:
        port = kept[0] if kept and kept[0] and not port_in_use(kept[0]) else free_port()  # the same port when it is free
        running = (cluster.start(port), port)
    pid, port = running
    server = ServerAddress("127.0.0.1", port)
    try:
        write_pgpass(passfile, server, password)
        ensure_databases(server, password, DATABASES)
    except BaseException:
        if started:
            cluster.stop()
        raise
    db = StackDb(kind="postgres", managed=True, server=server.describe(), passfile=str(passfile),
                 data_dir=str(cluster.data_dir))
    backends = _on_postgres(db, server, passfile)
    backends.cluster_pid, backends.cluster_log = pid, str(cluster.log_file)
    return backends


def stop(home: Path) -> bool:
    """Stop the private cluster if it runs (after the servers), and forget an operator server's password.
    True when a cluster was stopped."""
    (home / "stack" / "server.pgpass").unlink(missing_ok=True)
    root = cluster_root(home)
    if not (root / "data" / "postmaster.pid").is_file():
        return False
    try:
        cluster = _local_cluster(home)
    except PostgresError:  # the programs were removed since: nothing of ours can run without them
        return False
    return cluster.stop()
