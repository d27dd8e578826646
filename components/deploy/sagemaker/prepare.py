"""Prepare a deployment: build model.tar.gz, inspect the endpoint and plan. Only read-only AWS calls.

It starts from a `PreflightResult`, so the pre-flight checks run once, before any client is built.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict

from components.deploy.package_tar import ModelArchive, build_model_archive
from components.deploy.sagemaker.calls import PlannedCall, describe
from components.deploy.sagemaker.checks import PreflightResult
from components.deploy.sagemaker.plan import (
    DeploymentPlan,
    artifact_key,
    new_deploy_id,
    plan_deployment,
)
from components.deploy.sagemaker.settings import BUILD, INSPECT, PREFLIGHT, AwsClients, SageMakerTarget
from components.deploy.sagemaker.state import inspect_endpoint, managed_configs, missing_alarms, object_state
from components.errors import DeploymentError, DeploymentStepError

log = logging.getLogger(__name__)


class PreparedDeployment(BaseModel):
    """A plan, the archive it uploads, and what made the plan (so that it can be made again under the lock)."""

    model_config = ConfigDict(frozen=True)

    plan: DeploymentPlan
    archive: ModelArchive
    target: SageMakerTarget
    training_commit: str | None = None


def prepare_deployment(checked: PreflightResult, clients: AwsClients, *, model_name: str, version: str,
                       smoke_texts: Sequence[str], work_dir: str | Path, git_commit: str,
                       training_commit: str | None = None, deploy_id: str | None = None,
                       expected_files: Mapping[str, str] | None = None) -> PreparedDeployment:
    """Build the archive, inspect the endpoint and plan, for a target that passed `require_preflight`.

    `expected_files` (relative path -> SHA-256 of every package file, from the verified approval signature):
    the archive is built only from exactly those bytes (`build_model_archive`). Only read-only AWS calls.
    """
    target, package_dir = checked.target, checked.package_dir
    if not smoke_texts:
        raise DeploymentStepError("no smoke-test texts: the version has no registered input example; pass "
                                  "smoke texts", PREFLIGHT)
    deploy_id = deploy_id or new_deploy_id()
    try:
        # The manifest names the code's commit only: the same package and code give the same bytes (and the
        # S3 key and the tags say which model version it is).
        archive = build_model_archive(package_dir, Path(work_dir) / deploy_id / "model.tar.gz",
                                      {"git_commit": git_commit}, expected_files=expected_files)
    except DeploymentStepError:
        raise
    except (OSError, DeploymentError) as err:
        raise DeploymentStepError(f"building model.tar.gz from {package_dir} failed: {err}", BUILD) from err
    plan = inspect_and_plan(target, archive, clients, image_uri=checked.image_uri, model_name=model_name,
                            version=version, git_commit=git_commit, smoke_texts=smoke_texts,
                            training_commit=training_commit, deploy_id=deploy_id)
    return PreparedDeployment(plan=plan, archive=archive, target=target, training_commit=training_commit)


def inspect_and_plan(target: SageMakerTarget, archive: ModelArchive, clients: AwsClients, *, image_uri: str,
                     model_name: str, version: str, git_commit: str, smoke_texts: Sequence[str],
                     training_commit: str | None, deploy_id: str) -> DeploymentPlan:
    """Read the endpoint (and the archive's object) and plan; raises `DeploymentStepError` (inspect) when the
    endpoint cannot be deployed to as it is. Read-only calls; run again under the lock by `execute_plan`."""
    inspected = [PlannedCall(step=INSPECT, service="sagemaker", operation="DescribeEndpoint",
                             params={"EndpointName": target.endpoint_name}, mutating=False)]
    try:
        state = inspect_endpoint(clients, target.endpoint_name)
        key = artifact_key(target.prefix, model_name, version, archive.sha256)
        inspected.append(PlannedCall(step=INSPECT, service="s3", operation="HeadObject",
                                     params={"Bucket": target.bucket, "Key": key, "ChecksumMode": "ENABLED"},
                                     mutating=False, note="reused only if S3's ChecksumSHA256 is the archive's"))
        existing = object_state(clients, target.bucket, key, archive.sha256)  # type: ignore[arg-type]
        prunable: list[dict[str, Any]] = []
        absent_alarms: list[str] = []
        if state.exists:
            inspected += [
                PlannedCall(step=INSPECT, service="sagemaker", operation="DescribeEndpointConfig",
                            params={"EndpointConfigName": state.config_name}, mutating=False),
                PlannedCall(step=INSPECT, service="sagemaker", operation="ListTags",
                            params={"ResourceArn": state.arn}, mutating=False),
                PlannedCall(step=INSPECT, service="sagemaker", operation="ListEndpointConfigs",
                            params={"NameContains": target.endpoint_name}, mutating=False,
                            note="with ListTags and DescribeEndpointConfig of each, to find prunable ones")]
            prunable = managed_configs(clients, target.endpoint_name)
            if target.rollback_alarms and clients.cloudwatch is not None:
                inspected.append(PlannedCall(step=INSPECT, service="cloudwatch", operation="DescribeAlarms",
                                             params={"AlarmNames": list(target.rollback_alarms)}, mutating=False))
                absent_alarms = missing_alarms(clients, target.rollback_alarms)
    except DeploymentError:
        raise
    except Exception as err:
        raise DeploymentStepError(f"reading the current state of endpoint {target.endpoint_name} failed: "
                                  f"{describe(err)}; check the region, credentials and FINESHIP_AWS_ENDPOINT_URL",
                                  INSPECT) from err

    problems = []
    if state.exists:
        if state.status != "InService":
            hint = ("delete it with `fineship endpoint delete " + target.endpoint_name + "` and deploy again"
                    if state.status == "Failed" else "wait until it is InService (`fineship endpoint status "
                    + target.endpoint_name + "`)")
            problems.append(f"endpoint {target.endpoint_name} is {state.status}"
                            + (f" ({state.failure_reason})" if state.failure_reason else "") + f"; {hint}")
        if not state.config_exists:
            problems.append(f"the endpoint's current config {state.config_name} no longer exists, so a failed "
                            "update could not be rolled back; recreate that config or delete the endpoint first")
        if state.serverless is False and target.options.serverless:
            problems.append(f"endpoint {target.endpoint_name} runs on instances and SageMaker cannot turn an "
                            "instance endpoint into a serverless one; deploy to a new endpoint name")
        if absent_alarms:
            problems.append(f"rollback alarm(s) {', '.join(absent_alarms)} do not exist in CloudWatch, so a bad "
                            "version would not be rolled back automatically; deploy infra/aws/fineship.yaml with "
                            f"EndpointName={target.endpoint_name} or set FINESHIP_ROLLBACK_ALARMS")
    if problems:
        raise DeploymentStepError("cannot deploy: " + "; ".join(problems), INSPECT)
    if existing == "mismatch":
        log.warning("s3://%s/%s does not hold this archive (its SHA-256 checksum differs or is missing): it will be "
                    "uploaded again", target.bucket, key)
    upload: Literal["new", "skip", "overwrite"] = {"absent": "new", "present": "skip", "mismatch": "overwrite",
                                                   "unknown": "overwrite"}[existing]
    return plan_deployment(target, archive, state, image_uri=image_uri, model_name=model_name, version=version,
                           git_commit=git_commit, smoke_texts=smoke_texts, upload=upload, deploy_id=deploy_id,
                           inspected=inspected, training_commit=training_commit, prunable=prunable)
