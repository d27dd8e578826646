"""SageMaker deployment without AWS: pre-flight checks, model.tar.gz, and the plan a dry run prints."""

from __future__ import annotations

import base64
import hashlib
import importlib.metadata
import re
import shutil
import tarfile
from pathlib import Path

import pytest
from pydantic import ValidationError

from components.deploy.package_tar import BUILD_STEP, HANDLER, build_model_archive, handler_modules
from components.deploy.sagemaker import (
    BUILD,
    CREATE_ENDPOINT,
    UPDATE_ENDPOINT,
    UPLOAD,
    EndpointState,
    JournalRecord,
    PreflightError,
    PreflightResult,
    SageMakerOptions,
    SageMakerTarget,
    deploy_to_sagemaker,
    parse_options,
    plan_deployment,
    preflight,
    prepare_deployment,
    refused_by_aws,
    resource_name,
    rollback_alarm_names,
)
from components.errors import ConfigError, DeploymentStepError

REPO = Path(__file__).resolve().parents[2]
ROLE = "arn:aws:iam::123456789012:role/fineship-dev-sagemaker-serving"
TEXTS = ["The striker scored twice.", "Shares fell after the warning."]


def _target(**overrides) -> SageMakerTarget:
    """A complete target; keys that are `SageMakerOptions` fields go to its options."""
    options = {k: overrides.pop(k) for k in list(overrides) if k in SageMakerOptions.model_fields}
    base = {"endpoint_name": "fineship-dev", "region": "eu-west-1", "role_arn": ROLE,
            "bucket": "fineship-dev-artifacts-1"}
    return SageMakerTarget(**{**base, **overrides}, options=SageMakerOptions(**{"instance_type": "ml.m5.large",
                                                                                **options}))


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
def test_serverless_memory_must_be_whole_gigabytes_up_to_6(memory):
    with pytest.raises(ValidationError, match="serverless_memory_mb"):
        SageMakerOptions(serverless_memory_mb=memory)
    with pytest.raises(ConfigError, match=f"sagemaker.serverless_memory_mb: .* \\(got {memory}\\)"):
        parse_options([f"sagemaker.serverless_memory_mb={memory}"])


@pytest.mark.parametrize("memory", [1024, 6144])
def test_serverless_memory_bounds_are_allowed(package, memory):
    assert "serverless" not in _checks(_target(serverless_memory_mb=memory), package)


@pytest.mark.parametrize("concurrency, ok", [(0, False), (1, True), (200, True), (201, False)])
def test_serverless_max_concurrency_is_1_to_200(package, concurrency, ok):
    if ok:
        assert "serverless" not in _checks(_target(serverless_memory_mb=2048, serverless_max_concurrency=concurrency),
                                           package)
    else:
        with pytest.raises(ValidationError, match="serverless_max_concurrency"):
            SageMakerOptions(serverless_memory_mb=2048, serverless_max_concurrency=concurrency)


@pytest.mark.parametrize("field, value", [
    ("instance_count", 0), ("data_capture_percent", 0), ("data_capture_percent", 101), ("traffic_percent", 0),
    ("traffic_percent", 101), ("wait_interval_seconds", -1), ("wait_interval_seconds", 3601),
    ("termination_wait_seconds", 3601), ("max_execution_timeout_seconds", 500), ("wait_timeout_seconds", 0),
    ("rollback_timeout_seconds", -1), ("poll_seconds", 0), ("keep_previous", 0), ("strategy", "blue-green"),
    ("lock_timeout_seconds", -1), ("lock_timeout_seconds", 86401),
])
def test_options_hold_sagemakers_limits(field, value):
    with pytest.raises(ValidationError, match=field):
        SageMakerOptions(**{field: value})


