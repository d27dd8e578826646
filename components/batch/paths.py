"""Where a batch run may read and write: the operator's locations, never fineship's home or key directories.

A run's request is untrusted (a Prefect form may fill it), so its input and output must lie under locations the
operator configured (`FINESHIP_BATCH_ROOTS`: directories and `s3://bucket/prefix/` locations), and a local one
never inside the directories holding fineship's state and keys, whatever symlinks or `..` the path holds.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from components.errors import BatchPredictionError


def _inside(path: Path, root: Path) -> bool:
    return path == root or root in path.parents


def _in_s3_root(uri: str, root: str) -> bool:
    bucket, _, prefix = root[5:].partition("/")
    prefix = prefix if not prefix or prefix.endswith("/") else prefix + "/"  # "batch" means the folder batch/
    got_bucket, _, key = uri[5:].partition("/")
    return got_bucket == bucket and ".." not in key.split("/") and key.startswith(prefix)


def check_locations(input_uri: str, output_uri: str, roots: Sequence[str], forbidden: Sequence[Path]) -> None:
    """Refuse an input or output outside `roots` (directories, resolved: symlinks and .. count as their target;
    `s3://bucket/prefix` locations) and a local one inside `forbidden`, with `BatchPredictionError`."""
    local_roots = [Path(r).resolve() for r in roots if "://" not in r]
    s3_roots = [r for r in roots if r.startswith("s3://")]
    shown = ", ".join([*map(str, local_roots), *s3_roots]) or "none"
    for what, uri in (("input", input_uri), ("output", output_uri)):
        if uri.startswith("s3://"):
            allowed = any(_in_s3_root(uri, r) for r in s3_roots)
        elif "://" in uri:
            raise BatchPredictionError(f"{what} {uri!r}: only local paths and s3:// URIs are read and written")
        else:
            path = Path(uri).resolve()
            if any(_inside(path, f.resolve()) for f in forbidden):
                raise BatchPredictionError(f"{what} {uri}: refused, it lies in fineship's home or a key directory")
            allowed = any(_inside(path, r) for r in local_roots)
        if not allowed:
            raise BatchPredictionError(
                f"{what} {uri}: refused, outside the batch locations ({shown}); the operator allows others with "
                "FINESHIP_BATCH_ROOTS (a JSON list of directories and s3://bucket/prefix/ locations)")
