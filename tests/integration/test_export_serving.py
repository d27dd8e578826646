"""Serving a package's TorchScript export: opt-in with FINESHIP_BACKEND, same answers, refused when unchecked."""

from __future__ import annotations

import shutil
from pathlib import Path

import httpx
import pytest

from components.export import export_package
from components.export.spec import export_dir
from components.package import load_package
from components.serving.backends import load_backend
from tests.support.http_server import free_port, server_env, serving_cmd, start_server

TEXTS = ["The striker scored twice in the cup final.", "Shares fell after the bank cut its profit forecast.",
         "The new phone ships with a faster chip and a bigger battery.", "MPs voted on the budget late on Tuesday.",
         "The film won three awards at the festival."]


@pytest.fixture(scope="module")
def exported(tiny_package: Path, tmp_path_factory: pytest.TempPathFactory, sample_df) -> Path:
    pkg = tmp_path_factory.mktemp("export-serving") / "package"
    shutil.copytree(tiny_package, pkg)
    export_package(pkg, "torchscript", sample_df.text.head(40).tolist(), latency=False)
    return pkg


def test_the_server_serves_the_torchscript_export_when_asked(exported: Path, tmp_path: Path):
    expected = load_package(exported, device="cpu").predict(TEXTS)
    port = free_port()
    server = start_server(serving_cmd(exported, port), tmp_path / "server.log", port,
                          env=server_env({"FINESHIP_BACKEND": "torchscript"}))
    try:
        ping = httpx.get(f"{server.url}/ping", timeout=5).json()
        assert ping["backend"] == "torchscript"
        r = httpx.post(f"{server.url}/invocations", json={"inputs": TEXTS}, timeout=30)
        assert r.status_code == 200, r.text
        got = r.json()["predictions"]
    finally:
        server.stop()
    assert [p["label"] for p in got] == [p.label for p in expected]
    for g, e in zip(got, expected):
        assert g["scores"] == pytest.approx(e.scores, abs=1e-5)
    assert "loaded the torchscript export" in server.log()


def test_the_server_refuses_an_export_changed_after_its_check(exported: Path, tmp_path: Path):
    import torch

    pkg = tmp_path / "package"
    shutil.copytree(exported, pkg)
    model_file = export_dir(pkg, "torchscript") / "model.pt"
    module = torch.jit.load(str(model_file))
    with torch.no_grad():
        next(p for n, p in module.named_parameters() if n.endswith("classifier.bias")).add_(1.0)
    torch.jit.save(module, str(model_file))
    port = free_port()
    server = start_server(serving_cmd(pkg, port, "--backend", "torchscript"), tmp_path / "server.log", port,
                          wait_status=500)
    try:
        body = httpx.get(f"{server.url}/ping", timeout=5).json()
        assert "changed after their parity check" in body["error"]
        assert httpx.post(f"{server.url}/invocations", json={"inputs": TEXTS[0]}, timeout=5).status_code == 503
    finally:
        server.stop()


def test_the_sagemaker_handler_serves_the_export_from_the_environment(exported: Path, monkeypatch):
    from components.serving import inference

    monkeypatch.setenv("FINESHIP_BACKEND", "torchscript")
    model = inference.model_fn(str(exported))
    assert getattr(model, "backend", None) == "torchscript"
    preds = inference.predict_fn(inference.input_fn('{"inputs": ["Shares fell sharply."]}', "application/json"), model)
    body, media = inference.output_fn(preds, "application/json")
    assert media == "application/json" and b"predictions" in body


@pytest.mark.slow  # a Prefect test server of its own: ~45 s on 2 cores
def test_the_export_task_records_a_refusal_in_mlflow_and_prefect_then_stops(exported: Path, tmp_path: Path,
                                                                             sample_df, monkeypatch):
    """A faulty exporter: the task logs the parity report to MLflow and a Prefect artifact, then raises."""
    from prefect import flow
    from prefect.artifacts import Artifact
    from prefect.testing.utilities import prefect_test_harness

    import components.export.torchscript as ts
    from components.errors import ExportError
    from components.registry.mlflow_registry import MlflowRegistry, local_tracking_uri
    from tasks.export import export_model

    pkg = tmp_path / "package"
    shutil.copytree(exported, pkg)
    uri = local_tracking_uri(tmp_path / "mlflow.db")
    registry = MlflowRegistry(uri, tmp_path / "artifacts")
    run_id = registry.start_run("export", "tiny")
    trace = ts.trace_package

    def faulty_trace(package_dir):  # the saved graph's classifier is flipped after tracing
        import torch

        path = trace(package_dir)
        module = torch.jit.load(str(path))
        with torch.no_grad():
            next(p for n, p in module.named_parameters() if n.endswith("classifier.weight")).mul_(-1.0)
        torch.jit.save(module, str(path))
        return path

    monkeypatch.setattr(ts, "trace_package", faulty_trace)

    @flow(name="export-test")
    def export_flow() -> object:
        return export_model(str(pkg), "torchscript", sample_df.text.head(24).tolist(), registry, run_id)

    with prefect_test_harness(server_startup_timeout=120):
        with pytest.raises(ExportError, match="disagrees with its model and is refused"):
            export_flow()
        markdown = Artifact.get("export-torchscript").data
    assert "parity FAILED" in markdown and "## Why" in markdown and "| batch size |" in markdown
    run = registry.client.get_run(run_id)
    assert run.data.tags["fineship.export.torchscript"] == "refused"
    assert run.data.metrics["export_torchscript_passed"] == 0.0
    assert run.data.metrics["export_torchscript_argmax_agreement"] < 1.0
    files = {a.path for a in registry.client.list_artifacts(run_id, "export/torchscript")}
    assert {"export/torchscript/parity_report.json", "export/torchscript/latency.json",
            "export/torchscript/export.json"} <= files
    with pytest.raises(ExportError, match="failed its parity check"):  # and the endpoint would not serve it
        load_backend(pkg, "torchscript")
