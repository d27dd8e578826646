"""The deployment flow: resolve a registered version -> deploy -> smoke test -> roll back on failure.

Targets: `local` (an inference server process on this machine) and `sagemaker` (a SageMaker endpoint,
created or updated blue/green; see `components/deploy/sagemaker.py`). Either way the approval
check comes first, before anything is downloaded, started or called.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Literal

from prefect import flow, get_run_logger
from pydantic import BaseModel, ConfigDict, Field, model_validator

from components.deploy.local import DeploymentRecord, read_record, start_endpoint
from components.deploy.sagemaker import (
    DeploymentPlan,
    DeploymentStepError,
    SageMakerDeploymentRecord,
    SageMakerTarget,
    record_failure,
    rollback_alarm_names,
)
from components.errors import DeploymentError, ExportError, RegistryError
from components.provenance import git_commit
from components.registry.mlflow_registry import MlflowRegistry, RegisteredVersion
from components.registry.review import require_approved
from flows.hooks import notify_failure
from flows.settings import Settings
from tasks.deploy import (
    execute_sagemaker_deployment,
    expected_predictions,
    prepare_sagemaker_deployment,
    smoke,
    start_local_endpoint,
    stop_local_endpoint,
)
from tasks.export import export_model
from tasks.registry import download_package, resolve_version

REPO = Path(__file__).resolve().parents[1]
LOCAL_ENDPOINT = "fineship-local"


class DeployRequest(BaseModel):
    """Which registered model version to deploy, and where."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    model_name: str = Field("fineship-news", description="Registered model name in MLflow.")
    version: str | None = Field(None, description="Version number to deploy; leave empty to use the alias.")
    alias: str | None = Field(None, description="Alias to deploy (e.g. champion) when no version is given.")
    target: Literal["local", "sagemaker"] = Field("local", description="Where to deploy: a local process or "
                                                  "a SageMaker endpoint.")
    endpoint_name: str | None = Field(None, pattern=r"^[A-Za-z0-9](-*[A-Za-z0-9]){0,62}$", max_length=63,
                                      description="Endpoint name; empty: fineship-local (local) or "
                                      "FINESHIP_SAGEMAKER_ENDPOINT_NAME, else <project>-<environment> (sagemaker).")
    host: str = Field("127.0.0.1", description="Bind address of the local endpoint.")
    port: int = Field(8080, ge=0, le=65535, description="Port of the local endpoint; 0 picks a free one.")
    smoke_texts: list[str] = Field(default_factory=list, description="Texts for the smoke test; empty: the "
                                   "held-out examples registered with the version.")
    dry_run: bool = Field(False, description="SageMaker: plan and list every AWS call, change nothing.")
    torchscript: bool = Field(False, description="SageMaker: ship the version's TorchScript export (export/).")
    instance_type: str = Field("ml.m5.large", description="SageMaker instance type (ignored when serverless).")
    instance_count: int = Field(1, description="SageMaker instance count.")
    serverless_memory_mb: int | None = Field(None, description="Set to deploy serverless: 1024..6144 in 1024 steps.")
    serverless_max_concurrency: int = Field(5, description="Serverless: concurrent invocations (1..200).")
    strategy: Literal["all_at_once", "canary", "linear"] = Field(
        "all_at_once", description="Blue/green traffic shifting when the endpoint exists.")
    traffic_percent: int = Field(25, description="Canary size or linear step, percent of the new fleet.")
    wait_interval_seconds: int = Field(300, description="Blue/green baking time between traffic shifts (0..3600).")
    termination_wait_seconds: int = Field(300, description="How long the old fleet stays after the shift (0..3600).")
    data_capture_percent: int | None = Field(None, description="Capture this percentage of requests to S3.")
    wait_timeout_seconds: float = Field(3600, gt=0, description="Longest wait for InService before rolling back.")
    rollback_timeout_seconds: float = Field(1800, gt=0, description="Longest wait for each rollback step.")
    poll_seconds: float = Field(15, gt=0, description="Interval of DescribeEndpoint polls.")

    @model_validator(mode="after")
    def _one_selector(self) -> DeployRequest:
        if self.version is None and self.alias is None:
            raise ValueError("give a version number or an alias (e.g. champion)")
        if self.version is not None and self.alias is not None:
            raise ValueError("give either a version number or an alias, not both")
        if self.target == "local" and (self.dry_run or self.torchscript):
            raise ValueError("--dry-run and --torchscript apply to --target sagemaker only")
        return self

    def sagemaker_target(self, settings: Settings) -> SageMakerTarget:
        """The SageMaker deployment target: this request's shape, the environment's account and stack."""
        endpoint = (self.endpoint_name or settings.sagemaker_endpoint_name
                    or f"{settings.aws_project}-{settings.aws_environment}")
        alarms = (settings.rollback_alarms if settings.rollback_alarms is not None
                  else rollback_alarm_names(settings.aws_project, settings.aws_environment, endpoint))
        return SageMakerTarget(
            endpoint_name=endpoint, region=settings.aws_region, role_arn=settings.sagemaker_role_arn,
            bucket=settings.artifact_bucket, prefix=settings.artifact_prefix, image_uri=settings.image_uri,
            instance_type=self.instance_type, instance_count=self.instance_count,
            serverless_memory_mb=self.serverless_memory_mb, serverless_max_concurrency=self.serverless_max_concurrency,
            data_capture_percent=self.data_capture_percent, strategy=self.strategy,
            traffic_percent=self.traffic_percent, wait_interval_seconds=self.wait_interval_seconds,
            termination_wait_seconds=self.termination_wait_seconds, rollback_alarms=tuple(alarms),
            torchscript=self.torchscript, wait_timeout_seconds=self.wait_timeout_seconds,
            rollback_timeout_seconds=self.rollback_timeout_seconds, poll_seconds=self.poll_seconds)


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


