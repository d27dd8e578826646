"""The deployment flow: resolve a registered version -> deploy -> smoke test -> roll back on failure.

Targets: `local` (an inference server process on this machine) and `sagemaker` (a SageMaker endpoint,
created or updated blue/green; see `components/deploy/sagemaker/`). Either way the approval
check comes first, before anything is downloaded, started or called.
"""

from __future__ import annotations

import uuid
from pathlib import Path
from typing import Literal

from prefect import flow, get_run_logger
from pydantic import Field, model_validator

from components.config import DEFAULT_MODEL_NAME, ENDPOINT_NAME_PATTERN, LOCAL_ENDPOINT, EndpointOptions
from components.config_base import Section
from components.deploy.local import DeploymentRecord, LocalTarget
from components.deploy.sagemaker import (
    DeploymentPlan,
    SageMakerDeploymentRecord,
    SageMakerOptions,
    SageMakerTarget,
    rollback_alarm_names,
)
from components.errors import DeploymentError, DeploymentStepError, ExportError, RegistryError
from components.provenance import git_commit
from components.registry.mlflow_registry import MlflowRegistry, RegisteredVersion
from components.registry.review import approval_bundle
from flows.hooks import notify_failure
from flows.settings import Settings
from tasks.deploy import (
    build_serving_variants,
    deploy_local_endpoint,
    execute_sagemaker_deployment,
    expected_predictions,
    load_test_split,
    prepare_sagemaker_deployment,
    record_deployment_failure,
    record_serving_variants,
    sagemaker_preflight,
)
from tasks.export import export_model
from tasks.registry import download_version, resolve_version, verify_approval_task

REPO = Path(__file__).resolve().parents[1]


class _WhatAndWhere(Section):
    """The first fields of the deploy-model form: which version, to which target and endpoint."""

    model_name: str = Field(DEFAULT_MODEL_NAME, description="Registered model name in MLflow.")
    version: str | None = Field(None, description="Version number to deploy; leave empty to use the alias.")
    alias: str | None = Field(None, description="Alias to deploy (e.g. champion) when no version is given.")
    target: Literal["local", "sagemaker"] = Field("local", description="Where to deploy: a local process or "
                                                  "a SageMaker endpoint.")
    endpoint_name: str | None = Field(None, pattern=ENDPOINT_NAME_PATTERN, max_length=63,
                                      description="Endpoint name; empty: fineship-local (local) or "
                                      "FINESHIP_SAGEMAKER_ENDPOINT_NAME, else <project>-<environment> (sagemaker).")


class DeployRequest(EndpointOptions, _WhatAndWhere):
    """Which registered model version to deploy, and where; the local endpoint's options are the run config's."""

    dry_run: bool = Field(False, description="SageMaker: plan and list every AWS call, change nothing.")
    sagemaker: SageMakerOptions = Field(default_factory=SageMakerOptions, description="SageMaker: the endpoint's "
                                        "shape, the blue/green update and the waits (ignored by a local target).")

    @model_validator(mode="after")
    def _one_selector(self) -> DeployRequest:
        if self.version is None and self.alias is None:
            raise ValueError("give a version number or an alias (e.g. champion)")
        if self.version is not None and self.alias is not None:
            raise ValueError("give either a version number or an alias, not both")
        if self.target == "local" and (self.dry_run or self.sagemaker != SageMakerOptions()):
            raise ValueError("--dry-run, --torchscript and the sagemaker options apply to --target sagemaker only")
        if self.target == "sagemaker" and self.capture_percent:
            raise ValueError("capture_percent is for local endpoints; SageMaker: sagemaker.data_capture_percent")
        return self

    def sagemaker_target(self, settings: Settings) -> SageMakerTarget:
        """The SageMaker deployment target: this request's shape, the environment's account and stack."""
        endpoint = self.endpoint_name or settings.sagemaker_endpoint
        alarms = (settings.rollback_alarms if settings.rollback_alarms is not None
                  else rollback_alarm_names(settings.aws_project, settings.aws_environment, endpoint))
        return SageMakerTarget(
            endpoint_name=endpoint, region=settings.aws_region, role_arn=settings.sagemaker_role_arn,
            bucket=settings.artifact_bucket, prefix=settings.artifact_prefix, image_uri=settings.image_uri,
            rollback_alarms=tuple(alarms), options=self.sagemaker)


