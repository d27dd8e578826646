"""Review and promotion: a version is deployable only with a valid signature over its exact files.

An approval is an Ed25519 signature by a reviewer whose public key the operator trusts
(`components/registry/signing.py`); an auto-promotion is signed by the pipeline's own key and counts
only where the operator's policy (`FINESHIP_AUTO_PROMOTE`) is on. Tags (`fineship.review`,
`approved_by`, ...) record the review for people and never authorise anything: `verify_deployable`
reads the signature, checks it against the trust store and hashes the files about to be deployed.

Every alias change is written on the versions involved as an append-only JSON log in the tag
`fineship.alias_log` (who, when, alias, from, to), so the registry itself is the audit trail.
"""

from __future__ import annotations

import json
import logging
from datetime import datetime, timezone
from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field

from components.errors import FineshipError, RegistryError, SignatureError, SignatureProblem
from components.registry.keys import (
    TRUSTED_REVIEWERS_ENV,
    Signer,
    TrustStore,
    load_or_create_pipeline_signer,
    load_pipeline_public_key,
    load_trust_store,
)
from components.registry.mlflow_registry import MlflowRegistry, RegisteredVersion
from components.registry.signing import (
    SignatureBundle,
    VerifiedApproval,
    check_separation,
    sign_package,
    verify_approval,
)

log = logging.getLogger(__name__)

CHAMPION = "champion"
CHALLENGER = "challenger"
REVIEW = "fineship.review"  # approved | rejected | auto_promoted: for people, never for authorisation
SIGNATURE = "fineship.signature"  # the signature bundle (JSON); verified, never trusted as it stands
REVOKED = "fineship.signature_revoked"  # the bundle a rejection withdrew (for people; never read to authorise)
ALIAS_LOG = "fineship.alias_log"
GATE = "fineship.gate"
MAX_TAG = 5000  # MLflow's limit on a model version tag value


class ReviewPolicy(BaseModel):
    """The operator's review policy: read from the worker's or CLI's own environment, never from a run."""

    model_config = ConfigDict(frozen=True)

    trusted_reviewers: Path | None = Field(None, description="Directory of trusted reviewers' NAME.pub files.")
    allow_self_approval: bool = Field(False, description="One-person teams: the trainer may approve.")
    auto_promote: bool = Field(False, description="Promote gated candidates with the pipeline's own signature, "
                               "and accept pipeline-signed versions for deployment.")
    home: Path = Field(description="fineship home: where the pipeline's key lives.")

    def trust_store(self) -> TrustStore:
        if self.trusted_reviewers is None:
            return TrustStore(directory=Path(f"${TRUSTED_REVIEWERS_ENV} (unset)"), keys={})
        return load_trust_store(self.trusted_reviewers)


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
    """Whether the version carries a signature and no recorded rejection (the signature is checked at deploy)."""
    return bool(version.tags.get(SIGNATURE)) and version.tags.get(REVIEW) != "rejected"


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


def review_problems(version: RegisteredVersion) -> list[str]:
    """Why approving `version` needs an override: its gate did not pass (or is not recorded), or it was rejected."""
    problems = []
    if version.tags.get(GATE) != "passed":
        problems.append(f"its fineship gate is '{version.tags.get(GATE) or 'missing'}', not passed")
    if version.tags.get(REVIEW) == "rejected":
        problems.append(f"it was rejected by {version.tags.get('rejected_by', 'a reviewer')}")
    return problems


def _override_needed(name: str, version: str, problems: list[str], why: str = "") -> str:
    return (f"{name} v{version} cannot be approved: {' and '.join(problems)}{why}. To approve it anyway, give the reason "
            f"with `fineship approve {name} {version} --override 'REASON'` (the override and its reason are signed "
            "and recorded on the version)")


def sign_approval(registry: MlflowRegistry, name: str, version: str, signer: Signer, package_dir: str | Path,
                  policy: ReviewPolicy, override: str | None = None, comment: str = "") -> SignatureBundle:
    """A reviewer's signature over the version's files, after the review rules: a passed gate (or a recorded
    override), no earlier rejection (or a recorded override), and not the person who trained it."""
    v = registry.get_version(name, version=version)
    problems = review_problems(v)
    if problems and not (override and override.strip()):
        raise RegistryError(_override_needed(name, version, problems))
    check_separation(signer.name, registry.run_user(v.run_id) if v.run_id else None, policy.allow_self_approval)
    note = f"override ({'; '.join(problems)}): {override.strip()}" if problems and override else ""
    return sign_package(Path(package_dir), name, version, signer, gate_override=bool(note),
                        comment="; ".join(x for x in (note, comment) if x))


