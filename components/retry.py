"""Which failures a retry can cure: one rule for task retries and for the MLflow metric buffer."""

from __future__ import annotations

from components.errors import FineshipError

_TRANSIENT_NAMES = {
    "ConnectionError", "ConnectTimeout", "ReadTimeout", "Timeout", "ConnectError", "RemoteProtocolError",
    "EndpointConnectionError", "ConnectionClosedError", "ThrottlingException", "ServiceUnavailable",
}
_THROTTLING_CODES = ("Throttling", "ThrottlingException", "SlowDown", "RequestLimitExceeded")


def is_transient(exc: BaseException) -> bool:
    """True for network failures, throttling (429 and AWS throttling codes) and server-side (5xx) failures;
    never for fineship's own typed errors."""
    if isinstance(exc, FineshipError):
        return False
    if type(exc).__name__ in _TRANSIENT_NAMES or isinstance(exc, (ConnectionError, TimeoutError)):
        return True
    response = getattr(exc, "response", None)
    if isinstance(response, dict):  # botocore ClientError
        status = response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0)
        return status >= 500 or status == 429 or response.get("Error", {}).get("Code", "") in _THROTTLING_CODES
    status = getattr(exc, "get_http_status_code", None)  # MlflowException: connection errors arrive as 500
    if callable(status):
        try:
            code = int(status())
        except (TypeError, ValueError):
            return False
        return code >= 500 or code == 429
    return False
