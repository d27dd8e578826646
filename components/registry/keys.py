"""Reviewer and pipeline keys, and the operator's trust store of reviewers' public keys.

A reviewer's Ed25519 key pair lives in `~/.fineship/reviewers/NAME.key` (0600, PKCS8 PEM, optionally
encrypted with `FINESHIP_REVIEWER_PASSPHRASE`) and `NAME.pub`. The deploying side trusts only the
`*.pub` files in the operator-controlled directory `FINESHIP_TRUSTED_REVIEWERS`; the file stem is
the reviewer's name. The pipeline's own key (`<home>/keys/pipeline.key`) signs auto-promotions.
"""

from __future__ import annotations

import hashlib
import logging
import os
import re
import stat
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from pydantic import BaseModel, ConfigDict


from components.errors import SignatureError, SignatureProblem

log = logging.getLogger(__name__)

SIGNATURE_FILE = "fineship.signature.json"
MANIFEST_FORMAT = "fineship.approval/v1"
APPROVAL = "approval"
AUTO_PROMOTION = "auto-promotion"
PIPELINE_SIGNER = "pipeline"
PASSPHRASE_ENV = "FINESHIP_REVIEWER_PASSPHRASE"
TRUSTED_REVIEWERS_ENV = "FINESHIP_TRUSTED_REVIEWERS"
ALLOW_SELF_APPROVAL_ENV = "FINESHIP_ALLOW_SELF_APPROVAL"
AUTO_PROMOTE_ENV = "FINESHIP_AUTO_PROMOTE"
HASH_CHUNK = 1 << 20  # weights are hashed 1 MiB at a time, never read whole

_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")
_TRUE = {"1", "true", "yes", "on"}


# -- keys ----------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Signer:
    """A private key and the name it signs as; `pipeline` signers make auto-promotion signatures only."""

    name: str
    private_key: Ed25519PrivateKey = field(repr=False)
    pipeline: bool = False

    @property
    def key_id(self) -> str:
        return key_id(self.private_key.public_key())


class ReviewerKey(BaseModel):
    """Where `init_reviewer` wrote a key pair, and the key's id."""

    model_config = ConfigDict(frozen=True)

    name: str
    private_key_path: Path
    public_key_path: Path
    key_id: str
    encrypted: bool


def key_id(public_key: Ed25519PublicKey) -> str:
    """The first 16 hex digits of the SHA-256 of the raw 32-byte public key."""
    raw = public_key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return hashlib.sha256(raw).hexdigest()[:16]


def check_name(name: str) -> str:
    """Return `name` if it can name a reviewer (and a key file), else raise `SignatureError`."""
    if not _NAME.fullmatch(name):
        raise SignatureError(f"reviewer name {name!r} is not allowed: use letters, digits, '.', '_' or '-' "
                             "(at most 64, starting with a letter or digit)", SignatureProblem.KEY_FILE)
    return name


def default_reviewer_dir() -> Path:
    """`~/.fineship/reviewers`: where a reviewer's own key pair lives unless another directory is given."""
    return Path.home() / ".fineship" / "reviewers"


def reviewer_key_paths(name: str, key_dir: Path | None = None) -> tuple[Path, Path]:
    """The private (`NAME.key`) and public (`NAME.pub`) key paths of reviewer `name`."""
    d = Path(key_dir) if key_dir is not None else default_reviewer_dir()
    check_name(name)
    return d / f"{name}.key", d / f"{name}.pub"


def reviewer_passphrase(environ: Mapping[str, str] | None = None) -> str | None:
    """The passphrase of reviewer keys from FINESHIP_REVIEWER_PASSPHRASE; None when unset or empty."""
    value = (os.environ if environ is None else environ).get(PASSPHRASE_ENV, "")
    return value or None


def _private_pem(key: Ed25519PrivateKey, passphrase: str | None) -> bytes:
    encryption: serialization.KeySerializationEncryption = (
        serialization.BestAvailableEncryption(passphrase.encode("utf-8")) if passphrase
        else serialization.NoEncryption())
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, encryption)


def public_pem(public_key: Ed25519PublicKey) -> bytes:
    """The public key as PEM SubjectPublicKeyInfo: the `NAME.pub` an operator puts in the trust store."""
    return public_key.public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)


def _private_dir(path: Path) -> None:
    # Key directories are created 0700; an existing directory is left as its owner set it.
    if not path.is_dir():
        path.mkdir(parents=True, mode=0o700)
        os.chmod(path, 0o700)


