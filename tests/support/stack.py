"""`fineship stack up` for tests: real processes in a private home on free loopback ports."""

from __future__ import annotations

import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING

import psutil
import pytest

from components.procs import free_port
from tests.support.tiny import seed_mlflow_db

if TYPE_CHECKING:
    from flows.stack import StackState

# Variables a developer's shell may carry that would point this process somewhere else.
STACK_VARS = ("PREFECT_API_URL", "PREFECT_API_AUTH_STRING", "FINESHIP_TRACKING_URI", "FINESHIP_MLFLOW_UI_URL",
              "MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD", "FINESHIP_STACK_ADMIN_USER",
              "FINESHIP_STACK_ADMIN_PASSWORD", "FINESHIP_STACK_PREFECT_AUTH", "FINESHIP_STACK_DB")


def running(pid: int) -> bool:
    """True while `pid` runs; a zombie (exited, not yet reaped by whoever adopted it) counts as gone."""
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def postgres_home() -> Path:
    """A new, empty home for a stack on PostgreSQL; skips the test where PostgreSQL is not installed. As root the
    cluster runs as the `postgres` user, which may not enter pytest's private temporary directory: this one it
    may pass through (mode 0711), not list. The caller removes it."""
    from components.postgres import PostgresNotInstalled, cluster_user, find_bin_dir

    try:
        find_bin_dir()
        cluster_user()
    except PostgresNotInstalled as err:
        pytest.skip(f"PostgreSQL is not installed (apt-get install postgresql): {err}")
    home = Path(tempfile.mkdtemp(prefix="fineship-pg-stack-"))
    home.chmod(0o711)
    return home


@contextmanager
def running_stack(home: Path, *, deployments: bool, auth: bool = False,
                  operator_env: dict[str, str] | None = None, db: str | None = None) -> Iterator[StackState]:
    """Start the stack in `home` on `db` (`sqlite` or `postgres`; default SQLite, whatever FINESHIP_STACK_DB the
    shell carries) and point this process at it (environment and Prefect settings, credentials included with `auth`);
    on exit stop it and check that none of its processes, PostgreSQL's included, is left behind."""
    from flows.stack import down, stack_env, up

    if db != "postgres":
        seed_mlflow_db(home / "mlflow-server.db")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("FINESHIP_HOME", str(home))
        for var in STACK_VARS:
            mp.delenv(var, raising=False)
        for k, v in (operator_env or {}).items():  # the operator's policy, in the worker's own environment
            mp.setenv(k, v)
        # The worker asks for scheduled runs every second, not every 10 s: each run through the API starts sooner.
        mp.setenv("PREFECT_WORKER_QUERY_SECONDS", "1")
        state = up(free_port(), free_port(), deployments=deployments, auth=auth, db=db)
        env = stack_env(state)
        for k, v in env.items():
            mp.setenv(k, v)
        # A session-wide prefect_test_harness from other tests may be active: its settings context beats the
        # environment, so point this process's Prefect client at the stack explicitly.
        from prefect.settings import PREFECT_API_AUTH_STRING, PREFECT_API_URL, PREFECT_UI_URL, temporary_settings

        updates = {PREFECT_API_URL: state.prefect_api_url, PREFECT_UI_URL: state.prefect_ui_url}
        if "PREFECT_API_AUTH_STRING" in env:
            updates[PREFECT_API_AUTH_STRING] = env["PREFECT_API_AUTH_STRING"]
        try:
            with temporary_settings(updates=updates):
                yield state
        finally:
            pids = [s.pid for s in state.services]
            for service in state.services:  # PostgreSQL's backends and helpers are children of its postmaster
                if service.name == "postgres" and running(service.pid):
                    pids += [child.pid for child in psutil.Process(service.pid).children(recursive=True)]
            down(quiet=True)
            deadline = time.monotonic() + 5
            while (alive := [p for p in pids if running(p)]) and time.monotonic() < deadline:
                time.sleep(0.2)
            assert alive == [], f"stack processes left behind: {alive}"
