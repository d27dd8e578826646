"""The plan: every AWS call a deployment makes, decided before the first mutating one (pure: no AWS call).

`execute_plan` makes exactly the plan's calls, so the plan a dry run prints is what a real run does.
Around them it takes the deployment lock and keeps the journal (`lock.py`, `journal.py`): the plan names
both objects (`coordination`), so a dry run shows them too.
"""

from __future__ import annotations

import json
import re
import secrets
import urllib.parse
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from components.deploy.package_tar import ModelArchive
from components.deploy.sagemaker.calls import PlannedCall, waiter_config
from components.deploy.sagemaker.settings import (
    CREATE_CONFIG,
    CREATE_ENDPOINT,
    CREATE_MODEL,
    RECORD,
    SMOKE,
    TAG_ENDPOINT,
    TAG_PREFIX,
    UPDATE_ENDPOINT,
    UPLOAD,
    VARIANT,
    WAIT,
    SageMakerOptions,
    SageMakerTarget,
)
from components.deploy.sagemaker.state import EndpointState, sha256_base64
from components.errors import DeploymentError


class DeploymentPlan(BaseModel):
    """Every call a deployment makes, decided before the first mutating one."""

    model_config = ConfigDict(frozen=True)

    deploy_id: str
    mode: Literal["create", "update"]
    endpoint_name: str
    region: str
    model_name: str
    model_version: str
    git_commit: str
    image_uri: str
    sagemaker_model: str
    endpoint_config: str
    previous_config: str | None
    previous_tags: list[dict[str, str]] = Field(default_factory=list)
    endpoint_arn: str | None = None
    model_data_url: str
    archive_sha256: str
    archive_bytes: int
    upload: Literal["new", "skip", "overwrite"]
    smoke_texts: list[str]
    inspected: list[PlannedCall]
    calls: list[PlannedCall]
    on_failure: list[PlannedCall]
    prune: list[PlannedCall] = Field(default_factory=list)
    bucket: str = ""
    lock_keys: list[str] = Field(default_factory=list)
    journal_key: str = ""
    coordination: list[PlannedCall] = Field(default_factory=list)

    @property
    def mutating_calls(self) -> list[PlannedCall]:
        return [c for c in self.calls + self.prune if c.mutating]

    @property
    def archive_checksum(self) -> str:
        """The archive's SHA-256 as S3 reports it (`ChecksumSHA256`: base64 of the digest)."""
        return sha256_base64(self.archive_sha256)

    def render(self, dry_run: bool = True) -> str:
        """The plan as text for an operator."""
        mb = self.archive_bytes / 2 ** 20
        lines = [f"SageMaker deployment plan {self.deploy_id}"
                 + (" (dry run: none of the calls below was made)" if dry_run else ""),
                 f"  {self.model_name} v{self.model_version} -> endpoint {self.endpoint_name} in {self.region}: "
                 + ("create" if self.mode == "create" else f"blue/green update from {self.previous_config}"),
                 f"  image:    {self.image_uri}",
                 (f"  artifact: {self.model_data_url} ({mb:.1f} MB, sha256 {self.archive_sha256[:16]}…, "
                  f"upload: {self.upload})"),
                 f"  model:    {self.sagemaker_model}   endpoint config: {self.endpoint_config}",
                 "read (read-only, already made):"]
        lines += [f"   - {c.render()}" for c in self.inspected]
        if self.coordination:
            lines.append("serialise and journal (before the first call, and before and after each mutating one):")
            lines += [f"   - [{c.step}] {c.render()}" for c in self.coordination]
        lines.append("would call, in order:" if dry_run else "calls, in order:")
        lines += [f"  {i:2d}. [{c.step}] {c.render()}" for i, c in enumerate(self.calls, 1)]
        if self.prune:
            lines.append("after success, prune configurations older than the rollback target:")
            lines += [f"   - {c.render()}" for c in self.prune]
        lines.append("on failure, roll back with:")
        lines += [f"   - {c.render()}" for c in self.on_failure]
        return "\n".join(lines)


def new_deploy_id(now: datetime | None = None) -> str:
    """A sortable, unique-enough id: UTC time plus 4 random hex digits."""
    now = now or datetime.now(UTC)
    return f"{now:%Y%m%d%H%M%S}-{secrets.token_hex(2)}"