def _write_new(path: Path, data: bytes, mode: int, replace: bool) -> bool:
    """Write `data` to `path` atomically with `mode`; without `replace`, return False if `path` exists."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        os.fchmod(fd, mode)  # before any byte is written, so a private key is never readable by others
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        if replace:
            os.replace(tmp, path)
            return True
        try:
            os.link(tmp, path)  # atomic create-if-absent: two first uses never see a half-written key
        except FileExistsError:
            return False
        return True
    finally:
        if os.path.lexists(tmp):
            os.unlink(tmp)


def init_reviewer(name: str, key_dir: Path | None = None, passphrase: str | None = None,
                  force: bool = False) -> ReviewerKey:
    """Make reviewer `name`'s key pair: `NAME.key` (PKCS8 PEM, 0600, encrypted if a passphrase is given) and
    `NAME.pub` (SubjectPublicKeyInfo PEM) in `key_dir` (default `~/.fineship/reviewers`).

    Refuses to replace an existing key unless `force`: a replaced key invalidates nothing already signed,
    but the operator must trust the new `NAME.pub` before its signatures are accepted.
    """
    if name == PIPELINE_SIGNER:
        raise SignatureError(f"'{PIPELINE_SIGNER}' is the pipeline's own signer name; choose another reviewer name",
                             SignatureProblem.KEY_FILE)
    key_path, pub_path = reviewer_key_paths(name, key_dir)
    existing = [p for p in (key_path, pub_path) if os.path.lexists(p)]
    if existing and not force:
        raise SignatureError(f"reviewer key {existing[0]} already exists: keep using it, or replace it with --force "
                             "(the operator must then trust the new public key)", SignatureProblem.KEY_FILE)
    _private_dir(key_path.parent)
    key = Ed25519PrivateKey.generate()
    if not _write_new(key_path, _private_pem(key, passphrase), 0o600, replace=force):
        raise SignatureError(f"reviewer key {key_path} was created by another process just now; use that one",
                             SignatureProblem.KEY_FILE)
    _write_new(pub_path, public_pem(key.public_key()), 0o644, replace=True)
    kid = key_id(key.public_key())
    log.info("reviewer %s: key %s written to %s (give %s to the operator)", name, kid, key_path, pub_path)
    return ReviewerKey(name=name, private_key_path=key_path, public_key_path=pub_path, key_id=kid,
                       encrypted=bool(passphrase))


def load_private_key(path: Path, passphrase: str | None = None) -> Ed25519PrivateKey:
    """Read an Ed25519 private key; refuse one that is missing, readable by others, encrypted without a
    passphrase, or not Ed25519."""
    path = Path(path)
    try:
        st = path.stat()
        data = path.read_bytes()
    except FileNotFoundError as e:
        raise SignatureError(f"no private key at {path}: create one with `fineship reviewer init NAME`",
                             SignatureProblem.KEY_FILE) from e
    except OSError as e:
        raise SignatureError(f"cannot read private key {path}: {e.strerror}", SignatureProblem.KEY_FILE) from e
    if os.name == "posix" and st.st_mode & 0o077:
        raise SignatureError(f"private key {path} is readable by other users (mode {stat.filemode(st.st_mode)}): "
                             f"`chmod 600 {path}`, and make a new key if others may have copied it",
                             SignatureProblem.KEY_FILE)
    try:
        key = serialization.load_pem_private_key(data, password=passphrase.encode("utf-8") if passphrase else None)
    except TypeError as e:  # encrypted without a passphrase, or a passphrase for a plain key
        hint = (f"set {PASSPHRASE_ENV} to its passphrase" if not passphrase
                else f"it is not encrypted: unset {PASSPHRASE_ENV}")
        raise SignatureError(f"cannot load private key {path}: {hint}", SignatureProblem.KEY_FILE) from e
    except (ValueError, UnsupportedAlgorithm) as e:
        hint = (f"the passphrase in {PASSPHRASE_ENV} is wrong" if passphrase
                else "it is not a PEM private key")
        raise SignatureError(f"cannot load private key {path}: {hint}", SignatureProblem.KEY_FILE) from e
    if not isinstance(key, Ed25519PrivateKey):
        raise SignatureError(f"private key {path} is not an Ed25519 key: make one with `fineship reviewer init NAME`",
                             SignatureProblem.KEY_FILE)
    return key


def load_public_key(path: Path) -> Ed25519PublicKey:
    """Read an Ed25519 public key (PEM SubjectPublicKeyInfo), raising `SignatureError` otherwise."""
    path = Path(path)
    try:
        key = serialization.load_pem_public_key(path.read_bytes())
    except OSError as e:
        raise SignatureError(f"cannot read public key {path}: {e.strerror}", SignatureProblem.KEY_FILE) from e
    except (ValueError, UnsupportedAlgorithm) as e:
        raise SignatureError(f"{path} is not a PEM public key: copy the reviewer's NAME.pub unchanged",
                             SignatureProblem.KEY_FILE) from e
    if not isinstance(key, Ed25519PublicKey):
        raise SignatureError(f"{path} is not an Ed25519 public key: the reviewer makes one with "
                             "`fineship reviewer init NAME`", SignatureProblem.KEY_FILE)
    return key


def load_reviewer(name: str, key_dir: Path | None = None, passphrase: str | None = None) -> Signer:
    """The signer for reviewer `name` from `key_dir/NAME.key` (default `~/.fineship/reviewers`)."""
    if name == PIPELINE_SIGNER:
        raise SignatureError(f"'{PIPELINE_SIGNER}' is the pipeline's signer, not a reviewer",
                             SignatureProblem.KEY_FILE)
    key_path, _ = reviewer_key_paths(name, key_dir)
    return Signer(name=name, private_key=load_private_key(key_path, passphrase))


def pipeline_key_paths(home: Path) -> tuple[Path, Path]:
    """The pipeline's private and public key paths: `<home>/keys/pipeline.key` and `pipeline.pub`."""
    d = Path(home) / "keys"
    return d / f"{PIPELINE_SIGNER}.key", d / f"{PIPELINE_SIGNER}.pub"


