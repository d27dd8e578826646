"""The deployment lock: one deployment of an endpoint, and of a model, at a time, across processes and machines.

A lock is an S3 object in the artifact bucket (`plan.lock_keys`: `<prefix>/deployments/locks/endpoint/<name>.json`
and `.../model/<name>.json`). Why S3: components/ has no Prefect, every process that deploys already writes to
that bucket (the archive goes there), and S3's conditional writes are atomic:

- acquire: PutObject with `If-None-Match: *` creates the object only while the key is free (412 otherwise);
- renew (every LOCK_RENEW_SECONDS, from a background thread) and take over a stale lock: PutObject with
  `If-Match: <the ETag read>` replaces it only if nobody changed it since;
- release (in `finally`): DeleteObject with `If-Match: <our ETag>` removes our own lock, never a successor's.

The object holds the owner (user@host and pid), the deploy id, the journal key and `expires_at`. A lock whose
`expires_at` has passed by the S3 server's clock (the Date of the answer, so that a waiting process with a
skewed clock cannot steal a live lock) belongs to a process that died without releasing it: it is taken over,
and the caller rolls back the dead deployment from its journal before going on. A holder whose lock was taken
over (it stopped renewing for longer than the TTL) finds out at its next renewal; `check()` then fails the
deployment at its next step.

Every answer that may have been lost is read back rather than guessed: a conditional PutObject whose answer
was lost is retried by botocore and then answers 412, so on 412 the lock is read and recognised as ours by its
random token.
"""

from __future__ import annotations

import getpass
import json
import logging
import os
import secrets
import socket
import threading
import time
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from email.utils import parsedate_to_datetime
from typing import Any

from pydantic import BaseModel, ConfigDict

from components.deploy.sagemaker.calls import describe, error_code
from components.deploy.sagemaker.settings import LOCK, LOCK_RENEW_SECONDS, LOCK_TTL_SECONDS
from components.errors import DeploymentError, DeploymentStepError

log = logging.getLogger(__name__)

LOCK_FORMAT = "fineship.sagemaker.lock/v1"


def default_owner() -> str:
    """Who holds a lock, for the message another deployment shows: user@host and pid."""
    try:
        user = getpass.getuser()
    except (KeyError, OSError):  # no passwd entry (containers)
        user = f"uid {os.getuid()}" if hasattr(os, "getuid") else "unknown"
    return f"{user}@{socket.gethostname()} pid {os.getpid()}"


class LockHolder(BaseModel):
    """The holder of a lock object, as read from S3."""

    model_config = ConfigDict(frozen=True)

    key: str
    owner: str
    deploy_id: str
    token: str
    journal: str | None = None
    acquired_at: str
    expires_at: datetime
    etag: str

    def describe(self) -> str:
        return (f"deploy {self.deploy_id} by {self.owner}, since {self.acquired_at} "
                f"(lock renewed until {self.expires_at:%Y-%m-%d %H:%M:%S} UTC)")


def _what(key: str) -> str:
    """'endpoint <name>' or 'model <name>', from a lock key."""
    kind, name = key.rsplit("/", 2)[-2:]
    return f"{kind} {name.removesuffix('.json')}"


def _status(err: BaseException) -> int:
    return int(getattr(err, "response", {}).get("ResponseMetadata", {}).get("HTTPStatusCode") or 0)


def _conflict(err: BaseException) -> bool:
    """A conditional write that did not hold: 412, or 409 when another conditional write raced it."""
    return _status(err) in (409, 412) or error_code(err) in ("PreconditionFailed", "ConditionalRequestConflict")


def _server_now(response: dict[str, Any]) -> datetime:
    date = response.get("ResponseMetadata", {}).get("HTTPHeaders", {}).get("date")
    try:
        return parsedate_to_datetime(date).astimezone(UTC) if date else datetime.now(UTC)
    except (TypeError, ValueError):
        return datetime.now(UTC)


