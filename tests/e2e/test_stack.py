"""The team's working surfaces, for real: `fineship stack up` (Prefect server + process pool + worker + MLflow
server on free loopback ports), the deployments of prefect.yaml, runs triggered through the API as the UI
does, and the UIs themselves in headless Chromium."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import httpx
import pytest

from tests.support.stack import running_stack
from tests.support.tiny import REPO, SAMPLE

pytestmark = pytest.mark.e2e
SCREENSHOTS = REPO / "tests" / "_screenshots"
LABELS = ["business", "entertainment", "politics", "sport", "tech"]


@pytest.fixture(scope="module")
def stack(tmp_path_factory):
    from tests.support.reviewers import Reviewers

    home = tmp_path_factory.mktemp("stack-home")
    reviewers = Reviewers(home / "reviewers")
    operator = {"FINESHIP_AUTO_PROMOTE": "true",
                "FINESHIP_TRUSTED_REVIEWERS": reviewers.env()["FINESHIP_TRUSTED_REVIEWERS"]}
    with running_stack(home, deployments=True, operator_env=operator) as state:
        yield state, home, reviewers


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
                    "port": 0}})
    assert run.state.is_completed(), run.state.message
    from components.deploy.local import read_record

    record = read_record(home / "endpoints", "stack-e2e")
    assert record.model_version == "1"
    answer = httpx.post(f"{record.url}/invocations", json={"inputs": ["Shares fell after the profit warning."]},
                        timeout=30)
    assert answer.status_code == 200 and answer.json()["predictions"][0]["label"] in LABELS


def _screenshot(url: str, out: Path, tmp: Path) -> str:
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    flags = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
             "--disable-background-networking", "--disable-component-update", "--disable-sync",
             f"--user-data-dir={tmp}", "--window-size=1400,1000", "--virtual-time-budget=15000"]
    subprocess.run([chromium, *flags, f"--screenshot={out}", url], capture_output=True, timeout=120)
    dom = subprocess.run([chromium, *flags, "--dump-dom", url], capture_output=True, text=True, timeout=120)
    return dom.stdout


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
