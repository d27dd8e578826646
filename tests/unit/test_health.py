"""Training health rules on synthetic histories: each rule fires when it should, with the right step, and not otherwise."""

from __future__ import annotations

import math

import pytest

from components.training.health import (
    HealthPolicy,
    check_exploding_gradient,
    check_health,
    check_loss_not_decreasing,
    check_overfitting,
    check_vanishing_gradient,
)

POLICY = HealthPolicy(loss_window=10, loss_patience_windows=3)


def _steps(losses, norms=None):
    norms = norms or [1.0] * len(losses)
    return [{"step": float(i + 1), "loss": loss, "learning_rate": 1e-4, "grad_norm": g}
            for i, (loss, g) in enumerate(zip(losses, norms))]


def _evals(pairs):
    return [{"step": float(10 * (i + 1)), "epoch": float(i + 1), "train_loss": t, "val_loss": v}
            for i, (t, v) in enumerate(pairs)]


# --- loss not decreasing -------------------------------------------------------------------------

def test_a_steadily_falling_loss_is_healthy():
    assert check_loss_not_decreasing(_steps([1.6 * 0.98 ** i for i in range(100)]), POLICY) is None


def test_a_flat_loss_from_the_start_fires_at_the_first_stalled_window():
    w = check_loss_not_decreasing(_steps([0.69 + 0.001 * math.sin(i) for i in range(60)]), POLICY)
    assert w is not None and w.rule == "loss_not_decreasing"
    assert w.step == 11  # window 0 (steps 1-10) was the best; stalling began with window 1


def test_a_loss_that_falls_then_stalls_high_fires_where_the_plateau_began():
    losses = [1.6 - 0.02 * i for i in range(30)] + [1.0 + 0.002 * math.cos(i) for i in range(40)]
    w = check_loss_not_decreasing(_steps(losses), POLICY)
    assert w is not None and 21 <= w.step <= 41


def test_a_loss_that_converged_near_zero_is_not_a_stall():
    losses = [1.6 * 0.8 ** i for i in range(20)] + [0.01] * 50
    assert check_loss_not_decreasing(_steps(losses), POLICY) is None


def test_too_short_a_run_says_nothing_about_the_loss():
    assert check_loss_not_decreasing(_steps([0.69] * 6), POLICY) is None


# --- overfitting ---------------------------------------------------------------------------------

def test_validation_loss_rising_while_training_loss_falls_is_overfitting():
    w = check_overfitting(_evals([(1.0, 0.9), (0.6, 0.7), (0.4, 0.75), (0.2, 0.8), (0.1, 0.9)]), POLICY)
    assert w is not None and w.rule == "overfitting"
    assert w.step == 30  # the first evaluation after the validation minimum at step 20


def test_both_losses_falling_is_not_overfitting():
    assert check_overfitting(_evals([(1.0, 0.9), (0.6, 0.7), (0.4, 0.6), (0.2, 0.55)]), POLICY) is None


def test_one_noisy_rise_is_below_the_patience():
    assert check_overfitting(_evals([(1.0, 0.9), (0.6, 0.7), (0.4, 0.72), (0.3, 0.6)]), POLICY) is None


def test_both_losses_rising_is_not_overfitting():
    # Divergence, not overfitting: the training loss rises too.
    assert check_overfitting(_evals([(1.0, 0.9), (0.6, 0.7), (0.8, 0.8), (1.2, 1.0)]), POLICY) is None


def test_evaluations_without_validation_loss_are_ignored():
    assert check_overfitting([{"step": 1.0, "train_loss": 1.0}, {"step": 2.0, "train_loss": 0.5}], POLICY) is None


# --- vanishing gradients -------------------------------------------------------------------------

def test_gradient_norm_stuck_near_zero_is_vanishing():
    norms = [1.0] * 10 + [1e-9] * 8
    w = check_vanishing_gradient(_steps([0.5] * 18, norms), POLICY)
    assert w is not None and w.rule == "vanishing_gradient" and w.step == 11


def test_a_few_tiny_gradient_norms_are_below_the_patience():
    norms = [1.0] * 10 + [1e-9] * 4 + [1.0] * 10
    assert check_vanishing_gradient(_steps([0.5] * 24, norms), POLICY) is None


def test_small_but_healthy_gradient_norms_do_not_vanish():
    assert check_vanishing_gradient(_steps([0.5] * 30, [1e-3] * 30), POLICY) is None


# --- exploding gradients -------------------------------------------------------------------------

@pytest.mark.parametrize("spike", [float("inf"), float("nan"), 2e4])
def test_a_non_finite_or_huge_gradient_norm_explodes_at_its_step(spike):
    norms = [1.0 + 0.1 * math.sin(i) for i in range(25)] + [spike] + [1.0] * 5
    w = check_exploding_gradient(_steps([0.5] * 31, norms), POLICY)
    assert w is not None and w.rule == "exploding_gradient" and w.step == 26


def test_gradient_norms_that_stay_far_above_their_earlier_level_explode_where_they_rose():
    norms = [1.0 + 0.1 * math.sin(i) for i in range(25)] + [15.0, 30.0, 60.0, 120.0, 240.0, 480.0]
    w = check_exploding_gradient(_steps([0.5] * 31, norms), POLICY)
    assert w is not None and w.step == 26 and "stayed above" in w.message


def test_one_clipped_spike_is_not_an_explosion():
    # Seen on real SMS Spam fine-tuning: a hard batch gives one norm of 69x the median; clipping handles it.
    norms = [0.25] * 77 + [16.7] + [0.25] * 20
    assert check_exploding_gradient(_steps([0.5] * 98, norms), POLICY) is None


def test_a_short_run_of_high_norms_below_the_patience_is_not_an_explosion():
    norms = [1.0] * 25 + [40.0] * 4 + [1.0] * 10
    assert check_exploding_gradient(_steps([0.5] * 39, norms), POLICY) is None


def test_gradient_norms_that_vary_within_range_do_not_explode():
    norms = [1.0 + 0.5 * math.sin(i) for i in range(40)] + [8.0] * 10  # 8x the median: under the factor of 10
    assert check_exploding_gradient(_steps([0.5] * 50, norms), POLICY) is None


def test_early_large_norms_are_judged_by_the_absolute_threshold_only():
    # Fine-tuning often starts with norms of tens: no median yet, so only > 1e4 counts.
    assert check_exploding_gradient(_steps([0.5] * 5, [50.0, 0.5, 30.0, 0.4, 20.0]), POLICY) is None


# --- all together --------------------------------------------------------------------------------

def test_check_health_returns_every_fired_rule_ordered_by_step():
    losses = [0.69 + 0.001 * math.sin(i) for i in range(60)]
    norms = [1.0] * 40 + [1e-9] * 20
    warnings = check_health(_steps(losses, norms), _evals([(1.0, 0.9), (0.6, 0.7), (0.4, 0.75), (0.2, 0.8)]), POLICY)
    assert [w.rule for w in warnings] == ["loss_not_decreasing", "overfitting", "vanishing_gradient"]
    assert [w.step for w in warnings] == sorted(w.step for w in warnings)
    assert all(str(w.step) in w.message for w in warnings)


def test_a_healthy_run_has_no_warnings():
    steps = _steps([1.6 * 0.97 ** i for i in range(80)], [2.0 * 0.99 ** i for i in range(80)])
    assert check_health(steps, _evals([(1.0, 0.9), (0.6, 0.7), (0.4, 0.6)]), POLICY) == []
