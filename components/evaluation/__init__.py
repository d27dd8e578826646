"""Evaluation stage: metrics, report plots and the gate."""
