"""SageMaker deployment with blue/green updates, a smoke test and rollback on any failure.

    pre-flight -> build model.tar.gz -> inspect the endpoint (read-only) -> plan
    -> S3 PutObject -> CreateModel -> CreateEndpointConfig -> CreateEndpoint | UpdateEndpoint (blue/green)
    -> wait for InService -> InvokeEndpoint smoke test -> tag the endpoint -> record on the model version
    -> prune configs and models older than the rollback target

Every AWS call a deployment will make is decided up front in a `DeploymentPlan`; `execute_plan`
makes exactly those calls, so the plan a dry run prints is what a real run does. A failure at
any step rolls back: the endpoint goes back to the configuration it served before (or is deleted
when this deployment created it), the model, endpoint configuration and uploaded object this
deployment created are deleted, the failure is recorded on the model version, and a
`DeploymentStepError` names the failed step.

The boto3 clients are passed in (`AwsClients`), so the same code runs against AWS or a local
endpoint such as a moto server. The `sagemaker` SDK (3.x) is used where it adds something boto3
lacks: resolving the official PyTorch inference image URI from the tables it ships (offline). Its
resource classes (`sagemaker.core.resources`) are not used: they fail validation against moto.
"""

from __future__ import annotations

import functools
import json
import logging
import math
import re
import secrets
import shutil
import time
import urllib.parse
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal, Protocol

from pydantic import BaseModel, ConfigDict, Field

from components.deploy.package_tar import (
    ModelArchive,
    build_model_archive,
    package_size_bytes,
)
from components.errors import DeploymentError
from components.package import check_package

log = logging.getLogger(__name__)

# Step names: they appear in errors, in the plan and in the tags recorded on the model version.
PREFLIGHT = "pre-flight"
BUILD = "build-archive"
INSPECT = "inspect"
UPLOAD = "upload"
CREATE_MODEL = "create-model"
CREATE_CONFIG = "create-endpoint-config"
CREATE_ENDPOINT = "create-endpoint"
UPDATE_ENDPOINT = "update-endpoint"
WAIT = "wait-in-service"
SMOKE = "smoke-test"
TAG_ENDPOINT = "tag-endpoint"
RECORD = "record"

VARIANT = "AllTraffic"  # the variant the infra/aws alarms watch
SERVERLESS_MEMORY_MB = (1024, 2048, 3072, 4096, 5120, 6144)
SERVERLESS_MAX_CONCURRENCY = 200
SERVERLESS_IMAGE_MAX_MB = 10 * 1024
SERVERLESS_DISK_MB = 5 * 1024
# Memory the serving runtime takes before the weights: python + torch + transformers measured ~400 MB
# RSS here, plus the container's model server (TorchServe runs a JVM).
RUNTIME_MEMORY_MB = 768
MIN_FRAMEWORK = (2, 6)  # transformers 5 needs torch >= 2.6
TRANSITIONAL = ("Creating", "Updating", "SystemUpdating", "RollingBack", "Deleting")
TAG_PREFIX = "fineship:"
RECORD_PREFIX = "fineship.sagemaker."

_NAME = re.compile(r"^[a-zA-Z0-9](-*[a-zA-Z0-9]){0,62}$")
_ROLE_ARN = re.compile(r"^arn:aws(-[a-z]+)*:iam::\d{12}:role/[\w+=,.@/-]{1,512}$")
_BUCKET = re.compile(r"^(?!xn--)(?!.*\.\.)[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]$")
_REGION = re.compile(r"^[a-z]{2}(-gov|-iso[a-z]?)?-[a-z]+-\d$")
_ECR_IMAGE = re.compile(r"^(?P<account>\d{12})\.dkr\.ecr\.(?P<region>[a-z0-9-]+)\.amazonaws\.com(\.cn)?/"
                        r"(?P<repo>[a-z0-9][a-z0-9._/-]*)(?P<ref>:[\w][\w.-]{0,127}|@sha256:[0-9a-f]{64})?$")


@dataclass(frozen=True)
class AwsClients:
    """The boto3 clients a deployment uses, built by the caller (from settings, for AWS or a local endpoint)."""

    s3: Any
    sagemaker: Any
    runtime: Any  # sagemaker-runtime
    cloudwatch: Any | None = None  # to check that the rollback alarms exist before an update

    @classmethod
    def create(cls, region: str | None, endpoint_url: str | None = None) -> AwsClients:
        """Clients for `region` (and an endpoint override such as a moto server), with botocore's standard
        retry mode, which retries throttling, 5xx and connection errors of each call."""
        import boto3
        from botocore.config import Config

        config = Config(retries={"mode": "standard", "max_attempts": 5}, connect_timeout=10, read_timeout=70)
        session = boto3.session.Session(region_name=region)

        def client(service: str) -> Any:
            return session.client(service, endpoint_url=endpoint_url, config=config)

        return cls(s3=client("s3"), sagemaker=client("sagemaker"), runtime=client("sagemaker-runtime"),
                   cloudwatch=client("cloudwatch"))


class VersionTagger(Protocol):
    """Where deployments are recorded: `MlflowRegistry` fits."""

    def set_version_tags(self, name: str, version: str, tags: dict[str, str]) -> None: ...


