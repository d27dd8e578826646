"""Approvals as signatures over the exact files of a model package (issue #13).

An approval is an Ed25519 signature over a canonical JSON manifest: the model name and version,
the SHA-256 of every regular file in the package directory (weights, tokenizer, `config.json`,
`fineship.json`; everything except the signature file itself), the signer, the signer's key id,
the time and the purpose. The manifest and the base64 signature are stored together as one JSON
file, `fineship.signature.json`.

Identity comes from keys, not from names typed on a command line: the deploying side trusts only
the public keys in an operator-controlled directory (`FINESHIP_TRUSTED_REVIEWERS`, one
`NAME.pub` per reviewer, the file stem is the reviewer's name), and a manifest whose signer name
differs from the trust store's name for the signing key is refused. The pipeline has its own key
(`<home>/keys/pipeline.key`); its signatures carry the purpose "auto-promotion" and are accepted
only when the caller allows them (the operator policy `FINESHIP_AUTO_PROMOTE`), never as a
human approval.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import logging
import os
import re
import stat
from collections.abc import Mapping
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Literal

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator


from components.errors import SignatureError, SignatureProblem
from components.registry.keys import (
    _TRUE,
    ALLOW_SELF_APPROVAL_ENV,
    APPROVAL,
    AUTO_PROMOTE_ENV,
    AUTO_PROMOTION,
    HASH_CHUNK,
    MANIFEST_FORMAT,
    PIPELINE_SIGNER,
    SIGNATURE_FILE,
    TRUSTED_REVIEWERS_ENV,
    Signer,
    TrustStore,
    key_id,
)

log = logging.getLogger(__name__)

# -- the manifest and the bundle ---------------------------------------------------------------


class Manifest(BaseModel):
    """What a signature covers. Its canonical bytes (`canonical_bytes`) are what is signed."""

    model_config = ConfigDict(frozen=True, extra="forbid", strict=True, protected_namespaces=())

    format: Literal["fineship.approval/v1"] = MANIFEST_FORMAT
    model_name: str = Field(min_length=1)
    model_version: str = Field(min_length=1)
    files: dict[str, str] = Field(description="Relative POSIX path -> SHA-256 hex of every signed file.")
    signer: str = Field(min_length=1, description="The reviewer's name (or 'pipeline'), as the key's owner.")
    key_id: str = Field(pattern=r"^[0-9a-f]{16}$", description="key_id() of the signing public key.")
    signed_at: str = Field(description="ISO 8601 UTC time of signing.")
    purpose: Literal["approval", "auto-promotion"]
    gate_override: bool = False
    comment: str = ""

    @field_validator("files")
    @classmethod
    def _relative_paths(cls, files: dict[str, str]) -> dict[str, str]:
        for path, digest in files.items():
            parts = path.split("/")
            if not path or path.startswith("/") or any(p in ("", ".", "..") for p in parts) or "\\" in path:
                raise ValueError(f"file path {path!r} is not a normalised relative POSIX path")
            if not re.fullmatch(r"[0-9a-f]{64}", digest):
                raise ValueError(f"the digest of {path!r} is not a SHA-256 hex string")
        return files

    @field_validator("signed_at")
    @classmethod
    def _aware_time(cls, value: str) -> str:
        try:
            when = datetime.fromisoformat(value)
        except ValueError as e:
            raise ValueError(f"signed_at {value!r} is not an ISO 8601 time") from e
        if when.tzinfo is None:
            raise ValueError(f"signed_at {value!r} has no time zone")
        return value

    def canonical_bytes(self) -> bytes:
        """The exact bytes that are signed: sorted keys, no whitespace, ASCII."""
        return canonical_json(self.model_dump(mode="json"))


class SignatureBundle(BaseModel):
    """The stored form of a signature: the manifest and a base64 Ed25519 signature over its canonical bytes."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    algorithm: Literal["ed25519"] = "ed25519"
    manifest: Manifest
    signature: str = Field(description="Base64 of the 64-byte Ed25519 signature over manifest.canonical_bytes().")

    def to_json(self) -> str:
        """The bundle as the JSON text of `fineship.signature.json` (layout does not affect the signature)."""
        return self.model_dump_json(indent=2) + "\n"

    @classmethod
    def from_json(cls, text: str | bytes, source: str = "the signature bundle") -> SignatureBundle:
        """Parse a bundle, raising `SignatureError` (MALFORMED) naming what is wrong."""
        try:
            return cls.model_validate_json(text)
        except ValidationError as e:
            first = e.errors()[0]
            where = ".".join(str(p) for p in first["loc"])
            raise SignatureError(f"{source} is not a valid fineship signature ({where}: {first['msg']}): "
                                 "it was damaged or edited; approve the version again",
                                 SignatureProblem.MALFORMED) from e

    def signature_bytes(self) -> bytes:
        """The raw signature, raising `SignatureError` (MALFORMED) when it is not 64 bytes of base64."""
        try:
            raw = base64.b64decode(self.signature, validate=True)
        except (binascii.Error, ValueError) as e:
            raise SignatureError("the signature field is not valid base64: the signature file was damaged or "
                                 "edited; approve the version again", SignatureProblem.MALFORMED) from e
        if len(raw) != 64:
            raise SignatureError(f"the signature is {len(raw)} bytes, an Ed25519 signature is 64: the signature "
                                 "file was damaged or edited; approve the version again", SignatureProblem.MALFORMED)
        return raw