def _serving_backend(request: DeployRequest, version: RegisteredVersion, package_dir: str,
                     registry: MlflowRegistry) -> str:
    """Build and gate the variants of the verified package, choose and record the backend (eager alone: no build)."""
    if request.backend == "eager" or (request.backend == "auto" and set(request.variants) <= {"eager"}):
        return "eager"
    report = build_serving_variants(package_dir, load_test_split(registry, version), request.backend,
                                    list(request.variants))
    record_serving_variants(registry, version, report)
    return report.chosen or "eager"


def _deploy_sagemaker(request: DeployRequest, version: RegisteredVersion, settings: Settings,
                      registry: MlflowRegistry) -> SageMakerDeploymentRecord | DeploymentPlan:
    """Plan (and unless a dry run, make) the SageMaker deployment of an approved version."""
    logger = get_run_logger()
    target = request.sagemaker_target(settings)
    home = settings.home_dir / "sagemaker" / target.endpoint_name
    downloaded = download_version(registry, request.model_name, version.version,
                                  str(home / f"{request.model_name}-v{version.version}"))
    package_dir = downloaded.package_dir
    verify_approval_task(version, package_dir, settings.review_policy())  # the files that go into model.tar.gz
    texts = list(request.smoke_texts) or downloaded.input_example
    if request.sagemaker.torchscript and not request.dry_run:
        # The optional export step: trace, reload in a fresh process, parity gate. A disagreeing export
        # stops the deployment here, before any AWS call.
        try:
            export_model(package_dir, "torchscript", texts, registry, version.run_id)
        except ExportError as err:
            raise DeploymentStepError(f"refused at the torchscript export step: {err}", "export") from err
    # The variants are built from the files just verified; the archive carries those that passed and the choice.
    backend = "eager" if request.dry_run else _serving_backend(request, version, package_dir, registry)
    try:
        checked = sagemaker_preflight(target, package_dir)  # once per deployment, before any AWS client exists
        prepared = prepare_sagemaker_deployment(
            checked, request.model_name, version.version, texts, str(home / "builds"), git_commit(REPO),
            version.tags.get("fineship.git_commit"), settings.aws,
            expected_files=approval_bundle(version).manifest.files)  # the archive holds exactly the signed files
    except DeploymentStepError as err:
        if not request.dry_run:  # a dry run changes nothing, not even the registry
            record_deployment_failure(registry, request.model_name, version.version, err.step, str(err),
                                      target.endpoint_name)
        raise
    if request.dry_run:
        logger.info("dry run: %d mutating calls planned, none made\n%s", len(prepared.plan.mutating_calls),
                    prepared.plan.render(dry_run=True))
        return prepared.plan
    expected = expected_predictions(package_dir, texts, backend)
    return execute_sagemaker_deployment(prepared, expected, registry, settings.aws)


@flow(name="deployment", log_prints=True, on_failure=[notify_failure])
def deployment_flow(request: DeployRequest) -> DeploymentRecord | SageMakerDeploymentRecord | DeploymentPlan:
    """Deploy a registered version to the local endpoint or to SageMaker; on failure the previous one serves."""
    settings = Settings()
    registry = MlflowRegistry(settings.mlflow_tracking_uri, settings.mlflow_artifact_root)  # one per flow run
    version = resolve_version(registry, request.model_name, request.version, request.alias)
    try:
        approval_bundle(version)  # a signed approval exists: checked before anything is downloaded or called
    except RegistryError as err:
        raise DeploymentError(f"refused: {err}") from None
    if request.target == "sagemaker":
        return _deploy_sagemaker(request, version, settings, registry)
    target = LocalTarget(endpoint_name=request.endpoint_name or LOCAL_ENDPOINT, state_dir=str(settings.endpoints_dir),
                         host=request.host, port=request.port, capture_percent=request.capture_percent,
                         capture_max_mb=request.capture_max_mb)
    # A fresh directory per deployment: the live endpoint's files are never touched (blue/green).
    downloaded = download_version(registry, request.model_name, version.version,
                                  str(settings.endpoints_dir / target.endpoint_name
                                      / f"{request.model_name}-v{version.version}-{uuid.uuid4().hex[:8]}"))
    verify_approval_task(version, downloaded.package_dir, settings.review_policy())  # the files deployed below
    texts = list(request.smoke_texts) or downloaded.input_example
    # Variants are built from the files just verified (exports are not signed: they are made here, from them).
    backend = _serving_backend(request, version, downloaded.package_dir, registry)
    expected = expected_predictions(downloaded.package_dir, texts, backend)
    return deploy_local_endpoint(target, downloaded.package_dir, request.model_name, version.version, texts, expected,
                                 backend)