class SageMakerTarget(BaseModel):
    """Where and how to deploy. Plain fields; `preflight` says what is wrong with them and what to change."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    endpoint_name: str
    region: str | None
    role_arn: str | None = Field(None, description="SageMaker execution role (SageMakerExecutionRoleArn).")
    bucket: str | None = Field(None, description="Artifact bucket for model.tar.gz (ArtifactBucketName).")
    prefix: str = Field("fineship", description="The key prefix the execution role may read (ArtifactPrefix).")
    image_uri: str | None = Field(None, description="Serving image; None: the official PyTorch inference image.")
    framework_version: str = "2.6"
    py_version: str = "py312"
    image_size_mb: int | None = Field(None, description="Size of a custom image, checked against serverless limits.")
    instance_type: str = "ml.m5.large"
    instance_count: int = 1
    serverless_memory_mb: int | None = Field(None, description="Set for a serverless endpoint (1024..6144).")
    serverless_max_concurrency: int = 5
    serverless_provisioned_concurrency: int | None = None
    data_capture_percent: int | None = Field(None, description="Capture this share of requests to S3; None: off.")
    strategy: Literal["all_at_once", "canary", "linear"] = "all_at_once"
    traffic_percent: int = Field(25, description="Canary size or linear step, in percent of the new fleet.")
    wait_interval_seconds: int = Field(300, description="Baking time between traffic shifts.")
    termination_wait_seconds: int = Field(300, description="How long the old fleet stays after the shift.")
    max_execution_timeout_seconds: int | None = None
    rollback_alarms: tuple[str, ...] = ()
    torchscript: bool = False
    wait_timeout_seconds: float = 3600
    rollback_timeout_seconds: float = 1800
    poll_seconds: float = 15
    keep_previous: int = Field(1, description="Older configurations (and their models) kept for rollback.")

    @property
    def serverless(self) -> bool:
        return self.serverless_memory_mb is not None


class PreflightIssue(BaseModel):
    model_config = ConfigDict(frozen=True)

    check: str
    message: str


class DeploymentStepError(DeploymentError):
    """A SageMaker deployment failed at `step`; `rolled_back` says what was undone, `left_behind` what was not."""

    def __init__(self, message: str, step: str, rolled_back: Sequence[str] = (), left_behind: Sequence[str] = ()):
        super().__init__(message)
        self.step = step
        self.rolled_back = list(rolled_back)
        self.left_behind = list(left_behind)


class PreflightError(DeploymentStepError):
    """Pre-flight checks failed; nothing was called on AWS."""

    def __init__(self, issues: Sequence[PreflightIssue]):
        lines = "\n".join(f"  - [{i.check}] {i.message}" for i in issues)
        super().__init__(f"pre-flight checks failed, nothing was called on AWS:\n{lines}", PREFLIGHT)
        self.issues = list(issues)


# ----------------------------------------------------------------------------------------------
# pre-flight: no AWS call
# ----------------------------------------------------------------------------------------------

def rollback_alarm_names(project: str, environment: str, endpoint_name: str) -> tuple[str, str]:
    """The alarms infra/aws/fineship.yaml creates for an endpoint (5xx errors, model latency)."""
    base = f"{project}-{environment}-{endpoint_name}"
    return f"{base}-invocation-5xx-errors", f"{base}-model-latency"


def _version_tuple(text: str) -> tuple[int, ...]:
    return tuple(int(p) for p in re.findall(r"\d+", text)[:2])


def resolve_image_uri(target: SageMakerTarget) -> str:
    """The serving image: `target.image_uri`, or the official SageMaker PyTorch inference image for the region.

    The official URI comes from the tables bundled with the sagemaker SDK, so this works offline.
    """
    if target.image_uri:
        return target.image_uri
    from sagemaker.core import image_uris

    kwargs: dict[str, Any] = {"framework": "pytorch", "region": target.region, "version": target.framework_version,
                              "py_version": target.py_version, "image_scope": "inference"}
    if target.serverless:
        from sagemaker.core.serverless_inference_config import ServerlessInferenceConfig

        kwargs["serverless_inference_config"] = ServerlessInferenceConfig(
            memory_size_in_mb=target.serverless_memory_mb, max_concurrency=target.serverless_max_concurrency)
    else:
        kwargs["instance_type"] = target.instance_type
    return image_uris.retrieve(**kwargs)


@functools.lru_cache(maxsize=1)
def _instance_types() -> frozenset[str]:
    """Hosting instance types from botocore's SageMaker service model (offline)."""
    import botocore.session

    shape = botocore.session.get_session().get_service_model("sagemaker").shape_for("ProductionVariantInstanceType")
    return frozenset(shape.enum)


def _local_torch() -> str:
    import importlib.metadata

    return importlib.metadata.version("torch")


def _torchscript_problem(package_dir: str | Path) -> str | None:
    """Why the package's TorchScript export cannot be served, or None (the loader re-checks its hashes)."""
    from components.export.spec import RESULT_FILE, SPEC_FILE, export_dir, read_result

    d = export_dir(package_dir, "torchscript")
    if not (d / SPEC_FILE).is_file():
        return f"{package_dir} has no TorchScript export ({d / SPEC_FILE} is missing)"
    if not (d / RESULT_FILE).is_file():
        return f"the TorchScript export in {d} has no parity report"
    if not read_result(d).passed:
        return f"the TorchScript export in {d} failed its parity check"
    return None


