"""Registry tasks: register a candidate, resolve and download a version."""

from __future__ import annotations

from prefect import get_run_logger, task
from prefect.artifacts import create_link_artifact, create_markdown_artifact
from prefect.cache_policies import NO_CACHE

from components.package import load_package
from components.registry.mlflow_registry import MlflowRegistry, RegisteredVersion
from components.registry.package_check import verify_package
from tasks.common import artifact_key, retry_transient

PIP_REQUIREMENTS = ["torch==2.13.0", "transformers==5.23.0", "tokenizers==0.23.3", "safetensors==0.8.0",
                    "pandas==3.1.1", "numpy", "pydantic>=2", "mlflow==3.17.2"]


@task(name="register-model", retries=2, retry_delay_seconds=[5, 20], retry_condition_fn=retry_transient,
      timeout_seconds=900, cache_policy=NO_CACHE)
def register_model(package_dir: str, name: str, run_id: str, input_example: list[str], tags: dict[str, str],
                   description: str, tracking_uri: str, mlflow_ui_url: str | None = None,
                   idempotency_key: str | None = None) -> RegisteredVersion:
    """Log the package to the run and register it as a new version with alias `challenger` (once per key)."""
    registry = MlflowRegistry(tracking_uri)
    version = registry.log_and_register(run_id, package_dir, name, input_example, PIP_REQUIREMENTS, tags,
                                        description, aliases=("challenger",), idempotency_key=idempotency_key)
    create_markdown_artifact(
        f"# Registered `{name}` version {version.version}\n\nAliases: {', '.join(version.aliases) or 'none'}; "
        f"MLflow run `{run_id}`.", key=artifact_key("registered-version"), description="Registered model version")
    if mlflow_ui_url:
        create_link_artifact(f"{mlflow_ui_url.rstrip('/')}/#/models/{name}/versions/{version.version}",
                             link_text=f"{name} v{version.version} in MLflow", key=artifact_key("mlflow-version"))
    get_run_logger().info("registered %s version %s", name, version.version)
    return version


@task(name="verify-package", timeout_seconds=600, cache_policy=NO_CACHE)
def verify_package_task(package_dir: str, texts: list[str]) -> float:
    """Load the package in a fresh process; it must predict `texts` as the trained model does in memory."""
    clf = load_package(package_dir)
    diff = verify_package(package_dir, texts, clf.predict_proba(texts))
    get_run_logger().info("package check passed: fresh-process scores within %.2e", diff)
    return diff


@task(name="resolve-version", retries=2, retry_delay_seconds=[2, 10], retry_condition_fn=retry_transient,
      timeout_seconds=120, cache_policy=NO_CACHE)
def resolve_version(name: str, version: str | None, alias: str | None, tracking_uri: str) -> RegisteredVersion:
    """Find the model version to deploy by number or alias."""
    return MlflowRegistry(tracking_uri).get_version(name, version=version, alias=alias)


@task(name="download-package", retries=2, retry_delay_seconds=[2, 10], retry_condition_fn=retry_transient,
      timeout_seconds=900, cache_policy=NO_CACHE)
def download_package(name: str, version: str, dst: str, tracking_uri: str) -> str:
    """Download a registered version's model package."""
    return str(MlflowRegistry(tracking_uri).download_package(name, version, dst))
