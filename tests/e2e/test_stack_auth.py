"""`fineship stack up --auth` for real: MLflow's basic-auth app and a Prefect API auth string, checked over HTTP,
through the CLI, and by logging into both UIs in headless Chromium. The credentials must never show up in the
stack's logs, its state file or `fineship stack status`.

Chromium is driven over the DevTools protocol with the client of tests/integration/test_try_it_page.py; the
browser test is skipped where no Chromium is installed. Screenshots: tests/_screenshots/auth-*.png.
"""

from __future__ import annotations

import base64
import json
import os
import stat
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest
import typer

from tests.integration.test_try_it_page import CHROMIUM, chromium_page
from tests.support.stack import STACK_VARS, running_stack
from tests.support.tiny import REPO

# A stack of its own with --auth (~50 s on 2 cores): run by .ci/run (RUN_SLOW=1), not by a bare `make test`.
pytestmark = [pytest.mark.e2e, pytest.mark.slow]
SCREENSHOTS = REPO / "tests" / "_screenshots"
FINESHIP = Path(sys.executable).parent / "fineship"


def _basic(credential: str) -> dict[str, str]:
    return {"Authorization": "Basic " + base64.b64encode(credential.encode()).decode()}


class _Redacted(dict):
    """The generated credentials; shown as redacted if a failing test prints its fixtures."""

    def __repr__(self) -> str:
        return "<credentials: redacted>"


@pytest.fixture(scope="module")
def auth_stack(tmp_path_factory):
    """The stack with --auth and no FINESHIP_STACK_* set: it generates its credentials."""
    home = tmp_path_factory.mktemp("auth-stack-home")
    with running_stack(home, deployments=False, auth=True) as state:
        creds = _Redacted(json.loads((home / "stack" / "credentials.json").read_text()))
        yield state, home, creds


def test_credentials_come_from_the_environment_are_checked_and_kept(tmp_path, monkeypatch):
    from flows.stack import resolve_credentials, save_credentials

    for var in STACK_VARS:
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("FINESHIP_STACK_ADMIN_PASSWORD", "too-short")
    with pytest.raises(typer.BadParameter, match="FINESHIP_STACK_ADMIN_PASSWORD is shorter than 12"):
        resolve_credentials(tmp_path)
    monkeypatch.setenv("FINESHIP_STACK_ADMIN_USER", "ops")
    monkeypatch.setenv("FINESHIP_STACK_ADMIN_PASSWORD", "a-long-enough-password")
    monkeypatch.setenv("FINESHIP_STACK_PREFECT_AUTH", "ops:another-long-secret")
    first = resolve_credentials(tmp_path)
    assert first.client_env() == {"MLFLOW_TRACKING_USERNAME": "ops", "MLFLOW_TRACKING_PASSWORD": "a-long-enough-password",
                                  "PREFECT_API_AUTH_STRING": "ops:another-long-secret"}
    assert "a-long-enough-password" not in repr(first)  # secrets are masked wherever the model is printed
    path = save_credentials(tmp_path, first)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    # Unset later, the kept ones are used again: a restart must not lock anyone out of MLflow's user store.
    monkeypatch.delenv("FINESHIP_STACK_ADMIN_PASSWORD")
    monkeypatch.delenv("FINESHIP_STACK_PREFECT_AUTH")
    again = resolve_credentials(tmp_path)
    assert again.client_env() == first.client_env()
    assert again.flask_secret_key == first.flask_secret_key


def test_credentials_are_generated_into_a_private_file(auth_stack):
    state, home, creds = auth_stack
    path = home / "stack" / "credentials.json"
    assert state.auth and state.credentials_file == str(path)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert creds["username"] == "admin" and len(creds["mlflow_password"]) >= 24
    user, _, secret = creds["prefect_auth_string"].partition(":")
    assert user == "admin" and len(secret) >= 24 and secret != creds["mlflow_password"]


