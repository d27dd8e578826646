"""Review and promotion: `champion` moves only with a recorded approval (or a declared auto-promotion).

Every alias change is written on the versions involved as an append-only JSON log in the tag
`fineship.alias_log` (who, when, alias, from, to), so the registry itself is the audit trail.
"""

from __future__ import annotations

import json
import logging
from datetime import datetime, timezone

from pydantic import BaseModel, ConfigDict

from components.errors import RegistryError
from components.registry.mlflow_registry import MlflowRegistry, RegisteredVersion

log = logging.getLogger(__name__)

CHAMPION = "champion"
CHALLENGER = "challenger"
REVIEW = "fineship.review"  # approved | rejected | auto_promoted
ALIAS_LOG = "fineship.alias_log"


class AliasChange(BaseModel):
    model_config = ConfigDict(frozen=True)

    alias: str
    from_version: str | None
    to_version: str | None
    by: str
    at: str
    reason: str = ""


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def is_approved(version: RegisteredVersion) -> bool:
    """A version may be promoted or deployed when approved, or auto-promoted by a policy that says so."""
    return version.tags.get(REVIEW) in ("approved", "auto_promoted")


def _append_log(registry: MlflowRegistry, v: RegisteredVersion, change: AliasChange) -> None:
    entries = json.loads(v.tags.get(ALIAS_LOG, "[]"))
    entries.append(change.model_dump())
    text = json.dumps(entries)
    while len(text) > 4500 and len(entries) > 1:  # keep the newest entries within MLflow's tag limit
        entries.pop(0)
        text = json.dumps(entries)
    registry.set_version_tags(v.name, v.version, {ALIAS_LOG: text})


def move_alias(registry: MlflowRegistry, name: str, alias: str, version: str, by: str, reason: str = "") -> AliasChange:
    """Point `alias` at `version` and log the change on both the old and the new version."""
    old = registry.find_version(name, alias)
    new = registry.get_version(name, version=version)
    change = AliasChange(alias=alias, from_version=old.version if old else None, to_version=new.version, by=by,
                         at=_now(), reason=reason)
    registry.set_alias(name, alias, new.version)
    _append_log(registry, new, change)
    if old is not None and old.version != new.version:
        _append_log(registry, registry.get_version(name, version=old.version), change)
    log.info("%s: %s %s -> %s by %s", name, alias, change.from_version, change.to_version, by)
    return change


def approve(registry: MlflowRegistry, name: str, version: str, by: str, comment: str = "") -> AliasChange:
    """Record an approval on the version and promote it to champion."""
    if not by.strip():
        raise RegistryError("an approval needs a reviewer name: --by NAME")
    v = registry.get_version(name, version=version)
    if v.tags.get(REVIEW) == "rejected":
        log.warning("%s v%s was rejected before; approving it now overrides that", name, version)
    registry.set_version_tags(name, version, {REVIEW: "approved", "approved_by": by, "approved_at": _now(),
                                              "approval_comment": comment})
    return move_alias(registry, name, CHAMPION, version, by, f"approved: {comment}".strip(": "))


def reject(registry: MlflowRegistry, name: str, version: str, by: str, comment: str = "") -> None:
    """Record a rejection; a rejected version is never promoted or deployed."""
    if not by.strip():
        raise RegistryError("a rejection needs a reviewer name: --by NAME")
    v = registry.get_version(name, version=version)
    if CHAMPION in v.aliases:
        raise RegistryError(f"{name} v{version} is the champion; roll back first (fineship rollback {name})")
    registry.set_version_tags(name, version, {REVIEW: "rejected", "rejected_by": by, "rejected_at": _now(),
                                              "rejection_comment": comment})


def auto_promote(registry: MlflowRegistry, name: str, version: str) -> AliasChange:
    """Promote without a human approval because the pipeline's policy says so (recorded in tags)."""
    registry.set_version_tags(name, version, {REVIEW: "auto_promoted", "fineship.auto_promote": "true",
                                              "approved_by": "auto_promote policy", "approved_at": _now()})
    return move_alias(registry, name, CHAMPION, version, "auto_promote policy", "registry.auto_promote is true")


def rollback(registry: MlflowRegistry, name: str, by: str) -> AliasChange:
    """Move champion back to the newest approved version older than the current champion."""
    current = registry.find_version(name, CHAMPION)
    if current is None:
        raise RegistryError(f"{name} has no champion to roll back")
    candidates = [v for v in registry.list_versions(name)
                  if int(v.version) < int(current.version) and is_approved(v)]
    if not candidates:
        raise RegistryError(f"{name} has no approved version older than the champion v{current.version}")
    target = max(candidates, key=lambda v: int(v.version))
    return move_alias(registry, name, CHAMPION, target.version, by, f"rollback from v{current.version}")


def require_approved(version: RegisteredVersion) -> None:
    """Refuse an unapproved version, saying how to approve it."""
    if is_approved(version):
        return
    state = version.tags.get(REVIEW)
    if state == "rejected":
        raise RegistryError(f"{version.name} v{version.version} was rejected by {version.tags.get('rejected_by')}; "
                            "deploy another version")
    raise RegistryError(
        f"{version.name} v{version.version} has no recorded approval; approve it first with "
        f"`fineship approve {version.name} {version.version} --by YOUR_NAME` (or the promote flow in the Prefect UI)"
    )
