"""SageMaker deployment without AWS: pre-flight checks, model.tar.gz, and the plan a dry run prints."""

from __future__ import annotations

import hashlib
import importlib.metadata
import re
import shutil
import tarfile
from pathlib import Path

import pytest

from components.deploy.package_tar import HANDLER, build_model_archive, handler_modules
from components.deploy.sagemaker import (
    CREATE_ENDPOINT,
    UPDATE_ENDPOINT,
    UPLOAD,
    EndpointState,
    PreflightError,
    SageMakerTarget,
    plan_deployment,
    preflight,
    prepare_deployment,
    resource_name,
    rollback_alarm_names,
)

REPO = Path(__file__).resolve().parents[2]
ROLE = "arn:aws:iam::123456789012:role/fineship-dev-sagemaker-execution"
TEXTS = ["The striker scored twice.", "Shares fell after the warning."]


def _target(**overrides) -> SageMakerTarget:
    base = {"endpoint_name": "fineship-dev", "region": "eu-west-1", "role_arn": ROLE,
            "bucket": "fineship-dev-artifacts-1", "instance_type": "ml.m5.large"}
    return SageMakerTarget(**{**base, **overrides})


def _checks(target: SageMakerTarget, package: Path) -> dict[str, str]:
    issues, _ = preflight(target, package)
    return {i.check: i.message for i in issues}


@pytest.fixture(scope="module")
def package(tiny_bert: Path) -> Path:
    return tiny_bert


@pytest.fixture(scope="module")
def archive(package: Path, tmp_path_factory: pytest.TempPathFactory):
    return build_model_archive(package, tmp_path_factory.mktemp("archive") / "model.tar.gz", {"git_commit": "abc"})


# -- pre-flight ---------------------------------------------------------------------------------

def test_a_complete_target_passes_and_resolves_the_official_pytorch_image_offline(package):
    issues, image = preflight(_target(), package)
    assert issues == []
    assert image == "763104351884.dkr.ecr.eu-west-1.amazonaws.com/pytorch-inference:2.6-cpu-py312"
    serverless_issues, serverless_image = preflight(_target(serverless_memory_mb=2048), package)
    assert serverless_issues == [] and serverless_image.endswith(":2.6-cpu-py312")
    _, gpu = preflight(_target(instance_type="ml.g5.xlarge"), package)
    assert gpu.endswith(":2.6-gpu-py312")


@pytest.mark.parametrize("memory", [512, 1536, 7168, 8192])
def test_serverless_memory_must_be_whole_gigabytes_up_to_6(package, memory):
    message = _checks(_target(serverless_memory_mb=memory), package)["serverless"]
    assert f"{memory} MB is not allowed" in message and "1024, 2048, 3072, 4096, 5120, 6144" in message


@pytest.mark.parametrize("memory", [1024, 6144])
def test_serverless_memory_bounds_are_allowed(package, memory):
    assert "serverless" not in _checks(_target(serverless_memory_mb=memory), package)


@pytest.mark.parametrize("concurrency, ok", [(0, False), (1, True), (200, True), (201, False)])
def test_serverless_max_concurrency_is_1_to_200(package, concurrency, ok):
    checks = _checks(_target(serverless_memory_mb=2048, serverless_max_concurrency=concurrency), package)
    assert ("serverless" not in checks) == ok
    if not ok:
        assert "outside 1..200" in checks["serverless"]


def test_serverless_refuses_data_capture_big_images_and_too_much_provisioned_concurrency(package):
    issues, _ = preflight(_target(serverless_memory_mb=2048, serverless_max_concurrency=4,
                                  serverless_provisioned_concurrency=5, data_capture_percent=10,
                                  image_size_mb=12_000), package)
    text = " ".join(i.message for i in issues)
    assert "provisioned concurrency 5 must be between 1 and the max concurrency (4)" in text
    assert "do not support data capture" in text
    assert "12000 MB" in text and "deploy to an instance type" in text