def load_or_create_pipeline_signer(home: Path) -> Signer:
    """The pipeline's signer for auto-promotions, creating its key pair (0600, unencrypted) on first use."""
    key_path, pub_path = pipeline_key_paths(home)
    if not key_path.exists():
        _private_dir(key_path.parent)
        key = Ed25519PrivateKey.generate()
        if _write_new(key_path, _private_pem(key, None), 0o600, replace=False):
            log.info("created the pipeline's signing key %s (%s)", key_path, key_id(key.public_key()))
    key = load_private_key(key_path)
    if not pub_path.exists() or pub_path.read_bytes() != public_pem(key.public_key()):
        _write_new(pub_path, public_pem(key.public_key()), 0o644, replace=True)
    return Signer(name=PIPELINE_SIGNER, private_key=key, pipeline=True)


def load_pipeline_public_key(home: Path) -> Ed25519PublicKey | None:
    """The pipeline's public key from `<home>/keys/pipeline.pub`, or None before its first auto-promotion."""
    _, pub_path = pipeline_key_paths(home)
    return load_public_key(pub_path) if pub_path.exists() else None


# -- the trust store ---------------------------------------------------------------------------


@dataclass(frozen=True)
class TrustedKey:
    """A public key the operator trusts, and the reviewer it belongs to."""

    name: str
    key_id: str
    public_key: Ed25519PublicKey = field(repr=False)
    path: Path


@dataclass(frozen=True)
class TrustStore:
    """The reviewers' public keys the deploying side trusts, by key id."""

    directory: Path
    keys: Mapping[str, TrustedKey]

    def by_name(self, name: str) -> TrustedKey | None:
        """The trusted key of reviewer `name`, if any."""
        return next((k for k in self.keys.values() if k.name == name), None)


def trusted_reviewers_dir(environ: Mapping[str, str] | None = None) -> Path:
    """The trust store directory from FINESHIP_TRUSTED_REVIEWERS, raising `SignatureError` when unset."""
    value = (os.environ if environ is None else environ).get(TRUSTED_REVIEWERS_ENV, "")
    if not value:
        raise SignatureError(f"{TRUSTED_REVIEWERS_ENV} is not set: the operator points it at a directory holding "
                             "each trusted reviewer's NAME.pub (made by `fineship reviewer init NAME`)",
                             SignatureProblem.TRUST_STORE)
    return Path(value)


def load_trust_store(directory: Path) -> TrustStore:
    """Load every `*.pub` in `directory` (the file stem is the reviewer's name).

    Refuses a missing or world-writable directory, a key that is not Ed25519, one key under two names,
    and `pipeline.pub` (the pipeline's key is trusted only through the auto-promotion policy).
    """
    d = Path(directory)
    if not d.is_dir():
        raise SignatureError(f"trust store {d} is not a directory: set {TRUSTED_REVIEWERS_ENV} to the directory of "
                             "trusted reviewers' NAME.pub files", SignatureProblem.TRUST_STORE)
    if os.name == "posix" and d.stat().st_mode & stat.S_IWOTH:
        raise SignatureError(f"trust store {d} is writable by every user, so anyone could add a key: "
                             f"`chmod o-w {d}`", SignatureProblem.TRUST_STORE)
    keys: dict[str, TrustedKey] = {}
    for path in sorted(d.glob("*.pub")):
        name = path.stem
        if name == PIPELINE_SIGNER:
            raise SignatureError(f"{path} is in the trust store: the pipeline's key must not approve like a reviewer; "
                                 f"remove it (auto-promotions are allowed by {AUTO_PROMOTE_ENV})",
                                 SignatureProblem.TRUST_STORE)
        if not _NAME.fullmatch(name):
            raise SignatureError(f"{path}: {name!r} is not a reviewer name; rename the file to NAME.pub",
                                 SignatureProblem.TRUST_STORE)
        if os.name == "posix" and path.stat().st_mode & stat.S_IWOTH:
            raise SignatureError(f"trusted key {path} is writable by every user: `chmod o-w {path}`",
                                 SignatureProblem.TRUST_STORE)
        public_key = load_public_key(path)
        kid = key_id(public_key)
        if kid in keys:
            raise SignatureError(f"{path} and {keys[kid].path} hold the same key: one key is one reviewer; "
                                 "remove one of them", SignatureProblem.TRUST_STORE)
        keys[kid] = TrustedKey(name=name, key_id=kid, public_key=public_key, path=path)
    return TrustStore(directory=d, keys=keys)
