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
