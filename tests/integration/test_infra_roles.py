"""The two SageMaker execution roles of infra/aws/fineship.yaml, each doing only its side's job.

- serving (`SageMakerServingRoleArn`, FINESHIP_SAGEMAKER_ROLE_ARN): reads model artifacts under <prefix>/models/,
  pulls the serving image, writes endpoint logs and metrics, reads the rollback alarms; writes nothing to S3
  (unless the stack is deployed with DataCapture=true, and then only <prefix>/data-capture/);
- training (`SageMakerTrainingRoleArn`, training.sagemaker.role_arn): reads and writes <prefix>/training/ (input
  channels, model output, checkpoints), pulls the training image; nothing of the serving side.

Checked on the policy documents of a stack deployed to moto (tests/support/moto_cfn.py), and for S3 with each
role's assumed credentials under moto's IAM enforcement (moto matches resources only for S3; ECR, Logs, metric
and alarm scoping are asserted on the documents).
"""

from __future__ import annotations

import json
from typing import Any

import pytest

from tests.support.moto_cfn import (
    REGION,
    Deployment,
    allowed,
    clients_for,
    deploy,
    role_statements,
    set_auth,
    unique_project,
)
from tests.support.moto_server import moto_server

SERVING, TRAINING = "SageMakerServingRole", "SageMakerTrainingRole"
S3_WRITES = ("s3:Put", "s3:Delete", "s3:Abort", "s3:Restore", "s3:Replicate", "s3:Bypass")


def _params(**extra: str) -> dict[str, str]:
    return {"ProjectName": unique_project(), "Environment": "staging", "ArtifactBucketSuffix": "123456789012",
            "ArtifactPrefix": "ml", "EndpointName": "news-classifier", **extra}


@pytest.fixture(scope="module")
def deployment(moto_endpoint: str) -> Deployment:
    return deploy(moto_endpoint, _params())


def _actions(statements: list[dict[str, Any]], service: str = "") -> set[str]:
    return {a for s in statements for a in s["Action"] if a.startswith(service)}


def _repo_arns(deployment: Deployment) -> dict[str, str]:
    ids = deployment.resolver.physical_ids
    repos = deployment.client("ecr").describe_repositories(
        repositoryNames=[ids["TrainingRepository"], ids["ServingRepository"]])["repositories"]
    return {r["repositoryName"].rsplit("/", 1)[1]: r["repositoryArn"] for r in repos}


def _pull_resources(statements: list[dict[str, Any]]) -> set[str]:
    return {r for s in statements if any(a.startswith("ecr:") and a != "ecr:GetAuthorizationToken" for a in s["Action"])
            for r in s["Resource"]}


def test_both_roles_trust_only_sagemaker_of_this_account(deployment: Deployment) -> None:
    from tests.support.moto_cfn import policy_document

    iam, account = deployment.client("iam"), deployment.resolver.pseudo["AWS::AccountId"]
    arns = set()
    for logical_id in (SERVING, TRAINING):
        role = iam.get_role(RoleName=deployment.resolver.physical_ids[logical_id])["Role"]
        arns.add(role["Arn"])
        assert policy_document(role["AssumeRolePolicyDocument"])["Statement"] == [
            {"Effect": "Allow", "Principal": {"Service": "sagemaker.amazonaws.com"}, "Action": "sts:AssumeRole",
             "Condition": {"StringEquals": {"aws:SourceAccount": account}}}]
    assert len(arns) == 2


