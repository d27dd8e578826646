"""Deployment tasks: local endpoint processes and the smoke test."""

from __future__ import annotations

from prefect import get_run_logger, task
from prefect.artifacts import create_link_artifact, create_markdown_artifact
from prefect.cache_policies import NO_CACHE

from components.deploy.local import DeploymentRecord, SmokeResult, smoke_test, start_endpoint, stop_endpoint
from components.package import load_package
from tasks.common import artifact_key


@task(name="expected-predictions", timeout_seconds=600, cache_policy=NO_CACHE)
def expected_predictions(package_dir: str, texts: list[str]) -> list[str]:
    """What the registered model predicts locally for the smoke-test texts."""
    return [p.label for p in load_package(package_dir).predict(texts)]


@task(name="start-local-endpoint", timeout_seconds=600, cache_policy=NO_CACHE)
def start_local_endpoint(package_dir: str, endpoint_name: str, state_dir: str, host: str, port: int,
                         model_name: str, model_version: str) -> DeploymentRecord:
    """Start (or replace) the local endpoint and wait until `/ping` answers."""
    record = start_endpoint(package_dir, endpoint_name, state_dir, host, port, model_name, model_version)
    create_link_artifact(f"{record.url}/ping", link_text=f"endpoint {endpoint_name}", key=artifact_key("endpoint"))
    return record


@task(name="smoke-test", timeout_seconds=300, cache_policy=NO_CACHE)
def smoke(url: str, texts: list[str], expected: list[str]) -> SmokeResult:
    """Predict held-out texts over HTTP; every answer must match the registered model."""
    result = smoke_test(url, texts, expected)
    rows = "\n".join(f"- `{t[:80]}` -> **{p['label']}** ({p['score']:.3f})" for t, p in zip(texts, result.predictions))
    create_markdown_artifact(f"# Smoke test passed: {result.agreed}/{result.n} agree\n\n{rows}",
                             key=artifact_key("smoke-test"), description="Smoke test over HTTP")
    get_run_logger().info("smoke test: %d/%d predictions agree", result.agreed, result.n)
    return result


@task(name="stop-local-endpoint", timeout_seconds=60, cache_policy=NO_CACHE)
def stop_local_endpoint(state_dir: str, endpoint_name: str) -> bool:
    return stop_endpoint(state_dir, endpoint_name)
