"""AWS settings that build every boto3 client fineship uses, all with the same retry and timeout policy.

One object (`AwsSettings`: region, endpoint override, retry policy) is passed to whatever talks to
AWS: the dataset reader's S3 client, the SageMaker training job, and the SageMaker deployer. It is
built from the environment in `flows/settings.py: Settings.aws`; nothing is built at import.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

log = logging.getLogger(__name__)

TERMINAL_JOB_STATUSES = frozenset({"Completed", "Failed", "Stopped"})


class AwsSettings(BaseModel):
    """Where AWS is (region, endpoint override) and how each call is retried; `client()` builds the clients."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    region: str | None = Field(None, description="AWS region (FINESHIP_AWS_REGION); None: boto3's own lookup.")
    endpoint_url: str | None = Field(None, description="Override of every AWS endpoint, e.g. a local moto server "
                                     "(FINESHIP_AWS_ENDPOINT_URL); None: AWS itself.")
    max_attempts: int = Field(5, ge=0, le=20, description="botocore's retries.max_attempts: retries of a call after "
                              "its first attempt (5: up to 6 attempts). The standard retry mode retries "
                              "throttling, 5xx and connection errors, with exponential backoff.")
    connect_timeout_seconds: float = Field(10, gt=0, description="Timeout to open a connection.")
    read_timeout_seconds: float = Field(70, gt=0, description="Timeout of each read from a connection.")

    def botocore_config(self) -> Any:
        """The botocore `Config` every client gets: standard retry mode, `max_attempts`, the timeouts."""
        from botocore.config import Config

        return Config(retries={"mode": "standard", "max_attempts": self.max_attempts},
                      connect_timeout=self.connect_timeout_seconds, read_timeout=self.read_timeout_seconds)

    def session(self) -> Any:
        """A new boto3 session for `region` (credentials come from boto3's usual chain)."""
        import boto3

        return boto3.session.Session(region_name=self.region)

    def client(self, service: str, session: Any | None = None) -> Any:
        """A boto3 client for `service` ("s3", "sagemaker", ...), from `session` or a new one."""
        return (session or self.session()).client(service, endpoint_url=self.endpoint_url,
                                                  config=self.botocore_config())


def wait_for_job(describe: Callable[[], dict[str, Any]], *, kind: str, name: str, status_key: str,
                 error: type[Exception], logs_hint: str, stop_command: str, poll_seconds: float,
                 timeout_seconds: float | None = None, progress: Callable[[dict[str, Any]], str] | None = None,
                 sleep: Callable[[float], None] = time.sleep) -> dict[str, Any]:
    """Poll a SageMaker job (training, tuning, transform) until it ends: its description when Completed.

    `describe()` returns the job's Describe* response; `status_key` names its status field. A Failed or
    Stopped job raises `error` with SageMaker's FailureReason and where to look (`logs_hint`); a job still
    running after `timeout_seconds` raises `error` saying it keeps running and how to stop it (`stop_command`).
    Each change of status (and of `progress(desc)`, e.g. the secondary status) is logged once.
    """
    started, last = time.monotonic(), None
    while True:
        desc = describe()
        status = desc[status_key]
        shown = (status, progress(desc) if progress else "")
        if shown != last:
            log.info("%s %s: %s %s", kind, name, *shown)
            last = shown
        if status == "Completed":
            return desc
        if status in TERMINAL_JOB_STATUSES:
            raise error(f"SageMaker {kind} {name} ended {status}: {desc.get('FailureReason') or 'no reason given'}; "
                        f"{logs_hint}")
        if timeout_seconds is not None and time.monotonic() - started > timeout_seconds:
            raise error(f"SageMaker {kind} {name} still {status} after {timeout_seconds:.0f}s; it keeps running: "
                        f"{stop_command}")
        sleep(poll_seconds)
