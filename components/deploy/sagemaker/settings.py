"""What a SageMaker deployment is told: the options (one model for the CLI, the deploy-model form and the
deployer), the target (options plus the account's environment), the clients, and the step names."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal, Protocol

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from components.aws import AwsSettings
from components.config import parse_override
from components.errors import ConfigError, PreflightError

# Step names: they appear in errors, in the plan and in the tags recorded on the model version.
PREFLIGHT = PreflightError.STEP
BUILD = "build-archive"
INSPECT = "inspect"
LOCK = "lock"
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
OVERRIDE_SECTION = "sagemaker"  # `fineship deploy --set sagemaker.<field>=<value>`
# The deployment lock (`lock.py`): a holder renews it every LOCK_RENEW_SECONDS; one not renewed for
# LOCK_TTL_SECONDS belongs to a process that died and is taken over (and its journal rolled back).
LOCK_TTL_SECONDS = 300.0
LOCK_RENEW_SECONDS = 60.0


class SageMakerOptions(BaseModel):
    """How to deploy to SageMaker: the endpoint's shape, the blue/green update and the waits.

    The one definition of these options: the `fineship deploy --set sagemaker.<field>=<value>`
    overrides, the `sagemaker` section of the deploy-model form and `SageMakerTarget` all use it.
    Each field holds SageMaker's own limit; combinations (canary size, instances for traffic shifting,
    provisioned concurrency) are checked by the pre-flight, with the rest of the target.
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    instance_type: str = Field("ml.m5.large", description="Hosting instance type (ignored when serverless).")
    instance_count: int = Field(1, ge=1, description="Instances behind the endpoint (at least 2 to shift traffic "
                                "by canary or linear steps).")
    serverless_memory_mb: int | None = Field(None, ge=SERVERLESS_MEMORY_MB[0], le=SERVERLESS_MEMORY_MB[-1],
                                             multiple_of=1024, description="Set to deploy serverless: memory in "
                                             "MB, 1024..6144 in 1024 steps.")
    serverless_max_concurrency: int = Field(5, ge=1, le=SERVERLESS_MAX_CONCURRENCY,
                                            description="Serverless: concurrent invocations (1..200).")
    serverless_provisioned_concurrency: int | None = Field(
        None, ge=1, le=SERVERLESS_MAX_CONCURRENCY, description="Serverless: warm instances, at most the max "
        "concurrency; empty: none.")
    data_capture_percent: int | None = Field(None, ge=1, le=100, description="Capture this percentage of requests "
                                             "and responses to S3 (1..100); empty: off. Not for serverless.")
    strategy: Literal["all_at_once", "canary", "linear"] = Field(
        "all_at_once", description="Blue/green traffic shifting when the endpoint exists.")
    traffic_percent: int = Field(25, ge=1, le=100, description="Canary size (1..50) or linear step (10..50), in "
                                 "percent of the new fleet.")
    wait_interval_seconds: int = Field(300, ge=0, le=3600, description="Baking time between traffic shifts, "
                                       "watched by the rollback alarms (0..3600 s).")
    termination_wait_seconds: int = Field(300, ge=0, le=3600, description="How long the old fleet stays after the "
                                          "shift (0..3600 s).")
    max_execution_timeout_seconds: int | None = Field(
        None, ge=600, le=28800, description="Longest blue/green update (600..28800 s, above the wait interval plus "
        "the termination wait); empty: SageMaker's default.")
    wait_timeout_seconds: float = Field(3600, gt=0, description="Longest wait for InService before rolling back (s).")
    rollback_timeout_seconds: float = Field(1800, gt=0, description="Longest wait for each rollback step (s).")
    poll_seconds: float = Field(15, gt=0, description="Interval of DescribeEndpoint polls (s).")
    keep_previous: int = Field(1, ge=1, description="Older configurations (and their models) kept after a "
                               "success; the newest is the rollback target.")
    torchscript: bool = Field(False, description="Ship the version's TorchScript export (export/) instead of the "
                              "eager model.")
    # 0 by default: a second deployment of an endpoint (or model) while one runs is a duplicate trigger or a
    # mistake more often than a queue, so it fails at once and names the running deployment. Pipelines that
    # expect overlap set a wait; the waiting deployment re-reads the endpoint and re-plans under the lock.
    lock_timeout_seconds: float = Field(0, ge=0, le=86400, description="How long to wait for a running deployment "
                                        "of the same endpoint or model to finish (0..86400 s); 0: fail at once, "
                                        "naming it.")

    @property
    def serverless(self) -> bool:
        return self.serverless_memory_mb is not None


