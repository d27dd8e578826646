"""Deployment tasks: local endpoint processes and their smoke test; SageMaker plan and execution."""

from __future__ import annotations

from prefect import get_run_logger, task
from prefect.artifacts import create_link_artifact, create_markdown_artifact
from prefect.cache_policies import NO_CACHE

from components.deploy.local import DeploymentRecord, SmokeResult, smoke_test, start_endpoint, stop_endpoint
from components.deploy.sagemaker import (
    AwsClients,
    PreparedDeployment,
    SageMakerDeploymentRecord,
    SageMakerTarget,
    execute_plan,
    prepare_deployment,
    require_preflight,
)
from components.package import load_package
from components.registry.mlflow_registry import MlflowRegistry
from tasks.common import artifact_key, retry_transient


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


# -- SageMaker ------------------------------------------------------------------------------------

@task(name="prepare-sagemaker-deployment", retries=2, retry_delay_seconds=[5, 20], retry_condition_fn=retry_transient,
      timeout_seconds=900, cache_policy=NO_CACHE)
def prepare_sagemaker_deployment(target: SageMakerTarget, package_dir: str, model_name: str, version: str,
                                 smoke_texts: list[str], work_dir: str, git_commit: str, training_commit: str | None,
                                 region: str | None, endpoint_url: str | None) -> PreparedDeployment:
    """Pre-flight checks, model.tar.gz, the endpoint's current state (read-only) and the plan."""
    require_preflight(target, package_dir)  # before any client exists: a missing region is a pre-flight issue
    prepared = prepare_deployment(target, package_dir, AwsClients.create(region, endpoint_url), model_name=model_name,
                                  version=version, smoke_texts=smoke_texts, work_dir=work_dir, git_commit=git_commit,
                                  training_commit=training_commit)
    plan = prepared.plan
    create_markdown_artifact(f"# SageMaker deployment plan `{plan.deploy_id}`\n\n```\n{plan.render(dry_run=False)}\n```",
                             key=artifact_key("sagemaker-plan"), description="Every AWS call of the deployment")
    get_run_logger().info("plan %s: %s %s v%s -> %s, %d mutating calls", plan.deploy_id, plan.mode, model_name,
                          version, plan.endpoint_name, len(plan.mutating_calls))
    return prepared


# No task-level retries: the deployment is one transaction that rolls itself back on failure; transient
# errors of single calls are retried by botocore (standard mode) inside it.
@task(name="execute-sagemaker-deployment", cache_policy=NO_CACHE)
def execute_sagemaker_deployment(prepared: PreparedDeployment, expected: list[str], tracking_uri: str,
                                 region: str | None, endpoint_url: str | None) -> SageMakerDeploymentRecord:
    """Upload, create, update, wait, smoke test and record; roll back and record the failure on any error."""
    record = execute_plan(prepared, AwsClients.create(region, endpoint_url), expected, MlflowRegistry(tracking_uri))
    create_markdown_artifact(
        f"# {record.model_name} v{record.model_version} serving on SageMaker\n\n"
        f"Endpoint `{record.endpoint_name}` ({record.region}) on config `{record.endpoint_config}` "
        f"({record.mode}{', previous ' + record.previous_config if record.previous_config else ''}); smoke test "
        f"{record.smoke.agreed}/{record.smoke.n} agree.", key=artifact_key("sagemaker-endpoint"),
        description="SageMaker deployment")
    get_run_logger().info("%s v%s serving on %s (config %s)", record.model_name, record.model_version,
                          record.endpoint_name, record.endpoint_config)
    return record