def _write_signature(registry: MlflowRegistry, name: str, version: str, bundle: SignatureBundle,
                     verified: VerifiedApproval, review: str) -> None:
    text = bundle.model_dump_json()
    if len(text) > MAX_TAG:
        raise RegistryError(f"the signature of {name} v{version} is {len(text)} characters, over MLflow's tag limit "
                            f"of {MAX_TAG}: the package holds too many files ({verified.files})")
    registry.set_version_tags(name, version, {
        SIGNATURE: text, REVIEW: review, "approved_by": verified.signer, "approved_at": verified.signed_at.isoformat(),
        "approval_key_id": verified.key_id, "approval_comment": verified.comment,
        "approval_override": str(verified.gate_override).lower()})


def record_approval(registry: MlflowRegistry, name: str, version: str, bundle: SignatureBundle,
                    package_dir: str | Path, policy: ReviewPolicy) -> AliasChange:
    """Verify a reviewer's signature (trusted key, exact files, separation of duties), record it and promote.

    The review rules hold here too, not only where the signature was made: a version whose gate did not pass, or
    that was rejected, is recorded only with a signature that carries the override and its reason."""
    verified = verify_approval(Path(package_dir), name, version, bundle, policy.trust_store())
    v = registry.get_version(name, version=version)
    check_separation(verified.signer, registry.run_user(v.run_id) if v.run_id else None, policy.allow_self_approval)
    problems = review_problems(v)
    if problems and not (verified.gate_override and verified.comment.strip()):
        raise RegistryError("refused: " + _override_needed(
            name, version, problems, f", and the signature by {verified.signer} carries no override with a reason"))
    _write_signature(registry, name, version, bundle, verified, "approved")
    return move_alias(registry, name, CHAMPION, version, verified.signer, f"approved: {verified.comment}".strip(": "))


def approve(registry: MlflowRegistry, name: str, version: str, signer: Signer, package_dir: str | Path,
            policy: ReviewPolicy, override: str | None = None, comment: str = "") -> AliasChange:
    """Sign the version's files as `signer`, record the approval and promote the version to champion."""
    bundle = sign_approval(registry, name, version, signer, package_dir, policy, override, comment)
    return record_approval(registry, name, version, bundle, package_dir, policy)


def reject(registry: MlflowRegistry, name: str, version: str, by: str, comment: str = "") -> None:
    """Record a rejection; a rejected version is not promoted or deployed (a rejection authorises nothing)."""
    if not by.strip():
        raise RegistryError("a rejection needs a reviewer name: --by NAME")
    v = registry.get_version(name, version=version)
    if CHAMPION in v.aliases:
        raise RegistryError(f"{name} v{version} is the champion; roll back first (fineship rollback {name})")
    # The rejection withdraws an earlier approval: its signature moves aside, so that deleting the (unsigned)
    # rejection tag leaves the version unapproved instead of re-enabling the old signature.
    revoked = {SIGNATURE: "", REVOKED: v.tags[SIGNATURE][:MAX_TAG]} if v.tags.get(SIGNATURE) else {}
    registry.set_version_tags(name, version, {REVIEW: "rejected", "rejected_by": by, "rejected_at": _now(),
                                              "rejection_comment": comment, **revoked})


def auto_promotion_blockers(registry: MlflowRegistry, version: RegisteredVersion, policy: ReviewPolicy,
                            weaker_gate: list[str], champion: RegisteredVersion | None,
                            champion_dir: str | Path | None) -> list[str]:
    """Why the pipeline must not promote `version` on its own: its run's gate was weaker than the operator's floor
    (`weaker_gate`, from `components.evaluation.gate_floor.weaker_than`), the champion it was judged against does not
    verify, or earlier versions exist but none is champion (the gate compared it with nothing). Empty: promote."""
    blockers = list(weaker_gate)
    if champion is not None and champion_dir is not None:
        try:
            verify_deployable(champion, champion_dir, policy)
        except FineshipError as err:
            blockers.append(f"the champion v{champion.version} it was judged against does not verify ({err})")
    elif any(v.version != version.version for v in registry.list_versions(version.name)):
        blockers.append("earlier versions exist but none is champion, so the gate compared it with nothing")
    return blockers