def preflight(target: SageMakerTarget, package_dir: str | Path) -> tuple[list[PreflightIssue], str | None]:
    """Check everything that can be checked without AWS; return the issues and the resolved image URI."""
    issues: list[PreflightIssue] = []

    def bad(check: str, message: str) -> None:
        issues.append(PreflightIssue(check=check, message=message))

    t = target
    if not t.region:
        bad("region", "no AWS region: set FINESHIP_AWS_REGION (the region of the infra/aws stack)")
    elif not _REGION.match(t.region):
        bad("region", f"'{t.region}' is not an AWS region name (like eu-west-1); fix FINESHIP_AWS_REGION")
    if not t.role_arn:
        bad("role", "no SageMaker execution role: set FINESHIP_SAGEMAKER_ROLE_ARN to the stack's "
                    "SageMakerExecutionRoleArn output")
    elif not _ROLE_ARN.match(t.role_arn):
        bad("role", f"'{t.role_arn}' is not an IAM role ARN of the form arn:aws:iam::<12-digit account>:role/<name>;"
                    " use the stack's SageMakerExecutionRoleArn output")
    if not t.bucket:
        bad("bucket", "no artifact bucket: set FINESHIP_ARTIFACT_BUCKET to the stack's ArtifactBucketName output")
    elif not _BUCKET.match(t.bucket):
        bad("bucket", f"'{t.bucket}' is not a valid S3 bucket name (3-63 lower-case letters, digits, dots, "
                      "hyphens); use the stack's ArtifactBucketName output")
    if not t.prefix.strip("/") or t.prefix != t.prefix.strip("/"):
        bad("bucket", f"artifact prefix '{t.prefix}' must be non-empty without leading or trailing '/'; "
                      "use the stack's ArtifactPrefix (default fineship)")
    if not _NAME.match(t.endpoint_name):
        bad("endpoint", f"endpoint name '{t.endpoint_name}' must be 1-63 letters, digits and hyphens, starting and "
                        "ending with a letter or digit")

    # the endpoint shape
    if t.serverless:
        if t.serverless_memory_mb not in SERVERLESS_MEMORY_MB:
            bad("serverless", f"serverless memory {t.serverless_memory_mb} MB is not allowed: use one of "
                              f"{', '.join(map(str, SERVERLESS_MEMORY_MB))} (1 GB steps up to 6 GB)")
        if not 1 <= t.serverless_max_concurrency <= SERVERLESS_MAX_CONCURRENCY:
            bad("serverless", f"serverless max concurrency {t.serverless_max_concurrency} is outside 1.."
                              f"{SERVERLESS_MAX_CONCURRENCY}; pick a value in that range")
        pc = t.serverless_provisioned_concurrency
        if pc is not None and not 1 <= pc <= t.serverless_max_concurrency:
            bad("serverless", f"provisioned concurrency {pc} must be between 1 and the max concurrency "
                              f"({t.serverless_max_concurrency}); lower it or raise the max concurrency")
        if t.data_capture_percent is not None:
            bad("serverless", "serverless endpoints do not support data capture: drop the data capture setting or "
                              "deploy to an instance type")
        if t.image_size_mb is not None and t.image_size_mb > SERVERLESS_IMAGE_MAX_MB:
            bad("serverless", f"the image is {t.image_size_mb} MB; serverless endpoints take images up to "
                              f"{SERVERLESS_IMAGE_MAX_MB} MB: slim the image or deploy to an instance type")
    else:
        if t.instance_type not in _instance_types():
            bad("instance", f"'{t.instance_type}' is not a SageMaker hosting instance type (e.g. ml.m5.large, "
                            "ml.c5.xlarge, ml.g5.xlarge); fix the instance type")
        if t.instance_count < 1:
            bad("instance", f"instance count {t.instance_count} must be at least 1")
        if t.strategy != "all_at_once" and t.instance_count < 2:
            bad("strategy", f"{t.strategy} traffic shifting needs at least 2 instances to shift part of the "
                            "traffic; raise the instance count or use all_at_once")
    if t.data_capture_percent is not None and not 1 <= t.data_capture_percent <= 100:
        bad("data-capture", f"data capture {t.data_capture_percent}% must be between 1 and 100 (or off)")

    # blue/green settings (DeploymentConfig limits from the SageMaker API reference)
    if t.strategy == "canary" and not 1 <= t.traffic_percent <= 50:
        bad("strategy", f"canary size {t.traffic_percent}% must be 1..50% of the new fleet")
    if t.strategy == "linear" and not 10 <= t.traffic_percent <= 50:
        bad("strategy", f"linear step {t.traffic_percent}% must be 10..50% of the new fleet")
    if not 0 <= t.wait_interval_seconds <= 3600:
        bad("strategy", f"wait interval {t.wait_interval_seconds} s must be 0..3600 s")
    if not 0 <= t.termination_wait_seconds <= 3600:
        bad("strategy", f"termination wait {t.termination_wait_seconds} s must be 0..3600 s")
    if t.max_execution_timeout_seconds is not None:
        floor = max(600, t.wait_interval_seconds + t.termination_wait_seconds + 1)
        if not floor <= t.max_execution_timeout_seconds <= 28800:
            bad("strategy", f"max execution timeout {t.max_execution_timeout_seconds} s must be {floor}..28800 s "
                            "(above the wait interval plus the termination wait)")
    if len(t.rollback_alarms) > 10 or any(not a.strip() for a in t.rollback_alarms):
        bad("alarms", "give at most 10 non-empty rollback alarm names (FINESHIP_ROLLBACK_ALARMS)")
    if t.wait_timeout_seconds <= 0 or t.poll_seconds <= 0 or t.rollback_timeout_seconds <= 0:
        bad("timeouts", "the wait timeout, rollback timeout and poll interval must be positive")
    if t.keep_previous < 1:
        bad("retention", "keep at least the previous configuration (keep_previous >= 1): it is the rollback target")

    # the artifact
    missing = check_package(package_dir)
    if missing:
        bad("package", f"model package {package_dir} is incomplete: missing {', '.join(missing)}; "
                       "re-register the version from a complete training run")
    if t.torchscript and not missing:
        problem = _torchscript_problem(package_dir)
        if problem:
            bad("package", f"--torchscript was asked for but {problem}; export this version first "
                           "(components.export.export_package(..., kind='torchscript')) or deploy without --torchscript")
        if not t.image_uri and _version_tuple(t.framework_version) < _version_tuple(_local_torch()):
            bad("image", f"the TorchScript export comes from torch {_local_torch()} and may not load in the official "
                         f"PyTorch {t.framework_version} image; set FINESHIP_IMAGE_URI to the project's serving image "
                         "(docker/) or deploy without --torchscript")
    if not missing and t.serverless and t.serverless_memory_mb in SERVERLESS_MEMORY_MB:
        size_mb = package_size_bytes(package_dir) / 2 ** 20
        need = math.ceil(size_mb + RUNTIME_MEMORY_MB)
        if need > t.serverless_memory_mb:
            bad("serverless", f"the model is {size_mb:.0f} MB and needs about {need} MB with the runtime, more than "
                              f"the {t.serverless_memory_mb} MB serverless memory: raise the memory (up to 6144) "
                              "or deploy to an instance type")
        if size_mb * 2 > SERVERLESS_DISK_MB:  # the archive and its unpacked copy share the 5 GB disk
            bad("serverless", f"the model is {size_mb:.0f} MB; a serverless endpoint's 5 GB disk holds the "
                              "archive and its unpacked files: deploy to an instance type")

    # the image
    image: str | None = None
    if t.image_uri:
        m = _ECR_IMAGE.match(t.image_uri)
        if not m:
            bad("image", f"'{t.image_uri}' is not an ECR image URI (<account>.dkr.ecr.<region>.amazonaws.com/"
                         "<repository>:<tag>); use the stack's ServingRepositoryUri with a tag")
        elif t.region and m["region"] != t.region:
            bad("image", f"the image is in {m['region']} but the endpoint is in {t.region}; push the image to "
                         f"{t.region}'s repository")
        elif not m["ref"] or m["ref"] == ":latest":
            bad("image", f"'{t.image_uri}' has no fixed tag; tag the image with a version or git commit "
                         "(the repositories' tags are immutable)")
        else:
            image = t.image_uri
    elif t.region and _REGION.match(t.region):
        if _version_tuple(t.framework_version) < MIN_FRAMEWORK:
            bad("image", f"PyTorch {t.framework_version} is too old for transformers 5; use framework version "
                         f"{'.'.join(map(str, MIN_FRAMEWORK))} or newer")
        else:
            try:
                image = resolve_image_uri(t)
            except (ValueError, KeyError) as err:
                bad("image", f"no official PyTorch inference image for version {t.framework_version}, "
                             f"{t.py_version} in {t.region} ({err}); pick a listed version or set FINESHIP_IMAGE_URI")
    return issues, image


def require_preflight(target: SageMakerTarget, package_dir: str | Path) -> str:
    """Run the pre-flight checks; raise `PreflightError` listing every issue, else return the image URI."""
    issues, image = preflight(target, package_dir)
    if issues:
        raise PreflightError(issues)
    assert image is not None
    return image


# ----------------------------------------------------------------------------------------------
# inspect: read-only calls
# ----------------------------------------------------------------------------------------------

class EndpointState(BaseModel):
    """What is deployed now, read before planning."""

    model_config = ConfigDict(frozen=True)

    exists: bool
    arn: str | None = None
    status: str | None = None
    config_name: str | None = None
    config_exists: bool = False
    variant_name: str | None = None
    serverless: bool | None = None
    failure_reason: str | None = None
    tags: list[dict[str, str]] = Field(default_factory=list)


def _error_code(err: BaseException) -> str:
    response = getattr(err, "response", None)
    return response.get("Error", {}).get("Code", "") if isinstance(response, dict) else ""