def _deploy_sagemaker(request: DeployRequest, version: RegisteredVersion,
                      settings: Settings) -> SageMakerDeploymentRecord | DeploymentPlan:
    """Plan (and unless a dry run, make) the SageMaker deployment of an approved version."""
    logger = get_run_logger()
    uri = settings.mlflow_tracking_uri
    target = request.sagemaker_target(settings)
    home = settings.home_dir / "sagemaker" / target.endpoint_name
    package_dir = download_package(request.model_name, version.version,
                                   str(home / f"{request.model_name}-v{version.version}"), uri)
    texts = list(request.smoke_texts) or _registered_examples(package_dir)
    if request.torchscript and not request.dry_run:
        # The optional export step: trace, reload in a fresh process, parity gate. A disagreeing export
        # stops the deployment here, before any AWS call.
        try:
            export_model(package_dir, "torchscript", texts, uri, version.run_id)
        except ExportError as err:
            raise DeploymentError(f"refused at the torchscript export step: {err}") from err
    try:
        prepared = prepare_sagemaker_deployment(
            target, package_dir, request.model_name, version.version, texts, str(home / "builds"),
            git_commit(REPO), version.tags.get("fineship.git_commit"), settings.aws_region, settings.aws_endpoint_url)
    except DeploymentStepError as err:
        if not request.dry_run:  # a dry run changes nothing, not even the registry
            record_failure(MlflowRegistry(uri), request.model_name, version.version, err.step, str(err),
                           target.endpoint_name)
        raise
    if request.dry_run:
        logger.info("dry run: %d mutating calls planned, none made\n%s", len(prepared.plan.mutating_calls),
                    prepared.plan.render(dry_run=True))
        return prepared.plan
    expected = expected_predictions(package_dir, texts)
    return execute_sagemaker_deployment(prepared, expected, uri, settings.aws_region, settings.aws_endpoint_url)


@flow(name="deployment", log_prints=True, on_failure=[notify_failure])
def deployment_flow(request: DeployRequest) -> DeploymentRecord | SageMakerDeploymentRecord | DeploymentPlan:
    """Deploy a registered version to the local endpoint or to SageMaker; on failure the previous one serves."""
    logger = get_run_logger()
    settings = Settings()
    uri = settings.mlflow_tracking_uri
    version = resolve_version(request.model_name, request.version, request.alias, uri)
    try:
        require_approved(version)  # before anything is downloaded, started, stopped or called
    except RegistryError as err:
        raise DeploymentError(f"refused: {err}") from None
    if request.target == "sagemaker":
        return _deploy_sagemaker(request, version, settings)
    endpoint_name = request.endpoint_name or LOCAL_ENDPOINT
    state = str(settings.endpoints_dir)
    dst = settings.endpoints_dir / endpoint_name / f"{request.model_name}-v{version.version}"
    package_dir = download_package(request.model_name, version.version, str(dst), uri)
    texts = list(request.smoke_texts) or _registered_examples(package_dir)
    if not texts:
        raise DeploymentError("no smoke-test texts: the version has no input example; pass smoke_texts")
    expected = expected_predictions(package_dir, texts)

    previous = read_record(state, endpoint_name)
    try:
        record = start_local_endpoint(package_dir, endpoint_name, state, request.host, request.port,
                                      request.model_name, version.version)
        smoke(record.url, texts, expected)
    except Exception as err:
        stop_local_endpoint(state, endpoint_name)
        if previous is not None and Path(previous.package_dir).is_dir():
            logger.warning("deployment failed (%s); restoring %s v%s", err, previous.model_name, previous.model_version)
            start_endpoint(previous.package_dir, previous.endpoint_name, state, previous.host, previous.port,
                           previous.model_name, previous.model_version)
        raise DeploymentError(f"deploying {request.model_name} v{version.version} failed at "
                              f"{'smoke test' if 'smoke' in str(err) else 'endpoint start'}: {err}") from err
    logger.info("%s v%s serving at %s", request.model_name, version.version, record.url)
    return record
