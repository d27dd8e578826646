import pytest

from components.config import GateConfig
from components.evaluation.gate import decide
from components.evaluation.metrics import compute_report

LABELS = ["a", "b"]


def _report(accuracy_hits: int, n: int = 100):
    y = ["a"] * (n // 2) + ["b"] * (n // 2)
    pred = list(y)
    for i in range(n - accuracy_hits):
        pred[i] = "b" if y[i] == "a" else "a"
    return compute_report(y, pred, LABELS, "m")


@pytest.mark.parametrize("hits, passed", [(80, True), (79, False), (100, True)])
def test_accuracy_floor_both_sides(hits, passed):
    decision = decide(_report(hits), None, GateConfig(min_accuracy=0.8, min_macro_f1=0.0))
    assert decision.passed is passed
    assert any("accuracy" in r for r in decision.reasons)


def test_macro_f1_floor_both_sides():
    r = _report(90)
    assert decide(r, None, GateConfig(min_accuracy=0, min_macro_f1=r.macro_f1)).passed
    assert not decide(r, None, GateConfig(min_accuracy=0, min_macro_f1=r.macro_f1 + 1e-6)).passed


def test_report_metrics_match_sklearn_definitions():
    r = compute_report(["a", "a", "b", "b"], ["a", "b", "b", "b"], LABELS, "m")
    assert r.accuracy == 0.75
    assert r.confusion_matrix == [[1, 1], [0, 2]]
    assert r.per_class["a"].recall == 0.5 and r.per_class["b"].precision == pytest.approx(2 / 3)


def _pair(n=200, cand_wrong=(), champ_wrong=(), labels=("a", "b")):
    y = [labels[i % 2] for i in range(n)]
    flip = {"a": "b", "b": "a"}
    cand = [flip[v] if i in cand_wrong else v for i, v in enumerate(y)]
    champ = [flip[v] if i in champ_wrong else v for i, v in enumerate(y)]
    return (compute_report(y, cand, list(labels), "candidate", split_digest="s1"),
            compute_report(y, champ, list(labels), "champion", split_digest="s1"))


def _policy(**kw):
    base = dict(min_accuracy=0.0, min_macro_f1=0.0, metric="accuracy", margin=0.02, confidence=0.95,
                max_class_recall_drop=1.0, n_bootstrap=500, seed=0)
    return GateConfig(**{**base, **kw})


def test_non_inferiority_margin_both_sides():
    cand, champ = _pair(cand_wrong=set(range(0, 40, 2)) | {1, 3}, champ_wrong=set(range(0, 30, 2)))
    probe = decide(cand, champ, _policy(), "1")
    lower = probe.lower_bound
    assert probe.difference == pytest.approx(cand.accuracy - champ.accuracy)
    assert lower < 0
    assert decide(cand, champ, _policy(margin=-lower + 1e-6), "1").passed
    assert not decide(cand, champ, _policy(margin=-lower), "1").passed
    rejected = decide(cand, champ, _policy(margin=-lower - 1e-3), "1")
    assert any("may be worse than the champion" in r for r in rejected.reasons)


def test_better_candidate_passes_and_reports_mcnemar():
    cand, champ = _pair(cand_wrong={0, 2}, champ_wrong=set(range(0, 60, 2)))
    d = decide(cand, champ, _policy(margin=0.0), "3")
    assert d.passed and d.difference > 0 and d.lower_bound > 0
    assert d.mcnemar_p is not None and d.mcnemar_p < 0.01
    assert d.champion_version == "3"


def test_class_recall_drop_limit_both_sides():
    # candidate misses 10 of 100 'a' rows the champion got right: recall of 'a' drops by exactly 0.10
    cand, champ = _pair(cand_wrong=set(range(0, 20, 2)))
    assert champ.per_class["a"].recall - cand.per_class["a"].recall == pytest.approx(0.10)
    assert decide(cand, champ, _policy(margin=0.5, max_class_recall_drop=0.10 + 1e-9), "1").passed
    d = decide(cand, champ, _policy(margin=0.5, max_class_recall_drop=0.09), "1")
    assert not d.passed
    assert any("recall of 'a' drops" in r for r in d.reasons)


def test_reports_on_different_splits_are_refused():
    cand, champ = _pair()
    champ = champ.model_copy(update={"split_digest": "other"})
    d = decide(cand, champ, _policy(margin=0.5), "1")
    assert not d.passed and any("different test split" in r for r in d.reasons)


def test_floors_still_apply_with_champion():
    cand, champ = _pair(cand_wrong=set(range(0, 200, 3)))
    d = decide(cand, champ, _policy(min_accuracy=0.9, margin=0.5, max_class_recall_drop=1.0), "1")
    assert not d.passed and any("< floor" in r for r in d.reasons)


def test_confidence_intervals_bracket_the_point_estimate():
    r = _report(85, n=200)
    lo, hi = r.accuracy_ci
    assert lo < r.accuracy < hi
    assert hi - lo < 0.2
    assert r.macro_f1_ci[0] <= r.macro_f1 <= r.macro_f1_ci[1]


def test_evaluation_report_has_a_json_schema():
    schema = _report(90).json_schema()
    for field in ("accuracy", "macro_f1", "mcc", "per_class", "confusion_matrix", "accuracy_ci", "ece"):
        assert field in schema["properties"]


def _with_baseline(candidate_hits: int, baseline_hits: int, n: int = 100):
    from components.evaluation.baseline import BaselineReport, compare_to_baseline

    cand = _report(candidate_hits, n)
    base = _report(baseline_hits, n)
    fitted = BaselineReport(n=n, train_rows=10, accuracy=base.accuracy, macro_f1=base.macro_f1, fit_seconds=0.1,
                            predictions=base.predictions)
    return cand.model_copy(update={"baseline": compare_to_baseline(cand.y_true, cand.predictions, fitted)})


def _floorless(**kw):
    return GateConfig(min_accuracy=0.0, min_macro_f1=0.0, **kw)


@pytest.mark.parametrize("required, passed", [(0.05, True), (0.0500001, False), (0.0, True), (-0.1, True)])
def test_min_margin_over_baseline_both_sides(required, passed):
    candidate = _with_baseline(95, 90)  # margin +0.05
    assert candidate.baseline.margin == pytest.approx(0.05)
    decision = decide(candidate, None, _floorless(min_margin_over_baseline=required))
    assert decision.passed is passed
    reason = next(r for r in decision.reasons if "baseline" in r)
    assert "0.9500 vs 0.9000" in reason and "+0.0500" in reason  # both accuracies and the margin


def test_candidate_below_baseline_is_rejected_naming_both_accuracies():
    decision = decide(_with_baseline(85, 90), None, _floorless(min_margin_over_baseline=0.0))
    assert not decision.passed
    assert any("LinearSVC" in r and "0.8500 vs 0.9000" in r and "< required" in r for r in decision.reasons)
    assert "baseline" in decision.summary()


def test_unset_min_margin_reports_but_never_rejects():
    decision = decide(_with_baseline(50, 100), None, _floorless())
    assert decision.passed
    assert any("margin -0.5000" in r and "reported only" in r for r in decision.reasons)


def test_no_baseline_comparison():
    assert not any("baseline" in r for r in decide(_report(90), None, _floorless()).reasons)
    refused = decide(_report(90), None, _floorless(min_margin_over_baseline=0.0))
    assert not refused.passed
    assert any("not compared with the TF-IDF + LinearSVC baseline" in r for r in refused.reasons)


def test_min_margin_over_baseline_is_validated():
    from pydantic import ValidationError

    with pytest.raises(ValidationError):
        GateConfig(min_margin_over_baseline=1.5)
    assert GateConfig().min_margin_over_baseline is None
