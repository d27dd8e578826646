"""The one transient-failure rule shared by task retries and the MLflow metric buffer."""

from __future__ import annotations

import botocore.exceptions
import httpx
import requests
from mlflow.exceptions import MlflowException
from mlflow.protos.databricks_pb2 import REQUEST_LIMIT_EXCEEDED, RESOURCE_DOES_NOT_EXIST, TEMPORARILY_UNAVAILABLE

from components.errors import DeploymentError, RegistryError
from components.retry import is_transient


def _client_error(status: int, code: str) -> botocore.exceptions.ClientError:
    return botocore.exceptions.ClientError({"Error": {"Code": code, "Message": "x"},
                                            "ResponseMetadata": {"HTTPStatusCode": status}}, "UpdateEndpoint")


def test_network_server_side_and_throttling_failures_are_transient():
    for exc in (requests.exceptions.ConnectionError("refused"), requests.exceptions.ReadTimeout("slow"),
                httpx.ConnectError("refused"), ConnectionResetError(), TimeoutError(),
                MlflowException("busy", error_code=TEMPORARILY_UNAVAILABLE),
                MlflowException("slow down", error_code=REQUEST_LIMIT_EXCEEDED),
                _client_error(503, "ServiceUnavailable"), _client_error(400, "ThrottlingException"),
                _client_error(429, "TooManyRequestsException")):
        assert is_transient(exc), exc


def test_bugs_refusals_and_our_own_errors_are_not():
    for exc in (ValueError("a bug"), MlflowException("no such run", error_code=RESOURCE_DOES_NOT_EXIST),
                _client_error(400, "ValidationException"), _client_error(404, "ResourceNotFound"),
                DeploymentError("smoke test failed"), RegistryError("no approval")):
        assert not is_transient(exc), exc
