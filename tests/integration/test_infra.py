"""Infrastructure as code, tested without AWS.

1. Every CloudFormation template in infra/aws passes cfn-lint (and the linter demonstrably
   catches a broken copy).
2. infra/aws/fineship.yaml is deployed over HTTP to a real moto server; the resources are then
   checked through the S3, IAM, ECR and CloudWatch APIs. Where moto's CloudFormation skips a
   resource or a property, the test applies that part of the *same template* through the
   service's own API (see `complete_what_moto_skips`), so the assertions still check what the
   template says. The gaps are listed in `MOTO_CFN_GAPS` and in infra/aws/README.md; the test
   fails if moto starts creating a skipped resource type, so the workaround can then be dropped.
   The deploy harness is tests/support/moto_cfn.py; the two SageMaker roles (serving and training)
   are tested in test_infra_roles.py, their S3 scope also under moto's IAM enforcement.
3. The Prefect work-pool templates in infra/prefect pass Prefect's own validation and render.
"""

from __future__ import annotations

import json
import os
import urllib.request
from pathlib import Path
from typing import Any

import boto3
import pytest
from botocore.exceptions import ClientError

from tests.support.moto_cfn import (
    REGION,
    TEMPLATE,
    Deployment,
    clients_for,
    deploy,
    role_statements,
    unique_project,
)
from tests.support.moto_server import aws_env_to_unset, moto_server, reset_moto

REPO = Path(__file__).resolve().parents[2]
AWS_DIR = REPO / "infra" / "aws"
PREFECT_DIR = REPO / "infra" / "prefect"
SERVING, TRAINING = "SageMakerServingRole", "SageMakerTrainingRole"

# What moto 5.2.5's CloudFormation does not do with this template (also in infra/aws/README.md).
MOTO_CFN_UNSUPPORTED_TYPES = frozenset({"AWS::S3::BucketPolicy", "AWS::CloudWatch::Alarm"})
MOTO_CFN_GAPS = {
    "AWS::S3::BucketPolicy":
        "resource type not supported: skipped (and Ref/GetAtt to it are empty)",
    "AWS::CloudWatch::Alarm":
        "resource type not supported: skipped; Outputs that Ref an alarm are dropped",
    "AWS::S3::Bucket":
        "only BucketName, BucketEncryption and Tags are applied; VersioningConfiguration, "
        "PublicAccessBlockConfiguration, OwnershipControls, LifecycleConfiguration are ignored",
    "AWS::ECR::Repository":
        "LifecyclePolicy ignored; ImageScanningConfiguration and EncryptionConfiguration are stored with "
        "CloudFormation's key casing, so the ECR API reports them empty",
    "AWS::IAM::Role / AWS::IAM::Policy":
        "inline policy documents are stored as Python dicts: GetRolePolicy returns a Python repr, and "
        "moto's IAM enforcement fails (HTTP 500) on them",
    "S3 bucket policies (moto's S3, not its CloudFormation)":
        "conditions other than StringEquals are ignored, so the TLS-only Deny refuses every object request",
}


# --------------------------------------------------------------------------------------------
# 1. cfn-lint
# --------------------------------------------------------------------------------------------

def _aws_templates() -> list[Path]:
    return sorted(p for p in AWS_DIR.iterdir() if p.suffix in {".yaml", ".yml", ".json", ".template"})


def _lint(path: Path) -> list[str]:
    """cfn-lint errors and warnings for `path`, formatted `RULE file:line message`."""
    import cfnlint.api

    return [f"{m.rule.id} {path.name}:{m.linenumber} {m.message}" for m in cfnlint.api.lint_file(path)
            if m.rule.severity in {"error", "warning"}]


def test_infra_aws_holds_the_fineship_template() -> None:
    assert TEMPLATE in _aws_templates()


@pytest.mark.parametrize("template", _aws_templates(), ids=lambda p: p.name)
def test_cfn_lint_reports_no_errors_or_warnings(template: Path) -> None:
    assert _lint(template) == []


def test_cfn_lint_catches_a_broken_copy(tmp_path: Path) -> None:
    broken = tmp_path / "broken.yaml"
    text = TEMPLATE.read_text()
    assert "ImageTagMutability: IMMUTABLE" in text and "!GetAtt TrainingRepository.Arn" in text
    broken.write_text(text.replace("ImageTagMutability: IMMUTABLE", "ImageTagMutability: FROZEN", 1)
                      .replace("!GetAtt TrainingRepository.Arn", "!GetAtt MissingRepository.Arn", 1))
    rules = {line.split()[0] for line in _lint(broken)}
    assert {"E3030", "E1010"} <= rules


