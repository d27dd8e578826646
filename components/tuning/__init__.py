"""Hyperparameter search: an Optuna study (TPE, median pruning) or a SageMaker tuning job, and the best preset."""

from components.tuning.result import TrialRecord, TuningResult

__all__ = ["TrialRecord", "TuningResult"]
