"""`fineship stack up` for tests: real processes in a private home on free loopback ports."""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

from components.procs import free_port, pid_alive
from tests.support.tiny import seed_mlflow_db

if TYPE_CHECKING:
    from flows.stack import StackState

# Variables a developer's shell may carry that would point this process somewhere else.
STACK_VARS = ("PREFECT_API_URL", "PREFECT_API_AUTH_STRING", "FINESHIP_TRACKING_URI", "FINESHIP_MLFLOW_UI_URL",
              "MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD", "FINESHIP_STACK_ADMIN_USER",
              "FINESHIP_STACK_ADMIN_PASSWORD", "FINESHIP_STACK_PREFECT_AUTH")


@contextmanager
def running_stack(home: Path, *, deployments: bool, auth: bool = False,
                  operator_env: dict[str, str] | None = None) -> Iterator[StackState]:
    """Start the stack in `home` and point this process at it (environment and Prefect settings, credentials
    included with `auth`); on exit stop it and check that none of its processes is left behind."""
    from flows.stack import down, stack_env, up

    seed_mlflow_db(home / "mlflow-server.db")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("FINESHIP_HOME", str(home))
        for var in STACK_VARS:
            mp.delenv(var, raising=False)
        for k, v in (operator_env or {}).items():  # the operator's policy, in the worker's own environment
            mp.setenv(k, v)
        state = up(free_port(), free_port(), deployments=deployments, auth=auth)
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
            down(quiet=True)
            time.sleep(0.5)
            alive = [p for p in pids if pid_alive(p)]
            assert alive == [], f"stack processes left behind: {alive}"