class DeploymentLock:
    """Locks `keys` in `bucket` for one deployment; `acquire`, then `check` between steps, `release` in finally."""

    def __init__(self, s3: Any, bucket: str, keys: Sequence[str], *, deploy_id: str, journal_key: str | None,
                 owner: str | None = None, ttl: float = LOCK_TTL_SECONDS, renew_every: float = LOCK_RENEW_SECONDS):
        self.s3, self.bucket, self.keys = s3, bucket, sorted(keys)  # one global order: no deadlock
        self.deploy_id, self.journal_key = deploy_id, journal_key
        self.owner = owner or default_owner()
        self.ttl, self.renew_every = ttl, renew_every
        self.token = secrets.token_hex(8)
        self.acquired_at = datetime.now(UTC).isoformat(timespec="seconds")
        self.taken_over: list[LockHolder] = []
        self.lost: str | None = None
        self._etags: dict[str, str] = {}
        self._mutex = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    # -- S3 -------------------------------------------------------------------------------------------

    def _put(self, key: str, **condition: str) -> str:
        body = {"format": LOCK_FORMAT, "lock": _what(key), "owner": self.owner, "deploy_id": self.deploy_id,
                "token": self.token, "journal": self.journal_key, "acquired_at": self.acquired_at,
                "expires_at": (datetime.now(UTC) + timedelta(seconds=self.ttl)).isoformat(timespec="seconds")}
        r = self.s3.put_object(Bucket=self.bucket, Key=key, Body=json.dumps(body, indent=1).encode(),
                               ContentType="application/json", **condition)
        return r["ETag"]

    def read(self, key: str) -> tuple[LockHolder | None, datetime]:
        """The holder of `key` (None when free) and the S3 server's time of the answer."""
        from botocore.exceptions import ClientError

        try:
            r = self.s3.get_object(Bucket=self.bucket, Key=key)
        except ClientError as err:
            if _status(err) == 404 or error_code(err) == "NoSuchKey":
                return None, datetime.now(UTC)
            raise
        now = _server_now(r)
        raw = r["Body"].read()
        try:
            doc = json.loads(raw)
            expires = datetime.fromisoformat(doc["expires_at"])
            expires = expires if expires.tzinfo else expires.replace(tzinfo=UTC)
            holder = LockHolder(key=key, owner=str(doc["owner"]), deploy_id=str(doc["deploy_id"]),
                                token=str(doc.get("token", "")), journal=doc.get("journal"),
                                acquired_at=str(doc.get("acquired_at", "")), expires_at=expires, etag=r["ETag"])
        except (ValueError, KeyError, TypeError):  # not a lock we wrote: it expires a TTL after it was written
            written = r.get("LastModified") or now
            holder = LockHolder(key=key, owner="unknown (unreadable lock object)", deploy_id="unknown", token="",
                                acquired_at=str(written), expires_at=written + timedelta(seconds=self.ttl),
                                etag=r["ETag"])
        return holder, now

    # -- acquire, renew, release ------------------------------------------------------------------------

    def acquire(self, timeout: float, poll: float) -> list[LockHolder]:
        """Take every lock, waiting at most `timeout` s for a running deployment; return the stale holders taken
        over (dead deployments whose journals the caller must roll back). Raises `DeploymentStepError` (step
        "lock") naming the holder when a lock stays busy."""
        deadline = time.monotonic() + timeout
        try:
            for key in self.keys:
                self._acquire_one(key, deadline, poll)
        except BaseException:
            self.release()
            raise
        self._thread = threading.Thread(target=self._beat, name=f"fineship-lock-{self.deploy_id}", daemon=True)
        self._thread.start()
        return list(self.taken_over)

    def _acquire_one(self, key: str, deadline: float, poll: float) -> None:
        from botocore.exceptions import ClientError

        stale: LockHolder | None = None  # a takeover we tried: if it went through, its answer may have been lost
        while True:
            try:
                self._etags[key] = self._put(key, IfNoneMatch="*")
                return
            except ClientError as err:
                if not _conflict(err):
                    raise DeploymentStepError(f"could not create the lock s3://{self.bucket}/{key}: {describe(err)}; "
                                              "the deploying identity needs s3:PutObject, s3:GetObject and "
                                              "s3:DeleteObject on <prefix>/deployments/*", LOCK) from err
            holder, now = self.read(key)
            if holder is None:
                continue  # released in between: try again at once
            if holder.token == self.token:  # our own write went through and its answer was lost
                self._etags[key] = holder.etag
                if stale is not None:
                    self.taken_over.append(stale)
                return
            if holder.expires_at <= now:
                stale = holder
                try:
                    self._etags[key] = self._put(key, IfMatch=holder.etag)
                except ClientError as err:
                    if not (_conflict(err) or _status(err) == 404):
                        raise
                    continue  # someone else took it over or it was released: read again
                log.warning("took over the stale lock on %s of %s", _what(key), holder.describe())
                self.taken_over.append(holder)
                return
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise DeploymentStepError(
                    f"{_what(key)} is being deployed by another deployment: {holder.describe()}, holding "
                    f"s3://{self.bucket}/{key}. Wait for it to finish, or set sagemaker.lock_timeout_seconds to wait "
                    f"for it; the lock of a deployment that died is taken over once it is {self.ttl:.0f} s "
                    "without renewal", LOCK)
            log.info("%s is locked by %s; waiting up to %.0f s more", _what(key), holder.describe(), remaining)
            time.sleep(min(poll, remaining))

    def _beat(self) -> None:
        while not self._stop.wait(self.renew_every):
            self.renew()

    def renew(self) -> None:
        """Push every lock's expiry forward (If-Match our ETag); a lock someone else took marks the lock lost."""
        from botocore.exceptions import BotoCoreError, ClientError

        with self._mutex:
            for key, etag in list(self._etags.items()):
                try:
                    self._etags[key] = self._put(key, IfMatch=etag)
                except ClientError as err:
                    if not (_conflict(err) or _status(err) == 404):
                        log.warning("could not renew the lock on %s: %s; trying again", _what(key), describe(err))
                        continue
                    holder, _ = self.read(key)
                    if holder is not None and holder.token == self.token:  # our renewal went through, answer lost
                        self._etags[key] = holder.etag
                        continue
                    self.lost = (f"the lock on {_what(key)} was taken over by "
                                 f"{holder.describe() if holder else 'nobody (it was deleted)'} while this deployment "
                                 "ran: it had not been renewed in time")
                    log.error(self.lost)
                    self._etags.pop(key, None)
                except BotoCoreError as err:
                    log.warning("could not renew the lock on %s: %s; trying again", _what(key), err)

    def check(self) -> None:
        """Raise `DeploymentError` when a lock was lost (called between steps)."""
        if self.lost:
            raise DeploymentError(self.lost)

    def release(self) -> None:
        """Delete our locks (If-Match our ETag). Never raises: an unreleased lock expires after the TTL."""
        from botocore.exceptions import BotoCoreError, ClientError

        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=60)
        with self._mutex:
            for key in reversed(self.keys):
                etag = self._etags.pop(key, None)
                if etag is None:
                    continue
                try:
                    try:
                        self.s3.delete_object(Bucket=self.bucket, Key=key, IfMatch=etag)
                    except ClientError as err:
                        if _status(err) == 404:
                            continue
                        if not _conflict(err):
                            raise
                        holder, _ = self.read(key)  # a renewal whose answer was lost changed the ETag
                        if holder is not None and holder.token == self.token:
                            self.s3.delete_object(Bucket=self.bucket, Key=key, IfMatch=holder.etag)
                        else:
                            log.warning("the lock on %s is no longer ours (%s): left in place", _what(key),
                                        holder.describe() if holder else "gone")
                except (ClientError, BotoCoreError) as err:
                    log.warning("could not release the lock on %s (%s); it expires in %.0f s", _what(key),
                                describe(err), self.ttl)