def resource_name(endpoint_name: str, version: str, deploy_id: str) -> str:
    """`<endpoint>-v<version>-<deploy id>`, shortened to SageMaker's 63 characters."""
    suffix = f"-v{version}-{deploy_id}"
    return (endpoint_name[:63 - len(suffix)].rstrip("-") + suffix)[:63]


def artifact_key(prefix: str, model_name: str, version: str, sha256: str) -> str:
    """Content-addressed key: the same archive for the same version lands on the same key."""
    return f"{prefix.strip('/')}/models/{_safe(model_name)}/v{version}/{sha256[:16]}/model.tar.gz"


def _safe(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]", "-", name)


def lock_keys(prefix: str, endpoint_name: str, model_name: str) -> list[str]:
    """The lock objects a deployment holds: one per endpoint (one update at a time) and one per model (one
    deployment of its archives at a time, so no rollback deletes an archive another deployment is using).
    Sorted: every deployment takes them in the same order, so two cannot each hold one and wait for the other."""
    base = f"{prefix.strip('/')}/deployments/locks"
    return sorted([f"{base}/endpoint/{_safe(endpoint_name)}.json", f"{base}/model/{_safe(model_name)}.json"])


def journal_key(prefix: str, endpoint_name: str, deploy_id: str) -> str:
    """Where a deployment's journal of intended calls lives (the lock names it, so a later deployment finds it)."""
    return f"{prefix.strip('/')}/deployments/journals/{_safe(endpoint_name)}/{deploy_id}.json"


def resource_tags(endpoint_name: str, model_name: str, version: str, git_commit: str, deploy_id: str,
                  training_commit: str | None = None) -> list[dict[str, str]]:
    tags = {"managed-by": "fineship", "endpoint": endpoint_name, "model-name": model_name,
            "model-version": version, "git-commit": git_commit, "deploy-id": deploy_id}
    if training_commit:
        tags["training-git-commit"] = training_commit
    return [{"Key": TAG_PREFIX + k, "Value": str(v)[:256]} for k, v in tags.items()]


def capture_destination(bucket: str, prefix: str, endpoint_name: str) -> str:
    """Where an endpoint's DataCaptureConfig writes (and `fineship monitor --capture sagemaker` reads)."""
    return f"s3://{bucket}/{prefix.strip('/')}/data-capture/{endpoint_name}"


def _deployment_config(o: SageMakerOptions, rollback_alarms: Sequence[str]) -> dict[str, Any]:
    routing: dict[str, Any] = {"Type": o.strategy.upper(), "WaitIntervalInSeconds": o.wait_interval_seconds}
    if o.strategy == "canary":
        routing["CanarySize"] = {"Type": "CAPACITY_PERCENT", "Value": o.traffic_percent}
    elif o.strategy == "linear":
        routing["LinearStepSize"] = {"Type": "CAPACITY_PERCENT", "Value": o.traffic_percent}
    policy: dict[str, Any] = {"TrafficRoutingConfiguration": routing,
                              "TerminationWaitInSeconds": o.termination_wait_seconds}
    if o.max_execution_timeout_seconds is not None:
        policy["MaximumExecutionTimeoutInSeconds"] = o.max_execution_timeout_seconds
    config: dict[str, Any] = {"BlueGreenUpdatePolicy": policy}
    if rollback_alarms:
        config["AutoRollbackConfiguration"] = {"Alarms": [{"AlarmName": a} for a in rollback_alarms]}
    return config


# Restoring the previous configuration must be quick and must not be stopped by the alarms that may
# be firing because of the failed version.
RESTORE_CONFIG = {"BlueGreenUpdatePolicy": {"TrafficRoutingConfiguration": {"Type": "ALL_AT_ONCE",
                                                                             "WaitIntervalInSeconds": 0},
                                            "TerminationWaitInSeconds": 0}}


