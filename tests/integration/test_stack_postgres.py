"""The stack's PostgreSQL without its servers (seconds, not minutes): a bad server URL fails before anything starts
and never shows its password; the private cluster is created once, reused, stopped by `stack down` with no
process left behind, and keeps its data and password across restarts. The stack on it, end to end, is
tests/e2e/test_stack.py."""

from __future__ import annotations

import os
import shutil
import time
from pathlib import Path

import psutil
import pytest
import typer

from components.postgres import PostgresError, read_pgpass
from components.procs import free_port
from flows import stack_db
from flows.stack_db import DbChoice, DbKind
from tests.support.stack import STACK_VARS, postgres_home, running


@pytest.fixture
def clean_env(monkeypatch):
    for var in STACK_VARS:
        monkeypatch.delenv(var, raising=False)
    return monkeypatch


@pytest.mark.parametrize("db", [None, "postgres"])
def test_a_server_that_cannot_be_reached_fails_clearly_and_nothing_starts(tmp_path: Path, clean_env, db):
    from flows.stack import up

    port = free_port()  # nothing listens there
    clean_env.setenv("FINESHIP_HOME", str(tmp_path))
    clean_env.setenv("FINESHIP_STACK_DB", f"postgresql://ops:hunter2-long-secret@127.0.0.1:{port}/postgres")
    before = {p.pid for p in psutil.Process().children(recursive=True)}
    with pytest.raises(typer.BadParameter) as err:
        up(free_port(), free_port(), deployments=False, db=db)
    message = str(err.value)
    assert f"PostgreSQL at 127.0.0.1:{port}" in message and "user ops" in message
    assert "FINESHIP_STACK_DB" in message and "hunter2" not in message
    assert {p.pid for p in psutil.Process().children(recursive=True)} <= before
    assert not (tmp_path / "stack").exists()  # no log, PID file, state or password file


def test_a_value_that_is_no_database_is_refused_before_anything_starts(tmp_path: Path, clean_env):
    from flows.stack import up

    clean_env.setenv("FINESHIP_HOME", str(tmp_path))
    clean_env.setenv("FINESHIP_STACK_DB", "mysql://ops:hunter2-long-secret@db/x")
    with pytest.raises(typer.BadParameter, match="FINESHIP_STACK_DB must look like postgresql://") as err:
        up(free_port(), free_port(), deployments=False)
    assert "hunter2" not in str(err.value)
    assert not (tmp_path / "stack").exists()


@pytest.fixture
def pg_home(clean_env):
    home = postgres_home()
    clean_env.setenv("FINESHIP_HOME", str(home))
    try:
        yield home
    finally:
        stack_db.stop(home)
        shutil.rmtree(home, ignore_errors=True)


def _gone(pids: list[int], timeout: float = 5) -> list[int]:
    deadline = time.monotonic() + timeout
    while (alive := [p for p in pids if running(p)]) and time.monotonic() < deadline:
        time.sleep(0.1)
    return alive


def test_the_private_cluster_is_made_once_reused_and_stopped_by_stack_down(pg_home: Path):
    import psycopg

    from flows.stack import down

    first = stack_db.prepare(pg_home, DbChoice(DbKind.postgres))
    assert first.db.managed and first.mlflow_store.startswith("postgresql+psycopg://fineship@127.0.0.1:")
    assert "@" not in first.mlflow_store.partition("fineship@")[2]  # user, host and port; no password
    assert first.server_env == {"PGPASSFILE": str(pg_home / "stack" / "postgres.pgpass")}
    data = Path(first.db.data_dir)
    if os.geteuid() == 0:  # PostgreSQL refuses root: the cluster belongs to, and runs as, `postgres`
        assert data.stat().st_uid != 0 and psutil.Process(first.cluster_pid).uids().real != 0
    port = int(first.db.server.rpartition(":")[2])
    with psycopg.connect(host="127.0.0.1", port=port, user="fineship", dbname="mlflow",
                         passfile=first.db.passfile, autocommit=True) as conn:
        conn.execute("CREATE TABLE kept (note text)")
        conn.execute("INSERT INTO kept VALUES ('still here')")

    again = stack_db.prepare(pg_home, DbChoice(DbKind.postgres))  # `up` again: the same cluster, not a second
    assert again.cluster_pid == first.cluster_pid and again.db == first.db
    pids = [first.cluster_pid, *(c.pid for c in psutil.Process(first.cluster_pid).children(recursive=True))]
    password = read_pgpass(pg_home / "stack" / "postgres.pgpass", "fineship")[1]

    # No stack.json (as after an `up` that failed): `down` still finds and stops the cluster.
    assert down(quiet=True) == ["postgres"]
    assert _gone(pids) == [], "postgres processes left behind"
    assert not (data / "postmaster.pid").exists()
    assert down(quiet=True) == []

    restarted = stack_db.prepare(pg_home, DbChoice(DbKind.postgres))
    assert restarted.cluster_pid != first.cluster_pid
    assert read_pgpass(pg_home / "stack" / "postgres.pgpass", "fineship")[1] == password
    port = int(restarted.db.server.rpartition(":")[2])
    with psycopg.connect(host="127.0.0.1", port=port, user="fineship", dbname="mlflow",
                         passfile=restarted.db.passfile) as conn:
        assert conn.execute("SELECT note FROM kept").fetchall() == [("still here",)]
    with pytest.raises(psycopg.OperationalError, match="password authentication failed"):
        psycopg.connect(host="127.0.0.1", port=port, user="fineship", dbname="mlflow", password="guess",
                        connect_timeout=10)
    assert down(quiet=True) == ["postgres"]
    assert _gone([restarted.cluster_pid]) == []