def test_mlflow_refuses_requests_without_the_admin_password(auth_stack):
    state, _, creds = auth_stack
    url = f"{state.mlflow_url}/api/2.0/mlflow/experiments/search?max_results=5"
    assert httpx.get(url, timeout=30).status_code == 401
    assert httpx.get(url, auth=(creds["username"], creds["mlflow_password"] + "x"), timeout=30).status_code == 401
    assert httpx.get(url, auth=("intruder", creds["mlflow_password"]), timeout=30).status_code == 401
    answer = httpx.get(url, auth=(creds["username"], creds["mlflow_password"]), timeout=30)
    assert answer.status_code == 200 and [e["name"] for e in answer.json()["experiments"]] == ["Default"]
    assert httpx.get(f"{state.mlflow_url}/health", timeout=10).status_code == 200  # probes stay open
    from mlflow import MlflowClient

    # MLflow clients get the credentials from the environment stack_env() gives them, as the worker does.
    client = MlflowClient(tracking_uri=state.mlflow_url, registry_uri=state.mlflow_url)
    assert [e.name for e in client.search_experiments()] == ["Default"]


def test_prefect_refuses_requests_without_the_auth_string(auth_stack):
    state, _, creds = auth_stack
    flows = f"{state.prefect_api_url}/flows/filter"
    assert httpx.post(flows, json={}, timeout=30).status_code == 401
    assert httpx.post(flows, json={}, headers=_basic("admin:not-the-secret"), timeout=30).status_code == 401
    assert httpx.post(flows, json={}, headers=_basic(creds["prefect_auth_string"]), timeout=30).status_code == 200
    assert httpx.get(f"{state.prefect_api_url}/health", timeout=10).status_code == 200  # probes stay open
    # The worker the stack started authenticates: it registered with its pool and sends heartbeats.
    workers_url = f"{state.prefect_api_url}/work_pools/fineship-local/workers/filter"
    deadline = time.monotonic() + 30
    while True:
        workers = httpx.post(workers_url, json={}, headers=_basic(creds["prefect_auth_string"]), timeout=30).json()
        if any(w["name"] == "fineship-local-worker" and w["status"] == "ONLINE" for w in workers):
            break
        assert time.monotonic() < deadline, f"the worker never came online: {workers}"
        time.sleep(1)
    from prefect import get_client

    with get_client(sync_client=True) as client:  # this process's client, set up like the CLI's
        assert client.read_work_pool("fineship-local").type == "process"


