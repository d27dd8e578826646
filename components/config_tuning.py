"""The `tuning` section of the pipeline configuration: the hyperparameter search space and the study's settings
(re-exported by `components.config`; kept apart so that module stays one screenful per section)."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field, field_validator, model_validator

from components.config_base import Section as _Section


class FloatRange(_Section):
    """A float search range, both ends included; `log`: sample uniformly in log space (log-uniform)."""

    low: float = Field(description="Smallest value tried.")
    high: float = Field(description="Largest value tried.")
    log: bool = Field(False, description="Log-uniform sampling (both ends must be above 0).")

    @model_validator(mode="after")
    def _ordered(self) -> FloatRange:
        if not self.low < self.high:
            raise ValueError(f"low ({self.low}) must be below high ({self.high})")
        if self.log and self.low <= 0:
            raise ValueError(f"a log-uniform range needs low > 0, got {self.low}")
        return self


class IntRange(_Section):
    """An integer search range, both ends included."""

    low: int = Field(ge=1, description="Smallest value tried.")
    high: int = Field(ge=1, description="Largest value tried.")

    @model_validator(mode="after")
    def _ordered(self) -> IntRange:
        if not self.low < self.high:
            raise ValueError(f"low ({self.low}) must be below high ({self.high})")
        return self


class SearchSpace(_Section):
    """What `fineship tune` varies: each field a range or a list of choices for that `training` field; unset: the
    training value is kept. With no field set at all, learning_rate, warmup_ratio and weight_decay are searched."""

    learning_rate: FloatRange | None = Field(
        None, description="Log-uniform range of training.learning_rate, e.g. {low: 1.0e-5, high: 1.0e-3}.")
    batch_size: list[int] | None = Field(None, description="Choices of training.batch_size, e.g. [8, 16, 32].")
    max_length: list[int] | None = Field(None, description="Choices of training.max_length, e.g. [64, 128].")
    epochs: IntRange | None = Field(None, description="Range of training.epochs, e.g. {low: 1, high: 4}.")
    warmup_ratio: FloatRange | None = Field(None, description="Range of training.warmup_ratio (share of steps).")
    weight_decay: FloatRange | None = Field(None, description="Range of training.weight_decay.")

    @field_validator("learning_rate")
    @classmethod
    def _lr_log_uniform(cls, v: FloatRange | None) -> FloatRange | None:
        if v is None:
            return v
        if v.high >= 1:
            raise ValueError(f"learning_rate.high must be below 1, got {v.high}")
        return FloatRange(low=v.low, high=v.high, log=True)  # log-uniform: the only sensible scale (validated)

    @field_validator("warmup_ratio", "weight_decay")
    @classmethod
    def _share(cls, v: FloatRange | None, info: Any) -> FloatRange | None:
        if v is not None and (v.low < 0 or v.high >= 1):
            raise ValueError(f"{info.field_name} must lie in [0, 1), got [{v.low}, {v.high}]")
        return v

    @field_validator("batch_size", "max_length")
    @classmethod
    def _choices(cls, v: list[int] | None, info: Any) -> list[int] | None:
        if v is None:
            return v
        low = 8 if info.field_name == "max_length" else 1
        if not v or len(set(v)) != len(v) or min(v) < low or max(v) > 4096:
            raise ValueError(f"{info.field_name} takes distinct choices between {low} and 4096, got {v}")
        return v

    def effective(self) -> SearchSpace:
        """This space, or the default one (learning rate, warm-up share, weight decay) when nothing is set."""
        if any(getattr(self, name) is not None for name in type(self).model_fields):
            return self
        return SearchSpace(learning_rate=FloatRange(low=1e-5, high=1e-3, log=True),
                           warmup_ratio=FloatRange(low=0.0, high=0.2), weight_decay=FloatRange(low=0.0, high=0.1))


TUNING_OBJECTIVES = {"val_macro_f1": "maximize", "val_accuracy": "maximize", "val_loss": "minimize"}
"""Validation metrics a search can optimise, with their natural direction."""


class PrunerConfig(_Section):
    """Stop poor trials early from the validation metric at each evaluation (Optuna's median rule)."""

    kind: Literal["median", "none"] = Field(
        "median", description="'median': prune a trial whose best value so far is worse than the median of earlier "
        "finished trials at the same step; 'none': every trial runs to the end.")
    startup_trials: int = Field(2, ge=0, description="No pruning until this many trials have finished.")
    warmup_steps: int = Field(0, ge=0, description="No pruning before this optimizer step within a trial.")


class TuningConfig(_Section):
    """`fineship tune`: a hyperparameter search (Optuna TPE, or a SageMaker tuning job with backend 'sagemaker')."""

    search_space: SearchSpace = Field(default_factory=lambda: SearchSpace(),
                                      description="The training fields to vary and their ranges or choices.")
    objective: Literal["val_macro_f1", "val_accuracy", "val_loss"] = Field(
        "val_macro_f1", description="Validation metric to optimise, taken at the trial's best evaluation (the "
        "weights training keeps).")
    direction: Literal["maximize", "minimize"] | None = Field(
        None, description="Unset: maximize for F1 and accuracy, minimize for the loss.")
    pruner: PrunerConfig = Field(default_factory=lambda: PrunerConfig())
    sampler_seed: int = Field(0, description="Seed of the TPE sampler (a resumed search is seeded with this plus the "
                              "trials already in the study, so it never repeats a finished trial's draw).")
    startup_trials: int = Field(10, ge=1, description="Random trials before TPE models the results.")
    storage: str | None = Field(
        None, description="Optuna storage: an SQLAlchemy URL such as postgresql+psycopg://user@host/db (the password "
        "from PGPASSFILE or ~/.pgpass, never in the URL) or sqlite:///<file under the fineship home's tuning/>; "
        "unset: <home>/tuning/optuna.db.")
    study_name: str | None = Field(
        None, pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,100}$", description="Unset: <registry.model_name>-<hash of the "
        "configuration and data>, so the same command resumes the same study.")
    heartbeat_seconds: int = Field(30, ge=1, le=3600, description="A RUNNING trial whose worker stopped beating for "
                                   "twice this long is marked FAIL (killed elsewhere); on this host a dead owner is "
                                   "detected at once.")
    max_failed_trials: int = Field(3, ge=1, description="Start no new trial after this many failed trials in a row.")

    @field_validator("storage")
    @classmethod
    def _no_password(cls, v: str | None) -> str | None:
        if v is None:
            return v
        from urllib.parse import urlsplit

        parts = urlsplit(v)
        if not parts.scheme:
            raise ValueError(f"tuning.storage must be an SQLAlchemy URL (sqlite:///..., postgresql+psycopg://...), "
                             f"got {v!r}")
        if parts.password:
            raise ValueError("tuning.storage must not hold a password (it would show in the Prefect form and logs); "
                             "put it in PGPASSFILE or ~/.pgpass")
        return v

    @property
    def resolved_direction(self) -> str:
        """`direction`, or the objective's natural one."""
        return self.direction or TUNING_OBJECTIVES[self.objective]
