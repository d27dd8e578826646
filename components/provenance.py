"""Provenance helpers: git commit and configuration hash recorded on runs and model versions."""

from __future__ import annotations

import hashlib
import importlib.metadata
import json
import subprocess
from pathlib import Path
from typing import Any, Iterable

from components.errors import FineshipError


def git_commit(cwd: str | Path | None = None) -> str:
    """The current git commit (with '+dirty' when the tree has changes), or 'unknown' outside git."""
    try:
        sha = subprocess.run(["git", "rev-parse", "HEAD"], cwd=cwd, capture_output=True, text=True, timeout=5,
                             check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=cwd,
                               capture_output=True, text=True, timeout=5).stdout.strip()
        return sha + ("+dirty" if dirty else "")
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def config_hash(config: Any) -> str:
    """A stable short hash of a pydantic config (or any JSON-able object)."""
    data = config.model_dump(mode="json") if hasattr(config, "model_dump") else config
    return hashlib.sha256(json.dumps(data, sort_keys=True).encode()).hexdigest()[:16]


def pinned_requirements(packages: Iterable[str]) -> list[str]:
    """`name==version` for each package, at the version installed here (what the model was checked with)."""
    pins = []
    for name in packages:
        try:
            pins.append(f"{name}=={importlib.metadata.version(name)}")
        except importlib.metadata.PackageNotFoundError:
            raise FineshipError(f"{name} is not installed here, so it cannot be pinned for the model's runtime; "
                                "install fineship's dependencies (make install)") from None
    return pins


def source_digest(modules: Iterable[str]) -> str:
    """A short hash of the source files of `modules` (dotted names): changes whenever their code does."""
    import importlib.util

    h = hashlib.sha256()
    for name in modules:
        spec = importlib.util.find_spec(name)
        if spec is None or spec.origin is None:
            raise FineshipError(f"cannot find the source of module {name}")
        h.update(name.encode())
        h.update(Path(spec.origin).read_bytes())
    return h.hexdigest()[:16]
