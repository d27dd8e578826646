"""SageMaker deployment over HTTP against the session's moto server, with tests/support/moto_sagemaker_* loaded.

The moto plugins add UpdateEndpoint and Creating/Updating lifecycles, check CreateModel's role and
model data like AWS, and answer InvokeEndpoint from the model.tar.gz the endpoint actually serves
(a container stand-in runs its `code/inference.py`). So "the endpoint answers like the registered
model" is checked for real: predictions made from the uploaded artifact against predictions made
locally from the registry's package.

Models A and B (tests/support/sagemaker_deploy.py): B is A with one class bias raised, so which version
serves shows in its answers. Lost answers, crashes, concurrent deployments and tampered archives are in
test_sagemaker_deploy_state.py.
"""

from __future__ import annotations

import json
import os
from types import SimpleNamespace

import pytest

from components.deploy.sagemaker import AwsClients, SageMakerTarget, checks, deploy_to_sagemaker
from components.errors import DeploymentError, DeploymentStepError, PreflightError
from tests.support.sagemaker_deploy import (
    BUCKET,
    COMMIT,
    FAST,
    REGION,
    PreflightCounter,
    locks_held,
    moto_api,
    moto_state,
    put_alarms,
)
from tests.support.sagemaker_deploy import inventory as _inventory
from tests.support.sagemaker_deploy import invoke as _invoke
from tests.support.sagemaker_deploy import serving as _serving
from tests.support.sagemaker_deploy import target as _any_target
from tests.support.tiny import seed_mlflow_db

MODEL = "sm-news"
FAULT_MODEL = "sm-faults"
FAULTS_EP = "faults-ep"


@pytest.fixture
def preflight_calls(monkeypatch) -> PreflightCounter:
    counter = PreflightCounter()
    monkeypatch.setattr(checks, "preflight", counter)
    return counter


_alarms = put_alarms
_moto_api = moto_api
_moto_state = moto_state


# -- the deployment flow: v1 created, v2 blue/green, v3 fails and v2 keeps serving ----------------

@pytest.fixture(scope="module")
def prefect_api():
    from prefect.settings import PREFECT_API_URL
    from prefect.testing.utilities import prefect_test_harness

    with prefect_test_harness(server_startup_timeout=120):
        yield PREFECT_API_URL.value()


@pytest.fixture(scope="module")
def registry_home(tmp_path_factory, packages, texts):
    """A fineship home whose MLflow registry holds approved versions 1 (A), 2 (B) and 3 (A) of sm-news, signed by
    a reviewer the operator trusts."""
    from components.registry.mlflow_registry import MlflowRegistry, local_tracking_uri
    from tests.support.reviewers import approve_as, new_reviewers

    home = tmp_path_factory.mktemp("sagemaker-home")
    registry = MlflowRegistry(local_tracking_uri(seed_mlflow_db(home / "mlflow.db")), home / "artifacts")
    run = registry.start_run("sagemaker", "tiny")
    tags = {"fineship.git_commit": "t3st", "fineship.gate": "passed"}
    v1 = registry.log_and_register(run, packages.a, MODEL, texts, ["transformers"], tags)
    registry.log_and_register(run, packages.b, MODEL, texts, ["transformers"], tags)
    registry.client.create_model_version(MODEL, v1.source, run_id=run, tags=tags)  # v3: v1's logged model again
    registry.end_run(run)
    reviewers = new_reviewers()
    tester, policy = reviewers.signer("tester"), reviewers.policy(home)
    for version in ("1", "2", "3"):
        approve_as(registry, MODEL, version, tester, policy)
    return SimpleNamespace(home=home, registry=registry, reviewers=reviewers)


