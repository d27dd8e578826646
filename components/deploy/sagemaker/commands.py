"""Operator commands on SageMaker endpoints: list, status and delete (with fineship's configs and models)."""

from __future__ import annotations

import json
from typing import Any

from pydantic import BaseModel, ConfigDict

from components.deploy.sagemaker.calls import is_not_found, waiter_config
from components.deploy.sagemaker.settings import TAG_PREFIX, AwsClients
from components.deploy.sagemaker.state import managed_configs
from components.errors import DeploymentError


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
        if is_not_found(err):
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
        sm.get_waiter("endpoint_deleted").wait(EndpointName=name, WaiterConfig=waiter_config(wait_timeout, poll))
        deleted.append(f"endpoint {name}")
    except ClientError as err:
        if not is_not_found(err):
            raise
    for cfg in managed_configs(clients, name):
        targets = [(f"endpoint config {cfg['name']}", sm.delete_endpoint_config, {"EndpointConfigName": cfg["name"]})]
        targets += [(f"model {m}", sm.delete_model, {"ModelName": m}) for m in cfg["models"]]
        for label, fn, kwargs in targets:
            try:
                fn(**kwargs)
                deleted.append(label)
            except ClientError as err:
                if not is_not_found(err):
                    raise
    return deleted