def test_options_overrides_are_read_as_yaml_and_name_every_bad_field():
    options = parse_options(["sagemaker.strategy=canary", "sagemaker.instance_count=4", "sagemaker.poll_seconds=0.5",
                             "sagemaker.data_capture_percent=20", "sagemaker.torchscript=true"])
    assert options == SageMakerOptions(strategy="canary", instance_count=4, poll_seconds=0.5, data_capture_percent=20,
                                       torchscript=True)
    assert parse_options([]) == SageMakerOptions()
    with pytest.raises(ConfigError) as err:
        parse_options(["sagemaker.instance_cnt=2", "sagemaker.traffic_percent=500"])
    assert "sagemaker.instance_cnt: unknown field" in str(err.value) and "instance_count" in str(err.value)
    assert "sagemaker.traffic_percent: Input should be less than or equal to 100 (got 500)" in str(err.value)
    for bad in ("instance_count=2", "training.epochs=2", "sagemaker.a.b=1", "sagemaker.instance_count"):
        with pytest.raises(ConfigError, match="sagemaker.field=value|sagemaker.<field>=<value>"):
            parse_options([bad])


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
    "fineship-dev-sagemaker-serving",
    "arn:aws:iam::12345:role/x",
    "arn:aws:iam::123456789012:user/alice",
    "arn:aws:sts::123456789012:assumed-role/x/y",
])
def test_role_arn_form(package, arn):
    message = _checks(_target(role_arn=arn), package)["role"]
    assert "arn:aws:iam::<12-digit account>:role/<name>" in message and "SageMakerServingRoleArn" in message


def test_gov_cloud_and_china_role_arns_are_accepted(package):
    assert "role" not in _checks(_target(role_arn="arn:aws-us-gov:iam::123456789012:role/r"), package)
    assert "role" not in _checks(_target(role_arn="arn:aws-cn:iam::123456789012:role/path/r"), package)


def test_missing_settings_each_say_which_variable_to_set(package):
    checks = _checks(_target(region=None, role_arn=None, bucket=None), package)
    assert "FINESHIP_AWS_REGION" in checks["region"]
    assert "FINESHIP_SAGEMAKER_ROLE_ARN" in checks["role"] and "SageMakerServingRoleArn" in checks["role"]
    assert "FINESHIP_ARTIFACT_BUCKET" in checks["bucket"]
    assert "is not an AWS region" in _checks(_target(region="europe"), package)["region"]
    assert "not a valid S3 bucket name" in _checks(_target(bucket="My_Bucket"), package)["bucket"]
    assert "1-63 letters" in _checks(_target(endpoint_name="bad_name"), package)["endpoint"]


def test_instance_and_traffic_shifting_limits(package):
    assert "not a SageMaker hosting instance type" in _checks(_target(instance_type="m5.large"), package)["instance"]
    assert "at least 2 instances" in _checks(_target(strategy="canary"), package)["strategy"]
    assert "1..50%" in _checks(_target(strategy="canary", instance_count=4, traffic_percent=60), package)["strategy"]
    assert "10..50%" in _checks(_target(strategy="linear", instance_count=4, traffic_percent=5), package)["strategy"]
    assert "601..28800" in _checks(_target(max_execution_timeout_seconds=600), package)["strategy"]
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
        deploy_to_sagemaker(_target(region=None, instance_type="m5.large"), package, _NoAws(), model_name="m",
                            version="1", smoke_texts=TEXTS, expected=None, work_dir=tmp_path, git_commit="abc")
    assert err.value.step == "pre-flight"
    assert {i.check for i in err.value.issues} >= {"region", "instance"}
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


# -- the archive holds exactly the approved files ------------------------------------------------

def _approved_copy(package: Path, tmp_path: Path) -> tuple[Path, dict[str, str]]:
    """A copy of the package and the file digests an approval signature would list for it."""
    from components.registry.signing import hash_package

    pkg = tmp_path / "approved"
    shutil.copytree(package, pkg)
    return pkg, hash_package(pkg)


def test_archive_built_from_the_approved_digests_is_the_same_archive(package, archive, tmp_path):
    pkg, approved = _approved_copy(package, tmp_path)
    checked = build_model_archive(pkg, tmp_path / "checked.tar.gz", {"git_commit": "abc"}, expected_files=approved)
    assert checked.sha256 == archive.sha256  # the check changes nothing in the bytes
    # exports (made at deploy time) and the signature file are not part of the approved set
    (pkg / "export" / "torchscript").mkdir(parents=True)
    (pkg / "export" / "torchscript" / "model.pt").write_bytes(b"ts")
    (pkg / "fineship.signature.json").write_text("{}")
    with_export = build_model_archive(pkg, tmp_path / "export.tar.gz", {"git_commit": "abc"}, expected_files=approved)
    assert "export/torchscript/model.pt" in with_export.members


