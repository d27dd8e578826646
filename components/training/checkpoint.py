"""Resumable training checkpoints: tensors in safetensors, everything else in JSON, written atomically.

A checkpoint is a directory `step-00000120/` holding

- `model.safetensors`: the current weights (fp32);
- `best.safetensors`: the best weights so far (early stopping keeps them), when they differ;
- `optimizer.safetensors`: the optimizer's tensors (AdamW moments and step counts);
- `rng.safetensors`: every process's torch (and CUDA) generator state;
- `state.json`: loop position (epoch, batches consumed in it, step), history, best-so-far key,
  scheduler state, the optimizer's non-tensor state, Python and NumPy RNG states, and the size
  and SHA-256 of every file above.

It is written into a hidden temporary directory and renamed into place, so a crash or a
SIGKILL during the save leaves either the complete new checkpoint or none; a checkpoint whose
files do not match `state.json` (say, half-synced from S3 after a spot interruption) is
skipped in favour of the previous one. Nothing is ever unpickled.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import shutil
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from components.config import TrainingConfig
from components.errors import TrainingError

log = logging.getLogger(__name__)

FORMAT_VERSION = 1
STATE_FILE = "state.json"
_NAME = re.compile(r"^step-(\d{8,})$")
_TMP_PREFIX = ".tmp-"


@dataclass
class Checkpoint:
    """A loaded checkpoint: tensors on the CPU plus the JSON state."""

    path: Path
    step: int
    state: dict[str, Any]
    model: dict[str, Any]
    best: dict[str, Any] | None
    optimizer: dict[str, Any]
    rng: dict[str, Any]


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:  # some filesystems (and all of Windows) cannot fsync a directory
        pass
    finally:
        os.close(fd)


def _save_tensors(tensors: dict[str, Any], path: Path) -> None:
    from safetensors.torch import save_file

    # Clones break storage sharing (tied weights), which safetensors refuses to write.
    save_file({k: v.detach().to("cpu").clone().contiguous() for k, v in tensors.items()}, str(path))
    with path.open("rb") as f:
        os.fsync(f.fileno())


def _write_json_atomic(obj: Any, path: Path) -> None:
    tmp = path.with_name(path.name + ".tmp")
    with tmp.open("w", encoding="utf-8") as f:
        json.dump(obj, f)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def optimizer_to_parts(state_dict: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    """Split an optimizer `state_dict` into flat tensors and a JSON skeleton."""
    import torch

    tensors: dict[str, Any] = {}
    skeleton: dict[str, Any] = {"state": {}, "param_groups": state_dict["param_groups"]}
    for pid, entry in state_dict["state"].items():
        plain = {}
        for key, value in entry.items():
            if isinstance(value, torch.Tensor):
                tensors[f"{pid}.{key}"] = value
            else:
                plain[key] = value
        skeleton["state"][str(pid)] = plain
    return tensors, skeleton


def optimizer_from_parts(tensors: dict[str, Any], skeleton: dict[str, Any]) -> dict[str, Any]:
    """Rebuild an optimizer `state_dict` from `optimizer_to_parts` output."""
    state: dict[int, dict[str, Any]] = {int(pid): dict(plain) for pid, plain in skeleton["state"].items()}
    for name, tensor in tensors.items():
        pid, key = name.split(".", 1)
        state.setdefault(int(pid), {})[key] = tensor
    groups = [{k: tuple(v) if k == "betas" else v for k, v in g.items()} for g in skeleton["param_groups"]]
    return {"state": state, "param_groups": groups}


def list_checkpoints(root: str | Path) -> list[tuple[int, Path]]:
    """Checkpoint directories under `root` as (step, path), oldest first (complete or not)."""
    r = Path(root)
    if not r.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in r.iterdir() if p.is_dir() and (m := _NAME.match(p.name))]
    return sorted(found)


def save_checkpoint(root: str | Path, step: int, *, model_state: dict[str, Any], best_state: dict[str, Any] | None,
                    optimizer_state: dict[str, Any], scheduler_state: dict[str, Any], loop_state: dict[str, Any],
                    rng_tensors: dict[str, Any], rng_json: dict[str, Any], keep: int = 2) -> Path:
    """Write a checkpoint for `step` under `root` atomically and prune all but the newest `keep`."""
    r = Path(root)
    r.mkdir(parents=True, exist_ok=True)
    final = r / f"step-{step:08d}"
    tmp = r / f"{_TMP_PREFIX}step-{step:08d}-{os.getpid()}-{time.monotonic_ns()}"
    tmp.mkdir()
    try:
        opt_tensors, opt_skeleton = optimizer_to_parts(optimizer_state)
        parts = {"model.safetensors": model_state, "optimizer.safetensors": opt_tensors, "rng.safetensors": rng_tensors}
        if best_state is not None:
            parts["best.safetensors"] = best_state
        files = {}
        for name, tensors in parts.items():
            _save_tensors(tensors, tmp / name)
            files[name] = {"bytes": (tmp / name).stat().st_size, "sha256": _sha256(tmp / name)}
        state = {"format_version": FORMAT_VERSION, "step": step, "saved_at": time.time(), "loop": loop_state,
                 "scheduler": scheduler_state, "optimizer": opt_skeleton, "rng": rng_json, "files": files}
        _write_json_atomic(state, tmp / STATE_FILE)
        _fsync_dir(tmp)
        if final.exists():  # the same step saved again (a resumed run that was killed right after saving)
            trash = r / f"{_TMP_PREFIX}old-{final.name}-{time.monotonic_ns()}"
            os.rename(final, trash)
            shutil.rmtree(trash, ignore_errors=True)
        os.rename(tmp, final)
        _fsync_dir(r)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    for _, old in list_checkpoints(r)[:-keep]:
        shutil.rmtree(old, ignore_errors=True)
    log.info("checkpoint saved: %s", final)
    return final


def _verify(path: Path) -> dict[str, Any]:
    state_file = path / STATE_FILE
    if not state_file.is_file():
        raise TrainingError(f"{path} has no {STATE_FILE}")
    state = json.loads(state_file.read_text(encoding="utf-8"))
    if state.get("format_version", 0) > FORMAT_VERSION:
        raise TrainingError(f"{path} has checkpoint format {state['format_version']}; upgrade fineship to read it")
    for name, meta in state["files"].items():
        f = path / name
        if not f.is_file() or f.stat().st_size != meta["bytes"] or _sha256(f) != meta["sha256"]:
            raise TrainingError(f"{f} is missing or does not match {STATE_FILE}")
    return state


def load_latest_checkpoint(root: str | Path) -> Checkpoint | None:
    """The newest complete, verified checkpoint under `root`, or None; damaged ones are skipped with a warning."""
    from safetensors.torch import load_file

    for step, path in reversed(list_checkpoints(root)):
        try:
            state = _verify(path)
        except (TrainingError, OSError, ValueError, KeyError) as err:
            log.warning("skipping damaged checkpoint %s: %s", path, err)
            continue
        best = load_file(str(path / "best.safetensors")) if "best.safetensors" in state["files"] else None
        return Checkpoint(path=path, step=step, state=state, model=load_file(str(path / "model.safetensors")),
                          best=best, optimizer=load_file(str(path / "optimizer.safetensors")),
                          rng=load_file(str(path / "rng.safetensors")))
    return None


def clean_temporary(root: str | Path) -> None:
    """Remove leftovers of saves that were killed midway."""
    r = Path(root)
    if r.is_dir():
        for p in r.iterdir():
            if p.name.startswith(_TMP_PREFIX):
                shutil.rmtree(p, ignore_errors=True)


# -- where flow runs keep their checkpoints ----------------------------------------------------------
# Fields that only say where and how often to checkpoint: they do not make a run different.
_PLACEMENT_FIELDS = {"checkpoint_dir", "checkpoint_every_steps", "keep_checkpoints", "resume"}


def run_checkpoint_dir(root: str | Path, cfg: TrainingConfig, labels: list[str], *data: Sequence[Any]) -> Path:
    """`<root>/<config hash>-<data hash>`: one directory per training configuration and exact training data.

    A re-run of the same configuration on the same data finds its checkpoints there and resumes; any
    change to either gets a fresh directory, so a checkpoint is never resumed into a different run.
    """
    settings = cfg.model_dump(mode="json", exclude=_PLACEMENT_FIELDS)
    config = hashlib.sha256(json.dumps({"training": settings, "labels": labels}, sort_keys=True).encode())
    return Path(root) / f"{config.hexdigest()[:12]}-{data_digest(*data)[:12]}"


def data_digest(*parts: Sequence[Any]) -> str:
    """SHA-256 (hex) of sequences of items, item and sequence boundaries included: the identity of exact data."""
    h = hashlib.sha256()
    for part in parts:
        for item in part:
            h.update(str(item).encode())
            h.update(b"\x1f")
        h.update(b"\x1e")
    return h.hexdigest()


def prune_run_dirs(root: str | Path, keep: int, current: str | Path | None = None) -> list[Path]:
    """Delete all but the `keep` most recently used run directories under `root` (never `current`)."""
    r = Path(root)
    if not r.is_dir():
        return []
    cur = Path(current).resolve() if current else None
    dirs = sorted((p for p in r.iterdir() if p.is_dir() and p.resolve() != cur), key=lambda p: p.stat().st_mtime)
    doomed = dirs[:max(0, len(dirs) - max(0, keep - (1 if cur else 0)))]
    for p in doomed:
        shutil.rmtree(p, ignore_errors=True)
        log.info("removed old checkpoints %s", p)
    return doomed
