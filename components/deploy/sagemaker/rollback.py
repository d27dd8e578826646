"""Rollback, reconciled: bring the endpoint back to the configuration it served before and delete what the failed
deployment created, judging each step by what AWS says now, never by whether its call returned.

Every journal entry AWS did not refuse counts as possibly made (`journal.py`): an UpdateEndpoint whose answer
was lost may be moving the endpoint to the new configuration right now. So rollback

1. waits for the endpoint to settle (DescribeEndpoint until it leaves Creating/Updating/...), then restores it:
   updates it back to the previous configuration if it is on the new one, recreates it if it ended Failed,
   does nothing if it is (still or again) on the previous one, and touches nothing it cannot account for;
2. reads what the endpoint serves and is moving to (`EndpointConfigName`, `PendingDeploymentSummary`) and their
   models, and deletes the new configuration and model only if they exist (DescribeEndpointConfig /
   DescribeModel) and the endpoint uses neither; if it did not settle, nothing is deleted;
3. deletes the uploaded archive only if this deployment uploaded it, it still holds this archive (HeadObject
   checksum), and no model uses it (another deployment's model of the same version keeps it).

What is kept is reported as left behind; a later deployment that takes over the lock runs the same
reconciliation from the journal (`recover_deployment`). After a success, `prune_older_configs` deletes
configurations older than the rollback target, never one the endpoint uses or is moving to.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

from components.deploy.sagemaker.calls import call, describe, is_not_found, wait_in_service, waiter_config
from components.deploy.sagemaker.journal import FINISHED, JournalRecord, load_journal, save_journal
from components.deploy.sagemaker.plan import RESTORE_CONFIG, DeploymentPlan
from components.deploy.sagemaker.settings import (
    CREATE_CONFIG,
    CREATE_ENDPOINT,
    CREATE_MODEL,
    TAG_ENDPOINT,
    TAG_PREFIX,
    UPDATE_ENDPOINT,
    UPLOAD,
    AwsClients,
    SageMakerOptions,
)
from components.deploy.sagemaker.state import (
    EndpointUsage,
    archive_head,
    archive_users,
    endpoint_usage,
    settle_endpoint,
)
from components.errors import DeploymentError

log = logging.getLogger(__name__)


class _Unsettled(DeploymentError):
    """The endpoint stayed in a transitional state for the whole rollback wait."""


def _why(err: BaseException) -> str:
    """Our own errors as their message; AWS and other errors with their code or type."""
    return str(err) if isinstance(err, DeploymentError) else describe(err)


def _not_settled(name: str, d: dict[str, Any], timeout: float) -> DeploymentError:
    pending = (d.get("PendingDeploymentSummary") or {}).get("EndpointConfigName")
    moving = f", moving to {pending}" if pending else ""
    return _Unsettled(f"endpoint {name} is still {d['EndpointStatus']} on {d.get('EndpointConfigName')}{moving} "
                           f"after {timeout:g} s, so nothing it uses or moves to is touched; roll back by hand once "
                           "it settles, or deploy again (the next deployment rolls this one back from its journal)")


def _restore_previous(plan: DeploymentPlan, clients: AwsClients, o: SageMakerOptions) -> str:
    """Bring the endpoint back to `plan.previous_config`; return what was done (raises when it cannot)."""
    sm, name, prev, ours = clients.sagemaker, plan.endpoint_name, plan.previous_config, plan.endpoint_config
    wc = waiter_config(o.rollback_timeout_seconds, o.poll_seconds)
    d, settled = settle_endpoint(clients, name, o.rollback_timeout_seconds, o.poll_seconds)
    if d is None:  # the endpoint is gone: bring it back on the previous config
        sm.create_endpoint(EndpointName=name, EndpointConfigName=prev, Tags=plan.previous_tags or [])
        wait_in_service(clients, name, wc)
        return f"endpoint {name} recreated on {prev}"
    if not settled:
        raise _not_settled(name, d, o.rollback_timeout_seconds)
    current = d.get("EndpointConfigName")
    if d["EndpointStatus"] == "Failed":
        # DeleteEndpoint is the only operation SageMaker allows on a Failed endpoint.
        sm.delete_endpoint(EndpointName=name)
        sm.get_waiter("endpoint_deleted").wait(EndpointName=name, WaiterConfig=wc)
        sm.create_endpoint(EndpointName=name, EndpointConfigName=prev, Tags=plan.previous_tags or [])
        done = f"endpoint {name} was Failed: deleted and recreated on {prev}"
    elif current == prev:
        return f"endpoint {name} is on {prev}: the update was rolled back by SageMaker or never took effect"
    elif current == ours:
        sm.update_endpoint(EndpointName=name, EndpointConfigName=prev, RetainAllVariantProperties=False,
                           DeploymentConfig=RESTORE_CONFIG)
        done = f"endpoint {name} updated back to {prev}"
    else:
        raise DeploymentError(f"endpoint {name} is on {current}, neither the previous {prev} nor this deployment's "
                              f"{ours}: something else changed it, so it is left as it is")
    after = wait_in_service(clients, name, wc)
    if after.get("EndpointConfigName") != prev:
        raise DeploymentError(f"endpoint {name} is on {after.get('EndpointConfigName')} after the rollback, not {prev}")
    return done


def _remove_created_endpoint(plan: DeploymentPlan, clients: AwsClients, o: SageMakerOptions) -> str | None:
    """Delete the endpoint this deployment created (if it exists and serves or moves to this deployment's config)."""
    name, ours = plan.endpoint_name, plan.endpoint_config
    d, settled = settle_endpoint(clients, name, o.rollback_timeout_seconds, o.poll_seconds)
    if d is None:
        return None  # CreateEndpoint never took effect
    if not settled:
        raise _not_settled(name, d, o.rollback_timeout_seconds)
    uses = {d.get("EndpointConfigName"), (d.get("PendingDeploymentSummary") or {}).get("EndpointConfigName")}
    if ours not in uses:
        raise DeploymentError(f"endpoint {name} exists on {d.get('EndpointConfigName')}, not on this deployment's "
                              f"{ours}: this deployment did not create it, so it is left as it is")
    clients.sagemaker.delete_endpoint(EndpointName=name)
    clients.sagemaker.get_waiter("endpoint_deleted").wait(
        EndpointName=name, WaiterConfig=waiter_config(o.rollback_timeout_seconds, o.poll_seconds))
    return f"endpoint {name} deleted"


class _Ledger:
    """What a rollback undid and what it left, with the endpoint's usage that decides what may go."""

    def __init__(self, name: str, usage: EndpointUsage | None, why_unknown: str, timeout: float,
                 rolled: list[str], left: list[str]):
        self.name, self.usage, self.why_unknown, self.timeout = name, usage, why_unknown, timeout
        self.rolled, self.left = rolled, left

    def keep_reason(self, resource: str, kind: str) -> str | None:
        """Why `resource` (a config or a model) must stay, or None when the endpoint does not use it."""
        u = self.usage
        if u is None:
            return f"the endpoint could not be read ({self.why_unknown})"
        if not u.settled:
            return f"{u.describe(self.name)} and did not settle within {self.timeout:g} s"
        if resource in (u.configs if kind == "config" else u.models):
            return f"{u.describe(self.name)}, which uses it"
        return None

    def delete(self, what: str, kind: str, resource: str, exists: Callable[[], Any],
               remove: Callable[[], Any]) -> None:
        """Delete `resource` if it exists and the endpoint does not use it (else record why it stays)."""
        from botocore.exceptions import ClientError

        try:
            exists()
        except ClientError as err:
            if not is_not_found(err):
                self.left.append(f"{what} ({describe(err)})")
            return  # never created (or already gone): nothing to undo
        keep = self.keep_reason(resource, kind)
        if keep:
            self.left.append(f"{what} kept: {keep}")
            return
        try:
            remove()
            self.rolled.append(f"{what} deleted")
        except ClientError as err:
            if not is_not_found(err):
                self.left.append(f"{what} ({describe(err)})")


def _undo_upload(plan: DeploymentPlan, clients: AwsClients, ledger: _Ledger) -> None:
    bucket, key = plan.model_data_url[5:].split("/", 1)
    what = f"object {plan.model_data_url}"
    try:
        state, etag = archive_head(clients, bucket, key, plan.archive_sha256)
        if state == "absent":
            return  # the upload never took effect
        if state != "present":
            ledger.left.append(f"{what} kept: it does not hold this deployment's archive any more ({state})")
            return
        users = archive_users(clients, plan.model_data_url, plan.model_version)
        if users:  # our own model if it had to stay, or another deployment's model of this version
            ledger.rolled.append(f"{what} kept: model {', '.join(users)} uses it")
            return
        clients.s3.delete_object(Bucket=bucket, Key=key, IfMatch=etag)  # exactly the object checked
        ledger.rolled.append(f"{what} deleted")
    except Exception as err:  # noqa: BLE001 - report it and keep the object
        ledger.left.append(f"{what} ({describe(err)})")


def roll_back(journal: JournalRecord, clients: AwsClients) -> tuple[list[str], list[str]]:
    """Undo every step of `journal` that may have happened, reconciled against the describe calls.

    Returns (what was rolled back, what was left behind and why).
    """
    plan, o = journal.plan, journal.options
    name, sm = plan.endpoint_name, clients.sagemaker
    made = journal.possibly_made
    rolled: list[str] = []
    left: list[str] = []
    wait = o.rollback_timeout_seconds  # for the endpoint to settle before deciding what may be deleted
    if plan.mode == "update" and made(UPDATE_ENDPOINT):
        try:
            rolled.append(_restore_previous(plan, clients, o))
            previous = [t for t in plan.previous_tags if t["Key"].startswith(TAG_PREFIX)]
            if made(TAG_ENDPOINT) and previous and plan.endpoint_arn:  # the tags name the new version: give them back
                sm.add_tags(ResourceArn=plan.endpoint_arn, Tags=previous)
                rolled.append(f"endpoint {name} tags restored")
        except Exception as err:  # noqa: BLE001 - report; what the endpoint uses is kept below
            left.append(f"endpoint {name} not restored to {plan.previous_config} ({_why(err)})")
            wait = 0 if isinstance(err, _Unsettled) else wait  # it already had the whole wait
    elif plan.mode == "create" and made(CREATE_ENDPOINT):
        try:
            done = _remove_created_endpoint(plan, clients, o)
            if done:
                rolled.append(done)
        except Exception as err:  # noqa: BLE001
            left.append(f"endpoint {name} not deleted ({_why(err)})")
            wait = 0 if isinstance(err, _Unsettled) else wait

    usage, why = None, ""
    try:
        usage = endpoint_usage(clients, name, wait, o.poll_seconds)
    except Exception as err:  # noqa: BLE001 - without it nothing is deleted
        why = describe(err)
    ledger = _Ledger(name, usage, why, o.rollback_timeout_seconds, rolled, left)
    if made(CREATE_CONFIG):
        cfg = plan.endpoint_config
        ledger.delete(f"endpoint config {cfg}", "config", cfg,
                      lambda: sm.describe_endpoint_config(EndpointConfigName=cfg),
                      lambda: sm.delete_endpoint_config(EndpointConfigName=cfg))
    if made(CREATE_MODEL):
        model = plan.sagemaker_model
        ledger.delete(f"model {model}", "model", model, lambda: sm.describe_model(ModelName=model),
                      lambda: sm.delete_model(ModelName=model))
    if made(UPLOAD) and plan.upload == "new":
        _undo_upload(plan, clients, ledger)
    return ledger.rolled, ledger.left


def recover_deployment(clients: AwsClients, bucket: str, journal_key: str) -> tuple[str, list[str], list[str]] | None:
    """Roll back an unfinished deployment (its process died, or its rollback left something) from its journal.

    Returns (its deploy id, what was rolled back, what is still left), or None when the journal does not exist or
    the deployment finished (succeeded or rolled back). Safe to repeat: every step is reconciled again.
    """
    record = load_journal(clients.s3, bucket, journal_key)
    if record is None or record.status in FINISHED:
        return None
    log.warning("rolling back unfinished deployment %s (%s) from its journal s3://%s/%s", record.deploy_id,
                record.status, bucket, journal_key)
    record.status = "rolling-back"
    save_journal(clients.s3, record)
    rolled, left = roll_back(record, clients)
    record.status = "rollback-incomplete" if left else "rolled-back"
    record.rolled_back += rolled
    record.left_behind = left
    save_journal(clients.s3, record)
    return record.deploy_id, rolled, left


def prune_older_configs(plan: DeploymentPlan, clients: AwsClients, options: SageMakerOptions) -> list[str]:
    """Delete configurations and models older than the rollback target (failures are only logged), never one the
    endpoint serves or is moving to."""
    if not plan.prune:
        return []
    try:
        usage = endpoint_usage(clients, plan.endpoint_name, options.rollback_timeout_seconds, options.poll_seconds)
    except Exception as err:  # noqa: BLE001 - the deployment itself succeeded
        log.warning("not pruning: could not read endpoint %s: %s", plan.endpoint_name, describe(err))
        return []
    if not usage.settled:
        log.warning("not pruning: %s", usage.describe(plan.endpoint_name))
        return []
    pruned = []
    for planned in plan.prune:
        resource = next(iter(planned.params.values()))
        if resource in usage.configs or resource in usage.models:
            log.warning("not pruning %s: %s uses it", resource, usage.describe(plan.endpoint_name))
            continue
        try:
            call(clients, planned)
            pruned.append(resource)
        except Exception as err:  # noqa: BLE001 - the deployment itself succeeded
            log.warning("could not prune %s: %s", planned.params, describe(err))
    return pruned
