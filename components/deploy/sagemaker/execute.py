"""Execute a plan: take the deployment lock, re-read the endpoint under it, make the plan's calls in order (each
recorded in the journal before it is made), smoke-test the endpoint through InvokeEndpoint and record the
deployment on the model version; on any failure roll back (reconciled against what AWS says), record the failure
and name the failed step. The lock is released in any case."""

from __future__ import annotations

import json
import logging
import shutil
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from components.deploy.sagemaker.calls import PlannedCall, call, describe, wait_in_service
from components.deploy.sagemaker.checks import require_preflight
from components.deploy.sagemaker.journal import Journal
from components.deploy.sagemaker.lock import DeploymentLock, LockHolder
from components.deploy.sagemaker.plan import DeploymentPlan
from components.deploy.sagemaker.prepare import PreparedDeployment, inspect_and_plan, prepare_deployment
from components.deploy.sagemaker.rollback import prune_older_configs, recover_deployment, roll_back
from components.deploy.sagemaker.settings import (
    CREATE_CONFIG,
    CREATE_ENDPOINT,
    CREATE_MODEL,
    LOCK,
    RECORD,
    RECORD_PREFIX,
    SMOKE,
    TAG_ENDPOINT,
    UPDATE_ENDPOINT,
    UPLOAD,
    WAIT,
    AwsClients,
    SageMakerTarget,
    VersionTagger,
)
from components.errors import DeploymentError, DeploymentStepError

log = logging.getLogger(__name__)


class SmokeReport(BaseModel):
    model_config = ConfigDict(frozen=True)

    n: int
    agreed: int
    labels: list[str]
    variant: str | None = None


class SageMakerDeploymentRecord(BaseModel):
    """A successful SageMaker deployment."""

    model_config = ConfigDict(frozen=True)

    target: Literal["sagemaker"] = "sagemaker"
    endpoint_name: str
    endpoint_arn: str | None
    endpoint_config: str
    sagemaker_model: str
    model_data_url: str
    image_uri: str
    region: str
    model_name: str
    model_version: str
    previous_config: str | None
    deploy_id: str
    mode: Literal["create", "update"]
    smoke: SmokeReport
    pruned: list[str] = Field(default_factory=list)
    deployed_at: str
    journal: str = ""
    replanned: bool = Field(False, description="The endpoint changed between planning and taking the lock, so the "
                            "plan was made again under the lock (and that plan was executed).")
    recovered: list[str] = Field(default_factory=list, description="Deployments whose process died, rolled back "
                                 "from their journals before this one.")


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


def _smoke(clients: AwsClients, planned: PlannedCall, texts: Sequence[str], expected: Sequence[str]) -> SmokeReport:
    response = call(clients, planned)
    body = response["Body"].read()
    try:
        predictions = json.loads(body)["predictions"]
        labels = [p["label"] for p in predictions]
    except (ValueError, KeyError, TypeError):
        raise DeploymentError(f"the endpoint answered something other than {{\"predictions\": [...]}}: "
                              f"{body[:300]!r}") from None
    agreed = sum(a == b for a, b in zip(labels, expected))
    if len(labels) != len(expected) or agreed != len(expected):
        diffs = [f"{t[:50]!r}: endpoint {g}, registered model {e}"
                 for t, g, e in zip(texts, labels, expected) if g != e][:3]
        raise DeploymentError(f"the endpoint agreed with the registered model on {agreed}/{len(expected)} held-out "
                              f"texts ({'; '.join(diffs) or 'wrong number of predictions'}); check the handler "
                              "and the pins in code/requirements.txt against the container's libraries")
    return SmokeReport(n=len(labels), agreed=agreed, labels=labels,
                       variant=response.get("InvokedProductionVariant"))