def plan_deployment(target: SageMakerTarget, archive: ModelArchive, state: EndpointState, *, image_uri: str,
                    model_name: str, version: str, git_commit: str, smoke_texts: Sequence[str],
                    upload: Literal["new", "skip", "overwrite"], deploy_id: str,
                    inspected: Sequence[PlannedCall] = (), training_commit: str | None = None,
                    prunable: Sequence[dict[str, Any]] = ()) -> DeploymentPlan:
    """Decide every call of the deployment (pure: no AWS call)."""
    if not (target.region and target.role_arn and target.bucket):
        raise DeploymentError("a plan needs the region, role and bucket: run `require_preflight` on the target first")
    o = target.options
    name = resource_name(target.endpoint_name, version, deploy_id)
    key = artifact_key(target.prefix, model_name, version, archive.sha256)
    data_url = f"s3://{target.bucket}/{key}"
    tags = resource_tags(target.endpoint_name, model_name, version, git_commit, deploy_id, training_commit)
    update = state.exists
    variant_name = (state.variant_name or VARIANT) if update else VARIANT
    calls: list[PlannedCall] = []

    if upload != "skip":
        calls.append(PlannedCall(
            step=UPLOAD, service="s3", operation="PutObject", mutating=True,
            params={"Bucket": target.bucket, "Key": key, "ContentType": "application/gzip",
                    # S3 checks the body against this digest (BadDigest otherwise) and keeps it: HeadObject
                    # with ChecksumMode=ENABLED gives it back, which is how a later deployment knows the object
                    # holds this archive. The metadata is for people only; it is never trusted.
                    "ChecksumAlgorithm": "SHA256", "ChecksumSHA256": sha256_base64(archive.sha256),
                    "Metadata": {"sha256": archive.sha256},
                    "Tagging": urllib.parse.urlencode({t["Key"]: t["Value"] for t in tags})},
            note=f"Body: {archive.path} ({archive.size_bytes} bytes)"))
    environment = {
        "SAGEMAKER_PROGRAM": "inference.py",
        "SAGEMAKER_SUBMIT_DIRECTORY": "/opt/ml/model/code",
        "SAGEMAKER_CONTAINER_LOG_LEVEL": "20",
        "SAGEMAKER_REGION": target.region,
        "HF_HUB_OFFLINE": "1",
        "TOKENIZERS_PARALLELISM": "false",
        "FINESHIP_BACKEND": "torchscript" if o.torchscript else "eager",  # read by inference.model_fn
    }
    calls.append(PlannedCall(
        step=CREATE_MODEL, service="sagemaker", operation="CreateModel", mutating=True,
        params={"ModelName": name, "ExecutionRoleArn": target.role_arn,
                "PrimaryContainer": {"Image": image_uri, "ModelDataUrl": data_url, "Environment": environment},
                "Tags": tags}))
    variant: dict[str, Any] = {"VariantName": variant_name, "ModelName": name, "InitialVariantWeight": 1.0}
    if o.serverless:
        serverless: dict[str, Any] = {"MemorySizeInMB": o.serverless_memory_mb,
                                      "MaxConcurrency": o.serverless_max_concurrency}
        if o.serverless_provisioned_concurrency:
            serverless["ProvisionedConcurrency"] = o.serverless_provisioned_concurrency
        variant["ServerlessConfig"] = serverless
    else:
        variant.update({"InstanceType": o.instance_type, "InitialInstanceCount": o.instance_count})
    config_params: dict[str, Any] = {"EndpointConfigName": name, "ProductionVariants": [variant], "Tags": tags}
    if o.data_capture_percent is not None:
        config_params["DataCaptureConfig"] = {
            "EnableCapture": True, "InitialSamplingPercentage": o.data_capture_percent,
            "DestinationS3Uri": capture_destination(target.bucket, target.prefix, target.endpoint_name),
            "CaptureOptions": [{"CaptureMode": "Input"}, {"CaptureMode": "Output"}],
            "CaptureContentTypeHeader": {"JsonContentTypes": ["application/json"]}}
    calls.append(PlannedCall(step=CREATE_CONFIG, service="sagemaker", operation="CreateEndpointConfig",
                             params=config_params, mutating=True))
    if update:
        calls.append(PlannedCall(
            step=UPDATE_ENDPOINT, service="sagemaker", operation="UpdateEndpoint", mutating=True,
            params={"EndpointName": target.endpoint_name, "EndpointConfigName": name,
                    "RetainAllVariantProperties": False,
                    "DeploymentConfig": _deployment_config(o, target.rollback_alarms)},
            note=f"blue/green {o.strategy}, previous config {state.config_name} kept for rollback"))
    else:
        calls.append(PlannedCall(step=CREATE_ENDPOINT, service="sagemaker", operation="CreateEndpoint",
                                 params={"EndpointName": target.endpoint_name, "EndpointConfigName": name,
                                         "Tags": tags}, mutating=True))
    calls.append(PlannedCall(
        step=WAIT, service="sagemaker", operation="DescribeEndpoint", mutating=False,
        params={"EndpointName": target.endpoint_name,
                "WaiterConfig": waiter_config(o.wait_timeout_seconds, o.poll_seconds)},
        note=f"waiter endpoint_in_service, then EndpointConfigName must be {name}"))
    calls.append(PlannedCall(
        step=SMOKE, service="sagemaker-runtime", operation="InvokeEndpoint", mutating=False,
        params={"EndpointName": target.endpoint_name, "ContentType": "application/json",
                "Accept": "application/json", "Body": json.dumps({"inputs": list(smoke_texts)})},
        note=f"{len(smoke_texts)} held-out texts; every label must equal the registered model's"))
    if update:
        calls.append(PlannedCall(step=TAG_ENDPOINT, service="sagemaker", operation="AddTags", mutating=True,
                                 params={"ResourceArn": state.arn, "Tags": tags}))
    calls.append(PlannedCall(step=RECORD, service="mlflow", operation="SetModelVersionTag", mutating=True,
                             params={"name": model_name, "version": version, "tags": "fineship.sagemaker.*"}))

    on_failure: list[PlannedCall] = []
    if update:
        on_failure.append(PlannedCall(
            step="rollback", service="sagemaker", operation="UpdateEndpoint", mutating=True,
            params={"EndpointName": target.endpoint_name, "EndpointConfigName": state.config_name,
                    "DeploymentConfig": RESTORE_CONFIG},
            note="when the endpoint left its previous config; Delete+CreateEndpoint when it ended in Failed"))
    else:
        on_failure.append(PlannedCall(step="rollback", service="sagemaker", operation="DeleteEndpoint",
                                      params={"EndpointName": target.endpoint_name}, mutating=True))
    on_failure += [
        PlannedCall(step="rollback", service="sagemaker", operation="DeleteEndpointConfig",
                    params={"EndpointConfigName": name}, mutating=True),
        PlannedCall(step="rollback", service="sagemaker", operation="DeleteModel", params={"ModelName": name},
                    mutating=True)]
    if upload == "new":
        on_failure.append(PlannedCall(step="rollback", service="s3", operation="DeleteObject",
                                      params={"Bucket": target.bucket, "Key": key}, mutating=True))
    on_failure.append(PlannedCall(step="rollback", service="mlflow", operation="SetModelVersionTag", mutating=True,
                                  params={"name": model_name, "version": version,
                                          "tags": "fineship.sagemaker.status=failed, failed_step, error"}))

    # After success: the serving config and `keep_previous` older ones stay (the newest older one is the
    # rollback target); older fineship configs of this endpoint and their models go.
    prune: list[PlannedCall] = []
    keep = {name, state.config_name}
    older = [c for c in prunable if c["name"] not in keep]
    for cfg in older[:max(0, len(older) - (o.keep_previous - 1))] if update else []:
        prune.append(PlannedCall(step="prune", service="sagemaker", operation="DeleteEndpointConfig",
                                 params={"EndpointConfigName": cfg["name"]}, mutating=True))
        prune += [PlannedCall(step="prune", service="sagemaker", operation="DeleteModel", params={"ModelName": m},
                              mutating=True) for m in cfg["models"]]
    locks = lock_keys(target.prefix, target.endpoint_name, model_name)
    journal = journal_key(target.prefix, target.endpoint_name, deploy_id)
    coordination = [PlannedCall(step="lock", service="s3", operation="PutObject", mutating=True,
                                params={"Bucket": target.bucket, "Key": k, "IfNoneMatch": "*"},
                                note="created only if absent; renewed with IfMatch, released with DeleteObject "
                                     "IfMatch") for k in locks]
    coordination.append(PlannedCall(step="journal", service="s3", operation="PutObject", mutating=True,
                                    params={"Bucket": target.bucket, "Key": journal},
                                    note="each mutating call is recorded before it is made"))
    return DeploymentPlan(
        deploy_id=deploy_id, mode="update" if update else "create", endpoint_name=target.endpoint_name,
        region=target.region, model_name=model_name, model_version=version, git_commit=git_commit,
        image_uri=image_uri, sagemaker_model=name, endpoint_config=name,
        previous_config=state.config_name if update else None, previous_tags=state.tags, endpoint_arn=state.arn,
        model_data_url=data_url, archive_sha256=archive.sha256, archive_bytes=archive.size_bytes, upload=upload,
        smoke_texts=list(smoke_texts), inspected=list(inspected), calls=calls, on_failure=on_failure, prune=prune,
        bucket=target.bucket, lock_keys=locks, journal_key=journal,
        coordination=coordination)
