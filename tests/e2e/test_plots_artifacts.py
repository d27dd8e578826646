"""Plots where people look: the Prefect run page shows the training curve and the confusion matrix.

The real tasks (fine-tune, evaluate, publish-validation) run in one flow against a real `mlflow server` process, as
in the stack: each plot becomes a Prefect image artifact whose URL, fetched as a browser on the Prefect page would,
returns the PNG the run logged; the stage reports embed the same PNGs (also when no MLflow server URL is known);
the Data Docs the run logged load no stylesheet or script from the network.
"""

from __future__ import annotations

import base64
import io
import re
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from components.procs import free_port
from tests.support.browser import needs_chromium, probe_offline
from tests.support.http_server import HOST, ServerProcess, server_env, start_server
from tests.support.tiny import LABELS, seed_mlflow_db

pytestmark = pytest.mark.e2e

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
PREFECT_PAGE = "http://127.0.0.1:4200/runs/flow-run/x"  # what a browser on the Prefect run page sends along
_REMOTE_ASSET = re.compile(r'<(?:script|link)\b[^>]*\b(?:src|href)="(?:https?:)?//', re.IGNORECASE)


@pytest.fixture(scope="module")
def mlflow_server(tmp_path_factory):
    root = tmp_path_factory.mktemp("mlflow-plots")
    seed_mlflow_db(root / "mlflow.db")
    port = free_port()
    server = start_server([sys.executable, "-m", "mlflow", "server", "--host", HOST, "--port", str(port),
                           "--backend-store-uri", f"sqlite:///{root / 'mlflow.db'}",
                           "--artifacts-destination", str(root / "served"), "--workers", "1"],
                          root / "server.log", port, server_env({"MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}),
                          wait_status=None)  # no MLflow job runner: it only costs CPU here
    deadline = time.monotonic() + 180
    while True:
        try:
            if httpx.get(f"{server.url}/health", timeout=2).status_code == 200:
                break
        except httpx.TransportError:
            pass
        assert server.alive() and time.monotonic() < deadline, server.log()[-3000:]
        time.sleep(0.3)
    yield server
    server.stop()


@dataclass
class Published:
    server: ServerProcess
    registry: object
    run_id: str
    experiment_id: str
    artifacts: list
    logged: Path

    def png(self, name: str) -> bytes:
        return (self.logged / "plots" / name).read_bytes()


@pytest.fixture(scope="module")
def published(prefect_harness, mlflow_server, tiny_bert, sample_df, tmp_path_factory) -> Published:
    from prefect import flow, get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterFlowRunId

    from components.config import TrainingConfig
    from components.data.policy import ValidationPolicy
    from components.data.split import split_frame
    from components.data.validation import validate_frame
    from components.registry.mlflow_registry import MlflowRegistry
    from tasks.data import publish_validation
    from tasks.evaluation import evaluate_model
    from tasks.results import DataCheck
    from tasks.training import fine_tune

    work = tmp_path_factory.mktemp("plots-run")
    url = mlflow_server.url
    # As the training flow builds it: the server for tracking, a local artifact root for new experiments.
    registry = MlflowRegistry(url, work / "artifacts")
    run_id = registry.start_run("plots", run_name="train-plots")
    splits = split_frame(sample_df, "text", "label", 0.8, 0.1, 0.1, 42)
    cfg = TrainingConfig(model=str(tiny_bert), max_length=48, batch_size=16, learning_rate=3e-3, epochs=1,
                         max_steps=6, eval_every_steps=3)
    check = DataCheck(report=validate_frame(sample_df, ValidationPolicy(labels=LABELS), "sample",
                                            docs_dir=work / "docs"))

    @flow(name="plots")
    def plots_flow():
        trained = fine_tune(splits, "text", "label", LABELS, cfg, str(work / "package"), registry, run_id,
                            mlflow_ui_url=url)
        evaluate_model(trained.package_dir, splits, "text", "label", "candidate", registry, run_id, url)
        # As a file or SQLite store would be: no MLflow server URL to show the plot from.
        evaluate_model(trained.package_dir, splits, "text", "label", "champion", registry, run_id, None)
        publish_validation(check, registry, run_id)

    state = plots_flow(return_state=True)
    assert state.is_completed(), state.message
    with get_client(sync_client=True) as client:
        artifacts = client.read_artifacts(artifact_filter=ArtifactFilter(
            flow_run_id=ArtifactFilterFlowRunId(any_=[state.state_details.flow_run_id])))
    logged = Path(registry.client.download_artifacts(run_id, "", str(work / "logged")))
    return Published(mlflow_server, registry, run_id, registry.client.get_run(run_id).info.experiment_id,
                     artifacts, logged)


def test_image_artifacts_load_the_logged_pngs_from_the_mlflow_server(published):
    from PIL import Image

    images = {a.key: a for a in published.artifacts if a.type == "image"}
    plots = {"training-curves": "training_curves.png",
             "evaluation-candidate-confusion-matrix": "candidate_confusion_matrix.png",
             "evaluation-candidate-reliability": "candidate_reliability.png"}
    assert set(images) == set(plots)  # none for the champion: it had no server URL
    for key, name in plots.items():
        artifact = images[key]
        assert artifact.task_run_id is not None  # on the task run's page as well as the flow run's
        assert artifact.data == (f"{published.server.url}/get-artifact?path=plots%2F{name}"
                                 f"&run_uuid={published.run_id}")
        # As the <img> on the Prefect page fetches it: cross-origin, no cookies, no credentials.
        got = httpx.get(artifact.data, timeout=30, headers={
            "Referer": PREFECT_PAGE, "Sec-Fetch-Dest": "image", "Sec-Fetch-Mode": "no-cors", "Accept": "image/*"})
        assert got.status_code == 200, got.text[:500]
        assert got.headers["content-type"] == "image/png"
        assert got.content.startswith(PNG_MAGIC) and got.content == published.png(name)
        width, height = Image.open(io.BytesIO(got.content)).size
        assert width >= 300 and height >= 300
        page = (f"{published.server.url}/#/experiments/{published.experiment_id}/runs/{published.run_id}"
                f"/artifacts/plots/{name}")
        # The card on the run page shows a thumbnail from the same URL, and links the file in the MLflow UI.
        assert artifact.description.startswith(f'<img src="{artifact.data.replace("&", "&amp;")}" ')
        assert f"]({page})" in artifact.description


def _embedded(markdown: str) -> list[bytes]:
    return [base64.b64decode(b) for b in re.findall(r"\(data:image/png;base64,([A-Za-z0-9+/=]+)\)", markdown)]


def test_the_stage_reports_embed_the_plots_with_or_without_a_server(published):
    reports = {a.key: a.data for a in published.artifacts if a.type == "markdown"}
    assert _embedded(reports["training"]) == [published.png("training_curves.png")]
    assert _embedded(reports["evaluation-candidate"]) == [published.png("candidate_confusion_matrix.png"),
                                                          published.png("candidate_reliability.png")]
    run_page = f"{published.server.url}/#/experiments/{published.experiment_id}/runs/{published.run_id}"
    assert f"]({run_page}/artifacts/plots/training_curves.png)" in reports["training"]
    # No server URL: the report still shows the plots, and says where they are in the run.
    champion = reports["evaluation-champion"]
    assert _embedded(champion) == [published.png("champion_confusion_matrix.png"),
                                   published.png("champion_reliability.png")]
    assert f"`plots/champion_confusion_matrix.png` in MLflow run `{published.run_id}`" in champion


def test_the_recipe_chosen_from_the_data_is_recorded_on_the_run(published):
    # The configuration leaves warmup_ratio unset: the recipe chooses it from the training split.
    run = published.registry.client.get_run(published.run_id)
    tag = run.data.tags["fineship.recipe"]
    assert tag == "warmup_ratio=0.25 (1 of about 6 optimizer steps)"  # max_steps 6: at most a quarter
    assert run.data.params["training.warmup_ratio"] == "0.25"  # the value trained with, not 'None'
    assert run.data.params["training.max_length"] == "48"  # given: kept
    reports = {a.key: a.data for a in published.artifacts if a.type == "markdown"}
    assert f"(recipe from the data: {tag})" in reports["training"]


def test_the_logged_data_docs_load_nothing_from_the_network(published):
    docs = published.logged / "validation" / "data_docs"
    pages = sorted(docs.rglob("*.html"))
    assert (docs / "index.html") in pages and len(pages) >= 3
    assert not [p for p in pages if _REMOTE_ASSET.search(p.read_text())]
    for asset in ("jquery/jquery.min.js", "bootstrap/css/bootstrap.min.css", "bootstrap-table/bootstrap-table.min.js",
                  "font-awesome/webfonts/fa-solid-900.woff2"):
        assert (docs / "static" / "vendor" / asset).is_file(), asset


@needs_chromium
def test_the_logged_data_docs_index_renders_styled_offline(published, tmp_path):
    seen = probe_offline(published.logged / "validation" / "data_docs" / "index.html", tmp_path / "profile")
    assert seen["remote"] == [] and seen["scriptErrors"] == [], seen
    assert seen["navbarDisplay"] == "flex" and seen["tableRows"] >= 1, seen