@pytest.fixture
def fineship_env(registry_home, aws, monkeypatch):
    env = {"FINESHIP_HOME": str(registry_home.home), "FINESHIP_AWS_REGION": REGION,
           "FINESHIP_AWS_ENDPOINT_URL": aws.url, "FINESHIP_SAGEMAKER_ROLE_ARN": aws.role_arn,
           "FINESHIP_ARTIFACT_BUCKET": BUCKET, **registry_home.reviewers.env()}
    monkeypatch.delenv("FINESHIP_TRACKING_URI", raising=False)
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    return env


def test_v1_then_blue_green_v2_then_failed_v3_leaves_v2_serving(prefect_api, fineship_env, registry_home, aws,
                                                               packages, texts, preflight_calls):
    from flows.deployment import DeployRequest, deployment_flow

    endpoint = "accept-ep"
    alarms = _alarms(aws, endpoint)
    sm, registry = aws.clients.sagemaker, registry_home.registry

    def request(version: str) -> DeployRequest:
        # v1 builds and gates every serving variant into its model.tar.gz (backend auto); v2 and v3 ship eager only
        return DeployRequest(model_name=MODEL, version=version, target="sagemaker", endpoint_name=endpoint,
                             sagemaker=FAST, **({} if version == "1" else {"variants": ["eager"]}))

    # v1: the endpoint does not exist yet, so it is created
    v1 = deployment_flow(request("1"))
    assert v1.mode == "create" and v1.smoke.agreed == len(texts)
    assert preflight_calls.take() == 1  # once per deployment
    assert _serving(aws, endpoint) == ("InService", v1.endpoint_config)
    assert _invoke(aws, endpoint, texts) == packages.labels_a

    # v2: a blue/green update with the stack's rollback alarms; v1's config stays as the rollback target
    v2 = deployment_flow(request("2"))
    assert v2.mode == "update" and v2.previous_config == v1.endpoint_config
    assert preflight_calls.take() == 1
    d = sm.describe_endpoint(EndpointName=endpoint)
    assert (d["EndpointStatus"], d["EndpointConfigName"]) == ("InService", v2.endpoint_config)
    assert d["LastDeploymentConfig"]["BlueGreenUpdatePolicy"]["TrafficRoutingConfiguration"]["Type"] == "ALL_AT_ONCE"
    assert [a["AlarmName"] for a in d["LastDeploymentConfig"]["AutoRollbackConfiguration"]["Alarms"]] == list(alarms)
    assert _invoke(aws, endpoint, texts) == packages.labels_b != packages.labels_a

    model_tags = {t["Key"]: t["Value"] for t in sm.list_tags(
        ResourceArn=sm.describe_model(ModelName=v2.sagemaker_model)["ModelArn"])["Tags"]}
    assert model_tags["fineship:model-name"] == MODEL and model_tags["fineship:model-version"] == "2"
    assert model_tags["fineship:git-commit"] and model_tags["fineship:training-git-commit"] == "t3st"
    endpoint_tags = {t["Key"]: t["Value"] for t in sm.list_tags(ResourceArn=d["EndpointArn"])["Tags"]}
    assert endpoint_tags["fineship:model-version"] == "2"
    v2_tags = registry.get_version(MODEL, version="2").tags
    assert v2_tags["fineship.sagemaker.status"] == "deployed"
    assert v2_tags["fineship.sagemaker.endpoint"] == endpoint
    assert v2_tags["fineship.sagemaker.endpoint_config"] == v2.endpoint_config
    assert v2_tags["fineship.sagemaker.deployed_at"]
    before = _inventory(aws, endpoint)
    assert before["configs"] == {v1.endpoint_config, v2.endpoint_config}

    # v3: the 5xx alarm goes off while the new fleet bakes, SageMaker rolls the update back
    aws.cloudwatch.set_alarm_state(AlarmName=alarms[0], StateValue="ALARM", StateReason="5xx errors on the new fleet")
    try:
        with pytest.raises(DeploymentError) as err:
            deployment_flow(request("3"))
    finally:
        aws.cloudwatch.set_alarm_state(AlarmName=alarms[0], StateValue="OK", StateReason="test over")
    assert isinstance(err.value, DeploymentStepError) and err.value.step == "wait-in-service"
    assert preflight_calls.take() == 1
    assert "failed at step 'wait-in-service'" in str(err.value) and alarms[0] in str(err.value)
    assert _serving(aws, endpoint) == ("InService", v2.endpoint_config)
    assert _invoke(aws, endpoint, texts) == packages.labels_b
    assert _inventory(aws, endpoint) == before  # nothing of v3 is left
    v3_tags = registry.get_version(MODEL, version="3").tags
    assert v3_tags["fineship.sagemaker.status"] == "failed"
    assert v3_tags["fineship.sagemaker.failed_step"] == "wait-in-service"
    assert registry.get_version(MODEL, version="2").tags["fineship.sagemaker.status"] == "deployed"


