"""`fineship predict` end to end: a registered tiny model, refused until a trusted reviewer approves it, then a file
scored through the batch-predict flow on the session's Prefect harness."""

from __future__ import annotations

import pandas as pd
import pytest
from typer.testing import CliRunner

pytestmark = pytest.mark.e2e
NAME = "batch-cli-news"


@pytest.fixture
def cli(prefect_harness, fineship_home):
    import flows.cli
    from prefect import flow  # noqa: F401 - Prefect configures its logging outside CliRunner's streams (as test_cli_output)

    runner = CliRunner()
    return lambda *args: runner.invoke(flows.cli.app, [str(a) for a in args], catch_exceptions=False)


@pytest.fixture
def registered(fineship_home, tiny_bert, tmp_path_factory, sample_df, monkeypatch):
    """A 5-label tiny package registered as NAME v1 (gate passed, not approved): (package dir, registry)."""
    from components.registry.mlflow_registry import MlflowRegistry
    from flows.settings import Settings
    from tests.support.sagemaker_deploy import build_packages, held_out_texts

    monkeypatch.setenv("FINESHIP_BATCH_ROOTS", "[]")  # the command widens it for itself; restored after the test
    package = build_packages(tiny_bert, tmp_path_factory.mktemp("packages"), held_out_texts(sample_df)).a
    registry = MlflowRegistry(Settings().mlflow_tracking_uri)
    run_id = registry.start_run("batch", "r1")
    registry.log_and_register(run_id, package, NAME, ["hello"], ["torch==2.13.0"], {"fineship.gate": "passed"})
    return package, registry


def test_predict_refuses_an_unapproved_version_then_scores_the_approved_one(cli, fineship_home, reviewers, registered,
                                                                           tmp_path, sample_df):
    from components.package import load_package
    from tests.support.reviewers import approve_as

    package, registry = registered
    src, out = tmp_path / "news.csv", tmp_path / "scored.csv"
    sample_df.head(120).to_csv(src, index=False)

    r = cli("predict", "--model", NAME, "--version", "1", "--input", src, "--output", out)
    assert r.exit_code == 4 and "has no signed approval" in r.stderr and f"fineship approve {NAME} 1" in r.stderr
    assert not out.exists() and not (fineship_home / "batch").exists()  # refused before anything was downloaded

    approve_as(registry, NAME, "1", reviewers.signer("ana"), reviewers.policy(fineship_home))
    r = cli("predict", "--model", NAME, "--alias", "champion", "--input", src, "--output", out, "--chunk-rows", "50")
    assert r.exit_code == 0, r.output
    assert f"120 rows scored with {NAME} v1 -> {out}" in r.stdout and "rows/s" in r.stdout
    got = pd.read_csv(out)
    assert list(got.columns) == ["text", "label", "predicted_label", "score"] and len(got) == 120
    assert got.predicted_label.tolist() == [p.label for p in load_package(package).predict(got.text.tolist())]
    assert not any((fineship_home / "batch" / "models").iterdir())  # the downloaded package is not kept


def test_predict_on_batch_transform_resumes_by_reattaching_to_its_job(cli, fineship_home, reviewers, registered,
                                                                     tmp_path, sample_df, monkeypatch):
    """The sagemaker backend through the flow, against a moto server over HTTP. moto completes the job without
    running it, so the first run stops at collecting the output (as a run killed while the job ran would); the
    test then plays the container (tests/support/batch_transform.py) and the rerun re-attaches to the same job."""
    import os

    import boto3

    from components.package import load_package
    from tests.support.batch_transform import run_transform
    from tests.support.moto_server import aws_env_to_unset, boto3_env, moto_server
    from tests.support.reviewers import approve_as

    package, registry = registered
    approve_as(registry, NAME, "1", reviewers.signer("ana"), reviewers.policy(fineship_home))
    src, out = tmp_path / "news.jsonl", tmp_path / "scored.jsonl"
    sample_df.head(40).to_json(src, orient="records", lines=True)
    args = ("predict", "--model", NAME, "--alias", "champion", "--input", src, "--output", out, "--backend", "sagemaker")
    with moto_server() as url:
        for name in aws_env_to_unset(os.environ):
            monkeypatch.delenv(name)
        for name, value in {**boto3_env(url), "FINESHIP_AWS_REGION": "us-east-1", "FINESHIP_AWS_ENDPOINT_URL": url,
                            "FINESHIP_SAGEMAKER_ROLE_ARN": "arn:aws:iam::123456789012:role/fineship-dev-serving",
                            "FINESHIP_ARTIFACT_BUCKET": "fineship-batch-e2e",
                            "FINESHIP_IMAGE_URI": "123456789012.dkr.ecr.us-east-1.amazonaws.com/fineship-serving:1"}.items():
            monkeypatch.setenv(name, value)
        s3, sm = boto3.client("s3"), boto3.client("sagemaker")
        s3.create_bucket(Bucket="fineship-batch-e2e")

        r = cli(*args)
        assert r.exit_code == 4 and "could not be read" in r.stderr and not out.exists()
        (job,) = sm.list_transform_jobs()["TransformJobSummaries"]
        desc = sm.describe_transform_job(TransformJobName=job["TransformJobName"])
        assert desc["TransformInput"]["SplitType"] == "Line" and desc["BatchStrategy"] == "MultiRecord"
        run_transform(s3, desc, package)  # what the job's container writes

        r = cli(*args)
        assert r.exit_code == 0, r.output
        assert f"transform job:     {job['TransformJobName']}" in r.stdout
        assert len(sm.list_transform_jobs()["TransformJobSummaries"]) == 1  # re-attached, no second job
    got = pd.read_json(out, lines=True)
    assert len(got) == 40 and list(got.columns) == ["text", "label", "predicted_label", "score"]
    assert got.predicted_label.tolist() == [p.label for p in load_package(package).predict(got.text.tolist())]
