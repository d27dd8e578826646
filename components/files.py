"""Files only their owner may read: credentials, password files."""

from __future__ import annotations

import os
from pathlib import Path


def write_private(path: Path, text: str, owner: tuple[int, int] | None = None) -> None:
    """Write `text` to `path` readable by its owner only (0600 from creation, replaced atomically); `owner`
    (uid, gid) hands the file to another user before it appears under its name."""
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.unlink(missing_ok=True)
    with os.fdopen(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600), "w") as out:
        out.write(text)
    if owner is not None:
        os.chown(tmp, *owner)
    os.replace(tmp, path)
