"""SageMaker deployment state is never guessed: each test tries to break it, over HTTP against moto.

- an UpdateEndpoint that reached SageMaker but whose answer was lost (a botocore hook sends the request, then
  raises a read timeout; botocore may retry, and the retry is answered "Cannot update in-progress endpoint"):
  rollback waits for the endpoint, puts it back, and deletes nothing while the endpoint uses or moves to it;
- the same while the endpoint stays Updating longer than the rollback may wait: nothing is deleted, and the
  journal lets a later run finish the rollback;
- a deployment process killed (SIGKILL) right after sending UpdateEndpoint: the next deployment fails at once
  naming it, and once its lock is stale takes it over and rolls the dead deployment back from its journal;
- two deployments at once: the second fails at once naming the first, or waits and re-plans under the lock;
- an archive another deployment uses is never deleted by a rollback; a tampered archive is uploaded again.

The moto plugins and models A and B are described in tests/support/sagemaker_deploy.py and the plugins' own
docstrings.
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
import threading
import time
from datetime import UTC, datetime, timedelta
from types import SimpleNamespace

import boto3
import pytest
import urllib3
from botocore.exceptions import ClientError, ReadTimeoutError

from components.deploy.package_tar import build_model_archive
from components.deploy.sagemaker import (
    TRANSITIONAL,
    EndpointState,
    JournalRecord,
    SageMakerOptions,
    deploy_to_sagemaker,
    load_journal,
    lock_keys,
    object_state,
    plan_deployment,
    recover_deployment,
    roll_back,
    sha256_base64,
)
from components.errors import DeploymentStepError
from tests.support.sagemaker_deploy import (
    BUCKET,
    COMMIT,
    FAST,
    REGION,
    TRANSITION,
    inventory,
    invoke,
    locks_held,
    moto_api,
    new_clients,
    put_alarms,
    serving,
    target,
)
from tests.support.tiny import REPO

LOST_EP, LOST_MODEL = "lost-ep", "sm-lost"
CRASH_EP, CRASH_MODEL = "crash-ep", "sm-crash"
LOCK_EP, LOCK_MODEL = "lock-ep", "sm-lock"


def _deploy(aws, endpoint: str, model: str, version: str, package, expected, work, clients=None, **options):
    return deploy_to_sagemaker(target(aws, endpoint, **options), package, clients or aws.clients, model_name=model,
                               version=version, smoke_texts=expected.texts, expected=expected.labels, work_dir=work,
                               git_commit=COMMIT)


def _expect(texts, labels) -> SimpleNamespace:
    return SimpleNamespace(texts=texts, labels=labels)


def _baseline(aws, endpoint: str, model: str, packages, texts, work) -> SimpleNamespace:
    """`endpoint` serving version 1 (model A) of `model`: what a failed deployment must leave in place."""
    put_alarms(aws, endpoint)
    record = _deploy(aws, endpoint, model, "1", packages.a, _expect(texts, packages.labels_a), work)
    return SimpleNamespace(record=record, inventory=inventory(aws, endpoint, model))


@pytest.fixture(scope="module")
def lost_baseline(aws, packages, texts, tmp_path_factory):
    return _baseline(aws, LOST_EP, LOST_MODEL, packages, texts, tmp_path_factory.mktemp("work"))


class LoseFirstAnswer:
    """botocore `before-send` hook: the first request is sent to moto, then its answer is lost (a read timeout);
    every later attempt (botocore's retries, the rollback's own calls) goes through."""

    def __init__(self) -> None:
        self.http, self.attempts = urllib3.PoolManager(), 0

    def __call__(self, request, **_):
        self.attempts += 1
        if self.attempts > 1:
            return None
        self.http.request(request.method, request.url, body=request.body, headers=dict(request.headers))
        raise ReadTimeoutError(endpoint_url=request.url)


class DeletionSpy:
    """Records, at each DeleteEndpointConfig / DeleteModel, what the endpoint serves and is moving to then."""

    def __init__(self, clients, endpoint: str) -> None:
        self.reader, self.endpoint = boto3.client("sagemaker"), endpoint  # a client of its own: no hooks
        self.deleted: list[str] = []
        self.violations: list[tuple] = []
        for operation in ("DeleteEndpointConfig", "DeleteModel"):
            clients.sagemaker.meta.events.register(f"before-parameter-build.sagemaker.{operation}", self)

    def __call__(self, params, **_):
        name = params.get("EndpointConfigName") or params.get("ModelName")
        self.deleted.append(name)
        try:
            d = self.reader.describe_endpoint(EndpointName=self.endpoint)
        except ClientError:
            return
        configs = {d.get("EndpointConfigName"), (d.get("PendingDeploymentSummary") or {}).get("EndpointConfigName")}
        configs.discard(None)
        models = {v["ModelName"] for c in configs
                  for v in self.reader.describe_endpoint_config(EndpointConfigName=c)["ProductionVariants"]}
        if name in configs | models or d["EndpointStatus"] in TRANSITIONAL:
            self.violations.append((name, d["EndpointStatus"], sorted(configs)))


def _journal_of(aws, endpoint: str, version: str) -> JournalRecord:
    """The newest journal of a deployment of `version` to `endpoint`."""
    prefix = f"fineship/deployments/journals/{endpoint}/"
    keys = sorted(o["Key"] for o in aws.clients.s3.list_objects_v2(Bucket=BUCKET, Prefix=prefix)["Contents"])
    records = [load_journal(aws.clients.s3, BUCKET, k) for k in keys]
    return [r for r in records if r.plan.model_version == version][-1]


def _exists(call) -> bool:
    try:
        call()
    except ClientError:
        return False
    return True


def _settle(aws, endpoint: str, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while serving(aws, endpoint)[0] in TRANSITIONAL:
        assert time.monotonic() < deadline, f"{endpoint} did not settle"
        time.sleep(0.2)


# -- a lost UpdateEndpoint answer ------------------------------------------------------------------

@pytest.mark.parametrize("retries", [1, 0], ids=["retry-answered-in-progress", "every-answer-lost"])
def test_a_lost_update_endpoint_answer_is_reconciled_not_guessed(aws, lost_baseline, packages, texts, tmp_path,
                                                                 retries):
    clients = new_clients(aws, max_attempts=retries)
    lose = LoseFirstAnswer()
    clients.sagemaker.meta.events.register("before-send.sagemaker.UpdateEndpoint", lose)
    spy = DeletionSpy(clients, LOST_EP)
    previous = lost_baseline.record.endpoint_config
    with pytest.raises(DeploymentStepError) as err:
        _deploy(aws, LOST_EP, LOST_MODEL, "2", packages.b, _expect(texts, packages.labels_b), tmp_path, clients)
    assert err.value.step == "update-endpoint"
    journal = _journal_of(aws, LOST_EP, "2")
    (update,) = [e for e in journal.entries if e.step == "update-endpoint"]
    # recorded before the call, and not taken as failed: the first attempt reached SageMaker
    assert update.state == "intended" and ("in-progress" in update.error if retries else "Read timeout" in update.error)
    assert lose.attempts == 1 + retries + 1  # the lost one, botocore's retry if any, the rollback's restore
    # rollback waited for the update, then put the endpoint back, and only then deleted what it created
    assert f"endpoint {LOST_EP} updated back to {previous}" in err.value.rolled_back
    assert err.value.left_behind == []
    assert {journal.plan.endpoint_config, journal.plan.sagemaker_model} <= set(spy.deleted)
    assert spy.violations == []  # nothing deleted while the endpoint used it, moved to it, or was moving
    assert serving(aws, LOST_EP) == ("InService", previous)
    assert invoke(aws, LOST_EP, texts) == packages.labels_a
    assert inventory(aws, LOST_EP, LOST_MODEL) == lost_baseline.inventory
    assert journal.status == "rolled-back" and locks_held(aws) == []


def test_an_unsettled_endpoint_keeps_what_it_uses_and_the_journal_finishes_the_rollback(aws, lost_baseline, packages,
                                                                                        texts, tmp_path):
    sm, previous = aws.clients.sagemaker, lost_baseline.record.endpoint_config
    clients = new_clients(aws, max_attempts=0)
    clients.sagemaker.meta.events.register("before-send.sagemaker.UpdateEndpoint", LoseFirstAnswer())
    spy = DeletionSpy(clients, LOST_EP)
    moto_api(aws.url, "/moto-api/state-manager/set-transition",
             {**TRANSITION, "transition": {"progression": "time", "seconds": 3}})
    try:  # the new fleet takes 3 s; the rollback may wait 0.5 s
        with pytest.raises(DeploymentStepError) as err:
            _deploy(aws, LOST_EP, LOST_MODEL, "2", packages.b, _expect(texts, packages.labels_b), tmp_path, clients,
                    rollback_timeout_seconds=0.5)
        journal = _journal_of(aws, LOST_EP, "2")
        new_config, new_model = journal.plan.endpoint_config, journal.plan.sagemaker_model
        d = sm.describe_endpoint(EndpointName=LOST_EP)
        assert (d["EndpointStatus"], d["EndpointConfigName"]) == ("Updating", previous)
        assert d["PendingDeploymentSummary"]["EndpointConfigName"] == new_config
    finally:
        moto_api(aws.url, "/moto-api/state-manager/unset-transition", TRANSITION)
    # the config the endpoint moves to, its model and its archive are all still there
    assert _exists(lambda: sm.describe_endpoint_config(EndpointConfigName=new_config))
    assert _exists(lambda: sm.describe_model(ModelName=new_model))
    assert object_state(aws.clients, BUCKET, journal.plan.model_data_url.split("/", 3)[3],
                        journal.plan.archive_sha256) == "present"
    assert spy.deleted == []
    left = " | ".join(err.value.left_behind)
    assert f"endpoint {LOST_EP} not restored to {previous}" in left and "still Updating" in left
    assert f"endpoint config {new_config} kept" in left and f"model {new_model} kept" in left
    assert journal.status == "rollback-incomplete" and journal.plan.journal_key in str(err.value)
    # later (once the endpoint settled) the journal is enough to finish the rollback, and only once
    _settle(aws, LOST_EP)
    deploy_id, rolled, still_left = recover_deployment(aws.clients, BUCKET, journal.plan.journal_key)
    assert deploy_id == journal.deploy_id and still_left == []
    assert f"endpoint {LOST_EP} updated back to {previous}" in rolled
    assert serving(aws, LOST_EP) == ("InService", previous)
    assert inventory(aws, LOST_EP, LOST_MODEL) == lost_baseline.inventory
    assert recover_deployment(aws.clients, BUCKET, journal.plan.journal_key) is None


# -- a deployment process that dies ---------------------------------------------------------------

_CRASH = r"""
import json, os, signal
import urllib3
from components.aws import AwsSettings
from components.deploy.sagemaker import AwsClients, PreflightResult, SageMakerTarget, execute_plan, prepare_deployment