# --------------------------------------------------------------------------------------------
# 2. Deploying to moto
# --------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def alarm_topic(moto_endpoint: str) -> str:
    return clients_for(moto_endpoint)("sns").create_topic(Name=f"{unique_project()}-alarms")["TopicArn"]


@pytest.fixture(scope="module")
def deployment(moto_endpoint: str, alarm_topic: str) -> Deployment:
    """The template deployed with non-default parameters (so defaults cannot pass by accident)."""
    return deploy(moto_endpoint, {
        "ProjectName": unique_project(), "Environment": "staging", "ArtifactBucketSuffix": "123456789012",
        "ArtifactPrefix": "ml", "EndpointName": "news-classifier", "Invocation5XXErrorsThreshold": "5",
        "ModelLatencyThresholdMicroseconds": "250000", "AlarmPeriodSeconds": "300",
        "AlarmEvaluationPeriods": "2", "AlarmTopicArn": alarm_topic, "ImageRetentionCount": "12",
        "NoncurrentVersionRetentionDays": "45",
    })


def test_stack_is_created_and_moto_skips_only_the_known_gaps(deployment: Deployment) -> None:
    assert deployment.stack["StackStatus"] == "CREATE_COMPLETE"
    resources = deployment.resolver.template["Resources"]
    conditional_off = {k for k, v in resources.items()
                       if "Condition" in v and not deployment.resolver.condition(v["Condition"])}
    unsupported = {k for k, v in resources.items() if v["Type"] in MOTO_CFN_UNSUPPORTED_TYPES}
    # no KMS key given (SSE-S3), no data capture
    assert conditional_off == {"ArtifactKeyAccessPolicy", "ArtifactKeyReadPolicy", "ServingDataCapturePolicy"}
    # If this fails because moto now creates a skipped type, drop it from MOTO_CFN_UNSUPPORTED_TYPES.
    assert set(resources) - deployment.created == conditional_off | unsupported


def test_outputs_name_the_real_resources(deployment: Deployment) -> None:
    expected, p = deployment.expected_outputs, deployment.parameters
    # moto drops Outputs whose value Refs an alarm (alarms are skipped); every other one must agree.
    missing = set(expected) - set(deployment.outputs)
    assert missing == {"Invocation5XXErrorsAlarmName", "ModelLatencyAlarmName"}
    assert {k: expected[k] for k in deployment.outputs} == deployment.outputs

    bucket = f"{p['ProjectName']}-staging-artifacts-123456789012"
    assert expected["ArtifactBucketName"] == bucket
    assert expected["ArtifactS3Uri"] == f"s3://{bucket}/ml"
    s3 = deployment.client("s3")
    assert bucket in {b["Name"] for b in s3.list_buckets()["Buckets"]}
    iam = deployment.client("iam")
    for kind in ("serving", "training"):
        role = iam.get_role(RoleName=f"{p['ProjectName']}-staging-sagemaker-{kind}")["Role"]
        assert expected[f"SageMaker{kind.title()}RoleArn"] == role["Arn"]
    assert expected["TrainingS3Uri"] == f"s3://{bucket}/ml/training"
    repos = deployment.client("ecr").describe_repositories(
        repositoryNames=[f"{p['ProjectName']}/staging/training", f"{p['ProjectName']}/staging/serving"])
    uris = {r["repositoryName"].rsplit("/", 1)[1]: r["repositoryUri"] for r in repos["repositories"]}
    assert expected["TrainingRepositoryUri"] == uris["training"]
    assert expected["ServingRepositoryUri"] == uris["serving"]
    assert expected["EndpointName"] == "news-classifier"
    exports = {e["Name"] for e in deployment.client("cloudformation").list_exports()["Exports"]}
    stack = deployment.resolver.pseudo["AWS::StackName"]
    assert {f"{stack}-SageMakerServingRoleArn", f"{stack}-SageMakerTrainingRoleArn"} <= exports


