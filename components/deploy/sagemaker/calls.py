"""AWS calls: `PlannedCall` (one call of a plan) and making it on the deployment's clients, the InService
waiter, and reading AWS errors."""

from __future__ import annotations

import json
import math
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict

from components.deploy.sagemaker.settings import AwsClients
from components.errors import DeploymentError


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


def error_code(err: BaseException) -> str:
    """The AWS error code of a botocore `ClientError` ("" for anything else)."""
    response = getattr(err, "response", None)
    return response.get("Error", {}).get("Code", "") if isinstance(response, dict) else ""


def is_not_found(err: BaseException) -> bool:
    """True when SageMaker says the named resource does not exist."""
    code = error_code(err)
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


def waiter_config(timeout: float, delay: float) -> dict[str, Any]:
    """A boto3 `WaiterConfig` that polls every `delay` seconds for about `timeout` seconds."""
    return {"Delay": delay, "MaxAttempts": max(1, math.ceil(timeout / delay))}


def _client(clients: AwsClients, service: str) -> Any:
    return {"s3": clients.s3, "sagemaker": clients.sagemaker, "sagemaker-runtime": clients.runtime,
            "cloudwatch": clients.cloudwatch}[service]


def call(clients: AwsClients, planned: PlannedCall, **extra: Any) -> dict[str, Any]:
    """Make one planned call: its client's method with the planned keyword arguments (plus `extra`)."""
    from botocore import xform_name

    return getattr(_client(clients, planned.service), xform_name(planned.operation))(**planned.params, **extra)


def wait_in_service(clients: AwsClients, name: str, config: dict[str, Any]) -> dict[str, Any]:
    """The boto3 `endpoint_in_service` waiter, with errors that say what happened; returns DescribeEndpoint."""
    from botocore.exceptions import WaiterError

    try:
        clients.sagemaker.get_waiter("endpoint_in_service").wait(EndpointName=name, WaiterConfig=config)
    except WaiterError as err:
        last = err.last_response or {}
        status = last.get("EndpointStatus", "unknown")
        seconds = config["Delay"] * config["MaxAttempts"]
        if status == "Failed":
            raise DeploymentError(
                f"endpoint {name} ended in Failed: {last.get('FailureReason', 'no reason given')}") from None
        if err.kwargs.get("reason") == "Max attempts exceeded":  # botocore's structured reason, not the message
            raise DeploymentError(f"endpoint {name} was not InService within {seconds:.0f} s (still {status}); "
                                  "raise the wait timeout or see its CloudWatch logs") from None
        raise DeploymentError(f"waiting for endpoint {name} failed: {err}") from None
    return clients.sagemaker.describe_endpoint(EndpointName=name)
