"""The evaluation gate: a pure function from evaluation reports and a policy to a decision."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field

from components.config import GateConfig
from components.evaluation import stats
from components.evaluation.behaviour import BehaviourReport
from components.evaluation.metrics import EvaluationReport
from components.evaluation.reference import ReferenceScores


class Comparison(BaseModel):
    """The candidate against the champion on one labelled set (the new test split or a frozen reference set)."""

    model_config = ConfigDict(frozen=True)

    scope: str = Field(description="Which set, e.g. 'new test split' or \"champion v3's reference set\".")
    rows: int
    metric: str
    candidate: float = Field(description="The candidate's value of `metric` on this set.")
    champion: float
    difference: float = Field(description="Observed candidate - champion on `metric`.")
    lower_bound: float = Field(description="One-sided lower confidence bound of that difference.")
    mcnemar_p: float
    passed: bool


class GateDecision(BaseModel):
    """Whether the candidate may be registered, and every reason that decided it."""

    model_config = ConfigDict(frozen=True)

    passed: bool
    reasons: list[str]
    champion_version: str | None = Field(None, description="The champion compared against, if any.")
    difference: float | None = Field(None, description="Observed candidate - champion on the gate metric "
                                                       "(new test split).")
    lower_bound: float | None = Field(None, description="One-sided lower confidence bound of that difference.")
    mcnemar_p: float | None = None
    comparisons: list[Comparison] = Field(default_factory=list, description="Every set candidate and champion "
                                          "were compared on: the new test split, then the champion's reference set.")
    behaviour: BehaviourReport | None = Field(None, description="The behavioural checks, when a file was given.")

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


def _baseline(candidate: EvaluationReport, policy: GateConfig) -> tuple[bool, list[str]]:
    """The candidate's accuracy margin over the classic baseline: enforced only when a minimum is set."""
    required, comparison = policy.min_margin_over_baseline, candidate.baseline
    if comparison is None:
        if required is None:
            return True, []
        return False, [f"gate.min_margin_over_baseline is {required:+.4f} but the candidate was not compared with "
                       "the TF-IDF + LinearSVC baseline; evaluate it with the baseline (evaluate_model baseline=True)"]
    lo, hi = comparison.margin_ci
    text = (f"margin over the {comparison.baseline.model} baseline: accuracy {comparison.candidate_accuracy:.4f} vs "
            f"{comparison.baseline.accuracy:.4f}, margin {comparison.margin:+.4f} "
            f"({comparison.level:.0%} CI {lo:+.4f}..{hi:+.4f})")
    if required is None:
        return True, [text + " (reported only: gate.min_margin_over_baseline is not set)"]
    ok = comparison.margin >= required - 1e-9  # equal passes: 0.95 - 0.90 is 0.0499999... in floating point
    return ok, [text + f" {'>=' if ok else '<'} required {required:+.4f}"
                + ("" if ok else " (the candidate does not beat the classic baseline by the required margin)")]


def _compare(candidate: EvaluationReport, champion: EvaluationReport, policy: GateConfig, name: str,
             scope: str) -> tuple[Comparison, list[str]]:
    """Non-inferiority and the per-class recall limit of `candidate` against `champion` on one set."""
    labels = candidate.labels
    y, cand, champ = stats.encode(labels, candidate.y_true, candidate.predictions, champion.predictions)
    metric = stats.METRICS[policy.metric]
    diff, lower = stats.paired_bootstrap_lower_bound(y, cand, champ, metric, policy.confidence, policy.n_bootstrap,
                                                     policy.seed)
    ok = lower > -policy.margin
    recall_ok = True
    reasons = [f"{scope}: {policy.metric} vs {name}: difference {diff:+.4f}, {policy.confidence:.0%} lower bound "
               f"{lower:+.4f} {'>' if ok else '<='} -margin {-policy.margin:+.4f}"
               + ("" if ok else " (candidate may be worse than the champion)")]
    for label in labels:
        before = champion.per_class[label].recall if label in champion.per_class else 0.0
        after = candidate.per_class[label].recall
        drop = before - after
        if drop > policy.max_class_recall_drop:
            recall_ok = False
            reasons.append(f"{scope}: recall of '{label}' drops {before:.3f} -> {after:.3f} ({drop:.3f} > "
                           f"limit {policy.max_class_recall_drop:.3f})")
    if recall_ok:
        reasons.append(f"{scope}: no class's recall drops more than {policy.max_class_recall_drop:.3f}")
    p = stats.mcnemar_p(y, cand, champ)
    reasons.append(f"{scope}: McNemar p={p:.3f} (accuracy {candidate.accuracy:.4f} vs {champion.accuracy:.4f})")
    comparison = Comparison(scope=scope, rows=candidate.n, metric=policy.metric,
                            candidate=getattr(candidate, policy.metric), champion=getattr(champion, policy.metric),
                            difference=diff, lower_bound=lower, mcnemar_p=p, passed=ok and recall_ok)
    return comparison, reasons