def _is_not_found(err: BaseException) -> bool:
    code = _error_code(err)
    message = str(getattr(err, "response", {}).get("Error", {}).get("Message", "")) if code else ""
    return code in ("ValidationException", "ValidationError") and "could not find" in message.lower()


def describe(err: BaseException) -> str:
    """A one-line account of an AWS or other error."""
    response = getattr(err, "response", None)
    if isinstance(response, dict) and "Error" in response:
        e = response["Error"]
        status = response.get("ResponseMetadata", {}).get("HTTPStatusCode")
        return f"{e.get('Code') or status}: {e.get('Message') or 'HTTP ' + str(status)}"
    return f"{type(err).__name__}: {err}"


def inspect_endpoint(clients: AwsClients, endpoint_name: str) -> EndpointState:
    """DescribeEndpoint (+ DescribeEndpointConfig, ListTags) of the target endpoint; read-only."""
    from botocore.exceptions import ClientError

    sm = clients.sagemaker
    try:
        d = sm.describe_endpoint(EndpointName=endpoint_name)
    except ClientError as err:
        if _is_not_found(err):
            return EndpointState(exists=False)
        raise
    config_name = d.get("EndpointConfigName")
    variant, serverless, config_exists = None, None, False
    if config_name:
        try:
            cfg = sm.describe_endpoint_config(EndpointConfigName=config_name)
            config_exists = True
            variants = cfg.get("ProductionVariants") or [{}]
            variant = variants[0].get("VariantName")
            serverless = "ServerlessConfig" in variants[0]
        except ClientError as err:
            if not _is_not_found(err):
                raise
    tags = sm.list_tags(ResourceArn=d["EndpointArn"]).get("Tags", [])
    return EndpointState(exists=True, arn=d["EndpointArn"], status=d["EndpointStatus"], config_name=config_name,
                         config_exists=config_exists, variant_name=variant, serverless=serverless,
                         failure_reason=d.get("FailureReason"), tags=[{"Key": t["Key"], "Value": t["Value"]}
                                                                      for t in tags])


def object_state(clients: AwsClients, bucket: str, key: str, sha256: str) -> Literal["absent", "present", "unknown"]:
    """Whether s3://bucket/key already holds this archive (HeadObject; read-only)."""
    from botocore.exceptions import ClientError

    try:
        head = clients.s3.head_object(Bucket=bucket, Key=key)
    except ClientError as err:
        status = err.response.get("ResponseMetadata", {}).get("HTTPStatusCode")
        if status == 404 or _error_code(err) in ("404", "NoSuchKey", "NotFound"):
            return "absent"
        if status == 403:  # without s3:ListBucket a missing key answers 403: we cannot tell
            return "unknown"
        raise
    return "present" if head.get("Metadata", {}).get("sha256") == sha256 else "unknown"


def missing_alarms(clients: AwsClients, names: Sequence[str]) -> list[str]:
    """Rollback alarms that do not exist in CloudWatch (DescribeAlarms; read-only)."""
    if not names or clients.cloudwatch is None:
        return []
    found = clients.cloudwatch.describe_alarms(AlarmNames=list(names)).get("MetricAlarms", [])
    present = {a["AlarmName"] for a in found}
    return [n for n in names if n not in present]


def managed_configs(clients: AwsClients, endpoint_name: str) -> list[dict[str, Any]]:
    """fineship's endpoint configurations for this endpoint, oldest first, each with its model names."""
    sm = clients.sagemaker
    out, token = [], None
    while True:
        kwargs = {"NameContains": endpoint_name, "SortBy": "CreationTime", "SortOrder": "Ascending",
                  "MaxResults": 100}
        page = sm.list_endpoint_configs(**kwargs, **({"NextToken": token} if token else {}))
        for summary in page.get("EndpointConfigs", []):
            tags = {t["Key"]: t["Value"] for t in sm.list_tags(ResourceArn=summary["EndpointConfigArn"]).get("Tags", [])}
            if tags.get(TAG_PREFIX + "endpoint") != endpoint_name:
                continue
            cfg = sm.describe_endpoint_config(EndpointConfigName=summary["EndpointConfigName"])
            out.append({"name": summary["EndpointConfigName"], "created": summary["CreationTime"],
                        "models": [v["ModelName"] for v in cfg.get("ProductionVariants", [])]})
        token = page.get("NextToken")
        if not token:
            return out


# ----------------------------------------------------------------------------------------------
# the plan
# ----------------------------------------------------------------------------------------------

class PlannedCall(BaseModel):
    """One AWS call: the exact keyword arguments the boto3 client method gets."""

    model_config = ConfigDict(frozen=True)

    step: str
    service: Literal["s3", "sagemaker", "sagemaker-runtime", "cloudwatch", "mlflow"]
    operation: str
    params: dict[str, Any]
    mutating: bool
    note: str = ""

    def render(self, width: int = 400) -> str:
        params = json.dumps(self.params, separators=(",", "="), default=str)
        if len(params) > width:
            params = params[:width - 3] + "..."
        return f"{self.service} {self.operation} {params}" + (f"  # {self.note}" if self.note else "")


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

    @property
    def mutating_calls(self) -> list[PlannedCall]:
        return [c for c in self.calls + self.prune if c.mutating]

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
    safe = re.sub(r"[^A-Za-z0-9._-]", "-", model_name)
    return f"{prefix.strip('/')}/models/{safe}/v{version}/{sha256[:16]}/model.tar.gz"


def resource_tags(endpoint_name: str, model_name: str, version: str, git_commit: str, deploy_id: str,
                  training_commit: str | None = None) -> list[dict[str, str]]:
    tags = {"managed-by": "fineship", "endpoint": endpoint_name, "model-name": model_name,
            "model-version": version, "git-commit": git_commit, "deploy-id": deploy_id}
    if training_commit:
        tags["training-git-commit"] = training_commit
    return [{"Key": TAG_PREFIX + k, "Value": str(v)[:256]} for k, v in tags.items()]


def _deployment_config(target: SageMakerTarget) -> dict[str, Any]:
    routing: dict[str, Any] = {"Type": target.strategy.upper(), "WaitIntervalInSeconds": target.wait_interval_seconds}
    if target.strategy == "canary":
        routing["CanarySize"] = {"Type": "CAPACITY_PERCENT", "Value": target.traffic_percent}
    elif target.strategy == "linear":
        routing["LinearStepSize"] = {"Type": "CAPACITY_PERCENT", "Value": target.traffic_percent}
    policy: dict[str, Any] = {"TrafficRoutingConfiguration": routing,
                              "TerminationWaitInSeconds": target.termination_wait_seconds}
    if target.max_execution_timeout_seconds is not None:
        policy["MaximumExecutionTimeoutInSeconds"] = target.max_execution_timeout_seconds
    config: dict[str, Any] = {"BlueGreenUpdatePolicy": policy}
    if target.rollback_alarms:
        config["AutoRollbackConfiguration"] = {"Alarms": [{"AlarmName": a} for a in target.rollback_alarms]}
    return config