def test_cli_dry_run_prints_the_plan_and_changes_nothing(prefect_api, fineship_env, registry_home, aws, packages,
                                                        monkeypatch):
    from unittest import mock

    from typer.testing import CliRunner

    from flows.cli import app

    endpoint = "accept-ep"
    _alarms(aws, endpoint)
    before, tags_before = _moto_state(aws.url), registry_home.registry.get_version(MODEL, version="3").tags
    args = ["deploy", "--model", MODEL, "--version", "3", "--target", "sagemaker", "--endpoint-name", endpoint,
            "--dry-run", "--set", "sagemaker.strategy=linear", "-s", "sagemaker.instance_count=2",
            "--set", "sagemaker.traffic_percent=50"]
    with mock.patch.dict(os.environ):  # the command sets environment defaults; keep them out of other tests
        r = CliRunner().invoke(app, args)
    assert r.exit_code == 0, r.output
    out = r.output
    assert "dry run: none of the calls below was made" in out
    for operation in ("PutObject", "CreateModel", "CreateEndpointConfig", "UpdateEndpoint", "DescribeEndpoint",
                      "InvokeEndpoint", "AddTags", "DeleteEndpointConfig", "DeleteModel"):
        assert operation in out, operation
    assert '"Type"="LINEAR"' in out and out.strip().splitlines()[-1].startswith("dry run:")
    assert _moto_state(aws.url) == before  # no model, config, endpoint change, object or tag was made
    assert registry_home.registry.get_version(MODEL, version="3").tags == tags_before


def test_preflight_runs_once_per_deployment(prefect_api, fineship_env, registry_home, aws, preflight_calls,
                                           monkeypatch):
    """The flow's pre-flight task is the only pre-flight run: preparing the plan does not check again."""
    from flows.deployment import DeployRequest, deployment_flow

    request = DeployRequest(model_name=MODEL, version="1", target="sagemaker", endpoint_name="once-ep", dry_run=True,
                            sagemaker=FAST)
    plan = deployment_flow(request)
    assert plan.mode == "create" and plan.endpoint_name == "once-ep"
    assert preflight_calls.take() == 1
    # a failed pre-flight stops there, once, before any client is built
    monkeypatch.delenv("FINESHIP_ARTIFACT_BUCKET")
    monkeypatch.setattr(AwsClients, "create", lambda aws: pytest.fail("a client was built after a failed pre-flight"))
    with pytest.raises(PreflightError, match="FINESHIP_ARTIFACT_BUCKET"):
        deployment_flow(request)
    assert preflight_calls.take() == 1



def _weights_of(registry, name: str, version: str):
    """The stored weights file of a registered version (where the registry keeps it, not a download)."""
    from pathlib import Path
    from urllib.parse import unquote, urlparse

    uri = registry.client.get_model_version_download_uri(name, version)
    root = Path(unquote(urlparse(uri).path)) if uri.startswith("file:") else Path(uri)
    return next(root.rglob("*.safetensors"))


