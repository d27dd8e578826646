"""The search space: `tuning.search_space` as Optuna distributions, and a trial's draw as a training config."""

from __future__ import annotations

import os
from typing import Any

from components.config import FloatRange, IntRange, SearchSpace, TrainingConfig
from components.errors import TuningError


def distributions(space: SearchSpace) -> dict[str, Any]:
    """Optuna distributions of the effective space, keyed by the `training` field they set."""
    from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution

    out: dict[str, Any] = {}
    for name, value in space.effective():
        if value is None:
            continue
        if isinstance(value, FloatRange):
            out[name] = FloatDistribution(value.low, value.high, log=value.log)
        elif isinstance(value, IntRange):
            out[name] = IntDistribution(value.low, value.high)
        else:
            out[name] = CategoricalDistribution(list(value))
    return out


def trial_training_config(base: TrainingConfig, params: dict[str, Any], parallel: int = 1) -> TrainingConfig:
    """The training config a trial runs: `base` with the drawn `params`; threads shared between parallel trials.

    With several trials at once on this host, each gets `cores // parallel` torch threads (unless
    `training.num_threads` is set), so concurrent trials do not oversubscribe the CPU.
    """
    unknown = sorted(set(params) - set(TrainingConfig.model_fields))
    if unknown:
        raise TuningError(f"the search drew {unknown}, which are not training fields; fix tuning.search_space")
    update: dict[str, Any] = dict(params)
    if parallel > 1 and base.num_threads is None:
        cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
        update["num_threads"] = max(1, cores // parallel)
    try:
        return TrainingConfig.model_validate({**base.model_dump(), **update})
    except ValueError as err:
        raise TuningError(f"the drawn values {params} make an invalid training config: {err}") from None