_HINTS = {
    UPLOAD: "check the bucket name and that the caller may s3:PutObject under the artifact prefix",
    CREATE_MODEL: "check that the execution role exists and trusts sagemaker.amazonaws.com, and the image URI",
    CREATE_CONFIG: "check the instance type, count or serverless settings",
    CREATE_ENDPOINT: "check the endpoint quota of the account",
    UPDATE_ENDPOINT: "check that the endpoint is InService and the deployment settings",
    WAIT: "see the endpoint's FailureReason and its CloudWatch logs (/aws/sagemaker/Endpoints/<name>)",
    SMOKE: "the endpoint does not answer like the registered model",
    TAG_ENDPOINT: "check that the caller may sagemaker:AddTags",
    RECORD: "check the MLflow tracking server",
}


def execute_plan(prepared: PreparedDeployment, clients: AwsClients, expected: Sequence[str],
                 recorder: VersionTagger | None = None) -> SageMakerDeploymentRecord:
    """Make the plan's calls under the deployment lock; on any failure roll back, record the failure and raise
    `DeploymentStepError`.

    First the lock of the endpoint and of the model (waiting up to `lock_timeout_seconds`; a busy lock fails at
    step "lock" naming its holder). Deployments whose process died holding it are rolled back from their journals.
    Then the endpoint and the archive's object are read again: if either changed since the plan was made, the plan
    is made again and that plan is executed (`record.replanned`).
    """
    if len(expected) != len(prepared.plan.smoke_texts):
        raise DeploymentStepError(f"{len(expected)} expected labels for {len(prepared.plan.smoke_texts)} smoke "
                                  "texts", SMOKE)
    plan, options = prepared.plan, prepared.target.options
    lock = DeploymentLock(clients.s3, plan.bucket, plan.lock_keys, deploy_id=plan.deploy_id,
                          journal_key=plan.journal_key)
    try:
        try:
            try:
                stale = lock.acquire(options.lock_timeout_seconds, options.poll_seconds)
            except DeploymentStepError:
                raise
            except Exception as err:
                raise DeploymentStepError(f"could not take the deployment lock in s3://{plan.bucket} "
                                          f"({describe(err)}); nothing was changed", LOCK) from err
            recovered = _recover(stale, clients, plan.bucket)
            current = _plan_again(prepared, clients)
        except DeploymentStepError as err:
            record_failure(recorder, plan.model_name, plan.model_version, err.step, str(err), plan.endpoint_name,
                           plan.deploy_id)
            raise
        return _execute(current, clients, expected, recorder, lock, recovered, replanned=current is not prepared)
    finally:  # the archive is in S3 now (or the deployment is undone); a dry run keeps it for inspection
        lock.release()
        shutil.rmtree(Path(prepared.archive.path).parent, ignore_errors=True)


def _recover(stale: Sequence[LockHolder], clients: AwsClients, bucket: str) -> list[str]:
    """Roll back, from their journals, the deployments whose locks were taken over (their processes died)."""
    recovered = []
    for journal_key in dict.fromkeys(h.journal for h in stale if h.journal):
        try:
            outcome = recover_deployment(clients, bucket, journal_key)
        except Exception as err:
            raise DeploymentStepError(f"a deployment died holding the lock and could not be rolled back from its "
                                      f"journal s3://{bucket}/{journal_key} ({describe(err)}); nothing was deployed: "
                                      "check the endpoint and deploy again", LOCK) from err
        if outcome is not None:
            deploy_id, rolled, left = outcome
            recovered.append(f"deploy {deploy_id}: rolled back: {'; '.join(rolled) or 'nothing had been changed'}"
                             + (f"; left: {'; '.join(left)}" if left else ""))
            log.warning("recovered dead deployment %s", recovered[-1])
    return recovered