class VerifiedApproval(BaseModel):
    """A signature that held: who signed which model version, when, and why."""

    model_config = ConfigDict(frozen=True, protected_namespaces=())

    model_name: str
    model_version: str
    signer: str
    key_id: str
    signed_at: datetime
    purpose: Literal["approval", "auto-promotion"]
    gate_override: bool
    comment: str
    files: int = Field(description="How many files were checked against the manifest.")


def canonical_json(obj: Any) -> bytes:
    """Canonical JSON bytes: sorted keys, `,`/`:` separators, ASCII escapes, no NaN."""
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=True, allow_nan=False).encode("ascii")


# -- hashing and signing -----------------------------------------------------------------------


def hash_file(path: Path, chunk_size: int = HASH_CHUNK) -> str:
    """SHA-256 hex of a file, read in chunks (weights can be gigabytes)."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(chunk_size):
            h.update(chunk)
    return h.hexdigest()


def list_package_files(package_dir: Path) -> list[str]:
    """Every regular file under `package_dir` as a sorted relative POSIX path, except the top-level signature file.

    Refuses symbolic links and special files: what is signed must be the bytes in the package.
    """
    root = Path(package_dir)
    if not root.is_dir():
        raise SignatureError(f"model package {root} is not a directory", SignatureProblem.PACKAGE)
    found: list[str] = []
    for dirpath, dirnames, filenames in os.walk(root, followlinks=False):
        for entry in sorted(dirnames + filenames):
            full = Path(dirpath) / entry
            rel = full.relative_to(root).as_posix()
            mode = full.lstat().st_mode
            if stat.S_ISLNK(mode):
                raise SignatureError(f"{rel} in {root} is a symbolic link: a package holds its files themselves; "
                                     "replace the link with the file", SignatureProblem.PACKAGE)
            if stat.S_ISDIR(mode):
                continue
            if not stat.S_ISREG(mode):
                raise SignatureError(f"{rel} in {root} is not a regular file; remove it", SignatureProblem.PACKAGE)
            if rel != SIGNATURE_FILE:
                found.append(rel)
    return sorted(found)


def hash_package(package_dir: Path) -> dict[str, str]:
    """SHA-256 of every file `list_package_files` finds, by relative POSIX path."""
    root = Path(package_dir)
    return {rel: hash_file(root / rel) for rel in list_package_files(root)}


def sign_package(package_dir: Path, model_name: str, model_version: str | int, signer: Signer,
                 gate_override: bool = False, comment: str = "",
                 signed_at: datetime | None = None) -> SignatureBundle:
    """Sign every file of the package together with the model name and version.

    A reviewer's signer makes an "approval", the pipeline's signer an "auto-promotion"; the purpose
    follows from the key so that the pipeline can never produce a human approval.
    """
    files = hash_package(package_dir)
    if not files:
        raise SignatureError(f"model package {package_dir} holds no files: nothing to approve",
                             SignatureProblem.PACKAGE)
    when = (signed_at or datetime.now(timezone.utc)).astimezone(timezone.utc)
    manifest = Manifest(model_name=model_name, model_version=str(model_version), files=files, signer=signer.name,
                        key_id=signer.key_id, signed_at=when.isoformat(timespec="seconds"),
                        purpose=AUTO_PROMOTION if signer.pipeline else APPROVAL, gate_override=gate_override,
                        comment=comment)
    signature = signer.private_key.sign(manifest.canonical_bytes())
    return SignatureBundle(manifest=manifest, signature=base64.b64encode(signature).decode("ascii"))


def write_signature(bundle: SignatureBundle, path: Path) -> Path:
    """Write the bundle to `path`, or to `path/fineship.signature.json` when `path` is a directory."""
    p = Path(path)
    if p.is_dir():
        p = p / SIGNATURE_FILE
    p.write_text(bundle.to_json(), encoding="utf-8")
    return p


def read_signature(path: Path) -> SignatureBundle:
    """Read a bundle from `path`, or from `path/fineship.signature.json` when `path` is a directory."""
    p = Path(path)
    if p.is_dir():
        p = p / SIGNATURE_FILE
    if not p.is_file():
        raise SignatureError(f"no approval signature at {p}: approve the version with "
                             "`fineship approve MODEL VERSION`", SignatureProblem.MISSING)
    return SignatureBundle.from_json(p.read_bytes(), source=str(p))


# -- verification ------------------------------------------------------------------------------


def _describe(rel: str) -> str:
    name = rel.rsplit("/", 1)[-1]
    if name.endswith(".safetensors"):
        kind = "weights file"
    elif name.startswith(("tokenizer", "vocab", "merges", "special_tokens_map", "spiece", "sentencepiece")):
        kind = "tokenizer file"
    elif name == "config.json":
        kind = "model config"
    elif name == "fineship.json":
        kind = "package metadata"
    else:
        kind = "file"
    return f"{kind} {rel}"


def _select_key(manifest: Manifest, trust_store: TrustStore, allow_pipeline: bool,
                pipeline_key: Ed25519PublicKey | None, approve_cmd: str) -> tuple[str, Ed25519PublicKey]:
    """The trusted name and public key that must have made this signature."""
    what = f"{manifest.model_name} v{manifest.model_version}"
    pipeline_id = key_id(pipeline_key) if pipeline_key is not None else None
    if manifest.purpose == AUTO_PROMOTION:
        if not allow_pipeline:
            raise SignatureError(f"{what} carries an auto-promotion signature by the pipeline, and the operator "
                                 f"policy does not allow auto-promotion ({AUTO_PROMOTE_ENV} is off): a reviewer "
                                 f"approves it with {approve_cmd}", SignatureProblem.PURPOSE_REFUSED)
        if pipeline_key is None:
            raise SignatureError(f"{what} carries an auto-promotion signature, but this home has no pipeline public "
                                 "key (keys/pipeline.pub) to check it against: deploy from the home the pipeline "
                                 f"runs in, or have a reviewer approve with {approve_cmd}",
                                 SignatureProblem.UNTRUSTED_KEY)
        if manifest.key_id != pipeline_id:
            raise SignatureError(f"the auto-promotion signature on {what} is by key {manifest.key_id}, not the "
                                 f"pipeline's key {pipeline_id}: only the pipeline auto-promotes; a reviewer "
                                 f"approves with {approve_cmd}", SignatureProblem.UNTRUSTED_KEY)
        return PIPELINE_SIGNER, pipeline_key
    if pipeline_id is not None and manifest.key_id == pipeline_id:
        raise SignatureError(f"the approval of {what} is signed by the pipeline's key: the pipeline cannot approve "
                             f"like a reviewer; a reviewer approves with {approve_cmd}",
                             SignatureProblem.UNTRUSTED_KEY)
    trusted = trust_store.keys.get(manifest.key_id)
    if trusted is None:
        claimed = trust_store.by_name(manifest.signer)
        claim = (f"it claims to be from {manifest.signer}, whose trusted key is {claimed.key_id}" if claimed
                 else f"it claims to be from {manifest.signer}, who is not a trusted reviewer")
        empty = " (the trust store is empty)" if not trust_store.keys else ""
        raise SignatureError(f"the approval of {what} is signed by key {manifest.key_id}, which is not in the trust "
                             f"store {trust_store.directory}{empty}; {claim}. A trusted reviewer approves with "
                             f"{approve_cmd}, or the operator adds the reviewer's NAME.pub to "
                             f"{TRUSTED_REVIEWERS_ENV}", SignatureProblem.UNTRUSTED_KEY)
    return trusted.name, trusted.public_key


def verify_approval(package_dir: Path, model_name: str, model_version: str | int, bundle: SignatureBundle,
                   trust_store: TrustStore, *, allow_pipeline: bool = False,
                   pipeline_key: Ed25519PublicKey | None = None) -> VerifiedApproval:
    """Check that `bundle` approves exactly this package as `model_name` version `model_version`.

    Holds when: the signature verifies with a trusted key; the manifest's signer is the trust store's
    name for that key; name and version match; the files present hash to exactly the manifest (none
    missing, added or changed); and the purpose is allowed. An "auto-promotion" signature is accepted
    only with `allow_pipeline` (operator policy FINESHIP_AUTO_PROMOTE) and only from `pipeline_key`;
    pass `pipeline_key` even when not allowing it, so that an approval made with the pipeline's key is
    refused even if the operator put that key in the trust store. Raises `SignatureError` otherwise.
    """
    version = str(model_version)
    approve_cmd = f"`fineship approve {model_name} {version}`"
    manifest = bundle.manifest  # its format is checked when parsed: Manifest accepts MANIFEST_FORMAT only
    expected_name, public_key = _select_key(manifest, trust_store, allow_pipeline, pipeline_key, approve_cmd)
    try:
        public_key.verify(bundle.signature_bytes(), manifest.canonical_bytes())
    except InvalidSignature as e:
        raise SignatureError(f"the signature on {model_name} v{version} does not match its manifest: the "
                             "signature file was edited after signing (or made with another key); approve again "
                             f"with {approve_cmd}", SignatureProblem.BAD_SIGNATURE) from e
    if manifest.signer != expected_name:
        raise SignatureError(f"the approval names {manifest.signer} as signer, but it is signed with "
                             f"{expected_name}'s key {manifest.key_id}: {manifest.signer} approves with their own "
                             f"key ({approve_cmd})", SignatureProblem.SIGNER_MISMATCH)
    if (manifest.model_name, manifest.model_version) != (model_name, version):
        raise SignatureError(f"this signature approves {manifest.model_name} v{manifest.model_version}, not "
                             f"{model_name} v{version}: each version is approved on its own; approve it with "
                             f"{approve_cmd}", SignatureProblem.WRONG_MODEL)
    present = list_package_files(package_dir)
    problems = [f"{_describe(rel)} is missing" for rel in sorted(set(manifest.files) - set(present))]
    problems += [f"{_describe(rel)} was added" for rel in present if rel not in manifest.files]
    problems += [f"{_describe(rel)} changed" for rel in present
                 if rel in manifest.files and hash_file(Path(package_dir) / rel) != manifest.files[rel]]
    if problems:
        shown = "; ".join(problems[:10]) + (f"; and {len(problems) - 10} more" if len(problems) > 10 else "")
        by = "auto-promoted by the pipeline" if manifest.purpose == AUTO_PROMOTION else f"approved by {expected_name}"
        raise SignatureError(f"{shown} since {model_name} v{version} was {by} ({manifest.signed_at}): deploy the "
                             f"package exactly as approved, or review the change and re-approve with {approve_cmd}",
                             SignatureProblem.FILES_CHANGED)
    log.info("%s v%s: %s signature by %s (key %s) holds over %d files", model_name, version, manifest.purpose,
             expected_name, manifest.key_id, len(present))
    return VerifiedApproval(model_name=model_name, model_version=version, signer=expected_name,
                            key_id=manifest.key_id, signed_at=datetime.fromisoformat(manifest.signed_at),
                            purpose=manifest.purpose, gate_override=manifest.gate_override,
                            comment=manifest.comment, files=len(present))


# -- separation of duties ----------------------------------------------------------------------


def self_approval_allowed(environ: Mapping[str, str] | None = None) -> bool:
    """The operator policy FINESHIP_ALLOW_SELF_APPROVAL (true/1/yes/on); off when unset."""
    return (os.environ if environ is None else environ).get(ALLOW_SELF_APPROVAL_ENV, "").strip().lower() in _TRUE


def check_separation(signer: str, run_user: str | None, allow_self_approval: bool) -> None:
    """Refuse an approval by the person who trained the version (the MLflow run's user).

    Names compare case-insensitively. An unknown run user cannot be checked and passes with a warning;
    `allow_self_approval` (the operator's FINESHIP_ALLOW_SELF_APPROVAL) lets one-person teams approve their own.
    """
    if not run_user or not run_user.strip():
        log.warning("the training run of this version records no user: separation of duties cannot be checked")
        return
    if signer.strip().casefold() != run_user.strip().casefold():
        return
    if allow_self_approval:
        log.warning("%s approves a version they trained: allowed by %s", signer, ALLOW_SELF_APPROVAL_ENV)
        return
    raise SignatureError(f"{signer} trained this version (MLflow run user {run_user}) and cannot approve it: "
                         "separation of duties; another reviewer approves it. One-person teams: the operator sets "
                         f"{ALLOW_SELF_APPROVAL_ENV}=true", SignatureProblem.SELF_APPROVAL)
