"""Inspect: what is deployed now, read before planning and before every rollback decision. Read-only calls only."""

from __future__ import annotations

import base64
import time
from collections.abc import Sequence
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from components.deploy.sagemaker.calls import error_code, is_not_found
from components.deploy.sagemaker.settings import TAG_PREFIX, TRANSITIONAL, AwsClients

ObjectState = Literal["absent", "present", "mismatch", "unknown"]


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


def inspect_endpoint(clients: AwsClients, endpoint_name: str) -> EndpointState:
    """DescribeEndpoint (+ DescribeEndpointConfig, ListTags) of the target endpoint; read-only."""
    from botocore.exceptions import ClientError

    sm = clients.sagemaker
    try:
        d = sm.describe_endpoint(EndpointName=endpoint_name)
    except ClientError as err:
        if is_not_found(err):
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
            if not is_not_found(err):
                raise
    tags = sm.list_tags(ResourceArn=d["EndpointArn"]).get("Tags", [])
    return EndpointState(exists=True, arn=d["EndpointArn"], status=d["EndpointStatus"], config_name=config_name,
                         config_exists=config_exists, variant_name=variant, serverless=serverless,
                         failure_reason=d.get("FailureReason"), tags=[{"Key": t["Key"], "Value": t["Value"]}
                                                                      for t in tags])


def sha256_base64(hex_digest: str) -> str:
    """A hex SHA-256 as S3's `ChecksumSHA256` (base64 of the 32 bytes)."""
    return base64.b64encode(bytes.fromhex(hex_digest)).decode("ascii")


def object_state(clients: AwsClients, bucket: str, key: str, sha256: str) -> ObjectState:
    """Whether s3://bucket/key holds exactly this archive (HeadObject with ChecksumMode=ENABLED; read-only).

    Judged by the SHA-256 S3 verified and stored when the object was written (`ChecksumSHA256`), never by
    user metadata, which whoever can write the key can set to anything. "present": S3's checksum is the
    archive's; "mismatch": the object holds something else (another checksum, or none: written without
    one); "absent"; "unknown": no permission to tell (without s3:ListBucket a missing key answers 403).
    """
    return archive_head(clients, bucket, key, sha256)[0]


def archive_head(clients: AwsClients, bucket: str, key: str, sha256: str) -> tuple[ObjectState, str | None]:
    """`object_state` and the object's ETag (None unless it exists)."""
    from botocore.exceptions import ClientError

    try:
        head = clients.s3.head_object(Bucket=bucket, Key=key, ChecksumMode="ENABLED")
    except ClientError as err:
        status = err.response.get("ResponseMetadata", {}).get("HTTPStatusCode")
        if status == 404 or error_code(err) in ("404", "NoSuchKey", "NotFound"):
            return "absent", None
        if status == 403:
            return "unknown", None
        raise
    whole = head.get("ChecksumType", "FULL_OBJECT") == "FULL_OBJECT"  # not a multipart composite
    same = whole and head.get("ChecksumSHA256") == sha256_base64(sha256)
    return ("present" if same else "mismatch"), head.get("ETag")


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


def settle_endpoint(clients: AwsClients, name: str, timeout: float, poll: float) -> tuple[dict[str, Any] | None, bool]:
    """DescribeEndpoint until the endpoint leaves Creating/Updating/..., for at most `timeout` s.

    Returns the last description (None when the endpoint does not exist) and whether it settled.
    """
    from botocore.exceptions import ClientError

    deadline = time.monotonic() + timeout
    while True:
        try:
            d = clients.sagemaker.describe_endpoint(EndpointName=name)
        except ClientError as err:
            if is_not_found(err):
                return None, True
            raise
        if d["EndpointStatus"] not in TRANSITIONAL:
            return d, True
        if time.monotonic() >= deadline:
            return d, False
        time.sleep(poll)


class EndpointUsage(BaseModel):
    """What an endpoint serves and is moving to: configurations and models that must not be deleted."""

    model_config = ConfigDict(frozen=True)

    exists: bool
    settled: bool
    status: str | None = None
    config: str | None = None  # EndpointConfigName: what it serves
    pending: str | None = None  # PendingDeploymentSummary.EndpointConfigName: what it is moving to
    configs: list[str] = Field(default_factory=list)
    models: list[str] = Field(default_factory=list)

    def describe(self, name: str) -> str:
        if not self.exists:
            return f"endpoint {name} does not exist"
        moving = f", moving to {self.pending}" if self.pending else ""
        return f"endpoint {name} is {self.status} on {self.config}{moving}"


def endpoint_usage(clients: AwsClients, name: str, timeout: float, poll: float) -> EndpointUsage:
    """Wait (at most `timeout` s) for the endpoint to settle, then read the configurations it serves and is moving
    to (`EndpointConfigName`, `PendingDeploymentSummary.EndpointConfigName`) and their models. Read-only."""
    from botocore.exceptions import ClientError

    d, settled = settle_endpoint(clients, name, timeout, poll)
    if d is None:
        return EndpointUsage(exists=False, settled=True)
    config = d.get("EndpointConfigName")
    pending = (d.get("PendingDeploymentSummary") or {}).get("EndpointConfigName")
    configs = [c for c in dict.fromkeys((config, pending)) if c]
    models: list[str] = []
    for c in configs:
        try:
            cfg = clients.sagemaker.describe_endpoint_config(EndpointConfigName=c)
        except ClientError as err:
            if is_not_found(err):
                continue
            raise
        models += [v["ModelName"] for v in cfg.get("ProductionVariants", []) + cfg.get("ShadowProductionVariants", [])
                   if v.get("ModelName")]
    return EndpointUsage(exists=True, settled=settled, status=d["EndpointStatus"], config=config, pending=pending,
                         configs=configs, models=list(dict.fromkeys(models)))


def archive_users(clients: AwsClients, data_url: str, version: str, exclude: str | None = None) -> list[str]:
    """fineship models (named `<endpoint>-v<version>-<deploy id>`, any endpoint) other than `exclude` whose
    containers read `data_url` (ListModels, DescribeModel; read-only). A model of a version only ever reads that
    version's archives, so the name filter finds every fineship user of the archive."""
    from botocore.exceptions import ClientError

    marker, users = f"-v{version}-", []
    for page in clients.sagemaker.get_paginator("list_models").paginate(NameContains=marker):
        for summary in page.get("Models", []):
            name = summary["ModelName"]
            if name == exclude or marker not in name:
                continue
            try:
                model = clients.sagemaker.describe_model(ModelName=name)
            except ClientError as err:
                if is_not_found(err):
                    continue
                raise
            containers = [model.get("PrimaryContainer") or {}, *model.get("Containers", [])]
            if any(c.get("ModelDataUrl") == data_url for c in containers):
                users.append(name)
    return users