def parse_options(overrides: Sequence[str]) -> SageMakerOptions:
    """`SageMakerOptions` from the defaults and `sagemaker.<field>=<value>` overrides, each value read as YAML
    (as `fineship run --set`; a later override of a field wins); a `ConfigError` names every bad field."""
    values: dict[str, Any] = {}
    fields = ", ".join(SageMakerOptions.model_fields)
    for item in overrides:
        key, _, _ = item.partition("=")
        section, _, field = key.strip().partition(".")
        if "=" not in item or section != OVERRIDE_SECTION or not field or "." in field:
            raise ConfigError(f"override '{item}' must look like {OVERRIDE_SECTION}.<field>=<value>, e.g. "
                              f"{OVERRIDE_SECTION}.instance_count=2; the fields are {fields}")
        values[field] = parse_override(item)[1]
    try:
        return SageMakerOptions.model_validate(values)
    except ValidationError as err:
        lines = []
        for e in err.errors():
            name = ".".join(map(str, (OVERRIDE_SECTION, *e["loc"])))
            msg = f"unknown field (the fields are {fields})" if e["type"] == "extra_forbidden" else e["msg"]
            lines.append(f"  - {name}: {msg} (got {e.get('input')!r})")
        raise ConfigError("invalid SageMaker options:\n" + "\n".join(lines)) from None


class SageMakerTarget(BaseModel):
    """Where and how to deploy: the options, and the account and stack they go to (from the environment).

    Plain fields; `preflight` says what is wrong with them and what to change.
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    endpoint_name: str
    region: str | None
    role_arn: str | None = Field(None, description="The role the models run as: the stack's SageMakerServingRoleArn "
                                 "(FINESHIP_SAGEMAKER_ROLE_ARN).")
    bucket: str | None = Field(None, description="Artifact bucket for model.tar.gz (ArtifactBucketName).")
    prefix: str = Field("fineship", description="The key prefix the execution role may read (ArtifactPrefix).")
    image_uri: str | None = Field(None, description="Serving image; None: the official PyTorch inference image.")
    framework_version: str = "2.6"
    py_version: str = "py312"
    image_size_mb: int | None = Field(None, description="Size of a custom image, checked against serverless limits.")
    rollback_alarms: tuple[str, ...] = ()
    options: SageMakerOptions = Field(default_factory=SageMakerOptions)

    @property
    def serverless(self) -> bool:
        return self.options.serverless


@dataclass(frozen=True)
class AwsClients:
    """The boto3 clients a deployment uses, built by the caller (from settings, for AWS or a local endpoint)."""

    s3: Any
    sagemaker: Any
    runtime: Any  # sagemaker-runtime
    cloudwatch: Any | None = None  # to check that the rollback alarms exist before an update

    @classmethod
    def create(cls, aws: AwsSettings) -> AwsClients:
        """The four clients from one session of `aws`: its region, endpoint override and retry policy."""
        session = aws.session()
        return cls(s3=aws.client("s3", session), sagemaker=aws.client("sagemaker", session),
                   runtime=aws.client("sagemaker-runtime", session), cloudwatch=aws.client("cloudwatch", session))


class VersionTagger(Protocol):
    """Where deployments are recorded: `MlflowRegistry` fits."""

    def set_version_tags(self, name: str, version: str, tags: dict[str, str]) -> None: ...
