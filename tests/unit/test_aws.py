"""One AWS settings object builds every boto3 client, each with the same retry and timeout policy."""

from __future__ import annotations

import pytest

from components.aws import AwsSettings

ENDPOINT = "http://127.0.0.1:9"  # never called: building a client makes no request


def _policy(client) -> tuple:
    c = client.meta.config
    return tuple(sorted(c.retries.items())), c.connect_timeout, c.read_timeout


def test_every_client_gets_the_standard_retry_mode_and_the_same_attempts():
    aws = AwsSettings(region="eu-west-1", endpoint_url=ENDPOINT)
    session = aws.session()
    clients = [aws.client(s) for s in ("s3", "sagemaker", "sagemaker-runtime", "cloudwatch", "iam", "sts")]
    clients += [aws.client("s3", session), aws.client("sagemaker", session)]
    assert {_policy(c) for c in clients} == {((("mode", "standard"), ("total_max_attempts", 6)), 10, 70)}
    assert {c.meta.endpoint_url for c in clients} == {ENDPOINT}
    assert {c.meta.region_name for c in clients} == {"eu-west-1"}
    fewer = AwsSettings(region="eu-west-1", max_attempts=2).client("s3")
    assert fewer.meta.config.retries == {"mode": "standard", "total_max_attempts": 3}


def test_the_deployer_the_dataset_reader_and_the_settings_share_the_policy(monkeypatch):
    from components.deploy.sagemaker import AwsClients
    from flows.settings import Settings

    monkeypatch.setenv("FINESHIP_AWS_REGION", "us-west-2")
    monkeypatch.setenv("FINESHIP_AWS_ENDPOINT_URL", ENDPOINT)
    settings = Settings()
    assert settings.aws == AwsSettings(region="us-west-2", endpoint_url=ENDPOINT)
    deployer = AwsClients.create(settings.aws)
    clients = [deployer.s3, deployer.sagemaker, deployer.runtime, deployer.cloudwatch, settings.s3_client()]
    assert {_policy(c) for c in clients} == {_policy(settings.aws.client("sagemaker"))}
    assert clients[0].meta.config.retries == {"mode": "standard", "total_max_attempts": 6}
    assert {c.meta.endpoint_url for c in clients} == {ENDPOINT}
    assert {c.meta.region_name for c in clients} == {"us-west-2"}


def test_settings_are_typed_and_closed():
    from pydantic import ValidationError

    with pytest.raises(ValidationError, match="regoin"):
        AwsSettings(regoin="eu-west-1")
    with pytest.raises(ValidationError, match="max_attempts"):
        AwsSettings(max_attempts=-1)
    assert AwsSettings().region is None and AwsSettings().endpoint_url is None