def test_the_cli_reads_the_credentials_from_the_stack(auth_stack):
    """A new shell with only FINESHIP_HOME set: `fineship` finds the running stack and its credentials."""
    from mlflow import MlflowClient

    state, home, _ = auth_stack
    client = MlflowClient(tracking_uri=state.mlflow_url, registry_uri=state.mlflow_url)
    client.create_registered_model("auth-cli")
    run = client.create_run("0")
    client.create_model_version("auth-cli", source=f"{run.info.artifact_uri}/model", run_id=run.info.run_id)
    env = {k: v for k, v in os.environ.items() if k not in STACK_VARS}
    result = subprocess.run([str(FINESHIP), "reject", "auth-cli", "1", "--by", "tester"], env=env, cwd=REPO,
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "auth-cli v1 rejected by tester" in result.stdout
    assert client.get_model_version("auth-cli", "1").tags["fineship.review"] == "rejected"


def _log_in_to_prefect(page, auth_string: str) -> None:
    """Type into the Prefect UI's login form and submit it, as a person does."""
    page.eval("document.querySelector('form input[type=password]').select()")
    for kind in ("keyDown", "keyUp"):  # clear what an earlier attempt left
        page.send("Input.dispatchKeyEvent", type=kind, key="Backspace", code="Backspace", windowsVirtualKeyCode=8)
    page.click("form input[type=password]")
    page.type(auth_string)
    page.click("form button[type=submit]")


def _screenshot(page, name: str) -> Path:
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    out = SCREENSHOTS / name
    out.write_bytes(base64.b64decode(page.send("Page.captureScreenshot", format="png")["data"]))
    return out


@pytest.mark.skipif(CHROMIUM is None, reason="chromium is not installed (apt-get install -y chromium)")
def test_a_person_logs_into_both_uis(auth_stack, tmp_path):
    from PIL import Image

    state, _, creds = auth_stack
    failures = "(document.body?.innerText ?? '').split('Authentication failed').length - 1"
    with chromium_page(tmp_path / "profile") as page:
        page.send("Page.enable")
        page.send("Network.enable")
        page.send("Emulation.setDeviceMetricsOverride", width=1280, height=800, deviceScaleFactor=1, mobile=False)

        # Prefect: the UI asks for the auth string before it shows anything; a wrong one is refused.
        page.send("Page.navigate", url=f"{state.prefect_ui_url}/work-pools")
        page.wait_for("location.pathname === '/login' && !!document.querySelector('form input[type=password]')", 60)
        refused = page.eval(failures)
        _log_in_to_prefect(page, "admin:not-the-secret")
        # The form stores the string before it asks the server, and drops it when the server says 401.
        page.wait_for(f"{failures} > {refused} && localStorage.getItem('prefect-password') === null", 30)
        assert page.eval("location.pathname") == "/login"
        _log_in_to_prefect(page, creds["prefect_auth_string"])
        page.wait_for("location.pathname === '/work-pools' && !!document.body && "
                      "document.body.innerText.includes('fineship-local')", 60)
        page.send("Page.reload")  # the login outlives a reload
        page.wait_for("document.readyState === 'complete' && !!document.body && "
                      "document.body.innerText.includes('fineship-local') && "
                      "!document.querySelector('form input[type=password]')", 60)
        time.sleep(1)  # the page fades in
        prefect_png = _screenshot(page, "auth-prefect-work-pools.png")

        # MLflow: without credentials the server answers 401; with the admin's, the UI shows the experiments.
        page.events.clear()
        page.send("Page.navigate", url=f"{state.mlflow_url}/")
        page.wait_for("document.readyState === 'complete'", 30)
        statuses = [e["params"]["response"]["status"] for e in page.events
                    if e.get("method") == "Network.responseReceived"
                    and e["params"]["response"]["url"] == f"{state.mlflow_url}/"]
        assert statuses == [401]
        page.send("Network.setExtraHTTPHeaders",
                  headers=_basic(f"{creds['username']}:{creds['mlflow_password']}"))
        page.send("Page.navigate", url=f"{state.mlflow_url}/#/experiments")
        page.wait_for("!!document.body && document.body.innerText.includes('Default') && "
                      "document.body.innerText.includes('admin')", 60)
        mlflow_png = _screenshot(page, "auth-mlflow-experiments.png")

    for png in (prefect_png, mlflow_png):
        lo, hi = Image.open(png).convert("L").getextrema()
        assert hi - lo > 50, f"{png} looks blank"


def test_the_credentials_never_leak(auth_stack):
    """Runs last in this file, after the logins and refused attempts above have been logged."""
    from typer.testing import CliRunner

    from flows.cli import app

    state, home, creds = auth_stack
    status = CliRunner().invoke(app, ["stack", "status"])
    assert status.exit_code == 0 and "auth:       on" in status.output and "credentials.json" in status.output
    secrets = {"MLflow password": creds["mlflow_password"],
               "Prefect auth string secret": creds["prefect_auth_string"].partition(":")[2],
               "Flask secret key": creds["flask_secret_key"]}
    secrets |= {f"{label} (base64 header)": _basic(value)["Authorization"].removeprefix("Basic ")
                for label, value in (("MLflow", f"{creds['username']}:{creds['mlflow_password']}"),
                                     ("Prefect", creds["prefect_auth_string"]))}
    texts = {p.name: p.read_text(errors="replace") for p in (home / "stack").iterdir()
             if p.suffix in {".log", ".ini"} or p.name == "stack.json"}
    texts["fineship stack status"] = status.output
    assert {"stack.json", "mlflow-auth.ini", "prefect-server.log", "mlflow-server.log", "worker.log"} <= set(texts)
    # Compared without pytest's assertion rewriting, so that a failure names the leak but never prints the value.
    leaks = sorted(f"{label} in {where}" for label, secret in secrets.items() for where, text in texts.items()
                   if secret in text)
    assert leaks == []