@pytest.mark.skipif(os.geteuid() != 0, reason="only root hands the cluster to the `postgres` user")
def test_as_root_a_home_the_postgres_user_cannot_enter_is_refused(tmp_path: Path, clean_env):
    shutil.rmtree(postgres_home())  # skips where PostgreSQL is not installed
    home = tmp_path / "home"  # pytest's temporary directories are private to root (mode 0700)
    with pytest.raises(PostgresError, match=r"system user `postgres`, which may not enter /.* \(mode 700\): "
                                            r"set FINESHIP_HOME"):
        stack_db.prepare(home, DbChoice(DbKind.postgres))
    assert not (home / "stack").exists()


def test_an_operators_server_gets_the_two_databases_and_nothing_else(pg_home: Path, clean_env):
    """The private cluster stands in for a team's server, with a login of the operator's that may create
    databases, and one that may not."""
    import psycopg

    from flows.stack import down

    cluster = stack_db.prepare(pg_home, DbChoice(DbKind.postgres))
    port = int(cluster.db.server.rpartition(":")[2])
    with psycopg.connect(host="127.0.0.1", port=port, user="fineship", dbname="postgres",
                         passfile=cluster.db.passfile, autocommit=True) as conn:
        conn.execute("DROP DATABASE mlflow")
        conn.execute("DROP DATABASE prefect")
        conn.execute("CREATE ROLE ops LOGIN CREATEDB PASSWORD 'ops:pass@word/1'")
        conn.execute("CREATE ROLE guest LOGIN PASSWORD 'guest-password-1'")

        def names() -> set[str]:
            return {row[0] for row in conn.execute("SELECT datname FROM pg_database")}

        before = names()

        clean_env.setenv("FINESHIP_STACK_DB", f"postgresql://guest:guest-password-1@127.0.0.1:{port}/postgres")
        with pytest.raises(PostgresError, match="database mlflow does not exist .* CREATE DATABASE mlflow OWNER guest"):
            stack_db.prepare(pg_home, stack_db.choose(None))

        clean_env.setenv("FINESHIP_STACK_DB", f"postgresql://ops:ops%3Apass%40word%2F1@127.0.0.1:{port}/postgres")
        backends = stack_db.prepare(pg_home, stack_db.choose(None))
        assert names() - before == {"mlflow", "prefect"}
        owners = dict(conn.execute("SELECT datname, pg_get_userbyid(datdba) FROM pg_database").fetchall())

        # The databases exist, but another login owns them: it could not create the servers' tables.
        clean_env.setenv("FINESHIP_STACK_DB", f"postgresql://guest:guest-password-1@127.0.0.1:{port}/postgres")
        with pytest.raises(PostgresError, match="guest may not create tables in database mlflow .* ALTER DATABASE "
                                                "mlflow OWNER TO guest"):
            stack_db.prepare(pg_home, stack_db.choose(None))
    assert owners["mlflow"] == owners["prefect"] == "ops"
    passfile = pg_home / "stack" / "server.pgpass"
    assert backends.db.model_dump() == {"kind": "postgres", "managed": False, "server": f"ops@127.0.0.1:{port}",
                                        "passfile": str(passfile), "data_dir": None}
    assert backends.mlflow_store == f"postgresql+psycopg://ops@127.0.0.1:{port}/mlflow"
    assert backends.prefect_env == {
        "PREFECT_SERVER_DATABASE_CONNECTION_URL": f"postgresql+asyncpg://ops@127.0.0.1:{port}/prefect"}
    assert backends.server_env == {"PGPASSFILE": str(passfile)} and backends.cluster_pid is None
    assert read_pgpass(passfile, "ops") == (port, "ops:pass@word/1")
    # What the servers do with it: connect with the password-less URL and the password file.
    with psycopg.connect(backends.mlflow_store.replace("+psycopg", ""), passfile=str(passfile)) as conn:
        assert conn.execute("SELECT current_user").fetchone() == ("ops",)

    down(quiet=True)  # the operator's password is not kept once the stack is down
    assert not passfile.exists()