def test_artifact_bucket_is_versioned_encrypted_private_and_tls_only(deployment: Deployment) -> None:
    s3, bucket = deployment.client("s3"), deployment.expected_outputs["ArtifactBucketName"]
    assert s3.get_bucket_versioning(Bucket=bucket)["Status"] == "Enabled"
    rules = s3.get_bucket_encryption(Bucket=bucket)["ServerSideEncryptionConfiguration"]["Rules"]
    assert [r["ApplyServerSideEncryptionByDefault"]["SSEAlgorithm"] for r in rules] == ["AES256"]
    block = s3.get_public_access_block(Bucket=bucket)["PublicAccessBlockConfiguration"]
    assert block == {"BlockPublicAcls": True, "IgnorePublicAcls": True, "BlockPublicPolicy": True,
                     "RestrictPublicBuckets": True}
    ownership = s3.get_bucket_ownership_controls(Bucket=bucket)["OwnershipControls"]["Rules"]
    assert ownership == [{"ObjectOwnership": "BucketOwnerEnforced"}]
    lifecycle = {r["ID"]: r for r in s3.get_bucket_lifecycle_configuration(Bucket=bucket)["Rules"]}
    assert lifecycle["expire-noncurrent-versions"]["NoncurrentVersionExpiration"]["NoncurrentDays"] == 45
    assert lifecycle["abort-incomplete-multipart-uploads"]["AbortIncompleteMultipartUpload"] == {
        "DaysAfterInitiation": 7}
    tags = {t["Key"]: t["Value"] for t in s3.get_bucket_tagging(Bucket=bucket)["TagSet"]}
    assert tags == {"project": deployment.parameters["ProjectName"], "environment": "staging"}

    policy = json.loads(s3.get_bucket_policy(Bucket=bucket)["Policy"])
    arn = f"arn:aws:s3:::{bucket}"
    insecure = [s for s in policy["Statement"]
                if s["Condition"].get("Bool", {}).get("aws:SecureTransport") == "false"]
    assert len(insecure) == 1
    assert (insecure[0]["Effect"], insecure[0]["Principal"], insecure[0]["Action"]) == ("Deny", "*", "s3:*")
    assert sorted(insecure[0]["Resource"]) == [arn, f"{arn}/*"]
    assert all(s["Effect"] == "Deny" for s in policy["Statement"])  # the bucket policy grants nothing
    # moto's S3 applies the Deny to object requests (it cannot evaluate the Bool condition, and its
    # endpoint is plain HTTP anyway): this shows the policy covers the objects, not just the bucket.
    with pytest.raises(ClientError) as refused:
        s3.put_object(Bucket=bucket, Key="ml/over-plain-http.txt", Body=b"x")
    assert refused.value.response["ResponseMetadata"]["HTTPStatusCode"] == 403


def test_ecr_repositories_scan_on_push_with_immutable_tags_and_expire_images(deployment: Deployment) -> None:
    ecr = deployment.client("ecr")
    for logical_id in ("TrainingRepository", "ServingRepository"):
        name = deployment.resolver.physical_ids[logical_id]
        (repo,) = ecr.describe_repositories(repositoryNames=[name])["repositories"]
        assert repo["imageTagMutability"] == "IMMUTABLE"
        assert repo["imageScanningConfiguration"] == {"scanOnPush": True}
        rules = json.loads(ecr.get_lifecycle_policy(repositoryName=name)["lifecyclePolicyText"])["rules"]
        assert [(r["selection"]["tagStatus"], r["selection"]["countType"], r["selection"]["countNumber"])
                for r in sorted(rules, key=lambda r: r["rulePriority"])] == [
            ("untagged", "sinceImagePushed", 7), ("any", "imageCountMoreThan", 12)]
        # moto reports encryption empty for CloudFormation-made repositories (MOTO_CFN_GAPS):
        # check the template instead.
        props = deployment.resolver.template["Resources"][logical_id]["Properties"]
        assert props["EncryptionConfiguration"] == {"EncryptionType": "AES256"}