def test_serving_role_reads_model_artifacts_and_writes_nothing(deployment: Deployment) -> None:
    statements = role_statements(deployment, SERVING)
    account = deployment.resolver.pseudo["AWS::AccountId"]
    bucket_arn = f"arn:aws:s3:::{deployment.expected_outputs['ArtifactBucketName']}"
    assert {s["Effect"] for s in statements} == {"Allow"}
    assert not [a for a in _actions(statements) if a == "*" or a.endswith(":*")], "wildcard actions"
    assert {a.split(":")[0] for a in _actions(statements)} == {"s3", "ecr", "logs", "cloudwatch"}

    assert _actions(statements, "s3:") == {"s3:GetBucketLocation", "s3:GetObject"}
    assert not [a for a in _actions(statements) if a.startswith(S3_WRITES)], "the serving role writes to S3"
    (read,) = [s for s in statements if "s3:GetObject" in s["Action"]]
    assert read["Resource"] == [f"{bucket_arn}/ml/models/*"]  # model.tar.gz only: no data, no checkpoints

    assert _pull_resources(statements) == {_repo_arns(deployment)["serving"]}
    logs = {r for s in statements if s["Action"][0].startswith("logs:") for r in s["Resource"]}
    assert logs and all(r.startswith(f"arn:aws:logs:{REGION}:{account}:log-group:/aws/sagemaker/Endpoints/")
                        for r in logs)
    (metrics,) = [s for s in statements if "cloudwatch:PutMetricData" in s["Action"]]
    assert "/aws/sagemaker/Endpoints*" in metrics["Condition"]["StringLike"]["cloudwatch:namespace"]
    alarms = {r for s in statements if "cloudwatch:DescribeAlarms" in s["Action"] for r in s["Resource"]}
    assert len(alarms) == 2 and all(":alarm:" in r and "news-classifier" in r for r in alarms)
    wildcard = {a for s in statements if "*" in s["Resource"] for a in s["Action"]}
    assert wildcard == {"ecr:GetAuthorizationToken", "cloudwatch:PutMetricData"}


def test_training_role_reads_and_writes_only_its_prefix(deployment: Deployment) -> None:
    statements = role_statements(deployment, TRAINING)
    account = deployment.resolver.pseudo["AWS::AccountId"]
    bucket_arn = f"arn:aws:s3:::{deployment.expected_outputs['ArtifactBucketName']}"
    assert not [a for a in _actions(statements) if a == "*" or a.endswith(":*")], "wildcard actions"
    assert {a.split(":")[0] for a in _actions(statements)} == {"s3", "ecr", "logs", "cloudwatch"}

    s3_resources = {r for s in statements if s["Action"][0].startswith("s3:") for r in s["Resource"]}
    assert s3_resources == {bucket_arn, f"{bucket_arn}/ml/training/*"}
    objects = _actions([s for s in statements if s["Resource"] == [f"{bucket_arn}/ml/training/*"]])
    assert {"s3:GetObject", "s3:PutObject"} <= objects and not [a for a in objects if a.startswith("s3:Delete")]
    (listing,) = [s for s in statements if "s3:ListBucket" in s["Action"]]
    assert listing["Condition"] == {"StringLike": {"s3:prefix": ["ml/training", "ml/training/*"]}}
    assert deployment.expected_outputs["TrainingS3Uri"].endswith("/ml/training")

    assert _pull_resources(statements) == {_repo_arns(deployment)["training"]}
    logs = {r for s in statements if s["Action"][0].startswith("logs:") for r in s["Resource"]}
    assert logs and all(r.startswith(f"arn:aws:logs:{REGION}:{account}:log-group:/aws/sagemaker/TrainingJobs")
                        for r in logs)
    assert "cloudwatch:DescribeAlarms" not in _actions(statements)
    wildcard = {a for s in statements if "*" in s["Resource"] for a in s["Action"]}
    assert wildcard == {"ecr:GetAuthorizationToken", "cloudwatch:PutMetricData"}


def test_neither_role_can_act_on_the_other_side(deployment: Deployment) -> None:
    repos = _repo_arns(deployment)
    serving = json.dumps(role_statements(deployment, SERVING))
    training = json.dumps(role_statements(deployment, TRAINING))
    # the training side: its data, output, checkpoints, image
    assert "/ml/training" not in serving and repos["training"] not in serving
    # the serving side: model artifacts, serving image, endpoint logs, rollback alarms
    for serving_side in ("/ml/models", repos["serving"], "/aws/sagemaker/Endpoints", ":alarm:"):
        assert serving_side not in training, serving_side
    # and nothing reaches the deployer's lock and journals, or the whole prefix
    for text in (serving, training):
        assert "/ml/deployments" not in text and '/ml/*"' not in text