def _same_set(a: EvaluationReport, b: EvaluationReport) -> bool:
    return a.split_digest == b.split_digest and a.y_true == b.y_true


def decide(candidate: EvaluationReport, champion: EvaluationReport | None, policy: GateConfig,
           champion_version: str | None = None, *, reference: ReferenceScores | None = None,
           behaviour: BehaviourReport | None = None) -> GateDecision:
    """Decide on `candidate`.

    Always: absolute floors on accuracy and macro-F1 on the new test split (a value equal to the floor
    passes); the candidate's accuracy margin over the TF-IDF + LinearSVC baseline, when it was compared with one,
    is reported, and with `min_margin_over_baseline` set its point estimate must reach that minimum (equal passes;
    set but no comparison: rejected); and the behavioural checks when given (each kind's pass rate equal to the minimum passes).
    With a champion scored on the same test split: non-inferiority on `policy.metric` by a paired
    bootstrap (lower bound of candidate - champion must exceed -margin), and no class's recall may
    drop by more than `max_class_recall_drop`. McNemar's p-value is reported for information.
    With `reference` scores (both models on the champion's frozen reference set), the same two tests
    must pass there too; when `reference` says the champion has no reference set, the reasons say so
    and the new test split decides alone.
    """
    passed, reasons = _floors(candidate, policy)
    beats_baseline, baseline_reasons = _baseline(candidate, policy)
    passed &= beats_baseline
    reasons += baseline_reasons
    if behaviour is not None:
        passed &= behaviour.passed
        reasons += behaviour.reasons()
    if champion is None:
        reasons.append("no champion: floors alone apply" if behaviour is None
                       else "no champion: floors and behavioural checks alone apply")
        return GateDecision(passed=passed, reasons=reasons, behaviour=behaviour)
    name = f"champion v{champion_version}" if champion_version else "champion"
    if not _same_set(champion, candidate):
        reasons.append(f"{name} was scored on a different test split; re-score both on the same split")
        return GateDecision(passed=False, reasons=reasons, champion_version=champion_version, behaviour=behaviour)
    new, new_reasons = _compare(candidate, champion, policy, name, "new test split")
    passed &= new.passed
    reasons += new_reasons
    comparisons = [new]
    if reference is not None:
        scope = f"{reference.source or name}'s reference set"
        if reference.candidate is None or reference.champion is None:
            reasons.append(f"{scope}: {reference.missing or 'not scored'}; decided on the new test split only")
        elif not _same_set(reference.candidate, reference.champion):
            passed = False
            reasons.append(f"{scope}: candidate and champion were scored on different rows; re-score both")
        else:
            left_out = f", {reference.left_out} rows this run trained on left out" if reference.left_out else ""
            ref, ref_reasons = _compare(reference.candidate, reference.champion, policy, name,
                                        f"{scope} ({reference.candidate.n} rows{left_out})")
            passed &= ref.passed
            reasons += ref_reasons
            comparisons.append(ref)
    return GateDecision(passed=passed, reasons=reasons, champion_version=champion_version,
                        difference=new.difference, lower_bound=new.lower_bound, mcnemar_p=new.mcnemar_p,
                        comparisons=comparisons, behaviour=behaviour)