def test_alarms_watch_the_endpoints_errors_and_latency(deployment: Deployment, alarm_topic: str) -> None:
    out = deployment.expected_outputs
    names = [out["Invocation5XXErrorsAlarmName"], out["ModelLatencyAlarmName"]]
    alarms = {a["MetricName"]: a for a in
              deployment.client("cloudwatch").describe_alarms(AlarmNames=names)["MetricAlarms"]}
    assert set(alarms) == {"Invocation5XXErrors", "ModelLatency"}
    assert sorted(a["AlarmName"] for a in alarms.values()) == sorted(names)
    for alarm in alarms.values():
        assert alarm["Namespace"] == "AWS/SageMaker"
        assert sorted((d["Name"], d["Value"]) for d in alarm["Dimensions"]) == [
            ("EndpointName", "news-classifier"), ("VariantName", "AllTraffic")]
        assert (alarm["Period"], alarm["EvaluationPeriods"], alarm["DatapointsToAlarm"]) == (300, 2, 2)
        assert alarm["ComparisonOperator"] == "GreaterThanOrEqualToThreshold"
        assert alarm["TreatMissingData"] == "notBreaching"
        assert alarm["AlarmActions"] == alarm["OKActions"] == [alarm_topic]
    errors, latency = alarms["Invocation5XXErrors"], alarms["ModelLatency"]
    assert (errors["Statistic"], errors["Threshold"]) == ("Sum", 5.0)
    assert (latency["ExtendedStatistic"], latency["Threshold"]) == ("p90", 250000.0)
    # SageMaker reads these alarms with the execution role during a blue/green update: the role may
    # describe exactly these two (its ARNs are spelled out in the template, so check they match).
    (describe,) = [s for s in role_statements(deployment, SERVING) if "cloudwatch:DescribeAlarms" in s["Action"]]
    assert describe["Action"] == ["cloudwatch:DescribeAlarms"]
    assert sorted(describe["Resource"]) == sorted(a["AlarmArn"] for a in alarms.values())


def test_kms_key_switches_bucket_to_sse_kms_and_grants_only_that_key(moto_endpoint: str) -> None:
    key = clients_for(moto_endpoint)("kms").create_key(Description="fineship artifacts")
    key_arn = key["KeyMetadata"]["Arn"]
    deployment = deploy(moto_endpoint, {"ProjectName": unique_project(), "ArtifactBucketSuffix": "kms",
                                        "ArtifactKmsKeyArn": key_arn})
    assert {"ArtifactKeyAccessPolicy", "ArtifactKeyReadPolicy"} <= deployment.created
    bucket = deployment.expected_outputs["ArtifactBucketName"]
    encryption = deployment.client("s3").get_bucket_encryption(Bucket=bucket)
    (rule,) = encryption["ServerSideEncryptionConfiguration"]["Rules"]
    assert rule["ApplyServerSideEncryptionByDefault"] == {"SSEAlgorithm": "aws:kms",
                                                          "KMSMasterKeyID": key_arn}

    def kms(role: str) -> list[dict]:
        return [s for s in role_statements(deployment, role) if any(a.startswith("kms:") for a in s["Action"])]

    # training reads and writes encrypted objects; serving only reads (decrypts) model artifacts
    assert [(sorted(s["Action"]), s["Resource"]) for s in kms(TRAINING)] == [
        (["kms:Decrypt", "kms:GenerateDataKey"], [key_arn])]
    assert [(sorted(s["Action"]), s["Resource"]) for s in kms(SERVING)] == [(["kms:Decrypt"], [key_arn])]
    for statement in kms(TRAINING) + kms(SERVING):
        assert statement["Condition"] == {"StringEquals": {"kms:ViaService": f"s3.{REGION}.amazonaws.com"}}


# --------------------------------------------------------------------------------------------
# The moto harness itself
# --------------------------------------------------------------------------------------------

def test_moto_endpoint_routes_plain_boto3_clients_to_moto(moto_endpoint: str) -> None:
    assert os.environ["AWS_ENDPOINT_URL"] == moto_endpoint
    assert moto_endpoint.startswith("http://127.0.0.1:")
    assert aws_env_to_unset(os.environ) == []
    # A client built with no arguments answers with moto's account, so it never reached AWS.
    assert boto3.client("sts").get_caller_identity()["Account"] == "123456789012"


def test_reset_empties_a_server_and_the_server_stops_on_exit() -> None:
    with moto_server() as endpoint:
        s3 = clients_for(endpoint)("s3")
        s3.create_bucket(Bucket="before-reset")
        reset_moto(endpoint)
        assert s3.list_buckets()["Buckets"] == []
    with pytest.raises(OSError):
        urllib.request.urlopen(f"{endpoint}/moto-api/data.json", timeout=2)


def test_aws_env_to_unset_names_only_redirecting_variables() -> None:
    environ = {"AWS_ENDPOINT_URL_S3": "https://s3.example", "AWS_PROFILE": "prod", "AWS_SESSION_TOKEN": "t",
               "AWS_IGNORE_CONFIGURED_ENDPOINT_URLS": "true", "AWS_REGION": "eu-west-1", "HOME": "/root"}
    assert aws_env_to_unset(environ) == [
        "AWS_ENDPOINT_URL_S3", "AWS_IGNORE_CONFIGURED_ENDPOINT_URLS", "AWS_PROFILE", "AWS_SESSION_TOKEN"]