def test_data_capture_is_the_serving_roles_only_possible_s3_write(moto_endpoint: str) -> None:
    key_arn = clients_for(moto_endpoint)("kms").create_key(Description="capture")["KeyMetadata"]["Arn"]
    deployment = deploy(moto_endpoint, _params(DataCapture="true", ArtifactKmsKeyArn=key_arn))
    bucket_arn = f"arn:aws:s3:::{deployment.expected_outputs['ArtifactBucketName']}"
    assert "ServingDataCapturePolicy" in deployment.created
    statements = role_statements(deployment, SERVING)
    writes = [s for s in statements if any(a.startswith(S3_WRITES) for a in s["Action"])]
    assert [(s["Action"], s["Resource"]) for s in writes] == [(["s3:PutObject"], [f"{bucket_arn}/ml/data-capture/*"])]
    encrypt = [s for s in statements if "kms:GenerateDataKey" in s["Action"]]
    assert [(s["Action"], s["Resource"]) for s in encrypt] == [(["kms:GenerateDataKey"], [key_arn])]
    assert "/ml/data-capture" not in json.dumps(role_statements(deployment, TRAINING))


def test_each_roles_credentials_reach_only_its_side_under_iam_enforcement() -> None:
    """Assume each role and let moto's IAM engine judge real requests (private server: enforcement is global)."""
    with moto_server() as endpoint:
        # Without the TLS-only bucket policy, which moto's S3 applies to every object request (MOTO_CFN_GAPS).
        deployment = deploy(endpoint, {"ProjectName": unique_project(), "ArtifactBucketSuffix": "iam"},
                            skip_types=frozenset({"AWS::S3::BucketPolicy"}))
        admin, bucket = deployment.client, deployment.expected_outputs["ArtifactBucketName"]
        model, data = "fineship/models/news/v1/abc/model.tar.gz", "fineship/training/job-1/input/train/train.parquet"
        admin("s3").create_bucket(Bucket="someone-elses-bucket")
        for target, key in [(bucket, model), (bucket, data), (bucket, "fineship/data.csv"),
                            (bucket, "private/secret.csv"), ("someone-elses-bucket", model)]:
            admin("s3").put_object(Bucket=target, Key=key, Body=b"x")
        as_role = {}
        for kind in ("serving", "training"):
            creds = admin("sts").assume_role(RoleArn=deployment.expected_outputs[f"SageMaker{kind.title()}RoleArn"],
                                             RoleSessionName=kind)["Credentials"]
            as_role[kind] = clients_for(endpoint, key=creds["AccessKeyId"], secret=creds["SecretAccessKey"],
                                        token=creds["SessionToken"])
        serving, training = as_role["serving"]("s3"), as_role["training"]("s3")
        set_auth(endpoint, "0")

        # serving: reads the model, writes and deletes nothing, sees nothing of training
        assert allowed(lambda: serving.get_object(Bucket=bucket, Key=model))
        assert allowed(lambda: as_role["serving"]("ecr").get_authorization_token())
        assert not allowed(lambda: serving.put_object(Bucket=bucket, Key=model, Body=b"tampered"))
        assert not allowed(lambda: serving.put_object(Bucket=bucket, Key="fineship/models/new.tar.gz", Body=b"m"))
        assert not allowed(lambda: serving.put_object(Bucket=bucket, Key="fineship/data-capture/x", Body=b"m"))
        assert not allowed(lambda: serving.delete_object(Bucket=bucket, Key=model))
        assert not allowed(lambda: serving.get_object(Bucket=bucket, Key=data))
        assert not allowed(lambda: serving.get_object(Bucket=bucket, Key="fineship/data.csv"))
        # training: reads and writes its prefix, cannot read or replace the model that is served
        assert allowed(lambda: training.get_object(Bucket=bucket, Key=data))
        assert allowed(lambda: training.put_object(Bucket=bucket, Key="fineship/training/job-1/output/m.tar.gz",
                                                   Body=b"m"))
        assert not allowed(lambda: training.get_object(Bucket=bucket, Key=model))
        assert not allowed(lambda: training.put_object(Bucket=bucket, Key=model, Body=b"tampered"))
        assert not allowed(lambda: training.delete_object(Bucket=bucket, Key=data))
        assert not allowed(lambda: training.put_object(Bucket=bucket, Key="fineship/deployments/locks/x", Body=b"l"))
        # neither: outside the prefix, another bucket, IAM, new repositories
        for role, client in as_role.items():
            calls = [lambda c=client: c("s3").get_object(Bucket=bucket, Key="private/secret.csv"),
                     lambda c=client: c("s3").get_object(Bucket="someone-elses-bucket", Key=model),
                     lambda c=client: c("iam").list_roles(),
                     lambda c=client: c("ecr").create_repository(repositoryName="no")]
            assert not any(allowed(c) for c in calls), role