def test_a_model_too_big_for_serverless_memory_is_refused(tmp_path):
    pkg = tmp_path / "big"
    pkg.mkdir()
    (pkg / "config.json").write_text("{}")
    (pkg / "tokenizer.json").write_text("{}")
    with open(pkg / "model.safetensors", "wb") as f:
        f.truncate(1800 * 2 ** 20)  # sparse: 1.8 GB on paper, nothing on disk
    message = _checks(_target(serverless_memory_mb=2048), pkg)["serverless"]
    assert "the model is 1800 MB" in message and "raise the memory" in message
    assert "serverless" not in _checks(_target(serverless_memory_mb=3072), pkg)


@pytest.mark.parametrize("arn", [
    "fineship-dev-sagemaker-execution",
    "arn:aws:iam::12345:role/x",
    "arn:aws:iam::123456789012:user/alice",
    "arn:aws:sts::123456789012:assumed-role/x/y",
])
def test_role_arn_form(package, arn):
    message = _checks(_target(role_arn=arn), package)["role"]
    assert "arn:aws:iam::<12-digit account>:role/<name>" in message and "SageMakerExecutionRoleArn" in message


def test_gov_cloud_and_china_role_arns_are_accepted(package):
    assert "role" not in _checks(_target(role_arn="arn:aws-us-gov:iam::123456789012:role/r"), package)
    assert "role" not in _checks(_target(role_arn="arn:aws-cn:iam::123456789012:role/path/r"), package)


def test_missing_settings_each_say_which_variable_to_set(package):
    checks = _checks(_target(region=None, role_arn=None, bucket=None), package)
    assert "FINESHIP_AWS_REGION" in checks["region"]
    assert "FINESHIP_SAGEMAKER_ROLE_ARN" in checks["role"]
    assert "FINESHIP_ARTIFACT_BUCKET" in checks["bucket"]
    assert "is not an AWS region" in _checks(_target(region="europe"), package)["region"]
    assert "not a valid S3 bucket name" in _checks(_target(bucket="My_Bucket"), package)["bucket"]
    assert "1-63 letters" in _checks(_target(endpoint_name="bad_name"), package)["endpoint"]


def test_instance_and_traffic_shifting_limits(package):
    assert "not a SageMaker hosting instance type" in _checks(_target(instance_type="m5.large"), package)["instance"]
    assert "at least 2 instances" in _checks(_target(strategy="canary"), package)["strategy"]
    assert "1..50%" in _checks(_target(strategy="canary", instance_count=4, traffic_percent=60), package)["strategy"]
    assert "10..50%" in _checks(_target(strategy="linear", instance_count=4, traffic_percent=5), package)["strategy"]
    assert "0..3600" in _checks(_target(wait_interval_seconds=4000), package)["strategy"]
    assert "..28800" in _checks(_target(max_execution_timeout_seconds=500), package)["strategy"]
    assert "at most 10" in _checks(_target(rollback_alarms=tuple(f"a{i}" for i in range(11))), package)["alarms"]
    assert _checks(_target(strategy="linear", instance_count=4, traffic_percent=20,
                           max_execution_timeout_seconds=1200), package) == {}


def test_incomplete_package_and_unusable_torchscript_export(package, tmp_path):
    message = _checks(_target(), tmp_path)["package"]
    assert "incomplete" in message and "config.json" in message
    checks = _checks(_target(torchscript=True), package)
    assert "has no TorchScript export" in checks["package"] and "without --torchscript" in checks["package"]
    # an export made with this machine's torch may not load in the official image's older torch
    assert "FINESHIP_IMAGE_URI" in checks["image"] and "official PyTorch 2.6 image" in checks["image"]
    ecr = "123456789012.dkr.ecr.eu-west-1.amazonaws.com/fineship/dev/serving:abc123"
    assert "image" not in _checks(_target(torchscript=True, image_uri=ecr), package)