@pytest.mark.parametrize("change, named, says", [
    ("edit", "config.json", "differs from the approved file"),
    ("add", "notes.txt", "is not among the approved files"),
    ("remove", "config.json", "missing from"),
])
def test_archive_refuses_a_package_that_differs_from_the_approval(package, tmp_path, change, named, says):
    pkg, approved = _approved_copy(package, tmp_path)
    if change == "edit":
        (pkg / named).write_bytes((pkg / named).read_bytes() + b" ")
    elif change == "add":
        (pkg / named).write_text("added after the approval")
    else:
        (pkg / named).unlink()
    with pytest.raises(DeploymentStepError) as err:
        build_model_archive(pkg, tmp_path / "out.tar.gz", {"git_commit": "abc"}, expected_files=approved)
    assert err.value.step == BUILD_STEP == BUILD
    assert named in str(err.value) and says in str(err.value)
    assert not (tmp_path / "out.tar.gz").exists()  # refused before anything was written


def test_prepare_checks_the_approved_digests_before_any_aws_call(package, tmp_path):
    pkg, approved = _approved_copy(package, tmp_path)
    checked = PreflightResult(target=_target(), package_dir=str(pkg), image_uri="img")
    tampered = {**approved, "config.json": "0" * 64}
    with pytest.raises(DeploymentStepError, match=r"config.json in .* differs from the approved file") as err:
        prepare_deployment(checked, _NoAws(), model_name="news", version="1", smoke_texts=TEXTS,
                           work_dir=tmp_path / "work", git_commit="abc", expected_files=tampered)
    assert err.value.step == BUILD


# -- what a lost answer means ---------------------------------------------------------------------

def _client_error(status: int, retries: int):
    from botocore.exceptions import ClientError

    return ClientError({"Error": {"Code": "ValidationException", "Message": "Cannot update in-progress endpoint"},
                        "ResponseMetadata": {"HTTPStatusCode": status, "RetryAttempts": retries}}, "UpdateEndpoint")


def test_only_a_4xx_to_the_first_attempt_proves_a_call_did_not_happen(archive):
    from botocore.exceptions import EndpointConnectionError, ReadTimeoutError

    assert refused_by_aws(_client_error(400, 0))
    # after a retry the 4xx may answer the retry of a call whose first attempt went through
    assert not refused_by_aws(_client_error(400, 1))
    assert not refused_by_aws(_client_error(500, 0))
    assert not refused_by_aws(ReadTimeoutError(endpoint_url="https://api.sagemaker.eu-west-1.amazonaws.com"))
    assert not refused_by_aws(EndpointConnectionError(endpoint_url="https://x"))
    assert not refused_by_aws(TimeoutError())
    plan = plan_deployment(_target(), archive, EndpointState(exists=False), image_uri="img", model_name="news",
                           version="7", git_commit="abc", smoke_texts=TEXTS, upload="new", deploy_id="d")
    record = JournalRecord(deploy_id="d", owner="me", started_at="t", updated_at="t", plan=plan,
                           options=SageMakerOptions(), entries=[
                               {"step": "upload", "operation": "PutObject", "state": "done", "at": "t"},
                               {"step": "create-model", "operation": "CreateModel", "state": "refused", "at": "t"},
                               {"step": "create-endpoint", "operation": "CreateEndpoint", "state": "intended",
                                "at": "t"}])
    assert record.possibly_made("upload") and record.possibly_made("create-endpoint")
    assert not record.possibly_made("create-model") and not record.possibly_made("create-endpoint-config")
    assert JournalRecord.model_validate_json(record.model_dump_json()) == record  # what a later process reads


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
    upload = plan.calls[0].params  # S3 verifies the body against the digest and keeps it for later HeadObjects
    assert upload["ChecksumAlgorithm"] == "SHA256"
    assert base64.b64decode(upload["ChecksumSHA256"]).hex() == archive.sha256 == plan.archive_sha256
    assert plan.lock_keys == ["fineship/deployments/locks/endpoint/fineship-dev.json",
                              "fineship/deployments/locks/model/news.json"]
    assert plan.journal_key == "fineship/deployments/journals/fineship-dev/20250101-ab12.json"
    rendered = plan.render()
    assert '"IfNoneMatch"="*"' in rendered and plan.journal_key in rendered and "before it is made" in rendered
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
    request = DeployRequest(model_name="news", alias="champion", target="sagemaker",
                            sagemaker={"serverless_memory_mb": 2048, "strategy": "all_at_once"}, dry_run=True)
    target = request.sagemaker_target(Settings())
    assert target.endpoint_name == "fineship-prod" and target.region == "eu-west-1" and target.serverless
    assert target.options is request.sagemaker and target.options.serverless_memory_mb == 2048
    assert target.rollback_alarms == rollback_alarm_names("fineship", "prod", "fineship-prod")
    monkeypatch.setenv("FINESHIP_ROLLBACK_ALARMS", '["mine"]')
    assert DeployRequest(model_name="n", version="1", target="sagemaker", endpoint_name="other") \
        .sagemaker_target(Settings()).rollback_alarms == ("mine",)
    with pytest.raises(ValidationError, match="apply to --target sagemaker only"):
        DeployRequest(model_name="news", version="1", dry_run=True)
    with pytest.raises(ValidationError, match="apply to --target sagemaker only"):
        DeployRequest(model_name="news", version="1", sagemaker={"torchscript": True})
    with pytest.raises(ValidationError, match="sagemaker.serverless_memory_mb"):
        DeployRequest(model_name="news", version="1", target="sagemaker", sagemaker={"serverless_memory_mb": 999})