def test_unsigned_untrusted_or_tampered_versions_are_refused_before_any_aws_call(
        prefect_api, fineship_env, registry_home, aws, packages, texts, monkeypatch):
    """G7: target=sagemaker refuses an unsigned version, one signed by a key the operator does not trust, and one
    whose stored files changed after the approval, before any AWS client exists; nothing appears on AWS. The same
    flow goes on to AWS for the version while its files are as approved (the control)."""
    from components.errors import RegistryError
    from components.registry.review import SIGNATURE
    from components.registry.signing import sign_package
    from flows.deployment import DeployRequest, deployment_flow
    from tests.support.reviewers import approve_as

    name, endpoint, registry = "sm-trust", "trust-ep", registry_home.registry
    run = registry.start_run("sagemaker", "trust")
    tags = {"fineship.git_commit": "t3st", "fineship.gate": "passed"}
    v1 = registry.log_and_register(run, packages.a, name, texts, ["transformers"], tags)  # never approved
    for _ in ("2", "3"):
        registry.client.create_model_version(name, v1.source, run_id=run, tags=tags)
    registry.end_run(run)
    package = registry.download_package(name, "2", registry_home.home / "trust-sign")
    mallory = registry_home.reviewers.signer("mallory", trusted=False)  # a key pair the operator never trusted
    registry.set_version_tags(name, "2", {SIGNATURE: sign_package(package, name, "2", mallory).model_dump_json(),
                                          "fineship.review": "approved", "approved_by": "tester"})
    approve_as(registry, name, "3", registry_home.reviewers.signer("tester"),
               registry_home.reviewers.policy(registry_home.home))

    def request(version: str, **extra) -> DeployRequest:
        return DeployRequest(model_name=name, version=version, target="sagemaker", endpoint_name=endpoint,
                             sagemaker=FAST, variants=["eager"], **extra)

    def refused(version: str, match: str) -> None:
        with monkeypatch.context() as mp:
            mp.setattr(AwsClients, "create", lambda aws: pytest.fail(f"v{version}: an AWS client was built"))
            with pytest.raises((DeploymentError, RegistryError), match=match):
                deployment_flow(request(version))

    def nothing_on_aws() -> None:
        assert _inventory(aws, endpoint, model=name) == {"models": set(), "configs": set(), "objects": set()}
        assert endpoint not in {e["EndpointName"] for e in aws.clients.sagemaker.list_endpoints()["Endpoints"]}
        assert locks_held(aws) == []

    before = _moto_state(aws.url)
    refused("1", "refused: sm-trust v1 has no signed approval")
    refused("2", "refused: the approval of sm-trust v2 is signed by key [0-9a-f]{16}, which is not in the trust "
                 "store.*claims to be from mallory")
    # Control: v3 as approved passes the check and reaches AWS (a dry run reads the endpoint, changes nothing).
    assert deployment_flow(request("3", dry_run=True)).mode == "create"
    weights = _weights_of(registry, name, "3")  # now the registry's copy of the weights changes by one bit
    data = bytearray(weights.read_bytes())
    data[-1] ^= 0x01
    weights.write_bytes(bytes(data))
    refused("3", "refused: weights file .*safetensors changed since sm-trust v3 was approved by tester")
    assert _moto_state(aws.url) == before  # no model, endpoint config, endpoint, object or tag was made
    nothing_on_aws()
    assert "fineship.sagemaker.status" not in registry.get_version(name, version="3").tags


# -- fault injection at each step: the previous endpoint keeps serving, nothing is orphaned ---------

@pytest.fixture(scope="module")
def fault_registry(tmp_path_factory, packages):
    """A registry holding versions 1-3 of sm-faults (only tags are written to them)."""
    from components.registry.mlflow_registry import MlflowRegistry, local_tracking_uri

    root = tmp_path_factory.mktemp("fault-registry")
    registry = MlflowRegistry(local_tracking_uri(seed_mlflow_db(root / "mlflow.db")))
    registry.client.create_registered_model(FAULT_MODEL)
    for package in (packages.a, packages.b, packages.b):
        registry.client.create_model_version(FAULT_MODEL, str(package))
    return registry


