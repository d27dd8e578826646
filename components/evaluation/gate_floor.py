"""The operator's floor under auto-promotion: a run may make its gate stricter, never weaker, and still be promoted.

A run's `gate` section is run input (anyone who can start `retrain` sets it). Under the operator policy
FINESHIP_AUTO_PROMOTE, a candidate becomes champion with the pipeline's signature and no person looks at it,
so the gate that judged it must be at least as strict as the operator's own (`FINESHIP_AUTO_PROMOTE_GATE`,
default: fineship's default gate). `weaker_than` names every setting where the run's gate lets more through;
a version judged by a weaker gate is registered and waits for a reviewer instead.
"""

from __future__ import annotations

from components.config import GateConfig

_AT_LEAST = ("min_accuracy", "min_macro_f1", "confidence", "behaviour_min_pass_rate", "label_agreement_max_rows")
"""Settings where a larger value is stricter."""
_AT_MOST = ("margin", "max_class_recall_drop", "label_agreement_min_support")
"""Settings where a smaller value is stricter (a larger support minimum judges fewer classes)."""


def weaker_than(run: GateConfig, floor: GateConfig) -> list[str]:
    """Each `gate.<field>` where `run` is weaker than `floor`, as `field=<run> (operator floor <floor>)`."""
    weaker = [f for f in _AT_LEAST if getattr(run, f) < getattr(floor, f)]
    weaker += [f for f in _AT_MOST if getattr(run, f) > getattr(floor, f)]
    # an optional check the floor requires must be on, and no looser than the floor's
    if floor.max_label_agreement_drop is not None and (
            run.max_label_agreement_drop is None or run.max_label_agreement_drop > floor.max_label_agreement_drop):
        weaker.append("max_label_agreement_drop")
    if floor.min_margin_over_baseline is not None and (
            run.min_margin_over_baseline is None or run.min_margin_over_baseline < floor.min_margin_over_baseline):
        weaker.append("min_margin_over_baseline")
    if floor.behaviour_checks is not None and run.behaviour_checks != floor.behaviour_checks:
        weaker.append("behaviour_checks")
    return [f"gate.{f}={getattr(run, f)} (operator floor {getattr(floor, f)})" for f in weaker]
