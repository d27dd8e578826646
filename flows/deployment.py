"""The deployment flow: resolve a registered version -> deploy -> smoke test -> roll back on failure."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Literal

from prefect import flow, get_run_logger
from pydantic import BaseModel, ConfigDict, Field, model_validator

from components.deploy.local import DeploymentRecord, read_record, start_endpoint
from components.errors import DeploymentError, RegistryError
from components.registry.review import require_approved
from flows.settings import Settings
from tasks.deploy import expected_predictions, smoke, start_local_endpoint, stop_local_endpoint
from tasks.registry import download_package, resolve_version


class DeployRequest(BaseModel):
    """Which registered model version to deploy, and where."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    model_name: str = Field("fineship-news", description="Registered model name in MLflow.")
    version: str | None = Field(None, description="Version number to deploy; leave empty to use the alias.")
    alias: str | None = Field(None, description="Alias to deploy (e.g. champion) when no version is given.")
    target: Literal["local"] = Field("local", description="Where to deploy.")
    endpoint_name: str = Field("fineship-local", pattern=r"^[A-Za-z0-9][A-Za-z0-9-]{0,62}$")
    host: str = Field("127.0.0.1", description="Bind address of the local endpoint.")
    port: int = Field(8080, ge=0, le=65535, description="Port of the local endpoint; 0 picks a free one.")
    smoke_texts: list[str] = Field(default_factory=list, description="Texts for the smoke test; empty: the "
                                   "held-out examples registered with the version.")

    @model_validator(mode="after")
    def _one_selector(self) -> DeployRequest:
        if self.version is None and self.alias is None:
            raise ValueError("give a version number or an alias (e.g. champion)")
        if self.version is not None and self.alias is not None:
            raise ValueError("give either a version number or an alias, not both")
        return self


def _registered_examples(package_dir: str) -> list[str]:
    example = Path(package_dir).parent.parent / "input_example.json"
    if not example.is_file():
        return []
    data = json.loads(example.read_text())
    cols, rows = data.get("columns", []), data.get("data", [])
    if "text" in cols:
        i = cols.index("text")
        return [r[i] for r in rows]
    return []


@flow(name="deployment", log_prints=True)
def deployment_flow(request: DeployRequest) -> DeploymentRecord:
    """Deploy a registered version to the local endpoint; the previous one comes back if the new one fails."""
    logger = get_run_logger()
    settings = Settings()
    uri = settings.mlflow_tracking_uri
    version = resolve_version(request.model_name, request.version, request.alias, uri)
    try:
        require_approved(version)  # before anything is downloaded, started or stopped
    except RegistryError as err:
        raise DeploymentError(f"refused: {err}") from None
    state = str(settings.endpoints_dir)
    dst = settings.endpoints_dir / request.endpoint_name / f"{request.model_name}-v{version.version}"
    package_dir = download_package(request.model_name, version.version, str(dst), uri)
    texts = list(request.smoke_texts) or _registered_examples(package_dir)
    if not texts:
        raise DeploymentError("no smoke-test texts: the version has no input example; pass smoke_texts")
    expected = expected_predictions(package_dir, texts)

    previous = read_record(state, request.endpoint_name)
    try:
        record = start_local_endpoint(package_dir, request.endpoint_name, state, request.host, request.port,
                                      request.model_name, version.version)
        smoke(record.url, texts, expected)
    except Exception as err:
        stop_local_endpoint(state, request.endpoint_name)
        if previous is not None and Path(previous.package_dir).is_dir():
            logger.warning("deployment failed (%s); restoring %s v%s", err, previous.model_name, previous.model_version)
            start_endpoint(previous.package_dir, previous.endpoint_name, state, previous.host, previous.port,
                           previous.model_name, previous.model_version)
        raise DeploymentError(f"deploying {request.model_name} v{version.version} failed at "
                              f"{'smoke test' if 'smoke' in str(err) else 'endpoint start'}: {err}") from err
    logger.info("%s v%s serving at %s", request.model_name, version.version, record.url)
    return record