def _target(aws, **overrides) -> SageMakerTarget:
    """faults-ep's target; keys that are `SageMakerOptions` fields go to its options."""
    return _any_target(aws, FAULTS_EP, **overrides)


@pytest.fixture(scope="module")
def baseline(aws, packages, texts, fault_registry, tmp_path_factory):
    """faults-ep serving version 1 (model A): what every failed deployment must leave in place."""
    _alarms(aws, FAULTS_EP)
    record = deploy_to_sagemaker(_target(aws), packages.a, aws.clients, model_name=FAULT_MODEL, version="1",
                                 smoke_texts=texts, expected=packages.labels_a,
                                 work_dir=tmp_path_factory.mktemp("work"), git_commit=COMMIT, recorder=fault_registry)
    return SimpleNamespace(record=record, inventory=_inventory(aws, FAULTS_EP))


def _deploy_v3(aws, packages, texts, fault_registry, tmp_path, **overrides):
    """Deploy model B as version 3 over the baseline; it must fail (after one pre-flight run)."""
    counter = PreflightCounter()
    with pytest.MonkeyPatch.context() as mp, pytest.raises(DeploymentStepError) as err:
        mp.setattr(checks, "preflight", counter)
        deploy_to_sagemaker(_target(aws, **overrides), packages.b, aws.clients, model_name=FAULT_MODEL, version="3",
                            smoke_texts=texts, expected=packages.labels_b, work_dir=tmp_path, git_commit=COMMIT,
                            recorder=fault_registry)
    assert counter.calls == 1
    return err.value


def _assert_previous_serving(aws, baseline, packages, texts, fault_registry, step: str) -> None:
    assert _serving(aws, FAULTS_EP) == ("InService", baseline.record.endpoint_config)
    assert _invoke(aws, FAULTS_EP, texts) == packages.labels_a
    assert _inventory(aws, FAULTS_EP) == baseline.inventory
    assert locks_held(aws) == []  # released in any case
    tags = fault_registry.get_version(FAULT_MODEL, version="3").tags
    assert tags["fineship.sagemaker.status"] == "failed" and tags["fineship.sagemaker.failed_step"] == step
    assert f"failed at step '{step}'" in tags["fineship.sagemaker.error"]


def test_s3_upload_error(aws, baseline, packages, texts, fault_registry, tmp_path):
    key_prefix = f"fineship/models/{FAULT_MODEL}/v3/"
    aws.clients.s3.put_bucket_policy(Bucket=BUCKET, Policy=json.dumps({"Version": "2012-10-17", "Statement": [{
        "Sid": "DenyUploads", "Effect": "Deny", "Principal": "*", "Action": "s3:PutObject",
        "Resource": f"arn:aws:s3:::{BUCKET}/{key_prefix}*"}]}))
    try:
        err = _deploy_v3(aws, packages, texts, fault_registry, tmp_path)
    finally:
        aws.clients.s3.delete_bucket_policy(Bucket=BUCKET)
    assert err.step == "upload" and "s3:PutObject" in str(err)
    assert err.rolled_back == [] and err.left_behind == []
    _assert_previous_serving(aws, baseline, packages, texts, fault_registry, "upload")


def test_create_model_failure(aws, baseline, packages, texts, fault_registry, tmp_path):
    missing_role = aws.role_arn.rsplit("/", 1)[0] + "/no-such-role"
    err = _deploy_v3(aws, packages, texts, fault_registry, tmp_path, role_arn=missing_role)
    assert err.step == "create-model" and "Could not assume role" in str(err)
    assert any(r.startswith("object s3://") for r in err.rolled_back)  # the new upload was removed
    _assert_previous_serving(aws, baseline, packages, texts, fault_registry, "create-model")