def _plan_again(prepared: PreparedDeployment, clients: AwsClients) -> PreparedDeployment:
    """Read the endpoint and the archive's object again under the lock; the same `prepared` if nothing changed,
    else one with the plan made now (a plan from before the lock may name a rollback target that is gone)."""
    plan = prepared.plan
    fresh = inspect_and_plan(prepared.target, prepared.archive, clients, image_uri=plan.image_uri,
                             model_name=plan.model_name, version=plan.model_version, git_commit=plan.git_commit,
                             smoke_texts=plan.smoke_texts, training_commit=prepared.training_commit,
                             deploy_id=plan.deploy_id)
    if fresh == plan:
        return prepared
    log.warning("endpoint %s changed since deployment %s was planned (%s from %s, upload %s; now %s from %s, upload "
                "%s): executing the plan made under the lock", plan.endpoint_name, plan.deploy_id, plan.mode,
                plan.previous_config, plan.upload, fresh.mode, fresh.previous_config, fresh.upload)
    return prepared.model_copy(update={"plan": fresh})


def _call(clients: AwsClients, plan: DeploymentPlan, planned: PlannedCall, archive_path: str) -> None:
    if planned.step == UPLOAD:
        with open(archive_path, "rb") as body:
            r = call(clients, planned, Body=body)
        if r.get("ChecksumSHA256") != plan.archive_checksum:  # S3 checked the bytes against it, or refused them
            raise DeploymentError(f"S3 did not confirm the SHA-256 of {plan.model_data_url} (got "
                                  f"{r.get('ChecksumSHA256')!r}, sent {plan.archive_checksum})")
    else:
        call(clients, planned)


def _execute(prepared: PreparedDeployment, clients: AwsClients, expected: Sequence[str],
             recorder: VersionTagger | None, lock: DeploymentLock, recovered: list[str],
             replanned: bool) -> SageMakerDeploymentRecord:
    plan, target = prepared.plan, prepared.target
    journal = Journal(clients.s3, plan, target.options, lock.owner)
    step = LOCK
    smoke: SmokeReport | None = None
    arn = plan.endpoint_arn
    try:
        journal.start()
        for planned in plan.calls:
            step = planned.step
            lock.check()
            journal.intend(step, planned.operation)  # on record before the call: a lost answer is not a guess
            log.info("deploy %s: %s %s", plan.deploy_id, planned.service, planned.operation)
            try:
                if step == WAIT:
                    d = wait_in_service(clients, plan.endpoint_name, planned.params["WaiterConfig"])
                    arn = d.get("EndpointArn", arn)
                    if d.get("EndpointConfigName") != plan.endpoint_config:
                        raise DeploymentError(
                            f"SageMaker rolled the update back: the endpoint is {d.get('EndpointStatus')} on "
                            f"{d.get('EndpointConfigName')}, not {plan.endpoint_config} "
                            f"({d.get('FailureReason') or 'no reason given'})")
                elif step == SMOKE:
                    smoke = _smoke(clients, planned, plan.smoke_texts, expected)
                elif step == RECORD:
                    if recorder is not None:
                        recorder.set_version_tags(plan.model_name, plan.model_version, _success_tags(plan))
                else:
                    _call(clients, plan, planned, prepared.archive.path)
            except BaseException as err:
                journal.outcome(step, err)
                raise
            journal.outcome(step)
    except BaseException as err:
        journal.set_status("rolling-back")
        rolled_back, left = roll_back(journal.record, clients)
        journal.set_status("rollback-incomplete" if left else "rolled-back", rolled_back, left)
        cause = describe(err) if getattr(err, "response", None) else str(err)
        message = (f"deploying {plan.model_name} v{plan.model_version} to SageMaker endpoint {plan.endpoint_name} "
                   f"failed at step '{step}': {cause}")
        if step in _HINTS:
            message += f" ({_HINTS[step]})"
        message += ". Rolled back: " + ("; ".join(rolled_back) or "nothing had been changed")
        if left:
            message += (". NOT cleaned up (remove by hand, or deploy again once the endpoint settles; the journal is "
                        f"{journal.where}): " + "; ".join(left))
        record_failure(recorder, plan.model_name, plan.model_version, step, message, plan.endpoint_name,
                       plan.deploy_id)
        if not isinstance(err, Exception):
            raise
        raise DeploymentStepError(message, step, rolled_back, left) from err

    if smoke is None:
        raise DeploymentError(f"deployment {plan.deploy_id} finished without a smoke test")
    pruned = prune_older_configs(plan, clients, target.options)
    journal.set_status("succeeded")
    return SageMakerDeploymentRecord(
        endpoint_name=plan.endpoint_name, endpoint_arn=arn, endpoint_config=plan.endpoint_config,
        sagemaker_model=plan.sagemaker_model, model_data_url=plan.model_data_url, image_uri=plan.image_uri,
        region=plan.region, model_name=plan.model_name, model_version=plan.model_version,
        previous_config=plan.previous_config, deploy_id=plan.deploy_id, mode=plan.mode, smoke=smoke,
        pruned=pruned, deployed_at=_now(), journal=journal.where, replanned=replanned, recovered=recovered)


