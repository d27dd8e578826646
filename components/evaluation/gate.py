"""The evaluation gate: a pure function from evaluation reports and a policy to a decision."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field

from components.config import GateConfig
from components.evaluation import stats
from components.evaluation.metrics import EvaluationReport


class GateDecision(BaseModel):
    """Whether the candidate may be registered, and every reason that decided it."""

    model_config = ConfigDict(frozen=True)

    passed: bool
    reasons: list[str]
    champion_version: str | None = Field(None, description="The champion compared against, if any.")
    difference: float | None = Field(None, description="Observed candidate - champion on the gate metric.")
    lower_bound: float | None = Field(None, description="One-sided lower confidence bound of that difference.")
    mcnemar_p: float | None = None

    def summary(self) -> str:
        verdict = "PASSED" if self.passed else "REJECTED"
        return f"gate {verdict}: " + "; ".join(self.reasons)


def _floors(candidate: EvaluationReport, policy: GateConfig) -> tuple[bool, list[str]]:
    passed, reasons = True, []
    for metric, floor in (("accuracy", policy.min_accuracy), ("macro_f1", policy.min_macro_f1)):
        value = getattr(candidate, metric)
        ok = value >= floor
        passed &= ok
        reasons.append(f"{metric} {value:.4f} {'>=' if ok else '<'} floor {floor:.4f}")
    return passed, reasons


def decide(candidate: EvaluationReport, champion: EvaluationReport | None, policy: GateConfig,
           champion_version: str | None = None) -> GateDecision:
    """Decide on `candidate`.

    Always: absolute floors on accuracy and macro-F1 (a value equal to the floor passes).
    With a champion scored on the same test split: non-inferiority on `policy.metric` by a paired
    bootstrap (lower bound of candidate - champion must exceed -margin), and no class's recall may
    drop by more than `max_class_recall_drop`. McNemar's p-value is reported for information.
    """
    passed, reasons = _floors(candidate, policy)
    if champion is None:
        reasons.append("no champion: floors alone apply")
        return GateDecision(passed=passed, reasons=reasons)
    name = f"champion v{champion_version}" if champion_version else "champion"
    if champion.split_digest != candidate.split_digest or champion.y_true != candidate.y_true:
        reasons.append(f"{name} was scored on a different test split; re-score both on the same split")
        return GateDecision(passed=False, reasons=reasons, champion_version=champion_version)
    labels = candidate.labels
    y, cand, champ = stats.encode(labels, candidate.y_true, candidate.predictions, champion.predictions)
    metric = stats.METRICS[policy.metric]
    diff, lower = stats.paired_bootstrap_lower_bound(y, cand, champ, metric, policy.confidence, policy.n_bootstrap,
                                                     policy.seed)
    ok = lower > -policy.margin
    passed &= ok
    reasons.append(f"{policy.metric} vs {name}: difference {diff:+.4f}, {policy.confidence:.0%} lower bound "
                   f"{lower:+.4f} {'>' if ok else '<='} -margin {-policy.margin:+.4f}"
                   + ("" if ok else " (candidate may be worse than the champion)"))
    for label in labels:
        before = champion.per_class[label].recall if label in champion.per_class else 0.0
        after = candidate.per_class[label].recall
        drop = before - after
        if drop > policy.max_class_recall_drop:
            passed = False
            reasons.append(f"recall of '{label}' drops {before:.3f} -> {after:.3f} ({drop:.3f} > "
                           f"limit {policy.max_class_recall_drop:.3f})")
    if passed:
        reasons.append(f"no class's recall drops more than {policy.max_class_recall_drop:.3f}")
    p = stats.mcnemar_p(y, cand, champ)
    reasons.append(f"McNemar p={p:.3f} (accuracy {candidate.accuracy:.4f} vs {champion.accuracy:.4f})")
    return GateDecision(passed=passed, reasons=reasons, champion_version=champion_version, difference=diff,
                        lower_bound=lower, mcnemar_p=p)