def test_custom_images_must_be_pinned_ecr_images_in_the_endpoint_region(package):
    ecr = "123456789012.dkr.ecr.eu-west-1.amazonaws.com/fineship/dev/serving"
    assert "not an ECR image URI" in _checks(_target(image_uri="docker.io/me/serving:1"), package)["image"]
    assert "no fixed tag" in _checks(_target(image_uri=ecr), package)["image"]
    assert "no fixed tag" in _checks(_target(image_uri=ecr + ":latest"), package)["image"]
    other_region = ecr.replace("eu-west-1", "us-east-1") + ":abc123"
    assert "push the image" in _checks(_target(image_uri=other_region), package)["image"]
    issues, image = preflight(_target(image_uri=ecr + ":abc123"), package)
    assert issues == [] and image == ecr + ":abc123"


def test_image_versions_the_sdk_cannot_resolve_or_that_are_too_old(package):
    assert "too old for transformers 5" in _checks(_target(framework_version="2.1"), package)["image"]
    message = _checks(_target(framework_version="9.9"), package)["image"]
    assert "no official PyTorch inference image" in message and "FINESHIP_IMAGE_URI" in message


class _NoAws:
    """Clients that fail the test if anything touches them."""

    def __getattr__(self, name):
        raise AssertionError(f"an AWS client was used ({name}) before the pre-flight checks passed")


def test_preflight_failures_are_raised_before_any_aws_call(package, tmp_path):
    with pytest.raises(PreflightError) as err:
        prepare_deployment(_target(region=None, serverless_memory_mb=999), package, _NoAws(), model_name="m",
                           version="1", smoke_texts=TEXTS, work_dir=tmp_path, git_commit="abc")
    assert err.value.step == "pre-flight"
    assert {i.check for i in err.value.issues} >= {"region", "serverless"}
    assert "nothing was called on AWS" in str(err.value)
    assert not any(tmp_path.iterdir())  # not even the archive was built


# -- the archive --------------------------------------------------------------------------------

def test_archive_holds_the_package_the_handler_and_what_it_imports(archive, package):
    with tarfile.open(archive.path) as tar:
        names = tar.getnames()
        handler = tar.extractfile("code/inference.py").read()
        requirements = tar.extractfile("code/requirements.txt").read().decode().split()
    for f in package.iterdir():
        assert f.name in names
    assert handler == HANDLER.read_bytes()
    assert {"code/components/__init__.py", "code/components/errors.py", "code/components/package.py",
            "code/components/serving/__init__.py", "code/components/serving/handler.py"} <= set(names)
    assert len(handler_modules()) == len([n for n in names if n.startswith("code/components/")])
    assert requirements == [f"{n}=={importlib.metadata.version(n)}"
                            for n in ("transformers", "tokenizers", "safetensors", "pydantic")]
    assert not archive.has_export
    assert archive.sha256 == hashlib.sha256(Path(archive.path).read_bytes()).hexdigest()


def test_archive_bytes_are_deterministic_and_include_exports(package, archive, tmp_path):
    again = build_model_archive(package, tmp_path / "again.tar.gz", {"git_commit": "abc"})
    assert again.sha256 == archive.sha256
    pkg = tmp_path / "pkg"
    shutil.copytree(package, pkg)
    (pkg / "export" / "torchscript").mkdir(parents=True)  # where components.export writes an export
    (pkg / "export" / "torchscript" / "model.pt").write_bytes(b"ts")
    with_export = build_model_archive(pkg, tmp_path / "export.tar.gz", {"git_commit": "abc"})
    assert with_export.has_export and "export/torchscript/model.pt" in with_export.members
    assert with_export.sha256 != archive.sha256


# -- the plan -----------------------------------------------------------------------------------

def _ops(calls) -> list[str]:
    return [c.operation for c in calls]


