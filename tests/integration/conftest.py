"""Fixtures for integration tests: one real moto server over HTTP, shared by the whole session.

Use `moto_endpoint` in any test that calls AWS through boto3; the clients need no arguments::

    def test_upload(moto_endpoint):
        s3 = boto3.client("s3")            # goes to the moto server, never to AWS
        s3.create_bucket(Bucket="fineship-test")

Components take their clients as arguments, so a test may also build them explicitly with
`endpoint_url=moto_endpoint`. Use `moto_reset` instead when the test needs an empty account;
it wipes *all* server state first, so a test using it must not rely on session- or module-scoped
moto resources made by other fixtures. Tests that must not share state (or that turn on moto's
IAM enforcement) should start their own server with `tests.support.moto_server.moto_server()`.

Patching moto (e.g. a SageMaker API moto lacks) must happen inside the server process: add the
patch module's dotted name to `MOTO_SERVER_PLUGINS` below; it is imported before the server serves.
"""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest

from tests.support.moto_server import aws_env_to_unset, boto3_env, moto_server, reset_moto

# Modules imported into the shared moto server process before it serves. One list, so every
# integration test sees the same server:
# - moto_sagemaker_invoke: InvokeEndpoint runs the model.tar.gz the endpoint serves (real predictions);
# - moto_sagemaker_update: UpdateEndpoint, Creating/Updating -> InService|Failed lifecycles, CreateModel
#   role and model-data checks, fault injection (see each module's docstring).
MOTO_SERVER_PLUGINS: tuple[str, ...] = ("tests.support.moto_sagemaker_invoke", "tests.support.moto_sagemaker_update",
                                        "tests.support.moto_s3_integrity")


@pytest.fixture(scope="session")
def moto_endpoint() -> Iterator[str]:
    """URL of a moto server (child process on 127.0.0.1) that lives for the whole test session.

    While the fixture is active the process environment points boto3 at it: `AWS_ENDPOINT_URL`,
    `AWS_ACCESS_KEY_ID`/`AWS_SECRET_ACCESS_KEY` = `testing`, `AWS_DEFAULT_REGION`/`AWS_REGION` =
    `us-east-1`, and `AWS_CONFIG_FILE`/`AWS_SHARED_CREDENTIALS_FILE` = the null device. Variables
    that could redirect boto3 (per-service `AWS_ENDPOINT_URL_*`, profiles, session tokens) are
    removed. Everything is restored when the session ends, and the server is stopped.
    """
    with moto_server(plugins=MOTO_SERVER_PLUGINS) as url, pytest.MonkeyPatch.context() as mp:
        for name in aws_env_to_unset(os.environ):
            mp.delenv(name)
        for name, value in boto3_env(url).items():
            mp.setenv(name, value)
        yield url


@pytest.fixture
def moto_reset(moto_endpoint: str) -> str:
    """`moto_endpoint`, emptied (`POST /moto-api/reset`) before this test runs; returns the URL."""
    reset_moto(moto_endpoint)
    return moto_endpoint


# The SageMaker deployment tests' shared fixtures (one set of tiny packages for every module that deploys).
@pytest.fixture(scope="session")
def aws(moto_endpoint: str):
    from tests.support.sagemaker_deploy import make_aws

    return make_aws(moto_endpoint)


@pytest.fixture(scope="session")
def texts(sample_df) -> list[str]:
    from tests.support.sagemaker_deploy import held_out_texts

    return held_out_texts(sample_df)


@pytest.fixture(scope="session")
def packages(tiny_bert, tmp_path_factory, texts):
    from tests.support.sagemaker_deploy import build_packages

    return build_packages(tiny_bert, tmp_path_factory.mktemp("packages"), texts)