def test_one_options_model_for_the_cli_the_form_and_the_target():
    """The deploy-model form's `sagemaker` section is `SageMakerOptions`, with its limits and descriptions."""
    from flows.deployment import DeployRequest

    assert DeployRequest.model_fields["sagemaker"].annotation is SageMakerOptions
    assert SageMakerTarget.model_fields["options"].annotation is SageMakerOptions
    schema = SageMakerOptions.model_json_schema()["properties"]
    assert all(p.get("description") for p in schema.values())
    memory = next(s for s in schema["serverless_memory_mb"]["anyOf"] if s["type"] == "integer")
    assert (memory["minimum"], memory["maximum"], memory["multipleOf"]) == (1024, 6144, 1024)
    assert (schema["serverless_max_concurrency"]["minimum"], schema["serverless_max_concurrency"]["maximum"]) == (1, 200)
    # no SageMaker option is written twice: the request and the target hold it only through `sagemaker`/`options`
    for model in (DeployRequest, SageMakerTarget):
        assert not set(model.model_fields) & set(SageMakerOptions.model_fields)


def test_cli_deploy_takes_sagemaker_options_as_set_overrides(tmp_path, monkeypatch):
    import os
    from unittest import mock

    from typer.testing import CliRunner

    from flows.cli import app

    monkeypatch.setenv("FINESHIP_HOME", str(tmp_path / "home"))
    base = ["deploy", "--model", "news", "--version", "1"]
    cases = [
        (["--target", "sagemaker", "--set", "sagemaker.instance_cnt=2"], "sagemaker.instance_cnt: unknown field"),
        (["--target", "sagemaker", "-s", "sagemaker.serverless_memory_mb=1000"], "sagemaker.serverless_memory_mb"),
        (["--target", "sagemaker", "--set", "instance_count=2"], "sagemaker.<field>=<value>"),
        (["--set", "deploy.capture_pct=10"], "deploy.<field>=<value>"),  # the local endpoint's fields, as fineship run
        (["--set", "deploy.capture_percent=150"], "capture_percent"),
        (["--set", "deploy.variants=[fast]"], "variants"),
        (["--set", "sagemaker.instance_count=2"], "apply to --target sagemaker only"),
        (["--torchscript"], "apply to --target sagemaker only"),
    ]
    for args, message in cases:
        with mock.patch.dict(os.environ):  # the command sets environment defaults; keep them out of other tests
            r = CliRunner().invoke(app, base + args)
        assert r.exit_code == 2, (args, r.output)
        assert message in r.output, (args, r.output)
    with mock.patch.dict(os.environ):
        r = CliRunner().invoke(app, ["deploy", "--help"])
    assert "--set" in r.output and "--instance-type" not in r.output and "--strategy" not in r.output
