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


def test_one_waiter_serves_training_tuning_and_transform_jobs():
    """The three SageMaker job kinds share `wait_for_job`: Completed returns, Stopped and a timeout raise with
    what to do, and each status change is polled at the given interval."""
    from components.aws import wait_for_job

    class Stuck(Exception):
        pass

    def describe_from(statuses):
        it = iter(statuses)
        return lambda: {"JobStatus": next(it), "FailureReason": "stopped by user"}

    naps: list[float] = []
    common = dict(kind="transform job", name="j-1", status_key="JobStatus", error=Stuck, logs_hint="see logs",
                  stop_command="stop it with `aws sagemaker stop-transform-job`", sleep=naps.append)
    done = wait_for_job(describe_from(["InProgress", "InProgress", "Completed"]), poll_seconds=7, **common)
    assert done["JobStatus"] == "Completed" and naps == [7, 7]
    with pytest.raises(Stuck, match="j-1 ended Stopped: stopped by user; see logs"):
        wait_for_job(describe_from(["InProgress", "Stopped"]), poll_seconds=1, **common)
    with pytest.raises(Stuck, match=r"still InProgress after 0s; it keeps running: stop it with"):
        wait_for_job(lambda: {"JobStatus": "InProgress"}, poll_seconds=1, timeout_seconds=0, **common)
