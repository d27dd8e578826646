"""The journal: every call of a deployment, recorded *before* it is made, in memory and in S3.

A call whose answer never came back (a read timeout, a dropped connection, a 5xx, or an error that came only
after botocore retried it: a retried UpdateEndpoint answers "Cannot update in-progress endpoint" precisely when
the first attempt went through) may have happened. Only a 4xx answer to the first and only attempt proves that
it did not ("refused"). So an entry is "intended" until its call returns ("done") or is refused, and rollback
treats every entry that is not "refused" as possibly made, and reconciles it against DescribeEndpoint,
DescribeEndpointConfig, DescribeModel and HeadObject (`rollback.py`) instead of guessing.

Where it is kept: `<prefix>/deployments/journals/<endpoint>/<deploy id>.json` in the artifact bucket (`plan.
journal_key`), written before the first call and again before and after each one. The lock object names it, so
a deployment that takes over the lock of a process that died finds the dead deployment's journal, plan included,
and rolls it back (`rollback.recover_deployment`). Why an S3 object and not tags: a tag can only be put on a
resource after it exists, but the intent to create it must be on record before the call; tags are spread over
several resources, while the journal is one document with the whole plan; and it lives next to the lock that
points to it, in the bucket every deploying process already writes to.
"""

from __future__ import annotations

import logging
from datetime import UTC, datetime
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from components.deploy.sagemaker.calls import describe, error_code
from components.deploy.sagemaker.plan import DeploymentPlan
from components.deploy.sagemaker.settings import SageMakerOptions
from components.errors import DeploymentError

log = logging.getLogger(__name__)

JOURNAL_FORMAT = "fineship.sagemaker.journal/v1"
EntryState = Literal["intended", "done", "refused"]
JournalStatus = Literal["running", "succeeded", "rolling-back", "rolled-back", "rollback-incomplete"]
FINISHED: tuple[str, ...] = ("succeeded", "rolled-back")


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


def refused_by_aws(err: BaseException) -> bool:
    """True only when AWS answered the first and only attempt of a call with a 4xx: the call had no effect.

    A timeout, a connection error, a 5xx, or a 4xx after a retry (the first attempt may have gone through)
    proves nothing: such a call may have happened.
    """
    response = getattr(err, "response", None)
    if not isinstance(response, dict) or "Error" not in response:
        return False
    meta = response.get("ResponseMetadata", {})
    status = int(meta.get("HTTPStatusCode") or 0)
    return 400 <= status < 500 and int(meta.get("RetryAttempts") or 0) == 0


class JournalEntry(BaseModel):
    """One call: "intended" (recorded before it was made), then "done" or "refused" (AWS said no to it)."""

    step: str
    operation: str
    state: EntryState
    at: str
    error: str = ""


class JournalRecord(BaseModel):
    """The journal document: the plan, the options its rollback needs, and what was called."""

    model_config = ConfigDict(extra="ignore")

    format: Literal["fineship.sagemaker.journal/v1"] = JOURNAL_FORMAT
    deploy_id: str
    owner: str
    started_at: str
    updated_at: str
    status: JournalStatus = "running"
    plan: DeploymentPlan
    options: SageMakerOptions
    entries: list[JournalEntry] = Field(default_factory=list)
    rolled_back: list[str] = Field(default_factory=list)
    left_behind: list[str] = Field(default_factory=list)

    def possibly_made(self, step: str) -> bool:
        """Whether the call of `step` may have happened: it was intended and AWS did not refuse it."""
        return any(e.step == step and e.state != "refused" for e in self.entries)


class Journal:
    """A deployment's journal, kept in memory and written to S3 on every change."""

    def __init__(self, s3: Any, plan: DeploymentPlan, options: SageMakerOptions, owner: str):
        self.s3 = s3
        now = _now()
        self.record = JournalRecord(deploy_id=plan.deploy_id, owner=owner, started_at=now, updated_at=now, plan=plan,
                                    options=options)

    @property
    def where(self) -> str:
        return f"s3://{self.record.plan.bucket}/{self.record.plan.journal_key}"

    def _write(self) -> None:
        save_journal(self.s3, self.record)

    def _write_or_warn(self) -> None:
        try:
            self._write()
        except Exception as err:  # noqa: BLE001 - the copy in memory is what this process acts on
            log.warning("could not update the journal %s: %s", self.where, describe(err))

    def start(self) -> None:
        """Write the journal before the first call; raises `DeploymentError` when it cannot be written."""
        try:
            self._write()
        except Exception as err:
            raise DeploymentError(f"could not write the deployment journal {self.where} ({describe(err)}); no call "
                                  "was made. The deploying identity needs s3:PutObject on <prefix>/deployments/*") from err

    def intend(self, step: str, operation: str) -> None:
        """Record the call of `step` before it is made; raises `DeploymentError` (and the call must not be made)
        when the record cannot be written."""
        self.record.entries.append(JournalEntry(step=step, operation=operation, state="intended", at=_now()))
        try:
            self._write()
        except Exception as err:
            raise DeploymentError(f"could not record {operation} in the journal {self.where} ({describe(err)}); the "
                                  "call was not made") from err

    def outcome(self, step: str, err: BaseException | None = None) -> None:
        """Record how the call of `step` ended: done, refused by AWS, or (anything else) still possibly made."""
        entry = next(e for e in reversed(self.record.entries) if e.step == step)
        if err is None:
            entry.state = "done"
        else:
            entry.error = describe(err)[:500]
            if refused_by_aws(err):
                entry.state = "refused"
        entry.at = _now()
        self._write_or_warn()

    def set_status(self, status: JournalStatus, rolled_back: list[str] | None = None,
                   left_behind: list[str] | None = None) -> None:
        self.record.status = status
        if rolled_back is not None:
            self.record.rolled_back = rolled_back
        if left_behind is not None:
            self.record.left_behind = left_behind
        self._write_or_warn()


def load_journal(s3: Any, bucket: str, key: str) -> JournalRecord | None:
    """A journal from S3; None when there is none at `key`."""
    from botocore.exceptions import ClientError

    try:
        body = s3.get_object(Bucket=bucket, Key=key)["Body"].read()
    except ClientError as err:
        if error_code(err) in ("NoSuchKey", "404"):
            return None
        raise
    return JournalRecord.model_validate_json(body)


def save_journal(s3: Any, record: JournalRecord) -> None:
    """Write `record` back to where its plan says it lives."""
    record.updated_at = _now()
    s3.put_object(Bucket=record.plan.bucket, Key=record.plan.journal_key,
                  Body=record.model_dump_json(indent=1).encode(), ContentType="application/json")
