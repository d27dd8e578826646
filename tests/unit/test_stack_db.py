"""Choosing the stack's database (`--db`, `FINESHIP_STACK_DB`) and handling a server's URL and password: no
password ever shows in an error, a URL a server gets, or the state file."""

from __future__ import annotations

import stat
from pathlib import Path

import pytest
from pydantic import SecretStr

from components.postgres import (PostgresError, PostgresNotInstalled, ServerAddress, find_bin_dir,
                                 parse_server_url, read_pgpass, redact, write_pgpass)
from flows.stack_db import DbChoice, DbKind, StackDb, choose

SECRET = "s3cret:p@ss/w\\rd"
URL = "postgresql://ops:s3cret%3Ap%40ss%2Fw%5Crd@db.internal:6543/admin"


@pytest.mark.parametrize("cli,env,expected", [
    (None, None, None),                                            # nothing asked: SQLite, as before
    (None, "sqlite", DbChoice(DbKind.sqlite)),
    (None, "postgres", DbChoice(DbKind.postgres)),
    (None, "PostgreSQL", DbChoice(DbKind.postgres)),
    (DbKind.postgres, None, DbChoice(DbKind.postgres)),
    (DbKind.postgres, "sqlite", DbChoice(DbKind.postgres)),         # the flag wins over the variable
    (DbKind.sqlite, "postgres", DbChoice(DbKind.sqlite)),
    (DbKind.sqlite, URL, DbChoice(DbKind.sqlite)),
])
def test_the_flag_and_the_variable_choose_the_database(monkeypatch, cli, env, expected):
    if env is None:
        monkeypatch.delenv("FINESHIP_STACK_DB", raising=False)
    else:
        monkeypatch.setenv("FINESHIP_STACK_DB", env)
    assert choose(cli) == expected


@pytest.mark.parametrize("cli", [None, DbKind.postgres])
def test_a_server_url_comes_from_the_variable_and_stays_secret(monkeypatch, cli):
    monkeypatch.setenv("FINESHIP_STACK_DB", URL)
    choice = choose(cli)
    assert choice.kind == DbKind.postgres and choice.url.get_secret_value() == URL
    assert "s3cret" not in repr(choice)


@pytest.mark.parametrize("value,shown", [
    ("postgress", "postgress"),                              # a typo is shown, to be seen
    ("mysql://ops:hunter2-long@db/x", None),                 # a URL may hold a password: not shown
    ("postgresql://ops:hunter2-long@db:70000/x", None),
    ("postgresql://ops:hunter2-long@db/x?sslmode=require", None),
])
def test_a_bad_value_is_refused_without_showing_a_password(monkeypatch, value, shown):
    monkeypatch.setenv("FINESHIP_STACK_DB", value)
    with pytest.raises(PostgresError) as err:
        choose(None)
    message = str(err.value)
    assert "FINESHIP_STACK_DB" in message and "hunter2" not in message
    if shown:
        assert shown in message


def test_a_server_url_is_parsed_and_the_servers_get_it_without_the_password():
    server, password = parse_server_url(URL)
    assert server == ServerAddress("db.internal", 6543, "ops", "admin") and password == SECRET
    assert server.url("mlflow") == "postgresql+psycopg://ops@db.internal:6543/mlflow"
    assert server.url("prefect", "postgresql+asyncpg") == "postgresql+asyncpg://ops@db.internal:6543/prefect"
    assert parse_server_url("postgres://db")[0].port == 5432
    assert parse_server_url("postgresql://u@db")[1] is None


@pytest.mark.parametrize("url,expected", [
    ("postgresql://ops:pw@db:5432/x", "postgresql://ops:***@db:5432/x"),
    ("postgresql://ops:p@ss/w@db/x", "postgresql://ops:***@db/x"),   # an unencoded @ or / in the password
    ("postgresql://ops@db/x", "postgresql://ops@db/x"),
    ("no url at all", "<not a URL>"),
])
def test_redact_masks_the_password(url, expected):
    assert redact(url) == expected


def test_the_password_file_is_private_and_reads_back(tmp_path: Path):
    server = ServerAddress("127.0.0.1", 5433, "fineship")
    path = write_pgpass(tmp_path / "x.pgpass", server, SECRET)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert path.read_text() == "127.0.0.1:5433:*:fineship:s3cret\\:p@ss/w\\\\rd\n"  # libpq's escapes
    assert read_pgpass(path, "fineship") == (5433, SECRET)
    assert read_pgpass(path, "someone-else") is None
    assert read_pgpass(tmp_path / "missing", "fineship") is None


def test_the_state_file_names_the_server_never_the_password():
    db = StackDb(kind="postgres", server="ops@db.internal:6543", passfile="/h/stack/server.pgpass")
    assert not db.matches(DbChoice(DbKind.postgres))  # that asks for a private cluster
    assert db.matches(DbChoice(DbKind.postgres, url=SecretStr(URL)))
    assert not db.matches(DbChoice(DbKind.sqlite))
    assert "ops@db.internal:6543" in db.describe() and "server.pgpass" in db.describe()


def test_missing_programs_say_what_to_install(tmp_path: Path, monkeypatch):
    monkeypatch.setenv("PATH", str(tmp_path))
    with pytest.raises(PostgresNotInstalled, match=r"apt-get install postgresql.*FINESHIP_STACK_DB"):
        find_bin_dir(tmp_path / "no-postgresql-here")
    bin_dir = tmp_path / "lib" / "16" / "bin"
    bin_dir.mkdir(parents=True)
    for name in ("initdb", "pg_ctl", "postgres"):
        (bin_dir / name).write_text("")
    (tmp_path / "lib" / "9.6" / "bin").mkdir(parents=True)  # incomplete: skipped
    assert find_bin_dir(tmp_path / "lib") == bin_dir
