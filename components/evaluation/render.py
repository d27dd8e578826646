"""Markdown views of the gate's evidence, shared by the Prefect artifacts and the model card."""

from __future__ import annotations

from components.evaluation.baseline import BaselineComparison
from components.evaluation.behaviour import BehaviourReport
from components.evaluation.consistency import ConsistencyReport
from components.evaluation.gate import GateDecision
from components.markdown import md_table


def comparisons_markdown(decision: GateDecision) -> str:
    """One row per set the candidate was compared with the champion on (empty when there was no comparison)."""
    if not decision.comparisons:
        return ""
    return md_table(
        ["compared on", "rows", "metric", "candidate", "champion", "difference", "lower bound", "verdict"],
        [[c.scope, c.rows, c.metric, f"{c.candidate:.4f}", f"{c.champion:.4f}", f"{c.difference:+.4f}",
          f"{c.lower_bound:+.4f}", "pass" if c.passed else "**FAIL**"] for c in decision.comparisons])


def baseline_markdown(comparison: BaselineComparison) -> str:
    """The candidate against the classic baseline fitted on the same training split, with the margin's interval."""
    b, (lo, hi) = comparison.baseline, comparison.margin_ci
    return (f"Against the classic baseline ({b.model}, fitted on the same {b.train_rows} training rows in "
            f"{b.fit_seconds:.1f} s, scored on the same {b.n} test rows):\n\n"
            + md_table(["model", "accuracy"], [["this model", f"{comparison.candidate_accuracy:.4f}"],
                                               [b.model, f"{b.accuracy:.4f} (macro-F1 {b.macro_f1:.4f})"]])
            + f"\n\nMargin (accuracy, this model minus baseline): **{comparison.margin:+.4f}** "
              f"({comparison.level:.0%} paired bootstrap CI {lo:+.4f}..{hi:+.4f})")


def behaviour_markdown(report: BehaviourReport, max_failures: int = 20) -> str:
    """Pass rate per kind, then the failed cases."""
    summary = md_table(["kind", "cases", "passed", "pass rate", "required"],
                       [[kind, len(report.of(kind)), sum(r.passed for r in report.of(kind)), f"{rate:.0%}",
                         f"{report.min_pass_rate:.0%}"]
                        for kind in ("minimum functionality", "invariance")
                        if (rate := report.pass_rate(kind)) is not None])
    failed = [r for r in report.results if not r.passed]
    if not failed:
        return f"Cases from `{report.source}`.\n\n{summary}"
    rows = [[r.name, r.kind, r.text[:120], r.expected or f"same as for: {(r.variant or '')[:120]}",
             r.predicted if r.variant is None else f"{r.predicted} / {r.variant_predicted}"]
            for r in failed[:max_failures]]
    return (f"Cases from `{report.source}`.\n\n{summary}\n\nFailed cases:\n\n"
            + md_table(["case", "kind", "text", "expected", "predicted"], rows))


def gate_markdown(decision: GateDecision) -> str:
    """The gate artifact: verdict, the comparison per set, the behavioural checks and every reason."""
    verdict = "PASSED" if decision.passed else "REJECTED"
    parts = [f"# Gate {verdict}"]
    if decision.comparisons:
        parts.append("## Against the champion\n\n" + comparisons_markdown(decision))
    if decision.behaviour is not None:
        parts.append("## Behavioural checks\n\n" + behaviour_markdown(decision.behaviour))
    parts.append("## Reasons\n\n" + "\n".join(f"- {r}" for r in decision.reasons))
    return "\n\n".join(parts)


def consistency_markdown(report: ConsistencyReport) -> str:
    """The label-consistency artifact: verdict, findings and the per-class table."""
    if not report.checked:
        return "# Label consistency: not checked\n\n" + "\n".join(f"- {f}" for f in report.findings)
    verdict = "passed" if report.passed else "FAILED: training did not start"
    rows = [[c.label, c.support, _f(c.agreement), f"{_f(c.recorded_recall)} of {c.recorded_support}" if
             c.recorded_recall is not None else "", _f(c.baseline), _f(c.drop),
             f"{c.top_prediction} ({c.top_share:.0%})" if c.top_prediction else "", c.status + (
                 f": {c.note}" if c.note else "")] for c in report.classes]
    findings = "\n".join(f"- {f}" for f in report.findings)
    champion = f"champion v{report.champion_version}" if report.champion_version else "the champion"
    return (f"# Label consistency: {verdict}\n\n{champion} predicted {report.rows} rows of the new training data. "
            f"A class fails when its agreement with the new labels falls more than {report.max_drop:.2f} below the "
            "champion's recall of it on its own test split, taken at the lower end of its 95% interval (classes "
            f"with at least {report.min_support} rows)."
            + (f"\n\n{findings}" if findings else "") + "\n\n"
            + md_table(["new label", "rows", "agreement", "recorded recall (of rows)", "at least", "drop",
                        "most often predicted instead", "status"], rows))


def _f(v: float | None) -> str:
    return "" if v is None else f"{v:.3f}"