def auto_promote(registry: MlflowRegistry, name: str, version: str, package_dir: str | Path,
                 policy: ReviewPolicy) -> AliasChange:
    """Promote under the operator's auto-promotion policy, signed with the pipeline's own key."""
    if not policy.auto_promote:
        raise RegistryError("auto-promotion is off: the operator sets FINESHIP_AUTO_PROMOTE=true on the worker or CLI")
    problems = review_problems(registry.get_version(name, version=version))
    if problems:  # the pipeline never overrides: a reviewer does, with a signed reason
        raise RegistryError(f"{name} v{version} is not auto-promoted: {' and '.join(problems)}; a reviewer may approve "
                            f"it with `fineship approve {name} {version} --override 'REASON'`")
    signer = load_or_create_pipeline_signer(policy.home)
    bundle = sign_package(Path(package_dir), name, version, signer, comment="FINESHIP_AUTO_PROMOTE policy")
    verified = verify_approval(Path(package_dir), name, version, bundle, policy.trust_store(), allow_pipeline=True,
                               pipeline_key=load_pipeline_public_key(policy.home))
    _write_signature(registry, name, version, bundle, verified, "auto_promoted")
    return move_alias(registry, name, CHAMPION, version, "pipeline", "auto-promotion (FINESHIP_AUTO_PROMOTE)")


def rollback(registry: MlflowRegistry, name: str, by: str) -> AliasChange:
    """Move champion back to the newest signed version older than the current champion."""
    current = registry.find_version(name, CHAMPION)
    if current is None:
        raise RegistryError(f"{name} has no champion to roll back")
    candidates = [v for v in registry.list_versions(name)
                  if int(v.version) < int(current.version) and is_approved(v)]
    if not candidates:
        raise RegistryError(f"{name} has no approved version older than the champion v{current.version}")
    target = max(candidates, key=lambda v: int(v.version))
    return move_alias(registry, name, CHAMPION, target.version, by, f"rollback from v{current.version}")


def approval_bundle(version: RegisteredVersion) -> SignatureBundle:
    """The version's signature bundle, or a refusal that says how to approve it (before anything is downloaded)."""
    cmd = f"`fineship approve {version.name} {version.version}`"
    if version.tags.get(REVIEW) == "rejected":
        raise RegistryError(f"{version.name} v{version.version} was rejected by {version.tags.get('rejected_by')}; "
                            "deploy another version")
    text = version.tags.get(SIGNATURE)
    if not text:
        raise RegistryError(f"{version.name} v{version.version} has no signed approval; a trusted reviewer approves "
                            f"it with {cmd} (or the promote flow in the Prefect UI)")
    try:
        return SignatureBundle.from_json(text, f"tag {SIGNATURE} of {version.name} v{version.version}")
    except SignatureError as err:
        raise RegistryError(f"{err}; approve it again with {cmd}") from None


def verify_deployable(version: RegisteredVersion, package_dir: str | Path, policy: ReviewPolicy) -> VerifiedApproval:
    """The signature holds, its signer is trusted (or it is the pipeline's under the auto-promotion policy),
    the files at `package_dir` (the ones about to be deployed) are exactly the signed ones, and a version whose
    gate tag is not `passed` carries a reviewer's signed gate override."""
    bundle = approval_bundle(version)
    try:
        verified = verify_approval(Path(package_dir), version.name, version.version, bundle, policy.trust_store(),
                                   allow_pipeline=policy.auto_promote,
                                   pipeline_key=load_pipeline_public_key(policy.home))
    except SignatureError as err:
        if err.problem == SignatureProblem.TRUST_STORE:
            raise
        raise SignatureError(f"refused: {err}", err.problem) from None
    # Tags are untrusted, the signed manifest is not: a version that does not show a passed gate deploys only
    # with an override inside the signature, made by a reviewer (the pipeline never overrides its own gate).
    gate = version.tags.get(GATE) or "missing"
    if gate != "passed" and not (verified.gate_override and verified.purpose == "approval"):
        raise RegistryError(f"refused: the fineship gate of {version.name} v{version.version} is '{gate}', not passed, "
                            f"and the {verified.purpose} signed by {verified.signer} carries no gate override; a "
                            f"reviewer approves it with `fineship approve {version.name} {version.version} --override "
                            "'REASON'` (the override is signed), or deploy a version whose gate passed")
    return verified