# Restoring the previous configuration must be quick and must not be stopped by the alarms that may
# be firing because of the failed version.
_RESTORE_CONFIG = {"BlueGreenUpdatePolicy": {"TrafficRoutingConfiguration": {"Type": "ALL_AT_ONCE",
                                                                              "WaitIntervalInSeconds": 0},
                                             "TerminationWaitInSeconds": 0}}


def _waiter_config(timeout: float, delay: float) -> dict[str, Any]:
    return {"Delay": delay, "MaxAttempts": max(1, math.ceil(timeout / delay))}


def plan_deployment(target: SageMakerTarget, archive: ModelArchive, state: EndpointState, *, image_uri: str,
                    model_name: str, version: str, git_commit: str, smoke_texts: Sequence[str],
                    upload: Literal["new", "skip", "overwrite"], deploy_id: str,
                    inspected: Sequence[PlannedCall] = (), training_commit: str | None = None,
                    prunable: Sequence[dict[str, Any]] = ()) -> DeploymentPlan:
    """Decide every call of the deployment (pure: no AWS call)."""
    assert target.region and target.role_arn and target.bucket
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
        "FINESHIP_BACKEND": "torchscript" if target.torchscript else "eager",  # read by inference.model_fn
    }
    calls.append(PlannedCall(
        step=CREATE_MODEL, service="sagemaker", operation="CreateModel", mutating=True,
        params={"ModelName": name, "ExecutionRoleArn": target.role_arn,
                "PrimaryContainer": {"Image": image_uri, "ModelDataUrl": data_url, "Environment": environment},
                "Tags": tags}))
    variant: dict[str, Any] = {"VariantName": variant_name, "ModelName": name, "InitialVariantWeight": 1.0}
    if target.serverless:
        serverless: dict[str, Any] = {"MemorySizeInMB": target.serverless_memory_mb,
                                      "MaxConcurrency": target.serverless_max_concurrency}
        if target.serverless_provisioned_concurrency:
            serverless["ProvisionedConcurrency"] = target.serverless_provisioned_concurrency
        variant["ServerlessConfig"] = serverless
    else:
        variant.update({"InstanceType": target.instance_type, "InitialInstanceCount": target.instance_count})
    config_params: dict[str, Any] = {"EndpointConfigName": name, "ProductionVariants": [variant], "Tags": tags}
    if target.data_capture_percent is not None:
        config_params["DataCaptureConfig"] = {
            "EnableCapture": True, "InitialSamplingPercentage": target.data_capture_percent,
            "DestinationS3Uri": f"s3://{target.bucket}/{target.prefix.strip('/')}/data-capture/{target.endpoint_name}",
            "CaptureOptions": [{"CaptureMode": "Input"}, {"CaptureMode": "Output"}],
            "CaptureContentTypeHeader": {"JsonContentTypes": ["application/json"]}}
    calls.append(PlannedCall(step=CREATE_CONFIG, service="sagemaker", operation="CreateEndpointConfig",
                             params=config_params, mutating=True))
    if update:
        calls.append(PlannedCall(
            step=UPDATE_ENDPOINT, service="sagemaker", operation="UpdateEndpoint", mutating=True,
            params={"EndpointName": target.endpoint_name, "EndpointConfigName": name,
                    "RetainAllVariantProperties": False, "DeploymentConfig": _deployment_config(target)},
            note=f"blue/green {target.strategy}, previous config {state.config_name} kept for rollback"))
    else:
        calls.append(PlannedCall(step=CREATE_ENDPOINT, service="sagemaker", operation="CreateEndpoint",
                                 params={"EndpointName": target.endpoint_name, "EndpointConfigName": name,
                                         "Tags": tags}, mutating=True))
    calls.append(PlannedCall(
        step=WAIT, service="sagemaker", operation="DescribeEndpoint", mutating=False,
        params={"EndpointName": target.endpoint_name,
                "WaiterConfig": _waiter_config(target.wait_timeout_seconds, target.poll_seconds)},
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
                    "DeploymentConfig": _RESTORE_CONFIG},
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
    for cfg in older[:max(0, len(older) - (target.keep_previous - 1))] if update else []:
        prune.append(PlannedCall(step="prune", service="sagemaker", operation="DeleteEndpointConfig",
                                 params={"EndpointConfigName": cfg["name"]}, mutating=True))
        prune += [PlannedCall(step="prune", service="sagemaker", operation="DeleteModel", params={"ModelName": m},
                              mutating=True) for m in cfg["models"]]
    return DeploymentPlan(
        deploy_id=deploy_id, mode="update" if update else "create", endpoint_name=target.endpoint_name,
        region=target.region, model_name=model_name, model_version=version, git_commit=git_commit,
        image_uri=image_uri, sagemaker_model=name, endpoint_config=name,
        previous_config=state.config_name if update else None, previous_tags=state.tags, endpoint_arn=state.arn,
        model_data_url=data_url, archive_sha256=archive.sha256, archive_bytes=archive.size_bytes, upload=upload,
        smoke_texts=list(smoke_texts), inspected=list(inspected), calls=calls, on_failure=on_failure, prune=prune)


class PreparedDeployment(BaseModel):
    """A plan and the archive it uploads."""

    model_config = ConfigDict(frozen=True)

    plan: DeploymentPlan
    archive: ModelArchive
    target: SageMakerTarget


def prepare_deployment(target: SageMakerTarget, package_dir: str | Path, clients: AwsClients, *, model_name: str,
                       version: str, smoke_texts: Sequence[str], work_dir: str | Path, git_commit: str,
                       training_commit: str | None = None, deploy_id: str | None = None) -> PreparedDeployment:
    """Pre-flight, build the archive, inspect the endpoint and plan. Only read-only AWS calls."""
    image = require_preflight(target, package_dir)
    if not smoke_texts:
        raise DeploymentStepError("no smoke-test texts: the version has no registered input example; pass "
                                  "smoke texts", PREFLIGHT)
    deploy_id = deploy_id or new_deploy_id()
    try:
        # The manifest names the code's commit only: the same package and code give the same bytes (and the
        # S3 key and the tags say which model version it is).
        archive = build_model_archive(package_dir, Path(work_dir) / deploy_id / "model.tar.gz",
                                      {"git_commit": git_commit})
    except (OSError, DeploymentError) as err:
        raise DeploymentStepError(f"building model.tar.gz from {package_dir} failed: {err}", BUILD) from err
    inspected = [PlannedCall(step=INSPECT, service="sagemaker", operation="DescribeEndpoint",
                             params={"EndpointName": target.endpoint_name}, mutating=False)]
    try:
        state = inspect_endpoint(clients, target.endpoint_name)
        key = artifact_key(target.prefix, model_name, version, archive.sha256)
        inspected.append(PlannedCall(step=INSPECT, service="s3", operation="HeadObject",
                                     params={"Bucket": target.bucket, "Key": key}, mutating=False))
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
        if state.serverless is False and target.serverless:
            problems.append(f"endpoint {target.endpoint_name} runs on instances and SageMaker cannot turn an "
                            "instance endpoint into a serverless one; deploy to a new endpoint name")
        if absent_alarms:
            problems.append(f"rollback alarm(s) {', '.join(absent_alarms)} do not exist in CloudWatch, so a bad "
                            "version would not be rolled back automatically; deploy infra/aws/fineship.yaml with "
                            f"EndpointName={target.endpoint_name} or set FINESHIP_ROLLBACK_ALARMS")
    if problems:
        raise DeploymentStepError("cannot deploy: " + "; ".join(problems), INSPECT)
    upload: Literal["new", "skip", "overwrite"] = {"absent": "new", "present": "skip", "unknown": "overwrite"}[existing]
    plan = plan_deployment(target, archive, state, image_uri=image, model_name=model_name, version=version,
                           git_commit=git_commit, smoke_texts=smoke_texts, upload=upload, deploy_id=deploy_id,
                           inspected=inspected, training_commit=training_commit, prunable=prunable)
    return PreparedDeployment(plan=plan, archive=archive, target=target)


# ----------------------------------------------------------------------------------------------
# execution and rollback
# ----------------------------------------------------------------------------------------------

class SmokeReport(BaseModel):
    model_config = ConfigDict(frozen=True)

    n: int
    agreed: int
    labels: list[str]
    variant: str | None = None


class SageMakerDeploymentRecord(BaseModel):
    """A successful SageMaker deployment."""

    model_config = ConfigDict(frozen=True)

    target: Literal["sagemaker"] = "sagemaker"
    endpoint_name: str
    endpoint_arn: str | None
    endpoint_config: str
    sagemaker_model: str
    model_data_url: str
    image_uri: str
    region: str
    model_name: str
    model_version: str
    previous_config: str | None
    deploy_id: str
    mode: Literal["create", "update"]
    smoke: SmokeReport
    pruned: list[str] = Field(default_factory=list)
    deployed_at: str


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


def _client(clients: AwsClients, service: str) -> Any:
    return {"s3": clients.s3, "sagemaker": clients.sagemaker, "sagemaker-runtime": clients.runtime,
            "cloudwatch": clients.cloudwatch}[service]


def _call(clients: AwsClients, call: PlannedCall, **extra: Any) -> dict[str, Any]:
    from botocore import xform_name

    return getattr(_client(clients, call.service), xform_name(call.operation))(**call.params, **extra)


def _wait_in_service(clients: AwsClients, name: str, waiter_config: dict[str, Any]) -> dict[str, Any]:
    """The boto3 `endpoint_in_service` waiter, with errors that say what happened."""
    from botocore.exceptions import WaiterError

    try:
        clients.sagemaker.get_waiter("endpoint_in_service").wait(EndpointName=name, WaiterConfig=waiter_config)
    except WaiterError as err:
        last = err.last_response or {}
        status = last.get("EndpointStatus", "unknown")
        seconds = waiter_config["Delay"] * waiter_config["MaxAttempts"]
        if status == "Failed":
            raise DeploymentError(
                f"endpoint {name} ended in Failed: {last.get('FailureReason', 'no reason given')}") from None
        if "Max attempts exceeded" in str(err):
            raise DeploymentError(f"endpoint {name} was not InService within {seconds:.0f} s (still {status}); "
                                  "raise the wait timeout or see its CloudWatch logs") from None
        raise DeploymentError(f"waiting for endpoint {name} failed: {err}") from None
    return clients.sagemaker.describe_endpoint(EndpointName=name)


def _smoke(clients: AwsClients, call: PlannedCall, texts: Sequence[str], expected: Sequence[str]) -> SmokeReport:
    response = _call(clients, call)
    body = response["Body"].read()
    try:
        predictions = json.loads(body)["predictions"]
        labels = [p["label"] for p in predictions]
    except (ValueError, KeyError, TypeError):
        raise DeploymentError(f"the endpoint answered something other than {{\"predictions\": [...]}}: "
                              f"{body[:300]!r}") from None
    agreed = sum(a == b for a, b in zip(labels, expected))
    if len(labels) != len(expected) or agreed != len(expected):
        diffs = [f"{t[:50]!r}: endpoint {g}, registered model {e}"
                 for t, g, e in zip(texts, labels, expected) if g != e][:3]
        raise DeploymentError(f"the endpoint agreed with the registered model on {agreed}/{len(expected)} held-out "
                              f"texts ({'; '.join(diffs) or 'wrong number of predictions'}); check the handler "
                              "and the pins in code/requirements.txt against the container's libraries")
    return SmokeReport(n=len(labels), agreed=agreed, labels=labels,
                       variant=response.get("InvokedProductionVariant"))


_HINTS = {
    UPLOAD: "check the bucket name and that the caller may s3:PutObject under the artifact prefix",
    CREATE_MODEL: "check that the execution role exists and trusts sagemaker.amazonaws.com, and the image URI",
    CREATE_CONFIG: "check the instance type, count or serverless settings",
    CREATE_ENDPOINT: "check the endpoint quota of the account",
    UPDATE_ENDPOINT: "check that the endpoint is InService and the deployment settings",
    WAIT: "see the endpoint's FailureReason and its CloudWatch logs (/aws/sagemaker/Endpoints/<name>)",
    SMOKE: "the endpoint does not answer like the registered model",
    TAG_ENDPOINT: "check that the caller may sagemaker:AddTags",
    RECORD: "check the MLflow tracking server",
}


def execute_plan(prepared: PreparedDeployment, clients: AwsClients, expected: Sequence[str],
                 recorder: VersionTagger | None = None) -> SageMakerDeploymentRecord:
    """Make the plan's calls in order; on any failure roll back, record the failure and raise `DeploymentStepError`."""
    if len(expected) != len(prepared.plan.smoke_texts):
        raise DeploymentStepError(f"{len(expected)} expected labels for {len(prepared.plan.smoke_texts)} smoke "
                                  "texts", SMOKE)
    try:
        return _execute(prepared, clients, expected, recorder)
    finally:  # the archive is in S3 now (or the deployment is undone); a dry run keeps it for inspection
        shutil.rmtree(Path(prepared.archive.path).parent, ignore_errors=True)


def _execute(prepared: PreparedDeployment, clients: AwsClients, expected: Sequence[str],
             recorder: VersionTagger | None) -> SageMakerDeploymentRecord:
    plan, target = prepared.plan, prepared.target
    done: set[str] = set()
    step = ""
    smoke: SmokeReport | None = None
    arn = plan.endpoint_arn
    try:
        for call in plan.calls:
            step = call.step
            log.info("deploy %s: %s %s", plan.deploy_id, call.service, call.operation)
            if step == UPLOAD:
                with open(prepared.archive.path, "rb") as body:
                    _call(clients, call, Body=body)
            elif step == WAIT:
                d = _wait_in_service(clients, plan.endpoint_name, call.params["WaiterConfig"])
                arn = d.get("EndpointArn", arn)
                if d.get("EndpointConfigName") != plan.endpoint_config:
                    raise DeploymentError(
                        f"SageMaker rolled the update back: the endpoint is {d.get('EndpointStatus')} on "
                        f"{d.get('EndpointConfigName')}, not {plan.endpoint_config} "
                        f"({d.get('FailureReason') or 'no reason given'})")
            elif step == SMOKE:
                smoke = _smoke(clients, call, plan.smoke_texts, expected)
            elif step == RECORD:
                if recorder is not None:
                    recorder.set_version_tags(plan.model_name, plan.model_version, _success_tags(plan))
            else:
                _call(clients, call)
            done.add(step)
    except BaseException as err:
        rolled_back, left = roll_back(plan, clients, done, target)
        cause = describe(err) if getattr(err, "response", None) else str(err)
        message = (f"deploying {plan.model_name} v{plan.model_version} to SageMaker endpoint {plan.endpoint_name} "
                   f"failed at step '{step}': {cause}")
        if step in _HINTS:
            message += f" ({_HINTS[step]})"
        message += ". Rolled back: " + ("; ".join(rolled_back) or "nothing had been changed")
        if left:
            message += ". NOT cleaned up (remove by hand or with `fineship endpoint delete`): " + "; ".join(left)
        record_failure(recorder, plan.model_name, plan.model_version, step, message, plan.endpoint_name,
                       plan.deploy_id)
        if not isinstance(err, Exception):
            raise
        raise DeploymentStepError(message, step, rolled_back, left) from err

    assert smoke is not None
    pruned = _prune(plan, clients)
    return SageMakerDeploymentRecord(
        endpoint_name=plan.endpoint_name, endpoint_arn=arn, endpoint_config=plan.endpoint_config,
        sagemaker_model=plan.sagemaker_model, model_data_url=plan.model_data_url, image_uri=plan.image_uri,
        region=plan.region, model_name=plan.model_name, model_version=plan.model_version,
        previous_config=plan.previous_config, deploy_id=plan.deploy_id, mode=plan.mode, smoke=smoke,
        pruned=pruned, deployed_at=_now())


def _success_tags(plan: DeploymentPlan) -> dict[str, str]:
    return {RECORD_PREFIX + "status": "deployed", RECORD_PREFIX + "endpoint": plan.endpoint_name,
            RECORD_PREFIX + "region": plan.region, RECORD_PREFIX + "endpoint_config": plan.endpoint_config,
            RECORD_PREFIX + "model": plan.sagemaker_model, RECORD_PREFIX + "model_data": plan.model_data_url,
            RECORD_PREFIX + "image": plan.image_uri, RECORD_PREFIX + "deploy_id": plan.deploy_id,
            RECORD_PREFIX + "deployed_at": _now()}


def record_failure(recorder: VersionTagger | None, model_name: str, version: str, step: str, message: str,
                   endpoint_name: str, deploy_id: str = "") -> None:
    """Tag the model version with a failed deployment attempt (never raises: the deploy error matters more)."""
    if recorder is None:
        return
    try:
        recorder.set_version_tags(model_name, version, {
            RECORD_PREFIX + "status": "failed", RECORD_PREFIX + "failed_step": step,
            RECORD_PREFIX + "failed_endpoint": endpoint_name, RECORD_PREFIX + "failed_at": _now(),
            RECORD_PREFIX + "failed_deploy_id": deploy_id, RECORD_PREFIX + "error": message[:4000]})
    except Exception as err:  # noqa: BLE001 - recording is best effort once the deployment has failed
        log.warning("could not record the failed deployment on %s v%s: %s", model_name, version, err)


def _settle(clients: AwsClients, name: str, timeout: float, delay: float) -> dict[str, Any] | None:
    """Describe the endpoint until it is not in a transitional state; None if it never settles (or is gone)."""
    from botocore.exceptions import ClientError

    deadline = time.monotonic() + timeout
    while True:
        try:
            d = clients.sagemaker.describe_endpoint(EndpointName=name)
        except ClientError as err:
            if _is_not_found(err):
                return {}
            raise
        if d["EndpointStatus"] not in TRANSITIONAL or time.monotonic() >= deadline:
            return d if d["EndpointStatus"] not in TRANSITIONAL else None
        time.sleep(delay)


def _restore_previous(plan: DeploymentPlan, clients: AwsClients, target: SageMakerTarget) -> str:
    """Bring the endpoint back to `plan.previous_config`; return what was done (raises when it cannot)."""
    sm, name, prev = clients.sagemaker, plan.endpoint_name, plan.previous_config
    wc = _waiter_config(target.rollback_timeout_seconds, target.poll_seconds)
    d = _settle(clients, name, target.rollback_timeout_seconds, target.poll_seconds)
    if d is None:
        raise DeploymentError(f"endpoint {name} did not leave its update within {target.rollback_timeout_seconds:.0f}"
                              " s; check it and roll back by hand")
    if not d:  # the endpoint is gone: bring it back on the previous config
        sm.create_endpoint(EndpointName=name, EndpointConfigName=prev, Tags=plan.previous_tags or [])
        _wait_in_service(clients, name, wc)
        return f"endpoint {name} recreated on {prev}"
    if d["EndpointStatus"] == "Failed":
        # DeleteEndpoint is the only operation SageMaker allows on a Failed endpoint.
        sm.delete_endpoint(EndpointName=name)
        sm.get_waiter("endpoint_deleted").wait(EndpointName=name, WaiterConfig=wc)
        sm.create_endpoint(EndpointName=name, EndpointConfigName=prev, Tags=plan.previous_tags or [])
        done = f"endpoint {name} was Failed: deleted and recreated on {prev}"
    elif d.get("EndpointConfigName") != prev:
        sm.update_endpoint(EndpointName=name, EndpointConfigName=prev, RetainAllVariantProperties=False,
                           DeploymentConfig=_RESTORE_CONFIG)
        done = f"endpoint {name} updated back to {prev}"
    else:
        return f"endpoint {name} is back on {prev} (SageMaker rolled the update back)"
    after = _wait_in_service(clients, name, wc)
    if after.get("EndpointConfigName") != prev:
        raise DeploymentError(f"endpoint {name} is on {after.get('EndpointConfigName')} after the rollback, not {prev}")
    return done


def roll_back(plan: DeploymentPlan, clients: AwsClients, done: set[str],
              target: SageMakerTarget) -> tuple[list[str], list[str]]:
    """Undo what `done` steps changed. Returns (what was rolled back, what was left behind)."""
    from botocore.exceptions import ClientError

    rolled, left = [], []
    name = plan.endpoint_name
    endpoint_safe = True  # False: the endpoint may still use this deployment's config and model
    if UPDATE_ENDPOINT in done:
        try:
            rolled.append(_restore_previous(plan, clients, target))
            if TAG_ENDPOINT in done:  # the endpoint's tags name the new version: give them back
                previous = [t for t in plan.previous_tags if t["Key"].startswith(TAG_PREFIX)]
                if previous and plan.endpoint_arn:
                    clients.sagemaker.add_tags(ResourceArn=plan.endpoint_arn, Tags=previous)
                    rolled.append(f"endpoint {name} tags restored")
        except Exception as err:  # noqa: BLE001 - report and keep what the endpoint may still use
            endpoint_safe = False
            left.append(f"endpoint {name} not restored to {plan.previous_config} ({describe(err)})")
    elif CREATE_ENDPOINT in done:
        try:
            clients.sagemaker.delete_endpoint(EndpointName=name)
            clients.sagemaker.get_waiter("endpoint_deleted").wait(
                EndpointName=name, WaiterConfig=_waiter_config(target.rollback_timeout_seconds, target.poll_seconds))
            rolled.append(f"endpoint {name} deleted")
        except Exception as err:  # noqa: BLE001
            endpoint_safe = False
            left.append(f"endpoint {name} ({describe(err)})")

    def delete(what: str, fn: Any, **kwargs: Any) -> None:
        if not endpoint_safe:
            left.append(what)
            return
        try:
            fn(**kwargs)
            rolled.append(f"{what} deleted")
        except ClientError as err:
            if _is_not_found(err):
                return
            left.append(f"{what} ({describe(err)})")

    if CREATE_CONFIG in done:
        delete(f"endpoint config {plan.endpoint_config}", clients.sagemaker.delete_endpoint_config,
               EndpointConfigName=plan.endpoint_config)
    if CREATE_MODEL in done:
        delete(f"model {plan.sagemaker_model}", clients.sagemaker.delete_model, ModelName=plan.sagemaker_model)
    if UPLOAD in done and plan.upload == "new":
        bucket, key = plan.model_data_url[5:].split("/", 1)
        delete(f"object {plan.model_data_url}", clients.s3.delete_object, Bucket=bucket, Key=key)
    return rolled, left


def _prune(plan: DeploymentPlan, clients: AwsClients) -> list[str]:
    """Delete configurations and models older than the rollback target (failures are only logged)."""
    pruned = []
    for call in plan.prune:
        try:
            _call(clients, call)
            pruned.append(next(iter(call.params.values())))
        except Exception as err:  # noqa: BLE001 - the deployment itself succeeded
            log.warning("could not prune %s: %s", call.params, describe(err))
    return pruned


def deploy_to_sagemaker(target: SageMakerTarget, package_dir: str | Path, clients: AwsClients, *, model_name: str,
                        version: str, smoke_texts: Sequence[str], expected: Sequence[str] | None,
                        work_dir: str | Path, git_commit: str, recorder: VersionTagger | None = None,
                        dry_run: bool = False,
                        training_commit: str | None = None) -> DeploymentPlan | SageMakerDeploymentRecord:
    """Plan and (unless `dry_run`) execute a deployment; a dry run makes only read-only calls."""
    try:
        prepared = prepare_deployment(target, package_dir, clients, model_name=model_name, version=version,
                                      smoke_texts=smoke_texts, work_dir=work_dir, git_commit=git_commit,
                                      training_commit=training_commit)
    except DeploymentStepError as err:
        if not dry_run:
            record_failure(recorder, model_name, version, err.step, str(err), target.endpoint_name)
        raise
    if dry_run:
        return prepared.plan
    if expected is None:
        raise DeploymentError("expected labels are needed for the smoke test of a real deployment")
    return execute_plan(prepared, clients, expected, recorder)


# ----------------------------------------------------------------------------------------------
# operator commands
# ----------------------------------------------------------------------------------------------

class EndpointSummary(BaseModel):
    model_config = ConfigDict(frozen=True)

    name: str
    status: str
    model_name: str | None = None
    model_version: str | None = None
    failure_reason: str | None = None
    created: str | None = None


def _tags_of(clients: AwsClients, arn: str) -> dict[str, str]:
    return {t["Key"]: t["Value"] for t in clients.sagemaker.list_tags(ResourceArn=arn).get("Tags", [])}


def list_endpoints(clients: AwsClients) -> list[EndpointSummary]:
    """Every SageMaker endpoint in the region, with the model version fineship tagged it with."""
    out = []
    for page in clients.sagemaker.get_paginator("list_endpoints").paginate():
        for e in page.get("Endpoints", []):
            tags = _tags_of(clients, e["EndpointArn"])
            out.append(EndpointSummary(name=e["EndpointName"], status=e["EndpointStatus"],
                                       model_name=tags.get(TAG_PREFIX + "model-name"),
                                       model_version=tags.get(TAG_PREFIX + "model-version"),
                                       created=str(e.get("CreationTime", ""))))
    return out


def endpoint_status(clients: AwsClients, name: str) -> dict[str, Any]:
    """DescribeEndpoint plus the fineship tags, as plain JSON-able data; `DeploymentError` if absent."""
    from botocore.exceptions import ClientError

    try:
        d = clients.sagemaker.describe_endpoint(EndpointName=name)
    except ClientError as err:
        if _is_not_found(err):
            raise DeploymentError(f"no SageMaker endpoint named {name}; see `fineship endpoint list`") from None
        raise
    d.pop("ResponseMetadata", None)
    d["Tags"] = _tags_of(clients, d["EndpointArn"])
    return json.loads(json.dumps(d, default=str))


def delete_endpoint(clients: AwsClients, name: str, wait_timeout: float = 900, poll: float = 15) -> list[str]:
    """Delete the endpoint and the configurations and models fineship made for it; return what was deleted.

    The model artifacts in S3 are kept (the artifact bucket is versioned history).
    """
    from botocore.exceptions import ClientError

    sm = clients.sagemaker
    deleted = []
    try:
        sm.delete_endpoint(EndpointName=name)
        sm.get_waiter("endpoint_deleted").wait(EndpointName=name, WaiterConfig=_waiter_config(wait_timeout, poll))
        deleted.append(f"endpoint {name}")
    except ClientError as err:
        if not _is_not_found(err):
            raise
    for cfg in managed_configs(clients, name):
        targets = [(f"endpoint config {cfg['name']}", sm.delete_endpoint_config, {"EndpointConfigName": cfg["name"]})]
        targets += [(f"model {m}", sm.delete_model, {"ModelName": m}) for m in cfg["models"]]
        for label, fn, kwargs in targets:
            try:
                fn(**kwargs)
                deleted.append(label)
            except ClientError as err:
                if not _is_not_found(err):
                    raise
    return deleted
