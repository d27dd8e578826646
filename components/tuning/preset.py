"""The best trial as a preset YAML: `fineship run --config <preset>` trains exactly what the trial trained."""

from __future__ import annotations

import os
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import yaml

from components.config import PipelineConfig, TrainingConfig


def _absolute(path: str | None) -> str | None:
    """A local path that exists, made absolute (the preset then runs from any directory); others unchanged."""
    if not path or "://" in path or not Path(path).exists():
        return path
    return str(Path(path).resolve())


def best_config(config: PipelineConfig, training: TrainingConfig) -> PipelineConfig:
    """`config` with the best trial's training section (the drawn values, and the threads it ran with); local
    data and model paths made absolute."""
    data = config.data.model_copy(update={k: _absolute(getattr(config.data, k))
                                          for k in ("path", "validation_path", "test_path")})
    training = training.model_copy(update={"model": _absolute(training.model)})
    return config.model_copy(update={"data": data, "training": training})


def write_preset(config: PipelineConfig, path: str | Path, header: dict[str, Any]) -> Path:
    """Write `config` (every field spelled out, so changed defaults cannot change the run) without its `tuning`
    section, under a comment block with `header` (study, trial, value). Atomic: a reader never sees half a file."""
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    tree = config.model_dump(mode="json", exclude={"tuning"})
    lines = ["# fineship preset written by `fineship tune`; reproduce with: fineship run --config " + str(out)]
    lines += [f"# {k}: {v}" for k, v in header.items()]
    lines.append(f"# written: {datetime.now(UTC).isoformat(timespec='seconds')}")
    text = "\n".join(lines) + "\n" + yaml.safe_dump(tree, sort_keys=False, allow_unicode=True)
    tmp = out.with_name(f".{out.name}.{os.getpid()}.tmp")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, out)
    return out
