"""The team's working surfaces, for real: `fineship stack up` (Prefect server + process pool + worker + MLflow
server on free loopback ports), the deployments of prefect.yaml, runs triggered through the API as the UI
does, and the UIs themselves in headless Chromium.

The stack runs twice: on SQLite, and on a private PostgreSQL cluster (`--db postgres`; skipped, saying why,
where PostgreSQL is not installed). The browser test runs on SQLite only."""

from __future__ import annotations

import os
import shutil
import stat
import subprocess
from pathlib import Path

import httpx
import psutil
import pytest

from tests.support.stack import postgres_home, running_stack
from tests.support.tiny import REPO, SAMPLE

pytestmark = pytest.mark.e2e
SCREENSHOTS = REPO / "tests" / "_screenshots"
LABELS = ["business", "entertainment", "politics", "sport", "tech"]


# The PostgreSQL stack (about 2.5 minutes with its cluster) runs in .ci/run (RUN_SLOW=1); make test keeps SQLite.
@pytest.fixture(scope="module", params=["sqlite", pytest.param("postgres", marks=pytest.mark.slow)])
def stack(request, tmp_path_factory):
    from tests.support.reviewers import Reviewers

    db = request.param
    home = postgres_home() if db == "postgres" else tmp_path_factory.mktemp("stack-home")
    reviewers = Reviewers(home / "reviewers")
    operator = {"FINESHIP_AUTO_PROMOTE": "true",
                "FINESHIP_TRUSTED_REVIEWERS": reviewers.env()["FINESHIP_TRUSTED_REVIEWERS"]}
    try:
        with running_stack(home, deployments=True, operator_env=operator, db=db) as state:
            assert state.db.kind == db
            yield state, home, reviewers
    finally:
        if db == "postgres":
            shutil.rmtree(home, ignore_errors=True)


def _query(state, database: str, sql: str) -> list[tuple]:
    """Rows of `sql` in `database` of the stack's PostgreSQL, read with the password file the servers use."""
    import psycopg

    host, _, port = state.db.server.partition("@")[2].rpartition(":")
    with psycopg.connect(host=host, port=int(port), user="fineship", dbname=database,
                         passfile=state.db.passfile, connect_timeout=10) as conn:
        return conn.execute(sql).fetchall()


def test_stack_retrain_and_deploy_through_the_api(stack, tiny_bert):
    from prefect import get_client
    from prefect.deployments import run_deployment

    state, home, reviewers = stack
    with get_client(sync_client=True) as client:
        names = {f"{client.read_flow(d.flow_id).name}/{d.name}" for d in client.read_deployments()}
        assert {"retrain/retrain", "deployment/deploy-model", "promote/promote"} <= names
        retrain = client.read_deployment_by_name("retrain/retrain")
        assert [s.schedule.cron for s in retrain.schedules] == ["0 2 * * *"]
        assert "config" in retrain.parameter_openapi_schema["properties"]  # the typed form the UI renders

    config = {"data": {"path": str(SAMPLE), "labels": LABELS},
              "training": {"model": str(tiny_bert), "max_length": 48, "epochs": 2, "learning_rate": 0.003},
              "gate": {"min_accuracy": 0.0, "min_macro_f1": 0.0},
              "registry": {"model_name": "stack-news", "experiment": "stack"},
              "deploy": {"target": "none"}}
    # Operator policy cannot come with a run: the parameter is refused before the run starts.
    sneaky = {**config, "registry": {**config["registry"], "auto_promote": True}}
    with pytest.raises(Exception, match="auto_promote"):
        run_deployment("retrain/retrain", parameters={"config": sneaky}, timeout=60, poll_interval=2)
    run = run_deployment("retrain/retrain", parameters={"config": config}, timeout=600, poll_interval=2)
    assert run.state.is_completed(), run.state.message

    from components.registry.mlflow_registry import MlflowRegistry

    registry = MlflowRegistry(state.mlflow_url)
    v1 = registry.get_version("stack-news", version="1")
    assert "champion" in v1.aliases and v1.tags["fineship.gate"] == "passed"
    mlflow_run = registry.client.get_run(v1.run_id)
    assert mlflow_run.data.tags["fineship.prefect_flow_run_url"].startswith(state.prefect_ui_url)
    with get_client(sync_client=True) as client:
        from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterKey

        keys = {a.key for a in client.read_artifacts(artifact_filter=ArtifactFilter(
            key=ArtifactFilterKey(any_=["validation", "split", "training", "evaluation-candidate", "gate",
                                        "registered-version", "mlflow-run", "mlflow-version"])))}
    assert keys == {"validation", "split", "training", "evaluation-candidate", "gate", "registered-version",
                    "mlflow-run", "mlflow-version"}

    # A trusted reviewer signs v1 (replacing the pipeline's signature); the worker verifies it before deploying.
    from components.registry.review import ReviewPolicy
    from tests.support.reviewers import approve_as

    approve_as(registry, "stack-news", "1", reviewers.signer("rita"),
               ReviewPolicy(trusted_reviewers=reviewers.trusted, home=home))
    assert registry.get_version("stack-news", version="1").tags["approved_by"] == "rita"
    run = run_deployment("deployment/deploy-model", timeout=600, poll_interval=2, parameters={
        "request": {"model_name": "stack-news", "version": "1", "target": "local", "endpoint_name": "stack-e2e",
                    "port": 0, "variants": ["eager"]}})  # the variants' build: test_pipeline.py, test_variants.py
    assert run.state.is_completed(), run.state.message
    from components.deploy.local import read_record

    record = read_record(home / "endpoints", "stack-e2e")
    assert record.model_version == "1"
    answer = httpx.post(f"{record.url}/invocations", json={"inputs": ["Shares fell after the profit warning."]},
                        timeout=30)
    assert answer.status_code == 200 and answer.json()["predictions"][0]["label"] in LABELS

    if state.db.kind == "postgres":  # the registry and the runs live in PostgreSQL, and nothing in SQLite
        assert ("stack-news",) in _query(state, "mlflow", "SELECT name FROM registered_models")
        runs = _query(state, "prefect", "SELECT d.name, fr.state_type::text FROM flow_run fr "
                                        "JOIN deployment d ON d.id = fr.deployment_id")
        assert {("retrain", "COMPLETED"), ("deploy-model", "COMPLETED")} <= set(runs)
        assert sorted(p.name for p in home.rglob("*.db")) == [], "a SQLite file next to a PostgreSQL stack"


