"""Training health rules, run over a finished (or interrupted) run's history.

The rules SageMaker Debugger's built-ins gave the CoLA DistilBERT tutorial, as pure functions
of the history the trainer records anyway: per optimizer step the training loss and the
global gradient norm before clipping, per evaluation the training and validation loss. Each
rule returns at most one `HealthWarning`, naming the step where the problem began.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Sequence
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

Rule = Literal["loss_not_decreasing", "overfitting", "vanishing_gradient", "exploding_gradient"]


class HealthWarning(BaseModel):
    """One rule that fired: which, from which optimizer step on, and what it saw."""

    model_config = ConfigDict(frozen=True)

    rule: Rule
    step: int = Field(description="Optimizer step where the condition began.")
    message: str


class HealthPolicy(BaseModel):
    """Thresholds of the rules; the defaults suit fine-tuning with gradient clipping at 1.0."""

    model_config = ConfigDict(frozen=True)

    loss_window: int = Field(20, ge=1, description="Steps averaged into one loss point (fewer on short runs).")
    loss_min_relative_drop: float = Field(0.01, ge=0, description="A window improves on the best one by this share.")
    loss_patience_windows: int = Field(3, ge=1, description="Windows without improvement, at the end of the run.")
    loss_converged_fraction: float = Field(
        0.25, gt=0, le=1, description="A plateau below this share of the first window's loss is convergence.")
    overfit_patience: int = Field(2, ge=1, description="Consecutive evaluations with rising validation loss.")
    overfit_min_relative_rise: float = Field(0.0, ge=0, description="Rise over the best validation loss to count.")
    vanishing_threshold: float = Field(1e-7, gt=0, description="Gradient norm below this is vanishing.")
    vanishing_patience: int = Field(5, ge=1, description="Consecutive steps below the threshold.")
    exploding_threshold: float = Field(1e4, gt=0, description="Gradient norm above this (or not finite) explodes.")
    exploding_factor: float = Field(
        10.0, gt=1, description="...or staying this many times above the median of the steps before.")
    exploding_window: int = Field(20, ge=2, description="Steps in that median (and steps before the rule applies).")
    exploding_patience: int = Field(
        5, ge=1, description="Consecutive steps above the factor; one clipped spike is not an explosion.")


def check_loss_not_decreasing(steps: Sequence[dict[str, float]], policy: HealthPolicy) -> HealthWarning | None:
    """The windowed training loss stopped improving for the last `loss_patience_windows` windows, above convergence."""
    losses = [(int(s["step"]), float(s["loss"])) for s in steps if math.isfinite(s.get("loss", math.nan))]
    patience = policy.loss_patience_windows
    width = max(2, min(policy.loss_window, len(losses) // (patience + 1)))
    if len(losses) < width * (patience + 1):
        return None
    windows = [losses[i:i + width] for i in range(0, len(losses) - width + 1, width)]
    means = [statistics.fmean(loss for _, loss in w) for w in windows]
    best, last_gain = means[0], 0
    for j, m in enumerate(means[1:], start=1):
        if m < best * (1 - policy.loss_min_relative_drop):
            best, last_gain = m, j
    stalled = means[last_gain + 1:]
    if len(stalled) < patience:
        return None
    level = statistics.fmean(stalled)
    if level <= policy.loss_converged_fraction * means[0]:
        return None
    began = windows[last_gain + 1][0][0]
    return HealthWarning(
        rule="loss_not_decreasing", step=began,
        message=f"training loss stopped decreasing at step {began}: {len(stalled)} windows of {width} steps averaging "
                f"{level:.4f}, no better than {best:.4f} (first window {means[0]:.4f}); check the learning rate, "
                f"the labels, or whether the model is frozen")


def check_overfitting(evaluations: Sequence[dict[str, float]], policy: HealthPolicy) -> HealthWarning | None:
    """Validation loss rose over its best for `overfit_patience` evaluations in a row while training loss fell."""
    evals = [e for e in evaluations if "val_loss" in e and "train_loss" in e]
    best_i, run_start, run = 0, None, 0
    for i in range(1, len(evals)):
        best = evals[best_i]
        rising = evals[i]["val_loss"] > best["val_loss"] * (1 + policy.overfit_min_relative_rise)
        falling = evals[i]["train_loss"] < best["train_loss"]
        if rising and falling:
            run_start = i if run == 0 else run_start
            run += 1
            if run >= policy.overfit_patience:
                e0 = evals[run_start]
                return HealthWarning(
                    rule="overfitting", step=int(e0["step"]),
                    message=f"overfitting from step {int(e0['step'])}: validation loss rose from {best['val_loss']:.4f} "
                            f"(step {int(best['step'])}) to {evals[i]['val_loss']:.4f} over {run} evaluations while "
                            f"training loss fell to {evals[i]['train_loss']:.4f}; early stopping keeps the best weights; "
                            f"consider more data, fewer epochs or more weight decay")
        else:
            run = 0
            if evals[i]["val_loss"] < best["val_loss"]:
                best_i = i
    return None


def check_vanishing_gradient(steps: Sequence[dict[str, float]], policy: HealthPolicy) -> HealthWarning | None:
    """The gradient norm stayed below `vanishing_threshold` for `vanishing_patience` steps in a row."""
    run = 0
    for i, s in enumerate(steps):
        norm = s.get("grad_norm", math.nan)
        run = run + 1 if math.isfinite(norm) and norm < policy.vanishing_threshold else 0
        if run >= policy.vanishing_patience:
            began = int(steps[i - run + 1]["step"])
            return HealthWarning(
                rule="vanishing_gradient", step=began,
                message=f"vanishing gradients from step {began}: global gradient norm below "
                        f"{policy.vanishing_threshold:g} for {run} steps; check the learning rate and that the "
                        f"parameters require gradients")
    return None


def check_exploding_gradient(steps: Sequence[dict[str, float]], policy: HealthPolicy) -> HealthWarning | None:
    """The gradient norm was not finite, above `exploding_threshold`, or stayed `exploding_factor` times above
    its earlier median for `exploding_patience` steps in a row."""
    norms: list[float] = []
    run_start, reference = None, 0.0
    for s in steps:
        norm = float(s.get("grad_norm", math.nan))
        step = int(s["step"])
        reason = None
        if not math.isfinite(norm):
            reason = f"the global gradient norm was {norm}"
        elif norm > policy.exploding_threshold:
            reason = f"the global gradient norm was {norm:.4g} (> {policy.exploding_threshold:g})"
        elif run_start is None and len(norms) >= policy.exploding_window:
            median = statistics.median(norms[-policy.exploding_window:])
            if median > 0 and norm > policy.exploding_factor * median:
                run_start, reference = len(norms), median
        elif run_start is not None and norm <= policy.exploding_factor * reference:
            run_start = None
        if reason is None and run_start is not None and len(norms) - run_start + 1 >= policy.exploding_patience:
            step = int(steps[run_start]["step"])
            reason = (f"the global gradient norm stayed above {policy.exploding_factor:g}x the median {reference:.4g} of "
                      f"the {policy.exploding_window} steps before for {len(norms) - run_start + 1} steps")
        if reason:
            return HealthWarning(rule="exploding_gradient", step=step,
                                 message=f"exploding gradients from step {step}: {reason}; lower the learning rate "
                                         f"or max_grad_norm")
        norms.append(norm)
    return None


def check_health(steps: Sequence[dict[str, float]], evaluations: Sequence[dict[str, float]],
                 policy: HealthPolicy | None = None) -> list[HealthWarning]:
    """Run every rule; the warnings that fired, in order of the step where they began."""
    p = policy or HealthPolicy()
    found = [check_loss_not_decreasing(steps, p), check_overfitting(evaluations, p),
             check_vanishing_gradient(steps, p), check_exploding_gradient(steps, p)]
    return sorted((w for w in found if w is not None), key=lambda w: w.step)
