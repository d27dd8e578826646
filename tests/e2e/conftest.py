from __future__ import annotations

import pytest


@pytest.fixture(scope="session")
def prefect_harness():
    """One temporary Prefect server (SQLite) for every flow test of the session."""
    from prefect.testing.utilities import prefect_test_harness

    with prefect_test_harness(server_startup_timeout=120):
        yield


@pytest.fixture
def fineship_home(tmp_path, monkeypatch):
    """A private FINESHIP_HOME: its own MLflow SQLite store, runs and endpoints."""
    from tests.support.tiny import seed_mlflow_db

    home = tmp_path / "home"
    seed_mlflow_db(home / "mlflow.db")
    monkeypatch.setenv("FINESHIP_HOME", str(home))
    monkeypatch.delenv("FINESHIP_TRACKING_URI", raising=False)
    yield home
    from components.deploy.local import list_records, stop_endpoint

    for record in list_records(home / "endpoints"):
        stop_endpoint(home / "endpoints", record.endpoint_name)