def _success_tags(plan: DeploymentPlan) -> dict[str, str]:
    return {RECORD_PREFIX + "status": "deployed", RECORD_PREFIX + "endpoint": plan.endpoint_name,
            RECORD_PREFIX + "region": plan.region, RECORD_PREFIX + "endpoint_config": plan.endpoint_config,
            RECORD_PREFIX + "model": plan.sagemaker_model, RECORD_PREFIX + "model_data": plan.model_data_url,
            RECORD_PREFIX + "image": plan.image_uri, RECORD_PREFIX + "deploy_id": plan.deploy_id,
            RECORD_PREFIX + "deployed_at": _now()}


def record_failure(recorder: VersionTagger | None, model_name: str, version: str, step: str, message: str,
                   endpoint_name: str, deploy_id: str = "") -> None:
    """Tag the model version with a failed deployment attempt (never raises: the deploy error matters more)."""
    if recorder is None:
        return
    try:
        recorder.set_version_tags(model_name, version, {
            RECORD_PREFIX + "status": "failed", RECORD_PREFIX + "failed_step": step,
            RECORD_PREFIX + "failed_endpoint": endpoint_name, RECORD_PREFIX + "failed_at": _now(),
            RECORD_PREFIX + "failed_deploy_id": deploy_id, RECORD_PREFIX + "error": message[:4000]})
    except Exception as err:  # noqa: BLE001 - recording is best effort once the deployment has failed
        log.warning("could not record the failed deployment on %s v%s: %s", model_name, version, err)


def deploy_to_sagemaker(target: SageMakerTarget, package_dir: str | Path, clients: AwsClients, *, model_name: str,
                        version: str, smoke_texts: Sequence[str], expected: Sequence[str] | None,
                        work_dir: str | Path, git_commit: str, recorder: VersionTagger | None = None,
                        dry_run: bool = False, training_commit: str | None = None,
                        expected_files: Mapping[str, str] | None = None) -> DeploymentPlan | SageMakerDeploymentRecord:
    """Pre-flight (once), plan and (unless `dry_run`) execute a deployment; a dry run makes only read-only calls.

    `expected_files`: the approved file digests the archive must be built from (see `prepare_deployment`).
    """
    try:
        checked = require_preflight(target, package_dir)
        prepared = prepare_deployment(checked, clients, model_name=model_name, version=version,
                                      smoke_texts=smoke_texts, work_dir=work_dir, git_commit=git_commit,
                                      training_commit=training_commit, expected_files=expected_files)
    except DeploymentStepError as err:
        if not dry_run:
            record_failure(recorder, model_name, version, err.step, str(err), target.endpoint_name)
        raise
    if dry_run:
        return prepared.plan
    if expected is None:
        raise DeploymentError("expected labels are needed for the smoke test of a real deployment")
    return execute_plan(prepared, clients, expected, recorder)
