"""What a hyperparameter search returns: its trials, the best one and the preset that reproduces it."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field


class TrialRecord(BaseModel):
    """One trial: its state (COMPLETE, PRUNED, FAIL, RUNNING), objective value and drawn training values."""

    model_config = ConfigDict(frozen=True)

    number: int
    state: str
    value: float | None = None
    params: dict[str, Any] = Field(default_factory=dict)
    mlflow_run_id: str | None = None
    best_step: int | None = Field(None, description="Optimizer step of the evaluation the value was taken at.")
    seconds: float | None = None
    error: str | None = None


class TuningResult(BaseModel):
    """The outcome of `fineship tune`: the study, its trials, the best trial and its preset."""

    model_config = ConfigDict(frozen=True)

    backend: str = Field("local", description="'local' (Optuna trials here) or 'sagemaker' (a tuning job).")
    study_name: str
    storage: str = Field(description="Where the study lives (password hidden); the tuning job's name on SageMaker.")
    objective: str
    direction: str
    best: TrialRecord
    preset_path: str = Field(description="The best trial's configuration: `fineship run --config <this>`.")
    trials: list[TrialRecord]
    parent_run_id: str | None = Field(None, description="The MLflow run the trials are nested under.")

    def counts(self) -> dict[str, int]:
        """Trials per state."""
        out: dict[str, int] = {}
        for t in self.trials:
            out[t.state] = out.get(t.state, 0) + 1
        return out
