"""Reviewer keys and a trust store for tests: real Ed25519 keys in a temporary directory."""

from __future__ import annotations

import tempfile
from dataclasses import dataclass
from pathlib import Path

from components.registry.keys import Signer, init_reviewer, load_reviewer
from components.registry.review import ReviewPolicy


@dataclass
class Reviewers:
    """`keys/` holds reviewers' private keys, `trusted/` the public keys the operator trusts."""

    root: Path

    @property
    def keys(self) -> Path:
        return self.root / "keys"

    @property
    def trusted(self) -> Path:
        return self.root / "trusted"

    def signer(self, name: str, trusted: bool = True) -> Signer:
        """Reviewer `name` (made on first use); its public key is copied into the trust store when `trusted`."""
        if not (self.keys / f"{name}.key").is_file():
            made = init_reviewer(name, self.keys)
            if trusted:
                self.trusted.mkdir(parents=True, exist_ok=True)
                (self.trusted / f"{name}.pub").write_bytes(made.public_key_path.read_bytes())
        return load_reviewer(name, self.keys)

    def policy(self, home: Path, auto_promote: bool = False, allow_self_approval: bool = False) -> ReviewPolicy:
        self.trusted.mkdir(parents=True, exist_ok=True)
        return ReviewPolicy(trusted_reviewers=self.trusted, auto_promote=auto_promote,
                            allow_self_approval=allow_self_approval, home=home)

    def env(self) -> dict[str, str]:
        """What the operator (trust store) and the reviewer (key directory) set."""
        self.trusted.mkdir(parents=True, exist_ok=True)
        return {"FINESHIP_TRUSTED_REVIEWERS": str(self.trusted), "FINESHIP_REVIEWER_KEYS": str(self.keys)}


def new_reviewers() -> Reviewers:
    return Reviewers(Path(tempfile.mkdtemp(prefix="fineship-reviewers-")))


def approve_as(registry, name: str, version: str, reviewer: Signer, policy: ReviewPolicy, comment: str = ""):
    """Approve a registered version as `reviewer` (downloads its package to sign the exact files)."""
    from components.registry.review import approve

    with tempfile.TemporaryDirectory(prefix="fineship-approve-") as tmp:
        package = registry.download_version(name, version, tmp).package_dir
        return approve(registry, name, version, reviewer, package, policy, comment=comment)