def _screenshot(url: str, out: Path, tmp: Path) -> str:
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    flags = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
             "--disable-background-networking", "--disable-component-update", "--disable-sync",
             f"--user-data-dir={tmp}", "--window-size=1400,1000", "--virtual-time-budget=15000"]
    subprocess.run([chromium, *flags, f"--screenshot={out}", url], capture_output=True, timeout=120)
    dom = subprocess.run([chromium, *flags, "--dump-dom", url], capture_output=True, text=True, timeout=120)
    return dom.stdout


@pytest.mark.parametrize("stack", [pytest.param("postgres", marks=pytest.mark.slow)], indirect=True)
def test_postgres_listens_on_loopback_only_and_its_password_stays_in_its_file(stack):
    """Runs after the retrain above, so the logs hold a whole run's worth of lines."""
    from typer.testing import CliRunner

    from components.postgres import read_pgpass
    from flows.cli import app

    state, home, _ = stack
    postmaster = next(s for s in state.services if s.name == "postgres")
    listening = {c.laddr.ip for c in psutil.Process(postmaster.pid).net_connections("inet")
                 if c.status == psutil.CONN_LISTEN}
    assert listening == {"127.0.0.1"}
    passfile = Path(state.db.passfile)
    assert stat.S_IMODE(passfile.stat().st_mode) == 0o600 and passfile.stat().st_uid == os.geteuid()
    socket_dir = Path(state.db.data_dir).parent / "run"
    assert stat.S_IMODE(socket_dir.stat().st_mode) == 0o700
    password = read_pgpass(passfile, "fineship")[1]
    import psycopg

    with pytest.raises(psycopg.OperationalError, match="password authentication failed"):
        psycopg.connect(host="127.0.0.1", port=int(state.db.server.rpartition(":")[2]), user="fineship",
                        dbname="mlflow", password="not-the-password", connect_timeout=10)

    status = CliRunner().invoke(app, ["stack", "status"])
    assert status.exit_code == 0 and "database:   a private PostgreSQL cluster" in status.output
    stack_pids = {s.pid for s in state.services}
    for pid in list(stack_pids):
        stack_pids |= {c.pid for c in psutil.Process(pid).children(recursive=True)}
    texts = {str(p.relative_to(home)): p.read_text(errors="replace") for p in (home / "stack").rglob("*")
             if p.is_file() and (p.suffix in {".log", ".json", ".ini"} or p.name.startswith("postgresql"))}
    texts["fineship stack status"] = status.output
    assert {"stack/stack.json", "stack/mlflow-server.log", "stack/prefect-server.log", "stack/worker.log",
            "stack/postgres/postgres.log"} <= set(texts)
    # Compared without assertion rewriting of the texts, so that a failure names the leak but never prints it.
    leaks = [f"command line of pid {p.pid}" for p in psutil.process_iter(["cmdline"])
             if password in " ".join(p.info["cmdline"] or [])]
    leaks += [f"environment of pid {pid}" for pid in sorted(stack_pids) if _environ_holds(pid, password)]
    leaks += [f"file {name}" for name, text in texts.items() if password in text]
    assert leaks == []


def _environ_holds(pid: int, secret: str) -> bool:
    try:
        return any(secret in value for value in psutil.Process(pid).environ().values())
    except (psutil.NoSuchProcess, psutil.AccessDenied):
        return False


@pytest.mark.parametrize("stack", ["sqlite"], indirect=True)  # once: the browser is the expensive part
@pytest.mark.skipif(not (shutil.which("chromium") or shutil.which("chromium-browser")),
                    reason="chromium is not installed (apt-get install chromium); browser test skipped")
def test_browser_shows_deployment_form_and_model_version(stack, tmp_path):
    from PIL import Image
    from prefect import get_client

    state, _, _ = stack
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    with get_client(sync_client=True) as client:
        deployment = client.read_deployment_by_name("deployment/deploy-model")
    form = SCREENSHOTS / "prefect-deploy-model-form.png"
    dom = _screenshot(f"{state.prefect_ui_url}/deployments/deployment/{deployment.id}/run", form, tmp_path / "a")
    assert "Can't connect to Server API" not in dom
    assert "deploy-model" in dom and "Model Name" in dom  # the typed DeployRequest form
    version_page = SCREENSHOTS / "mlflow-model-version.png"
    mlflow_dom = _screenshot(f"{state.mlflow_url}/#/models/stack-news/versions/1", version_page, tmp_path / "b")
    assert "stack-news" in mlflow_dom
    for png in (form, version_page):
        image = Image.open(png).convert("L")
        lo, hi = image.getextrema()
        assert image.size == (1400, 1000) and hi - lo > 50, f"{png} looks blank"