a = json.loads(os.environ["CRASH_ARGS"])
target = SageMakerTarget.model_validate(a["target"])
clients = AwsClients.create(AwsSettings(region=target.region, endpoint_url=a["url"], max_attempts=0))
http = urllib3.PoolManager()

def die_after_sending(request, **_):
    http.request(request.method, request.url, body=request.body, headers=dict(request.headers))
    os.kill(os.getpid(), signal.SIGKILL)  # UpdateEndpoint is on its way; nothing else happens

clients.sagemaker.meta.events.register("before-send.sagemaker.UpdateEndpoint", die_after_sending)
checked = PreflightResult(target=target, package_dir=a["package"], image_uri=a["image"])
prepared = prepare_deployment(checked, clients, model_name=a["model"], version="2", smoke_texts=a["texts"],
                              work_dir=a["work"], git_commit=a["commit"])
print(prepared.plan.deploy_id, flush=True)
execute_plan(prepared, clients, a["expected"])
"""


def _expire_locks(aws, keys: list[str]) -> None:
    """What the locks of a process that died look like once their TTL has passed (nobody renews them)."""
    s3 = aws.clients.s3
    for key in keys:
        obj = s3.get_object(Bucket=BUCKET, Key=key)
        doc = json.loads(obj["Body"].read())
        doc["expires_at"] = (datetime.now(UTC) - timedelta(seconds=1)).isoformat()
        s3.put_object(Bucket=BUCKET, Key=key, Body=json.dumps(doc).encode(), IfMatch=obj["ETag"])


def test_a_deployment_that_died_is_named_then_rolled_back_by_the_next_one(aws, packages, texts, tmp_path):
    baseline = _baseline(aws, CRASH_EP, CRASH_MODEL, packages, texts, tmp_path / "w1")
    args = {"target": target(aws, CRASH_EP).model_dump(mode="json"), "url": aws.url, "package": str(packages.b),
            "image": "763104351884.dkr.ecr.us-east-1.amazonaws.com/pytorch-inference:2.6-cpu-py312",
            "model": CRASH_MODEL, "texts": texts, "work": str(tmp_path / "w2"), "commit": COMMIT,
            "expected": packages.labels_b}
    died = subprocess.run([sys.executable, "-c", _CRASH], cwd=REPO, env={**os.environ, "CRASH_ARGS": json.dumps(args)},
                          capture_output=True, text=True, timeout=120)
    assert died.returncode == -9, died.stderr[-2000:]
    dead_id = died.stdout.split()[-1]
    keys = lock_keys("fineship", CRASH_EP, CRASH_MODEL)
    assert sorted(locks_held(aws)) == keys
    dead = load_journal(aws.clients.s3, BUCKET, f"fineship/deployments/journals/{CRASH_EP}/{dead_id}.json")
    assert dead.status == "running" and dead.entries[-1].step == "update-endpoint"
    assert dead.entries[-1].state == "intended"  # on record before the process died
    _settle(aws, CRASH_EP)  # the update the dead process sent went through: the endpoint runs unverified B
    assert serving(aws, CRASH_EP) == ("InService", dead.plan.endpoint_config)

    # while its lock is fresh, the next deployment fails at once and names it
    with pytest.raises(DeploymentStepError) as busy:
        _deploy(aws, CRASH_EP, CRASH_MODEL, "3", packages.a, _expect(texts, packages.labels_a), tmp_path / "w3")
    assert busy.value.step == "lock" and f"deploy {dead_id} by " in str(busy.value) and "pid" in str(busy.value)
    # once it is stale, the next deployment takes it over, rolls the dead one back, re-plans and deploys
    _expire_locks(aws, keys)
    record = _deploy(aws, CRASH_EP, CRASH_MODEL, "3", packages.a, _expect(texts, packages.labels_a), tmp_path / "w4")
    assert len(record.recovered) == 1 and record.recovered[0].startswith(f"deploy {dead_id}: rolled back:")
    assert f"updated back to {baseline.record.endpoint_config}" in record.recovered[0]
    assert record.replanned and record.previous_config == baseline.record.endpoint_config
    assert serving(aws, CRASH_EP) == ("InService", record.endpoint_config)
    assert invoke(aws, CRASH_EP, texts) == packages.labels_a
    sm = aws.clients.sagemaker
    assert not _exists(lambda: sm.describe_endpoint_config(EndpointConfigName=dead.plan.endpoint_config))
    assert not _exists(lambda: sm.describe_model(ModelName=dead.plan.sagemaker_model))
    assert load_journal(aws.clients.s3, BUCKET, dead.plan.journal_key).status == "rolled-back"
    assert locks_held(aws) == []


# -- two deployments at once ----------------------------------------------------------------------

def test_two_deployments_at_once_are_serialised(aws, packages, texts, tmp_path):
    put_alarms(aws, LOCK_EP)
    blocked, release, waiting = threading.Event(), threading.Event(), threading.Event()
    results: dict[str, object] = {}

    def hold_create(request, **_):  # the first deployment stops just before CreateEndpoint
        blocked.set()
        assert release.wait(60)

    def run(name: str, clients, version: str, package, labels, **options) -> None:
        try:
            results[name] = _deploy(aws, LOCK_EP, LOCK_MODEL, version, package, _expect(texts, labels),
                                    tmp_path / name, clients, **options)
        except Exception as err:  # noqa: BLE001 - checked below
            results[name] = err

    first_clients = new_clients(aws)
    first_clients.sagemaker.meta.events.register("before-send.sagemaker.CreateEndpoint", hold_create)
    first = threading.Thread(target=run, args=("first", first_clients, "1", packages.a, packages.labels_a))
    first.start()
    try:
        assert blocked.wait(120)
        holder = json.loads(aws.clients.s3.get_object(Bucket=BUCKET, Key=lock_keys("fineship", LOCK_EP, LOCK_MODEL)[0])
                            ["Body"].read())
        # a second deployment of the endpoint fails at once, naming the first
        with pytest.raises(DeploymentStepError) as busy:
            _deploy(aws, LOCK_EP, LOCK_MODEL, "2", packages.b, _expect(texts, packages.labels_b), tmp_path / "busy")
        assert busy.value.step == "lock" and f"endpoint {LOCK_EP} is being deployed" in str(busy.value)
        assert f"deploy {holder['deploy_id']} by {holder['owner']}" in str(busy.value)
        # so does a deployment of the same model to another endpoint (its archives are the first one's too)
        with pytest.raises(DeploymentStepError, match=f"model {LOCK_MODEL} is being deployed .* deploy "
                                                      f"{holder['deploy_id']}"):
            _deploy(aws, f"{LOCK_EP}-2", LOCK_MODEL, "1", packages.a, _expect(texts, packages.labels_a),
                    tmp_path / "other")
        made = inventory(aws, LOCK_EP, LOCK_MODEL)
        assert not any("-v2-" in n for n in made["models"] | made["configs"]) and len(made["objects"]) == 1
        # one that may wait does, until the first is done, then plans again under the lock and deploys
        second_clients = new_clients(aws)
        second_clients.s3.meta.events.register("after-call.s3.GetObject", lambda **_: waiting.set())
        second = threading.Thread(target=run, args=("second", second_clients, "2", packages.b, packages.labels_b),
                                  kwargs={"lock_timeout_seconds": 120})
        second.start()
        assert waiting.wait(120)  # it read the first one's lock
    finally:
        release.set()
        first.join(180)
    second.join(180)
    one, two = results["first"], results["second"]
    assert not isinstance(one, Exception) and not isinstance(two, Exception), (one, two)
    assert one.mode == "create"
    # planned while there was no endpoint; under the lock it was the first one's, so: blue/green from it
    assert two.replanned and two.mode == "update" and two.previous_config == one.endpoint_config
    assert serving(aws, LOCK_EP) == ("InService", two.endpoint_config)
    assert invoke(aws, LOCK_EP, texts) == packages.labels_b
    assert locks_held(aws) == []


# -- archives -------------------------------------------------------------------------------------

def _journal(plan, steps: dict[str, str]) -> JournalRecord:
    return JournalRecord(deploy_id=plan.deploy_id, owner="test", started_at="t", updated_at="t", plan=plan,
                         options=SageMakerOptions(**FAST),
                         entries=[{"step": s, "operation": "?", "state": state, "at": "t"} for s, state in steps.items()])


def test_a_rollback_never_deletes_an_archive_another_deployment_uses(aws, lost_baseline, packages, texts, tmp_path):
    archive = build_model_archive(packages.a, tmp_path / "a.tar.gz", {"git_commit": COMMIT})
    made = {"upload": "done", "create-model": "intended", "create-endpoint-config": "intended",
            "create-endpoint": "intended"}

    def other_deployment(version: str):  # of the same model, to another endpoint, that uploaded "new" and failed
        return plan_deployment(target(aws, "other-ep"), archive, EndpointState(exists=False), image_uri="img",
                               model_name=LOST_MODEL, version=version, git_commit=COMMIT, smoke_texts=texts,
                               upload="new", deploy_id=f"other-{version}")

    used = other_deployment("1")
    assert used.model_data_url == lost_baseline.record.model_data_url
    rolled, left = roll_back(_journal(used, made), aws.clients)
    assert f"object {used.model_data_url} kept: model {lost_baseline.record.sagemaker_model} uses it" in rolled
    assert left == []
    key = used.model_data_url.split("/", 3)[3]
    assert object_state(aws.clients, BUCKET, key, archive.sha256) == "present"
    assert invoke(aws, LOST_EP, texts) == packages.labels_a

    # the same check lets an archive go that no model uses...
    orphan = other_deployment("9")
    orphan_key = orphan.model_data_url.split("/", 3)[3]
    aws.clients.s3.put_object(Bucket=BUCKET, Key=orphan_key, Body=open(archive.path, "rb").read(),
                              ChecksumAlgorithm="SHA256", ChecksumSHA256=orphan.archive_checksum)
    assert roll_back(_journal(orphan, made), aws.clients) == ([f"object {orphan.model_data_url} deleted"], [])
    assert object_state(aws.clients, BUCKET, orphan_key, archive.sha256) == "absent"
    # ...but not one that someone replaced since it was uploaded: it is not this deployment's any more
    aws.clients.s3.put_object(Bucket=BUCKET, Key=orphan_key, Body=b"someone else's bytes")
    rolled, left = roll_back(_journal(orphan, made), aws.clients)
    assert rolled == [] and left == [f"object {orphan.model_data_url} kept: it does not hold this deployment's archive "
                                     "any more (mismatch)"]
    aws.clients.s3.delete_object(Bucket=BUCKET, Key=orphan_key)


def test_a_tampered_archive_is_uploaded_again_never_reused(aws, lost_baseline, packages, texts, tmp_path):
    s3, url = aws.clients.s3, lost_baseline.record.model_data_url
    key = url.split("/", 3)[3]
    sha = hashlib.sha256(s3.get_object(Bucket=BUCKET, Key=key)["Body"].read()).hexdigest()
    assert object_state(aws.clients, BUCKET, key, sha) == "present"
    # someone replaces the object and copies the user metadata the deployer used to trust
    s3.put_object(Bucket=BUCKET, Key=key, Body=b"not a model", Metadata={"sha256": sha})
    assert object_state(aws.clients, BUCKET, key, sha) == "mismatch"
    # S3 refuses to store other bytes under the archive's checksum (moto_s3_integrity answers as S3 does)
    with pytest.raises(ClientError, match="BadDigest"):
        s3.put_object(Bucket=BUCKET, Key=key, Body=b"not a model", ChecksumAlgorithm="SHA256",
                      ChecksumSHA256=sha256_base64(sha))
    expected = _expect(texts, packages.labels_a)
    plan = deploy_to_sagemaker(target(aws, LOST_EP), packages.a, aws.clients, model_name=LOST_MODEL, version="1",
                               smoke_texts=texts, expected=None, work_dir=tmp_path / "dry", git_commit=COMMIT,
                               dry_run=True)
    assert plan.model_data_url == url and plan.upload == "overwrite"
    record = _deploy(aws, LOST_EP, LOST_MODEL, "1", packages.a, expected, tmp_path / "real")
    assert record.model_data_url == url
    assert hashlib.sha256(s3.get_object(Bucket=BUCKET, Key=key)["Body"].read()).hexdigest() == sha
    assert object_state(aws.clients, BUCKET, key, sha) == "present"
    assert serving(aws, LOST_EP) == ("InService", record.endpoint_config)
    assert invoke(aws, LOST_EP, texts) == packages.labels_a  # the container loaded the real archive
    assert REGION == "us-east-1"