def test_create_plan_lists_every_call_in_order(archive):
    plan = plan_deployment(_target(), archive, EndpointState(exists=False), image_uri="img", model_name="news",
                           version="7", git_commit="abc123", smoke_texts=TEXTS, upload="new", deploy_id="20250101-ab12",
                           training_commit="def456")
    assert plan.mode == "create" and plan.previous_config is None
    assert _ops(plan.calls) == ["PutObject", "CreateModel", "CreateEndpointConfig", "CreateEndpoint",
                                "DescribeEndpoint", "InvokeEndpoint", "SetModelVersionTag"]
    assert [c.step for c in plan.calls][:4] == [UPLOAD, "create-model", "create-endpoint-config", CREATE_ENDPOINT]
    assert _ops(plan.on_failure) == ["DeleteEndpoint", "DeleteEndpointConfig", "DeleteModel", "DeleteObject",
                                     "SetModelVersionTag"]
    model = plan.calls[1].params
    assert model["PrimaryContainer"]["ModelDataUrl"] == plan.model_data_url
    assert plan.model_data_url == f"s3://fineship-dev-artifacts-1/fineship/models/news/v7/{archive.sha256[:16]}/model.tar.gz"
    environment = model["PrimaryContainer"]["Environment"]
    assert environment["SAGEMAKER_PROGRAM"] == "inference.py" and environment["FINESHIP_BACKEND"] == "eager"
    tags = {t["Key"]: t["Value"] for t in model["Tags"]}
    assert tags["fineship:model-name"] == "news" and tags["fineship:model-version"] == "7"
    assert tags["fineship:git-commit"] == "abc123" and tags["fineship:training-git-commit"] == "def456"
    assert "fineship%3Amodel-version=7" in plan.calls[0].params["Tagging"]
    variant = plan.calls[2].params["ProductionVariants"][0]
    assert variant["VariantName"] == "AllTraffic" and variant["InstanceType"] == "ml.m5.large"
    assert "DataCaptureConfig" not in plan.calls[2].params
    assert re.fullmatch(r"[a-zA-Z0-9](-*[a-zA-Z0-9]){0,62}", plan.sagemaker_model)


def test_update_plan_is_blue_green_with_alarms_and_keeps_the_variant_name(archive):
    alarms = rollback_alarm_names("fineship", "prod", "fineship-dev")
    state = EndpointState(exists=True, arn="arn:aws:sagemaker:eu-west-1:123456789012:endpoint/fineship-dev",
                          status="InService", config_name="old-config", config_exists=True, variant_name="Blue",
                          serverless=False)
    plan = plan_deployment(_target(strategy="canary", instance_count=4, traffic_percent=10, wait_interval_seconds=600,
                                   rollback_alarms=alarms, data_capture_percent=20), archive, state,
                           image_uri="img", model_name="news", version="8", git_commit="abc", smoke_texts=TEXTS,
                           upload="skip", deploy_id="20250101-ab12",
                           prunable=[{"name": "older", "models": ["older-model"]}, {"name": "old-config", "models": []}])
    assert plan.mode == "update" and plan.previous_config == "old-config"
    assert _ops(plan.calls) == ["CreateModel", "CreateEndpointConfig", "UpdateEndpoint", "DescribeEndpoint",
                                "InvokeEndpoint", "AddTags", "SetModelVersionTag"]  # identical object: no upload
    update = next(c for c in plan.calls if c.step == UPDATE_ENDPOINT).params
    policy = update["DeploymentConfig"]["BlueGreenUpdatePolicy"]
    assert policy["TrafficRoutingConfiguration"] == {"Type": "CANARY", "WaitIntervalInSeconds": 600,
                                                     "CanarySize": {"Type": "CAPACITY_PERCENT", "Value": 10}}
    assert update["DeploymentConfig"]["AutoRollbackConfiguration"] == {"Alarms": [{"AlarmName": a} for a in alarms]}
    config = plan.calls[1].params
    assert config["ProductionVariants"][0]["VariantName"] == "Blue"  # blue/green needs the same variant name
    assert config["DataCaptureConfig"]["InitialSamplingPercentage"] == 20
    assert config["DataCaptureConfig"]["DestinationS3Uri"].startswith("s3://fineship-dev-artifacts-1/fineship/")
    restore = plan.on_failure[0]
    assert restore.operation == "UpdateEndpoint" and restore.params["EndpointConfigName"] == "old-config"
    assert "AutoRollbackConfiguration" not in restore.params["DeploymentConfig"]  # firing alarms must not stop it
    assert "DeleteObject" not in _ops(plan.on_failure)  # the object was there before
    assert [c.params for c in plan.prune] == [{"EndpointConfigName": "older"}, {"ModelName": "older-model"}]
    text = plan.render()
    assert "dry run: none of the calls below was made" in text
    for call in plan.calls + plan.on_failure:
        assert call.operation in text


