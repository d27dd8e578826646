"""The batch prediction flow: resolve an approved version -> score a file here or on SageMaker Batch Transform.

    resolve version (refuse unapproved) -> download -> verify the signature over the downloaded files
    -> score (local: chunks, length-sorted batches, resumable | sagemaker: transform job) -> output file

The approval rules are the deployment's: a version is used only with a valid signature by a trusted reviewer
(or the pipeline's, under FINESHIP_AUTO_PROMOTE) over exactly the files that score. The request is untrusted
(a Prefect form may fill it): inputs and outputs must lie under the operator's FINESHIP_BATCH_ROOTS (directories
and S3 prefixes), local ones never inside fineship's home or the key directories, whatever the request says.
"""

from __future__ import annotations

import shutil
import uuid
from pathlib import Path
from typing import Literal

from prefect import flow
from pydantic import BaseModel, ConfigDict, Field, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from components.batch import MAX_INPUT_BYTES, BatchOptions, BatchResult, ModelRef, TransformOptions, TransformTarget
from components.batch.paths import check_locations
from components.config import DEFAULT_MODEL_NAME
from components.errors import BatchPredictionError, RegistryError
from components.provenance import git_commit
from components.registry.mlflow_registry import MlflowRegistry
from components.registry.review import approval_bundle
from flows.hooks import notify_failure
from flows.settings import Settings
from tasks.batch import collect_transform_task, score_file_task, start_transform_task, transform_preflight
from tasks.registry import download_version, resolve_version, verify_approval_task

REPO = Path(__file__).resolve().parents[1]


class BatchRequest(BaseModel):
    """Which approved version scores which file, where the output goes, and how."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    model_name: str = Field(DEFAULT_MODEL_NAME, description="Registered model name in MLflow.")
    version: str | None = Field(None, description="Version number; leave empty to use the alias.")
    alias: str | None = Field(None, description="Alias (e.g. champion) when no version is given.")
    input_uri: str = Field(..., min_length=1, description="CSV, TSV, Parquet or JSON Lines file (a path or "
                           "s3://bucket/key) under the operator's FINESHIP_BATCH_ROOTS.")
    output_uri: str = Field(..., min_length=1, description="Where the scored file goes (format from its name; a "
                            "path or s3://bucket/key) under the operator's FINESHIP_BATCH_ROOTS.")
    backend: Literal["local", "sagemaker"] = Field("local", description="Score here, or in a SageMaker Batch "
                                                   "Transform job.")
    options: BatchOptions = Field(default_factory=BatchOptions, description="Text column, probabilities, chunks.")
    sagemaker: TransformOptions = Field(default_factory=TransformOptions, description="Batch Transform: instances, "
                                        "payload size and waits (backend sagemaker only).")

    @model_validator(mode="after")
    def _one_selector(self) -> BatchRequest:
        if (self.version is None) == (self.alias is None):
            raise ValueError("give either a version number or an alias (e.g. champion)")
        if self.backend == "local" and self.sagemaker != TransformOptions():
            raise ValueError("the sagemaker options apply to backend sagemaker only")
        return self


class BatchSettings(BaseSettings):
    """Operator configuration of batch runs (the worker's or CLI's environment, never a run's parameters)."""

    model_config = SettingsConfigDict(env_prefix="FINESHIP_BATCH_", extra="ignore")

    roots: list[str] = Field(default_factory=lambda: ["data"], description="Where inputs and outputs may be "
                             "(FINESHIP_BATCH_ROOTS, a JSON list): local directories and s3://bucket/prefix/ "
                             "locations; default: ./data only.")
    max_input_bytes: int = Field(MAX_INPUT_BYTES, ge=1, description="Largest input file a run may read (bytes).")


def _forbidden(settings: Settings) -> list[Path]:
    dirs = [settings.home_dir, Path.home() / ".fineship"]
    dirs += [p for p in (settings.trusted_reviewers, settings.reviewer_keys) if p is not None]
    return dirs


def _transform_target(settings: Settings, options: TransformOptions) -> TransformTarget:
    return TransformTarget(region=settings.aws_region, role_arn=settings.sagemaker_role_arn,
                           bucket=settings.artifact_bucket, prefix=settings.artifact_prefix,
                           image_uri=settings.image_uri, options=options)


@flow(name="batch-predict", log_prints=True, on_failure=[notify_failure])
def batch_predict_flow(request: BatchRequest) -> BatchResult:
    """Score a file with an approved registered version, here or on SageMaker Batch Transform; resumable."""
    settings = Settings()
    batch = BatchSettings()
    check_locations(request.input_uri, request.output_uri, batch.roots, _forbidden(settings))
    registry = MlflowRegistry(settings.mlflow_tracking_uri, settings.mlflow_artifact_root)
    version = resolve_version(registry, request.model_name, request.version, request.alias)
    try:
        bundle = approval_bundle(version)  # a signed approval exists: checked before anything is downloaded
    except RegistryError as err:
        raise BatchPredictionError(f"refused: {err}") from None
    batch_home = settings.home_dir / "batch"
    model_dir = batch_home / "models" / f"{request.model_name}-v{version.version}-{uuid.uuid4().hex[:8]}"
    try:
        downloaded = download_version(registry, request.model_name, version.version, str(model_dir))
        verify_approval_task(version, downloaded.package_dir, settings.review_policy())  # the files that score
        model = ModelRef(name=version.name, version=version.version, run_id=version.run_id)
        work_root = str(batch_home / "state")
        if request.backend == "local":
            return score_file_task(downloaded.package_dir, request.input_uri, request.output_uri, request.options,
                                   model, work_root, settings.aws, batch.max_input_bytes)
        target = _transform_target(settings, request.sagemaker)
        checked = transform_preflight(target, downloaded.package_dir, f"batch-{uuid.uuid4().hex[:8]}")
        job = start_transform_task(checked, target, request.input_uri, request.output_uri, request.options, model,
                                   work_root, git_commit(REPO), settings.aws, dict(bundle.manifest.files),
                                   batch.max_input_bytes)
        return collect_transform_task(job, downloaded.package_dir, target, request.input_uri, request.output_uri,
                                      request.options, model, work_root, settings.aws)
    finally:
        shutil.rmtree(model_dir, ignore_errors=True)  # a fresh, verified download per run
