"""The evaluation gate: a pure function from evaluation reports and a policy to a decision."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field

from components.config import GateConfig
from components.evaluation.metrics import EvaluationReport


class GateDecision(BaseModel):
    """Whether the candidate may be registered, and every reason that decided it."""

    model_config = ConfigDict(frozen=True)

    passed: bool
    reasons: list[str]
    champion_version: str | None = Field(None, description="The champion compared against, if any.")

    def summary(self) -> str:
        verdict = "PASSED" if self.passed else "REJECTED"
        return f"gate {verdict}: " + "; ".join(self.reasons)


def decide(candidate: EvaluationReport, champion: EvaluationReport | None, policy: GateConfig,
           champion_version: str | None = None) -> GateDecision:
    """Decide on `candidate`: absolute floors on accuracy and macro-F1 (inclusive)."""
    reasons: list[str] = []
    passed = True
    for metric, floor in (("accuracy", policy.min_accuracy), ("macro_f1", policy.min_macro_f1)):
        value = getattr(candidate, metric)
        ok = value >= floor
        passed &= ok
        reasons.append(f"{metric} {value:.4f} {'>=' if ok else '<'} floor {floor:.4f}")
    if champion is not None:
        reasons.append(f"champion {champion_version or '?'}: accuracy {champion.accuracy:.4f}, "
                       f"macro_f1 {champion.macro_f1:.4f} on the same test split")
    return GateDecision(passed=passed, reasons=reasons, champion_version=champion_version)