def test_linear_and_serverless_plans(archive):
    plan = plan_deployment(_target(serverless_memory_mb=3072, serverless_max_concurrency=10,
                                   serverless_provisioned_concurrency=2, strategy="linear", traffic_percent=20),
                           archive, EndpointState(exists=True, arn="arn", status="InService", config_name="c",
                                                  config_exists=True, variant_name="AllTraffic", serverless=True),
                           image_uri="img", model_name="news", version="1", git_commit="abc", smoke_texts=TEXTS,
                           upload="new", deploy_id="d")
    variant = plan.calls[2].params["ProductionVariants"][0]
    assert variant["ServerlessConfig"] == {"MemorySizeInMB": 3072, "MaxConcurrency": 10, "ProvisionedConcurrency": 2}
    assert "InstanceType" not in variant
    routing = plan.calls[3].params["DeploymentConfig"]["BlueGreenUpdatePolicy"]["TrafficRoutingConfiguration"]
    assert routing["LinearStepSize"] == {"Type": "CAPACITY_PERCENT", "Value": 20}


def test_resource_names_fit_sagemaker_limits():
    name = resource_name("e" * 63, "123", "20250101000000-abcd")
    assert len(name) <= 63 and name.endswith("-v123-20250101000000-abcd")
    assert re.fullmatch(r"[a-zA-Z0-9](-*[a-zA-Z0-9]){0,62}", name)


def test_rollback_alarm_names_match_the_infra_template():
    template = (REPO / "infra" / "aws" / "fineship.yaml").read_text()
    formats = re.findall(r'AlarmName: !Sub "\$\{ProjectName\}-\$\{Environment\}-\$\{EndpointName\}-([a-z0-9-]+)"',
                         template)
    assert rollback_alarm_names("p", "e", "ep") == tuple(f"p-e-ep-{suffix}" for suffix in formats)


def test_deploy_request_maps_to_a_sagemaker_target(monkeypatch):
    from pydantic import ValidationError

    from flows.deployment import DeployRequest
    from flows.settings import Settings

    for k, v in {"FINESHIP_AWS_REGION": "eu-west-1", "FINESHIP_SAGEMAKER_ROLE_ARN": ROLE,
                 "FINESHIP_ARTIFACT_BUCKET": "b-1", "FINESHIP_AWS_ENVIRONMENT": "prod"}.items():
        monkeypatch.setenv(k, v)
    monkeypatch.delenv("FINESHIP_SAGEMAKER_ENDPOINT_NAME", raising=False)
    monkeypatch.delenv("FINESHIP_ROLLBACK_ALARMS", raising=False)
    request = DeployRequest(model_name="news", alias="champion", target="sagemaker", serverless_memory_mb=2048,
                            strategy="all_at_once", dry_run=True)
    target = request.sagemaker_target(Settings())
    assert target.endpoint_name == "fineship-prod" and target.region == "eu-west-1" and target.serverless
    assert target.rollback_alarms == rollback_alarm_names("fineship", "prod", "fineship-prod")
    monkeypatch.setenv("FINESHIP_ROLLBACK_ALARMS", '["mine"]')
    assert DeployRequest(model_name="n", version="1", target="sagemaker", endpoint_name="other") \
        .sagemaker_target(Settings()).rollback_alarms == ("mine",)
    with pytest.raises(ValidationError, match="apply to --target sagemaker only"):
        DeployRequest(model_name="news", version="1", dry_run=True)