def test_endpoint_ending_in_failed(aws, baseline, packages, texts, fault_registry, tmp_path):
    _moto_api(aws.url, "/moto-api/fineship/sagemaker-faults",
              {"endpoint_name": FAULTS_EP, "deployment": "Failed", "failure_reason": "injected: capacity error"})
    err = _deploy_v3(aws, packages, texts, fault_registry, tmp_path)
    assert err.step == "wait-in-service" and "ended in Failed: injected: capacity error" in str(err)
    assert any("was Failed: deleted and recreated on " + baseline.record.endpoint_config in r for r in err.rolled_back)
    _assert_previous_serving(aws, baseline, packages, texts, fault_registry, "wait-in-service")


def test_smoke_test_mismatch(aws, baseline, packages, texts, fault_registry, tmp_path):
    _moto_api(aws.url, "/moto-api/fineship/sagemaker-faults",
              {"endpoint_name": FAULTS_EP, "container_fault": "label-order-reversed"})
    err = _deploy_v3(aws, packages, texts, fault_registry, tmp_path)
    assert err.step == "smoke-test" and "agreed with the registered model on" in str(err)
    assert any("updated back to " + baseline.record.endpoint_config in r for r in err.rolled_back)
    _assert_previous_serving(aws, baseline, packages, texts, fault_registry, "smoke-test")


def test_timeout_waiting_for_in_service(aws, baseline, packages, texts, fault_registry, tmp_path):
    transition = {"model_name": "sagemaker::endpoint-deployment"}
    _moto_api(aws.url, "/moto-api/state-manager/set-transition",
              {**transition, "transition": {"progression": "time", "seconds": 1}})
    try:
        err = _deploy_v3(aws, packages, texts, fault_registry, tmp_path, wait_timeout_seconds=0.4)
    finally:
        _moto_api(aws.url, "/moto-api/state-manager/unset-transition", transition)
    assert err.step == "wait-in-service" and "was not InService within" in str(err)
    _assert_previous_serving(aws, baseline, packages, texts, fault_registry, "wait-in-service")


def test_handler_errors_come_back_as_model_errors(aws, baseline):
    from botocore.exceptions import ClientError

    with pytest.raises(ClientError) as err:
        aws.clients.runtime.invoke_endpoint(EndpointName=FAULTS_EP, ContentType="text/plain", Body=b"hello")
    assert err.value.response["Error"]["Code"] == "ModelError"
    assert err.value.response["OriginalStatusCode"] == 415 and "not supported" in err.value.response["OriginalMessage"]


def test_endpoint_commands_cover_sagemaker(aws, baseline, fineship_env, monkeypatch):
    from typer.testing import CliRunner

    from flows.cli import app

    runner = CliRunner()
    listed = runner.invoke(app, ["endpoint", "list", "--target", "sagemaker"])
    assert listed.exit_code == 0, listed.output
    assert any(line.split()[:2] == [FAULTS_EP, "InService"] and f"{FAULT_MODEL} v1" in line
               for line in listed.output.splitlines())
    status = runner.invoke(app, ["endpoint", "status", FAULTS_EP])
    assert status.exit_code == 0, status.output
    assert json.loads(status.output.rsplit("\nstatus:", 1)[0])["EndpointConfigName"] == baseline.record.endpoint_config
    deleted = runner.invoke(app, ["endpoint", "delete", FAULTS_EP, "--yes"])
    assert deleted.exit_code == 0, deleted.output
    assert f"endpoint {FAULTS_EP}" in deleted.output and baseline.record.endpoint_config in deleted.output
    inventory = _inventory(aws, FAULTS_EP)
    assert inventory["models"] == set() and inventory["configs"] == set()
    missing = runner.invoke(app, ["endpoint", "status", FAULTS_EP])
    assert missing.exit_code == 1 and "no SageMaker endpoint named" in missing.output
