"""AWS settings that build every boto3 client fineship uses, all with the same retry and timeout policy.

One object (`AwsSettings`: region, endpoint override, retry policy) is passed to whatever talks to
AWS: the dataset reader's S3 client, the SageMaker training job, and the SageMaker deployer. It is
built from the environment in `flows/settings.py: Settings.aws`; nothing is built at import.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field


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