# --------------------------------------------------------------------------------------------
# 3. Prefect work-pool templates
# --------------------------------------------------------------------------------------------

POOLS = ["process", "ecs", "kubernetes"]


def _pool(kind: str) -> dict[str, Any]:
    return json.loads((PREFECT_DIR / f"{kind}.json").read_text())


def _values(template: dict[str, Any], **overrides: Any) -> dict[str, Any]:
    properties = template["variables"]["properties"]
    values = {k: v["default"] for k, v in properties.items() if v.get("default") is not None}
    return values | overrides


def test_infra_prefect_holds_exactly_the_three_pools() -> None:
    assert sorted(p.stem for p in PREFECT_DIR.glob("*.json")) == sorted(POOLS)


@pytest.mark.parametrize("kind", POOLS)
def test_pool_template_passes_prefect_validation_and_its_schema(kind: str) -> None:
    import jsonschema
    from prefect.server.schemas.actions import WorkPoolCreate

    template = _pool(kind)
    assert set(template) == {"job_configuration", "variables"}
    # The server's own check: both keys present and every {{ placeholder }} declared as a variable.
    WorkPoolCreate(name=f"fineship-{kind}", type=kind, base_job_template=template)
    schema = template["variables"]
    jsonschema.Draft202012Validator.check_schema(schema)
    validator = jsonschema.Draft202012Validator(schema)
    assert list(validator.iter_errors(_values(template))) == []
    assert schema["additionalProperties"] is False  # a run cannot pass variables the template does not declare
    assert list(validator.iter_errors(_values(template, image="registry.example/evil:1")))
    # Every value the operator must fill in is marked, so a pool created from the file unedited fails visibly.
    text = json.dumps(template["job_configuration"])
    assert ("<operator: " in text) == (kind != "process")


def test_process_pool_renders_into_a_process_job_configuration() -> None:
    from prefect.utilities.templating import apply_values
    from prefect.workers.process import ProcessJobConfiguration

    template = _pool("process")
    config = ProcessJobConfiguration(**apply_values(template["job_configuration"], _values(template)))
    assert config.env["TOKENIZERS_PARALLELISM"] == "false"
    assert config.stream_output is True


def test_ecs_pool_renders_a_fargate_task_for_the_training_image() -> None:
    import jsonschema
    from prefect.utilities.templating import apply_values

    template = _pool("ecs")
    assert "required" not in template["variables"]  # image and roles are the operator's, not variables
    job = apply_values(template["job_configuration"], _values(template))
    task = job["task_definition"]
    (container,) = task["containerDefinitions"]
    assert container["name"] == "prefect" and container["image"].startswith("<operator: ")
    assert (task["cpu"], task["memory"], task["ephemeralStorage"]) == (2048, 8192, {"sizeInGiB": 50})
    assert task["executionRoleArn"].startswith("<operator: ")
    assert job["task_run_request"]["overrides"]["taskRoleArn"].startswith("<operator: ")
    assert job["task_run_request"]["launchType"] == "FARGATE"
    assert job["configure_cloudwatch_logs"] is True
    with pytest.raises(jsonschema.ValidationError):  # Fargate's ephemeral storage starts at 21 GiB
        jsonschema.validate(_values(template, ephemeral_storage_gib=10), template["variables"])
    with pytest.raises(jsonschema.ValidationError):  # not a Fargate CPU size
        jsonschema.validate(_values(template, cpu=3000), template["variables"])


def test_kubernetes_pool_renders_a_non_root_job_with_requests() -> None:
    from prefect.utilities.templating import apply_values

    template = _pool("kubernetes")
    assert "required" not in template["variables"]
    job = apply_values(template["job_configuration"], _values(template, name="retrain"))
    manifest = job["job_manifest"]
    assert manifest["metadata"] == {"namespace": "fineship", "generateName": "retrain-"}
    pod = manifest["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    assert container["image"].startswith("<operator: ")
    assert container["resources"] == {"requests": {"cpu": "2", "memory": "8Gi"}, "limits": {"memory": "8Gi"}}
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["serviceAccountName"] == "fineship-flow-runner"
    assert manifest["spec"]["ttlSecondsAfterFinished"] == 3600
