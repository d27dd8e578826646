"""The label-consistency rule on synthetic confusions: swaps are caught and named, healthy data passes."""

from __future__ import annotations

import pytest

from components.config import GateConfig
from components.errors import DataValidationError, LabelConsistencyError
from components.evaluation.consistency import assess_label_consistency, check_label_consistency
from components.evaluation.stats import wilson_lower_bound

LABELS = ["business", "politics", "sport", "tech"]
RECALL = {"business": (0.9, 40), "politics": (0.9, 40), "sport": (0.95, 40), "tech": (0.9, 40)}  # (recall, rows)


def _rows(confusion: dict[str, dict[str, int]]) -> tuple[list[str], list[str]]:
    """(new labels, champion predictions) from {new label: {predicted: count}}."""
    labels, predictions = [], []
    for label, row in confusion.items():
        for predicted, n in row.items():
            labels += [label] * n
            predictions += [predicted] * n
    return labels, predictions


def _healthy() -> dict[str, dict[str, int]]:
    return {label: {label: 90, LABELS[(i + 1) % 4]: 10} for i, label in enumerate(LABELS)}


def test_healthy_labels_pass():
    report = check_label_consistency(*_rows(_healthy()), RECALL, max_drop=0.3, min_support=20, champion_version="1")
    assert report.passed and report.checked and not report.swaps and not report.findings
    assert report.rows == 400
    assert {c.status for c in report.classes} == {"consistent"}
    assert "passed" in report.summary()


def test_swapped_labels_are_caught_and_named():
    confusion = _healthy()
    confusion["sport"] = {"tech": 87, "sport": 10, "business": 3}  # rows labelled sport are tech articles
    confusion["tech"] = {"sport": 91, "tech": 9}
    report = check_label_consistency(*_rows(confusion), RECALL, max_drop=0.3, min_support=20, champion_version="1")
    assert not report.passed
    assert report.inconsistent == ["sport", "tech"]
    assert report.swaps == [("sport", "tech")]
    assert "rows labelled 'sport' are predicted 'tech' by the champion in 87% of cases" in report.summary()
    assert "labels 'sport' and 'tech' look swapped" in report.findings
    tech = next(c for c in report.classes if c.label == "tech")
    assert tech.agreement == pytest.approx(0.09) and tech.drop == pytest.approx(wilson_lower_bound(36, 40) - 0.09)
    assert tech.recorded_recall == 0.9 and tech.recorded_support == 40
    assert tech.top_prediction == "sport" and tech.top_share == pytest.approx(0.91)


def test_a_one_sided_relabelling_is_not_called_a_swap():
    confusion = _healthy()
    confusion["business"] = {"politics": 70, "business": 30}  # politics rows relabelled business, not back
    report = check_label_consistency(*_rows(confusion), RECALL, max_drop=0.3, min_support=20)
    assert not report.passed and report.inconsistent == ["business"] and report.swaps == []
    assert "check whether 'politics' rows were relabelled 'business'" in report.findings[0]


def test_the_baseline_is_the_lower_end_of_the_recorded_recall_interval():
    # 9 of 12 right on the champion's test split: "at least 0.47", so an agreement of 0.2 is a drop of 0.27
    confusion = _healthy()
    confusion["politics"] = {"politics": 20, "sport": 80}
    recorded = RECALL | {"politics": (0.75, 12)}
    report = check_label_consistency(*_rows(confusion), recorded, max_drop=0.3, min_support=20)
    politics = next(c for c in report.classes if c.label == "politics")
    assert politics.baseline == pytest.approx(wilson_lower_bound(9, 12)) == pytest.approx(0.4677, abs=1e-4)
    assert politics.drop == pytest.approx(politics.baseline - 0.2) and report.passed
    assert not check_label_consistency(*_rows(confusion), RECALL, max_drop=0.3, min_support=20).passed  # 36 of 40


@pytest.mark.parametrize("slack, passed", [(0.0, True), (-1e-6, False)])
def test_drop_limit_both_sides(slack, passed):
    confusion = _healthy()
    confusion["politics"] = {"politics": 55, "sport": 45}
    drop = wilson_lower_bound(36, 40) - 0.55
    report = check_label_consistency(*_rows(confusion), RECALL, max_drop=drop + slack, min_support=20)
    assert report.passed is passed  # a drop equal to the limit passes


@pytest.mark.parametrize("support, checked", [(20, True), (19, False)])
def test_min_support_both_sides(support, checked):
    confusion = _healthy()
    confusion["tech"] = {"sport": support}  # every tech row predicted sport
    report = check_label_consistency(*_rows(confusion), RECALL, max_drop=0.3, min_support=20)
    tech = next(c for c in report.classes if c.label == "tech")
    assert report.passed is not checked
    assert tech.status == ("inconsistent" if checked else "not checked")


def test_a_label_the_champion_never_learnt_is_not_checked():
    confusion = _healthy() | {"science": {"tech": 50}}
    report = check_label_consistency(*_rows(confusion), RECALL, max_drop=0.3, min_support=20)
    assert report.passed
    assert next(c for c in report.classes if c.label == "science").status == "not checked"


def _never(texts):
    raise AssertionError("the champion must not predict when the check does not run")


@pytest.mark.parametrize("predict, recorded, max_drop, version, why", [
    (_never, RECALL, None, "2", "disabled (gate.max_label_agreement_drop is null)"),
    (None, None, 0.3, None, "no champion to compare the new labels with"),
    (_never, None, 0.3, "2", "champion v2 has no recorded evaluation report of its own test split"),
])
def test_when_the_rule_does_not_run_it_says_why(predict, recorded, max_drop, version, why):
    report = assess_label_consistency(["a text"], ["sport"], predict, recorded, max_drop, 20, version)
    assert report.passed and not report.checked and report.findings == [why]
    assert report.summary() == f"label consistency not checked: {why}"


def test_a_fake_champion_that_swaps_two_labels_fails_the_rule_with_a_message_saying_what_to_do():
    labels = ["sport"] * 30 + ["tech"] * 30 + ["business"] * 30
    texts = [f"{label} story {i}" for i, label in enumerate(labels)]
    swap = {"sport": "tech", "tech": "sport", "business": "business"}

    def champion(batch):  # knows the true topic of each text: the new labels of sport and tech are swapped
        return [swap[t.split()[0]] for t in batch]

    report = assess_label_consistency(texts, labels, champion, RECALL | {"business": (0.9, 40)}, 0.3, 20, "7")
    assert not report.passed and report.swaps == [("sport", "tech")]
    message = report.failure_message()
    assert message.startswith("label consistency against champion v7 failed: rows labelled 'sport' are predicted "
                              "'tech' by the champion in 100% of cases")
    assert "labels 'sport' and 'tech' look swapped. Nothing was trained." in message
    assert "gate.max_label_agreement_drop=null" in message


def test_the_error_is_a_data_validation_error_with_typed_payload():
    err = LabelConsistencyError("labels look swapped", ["sport", "tech"], [("sport", "tech")])
    assert isinstance(err, DataValidationError)
    assert err.classes == ["sport", "tech"] and err.swaps == [("sport", "tech")]


def test_config_fields_and_bounds():
    assert GateConfig().max_label_agreement_drop == 0.3
    assert GateConfig(max_label_agreement_drop=None).max_label_agreement_drop is None
    with pytest.raises(ValueError):
        GateConfig(max_label_agreement_drop=1.5)
    with pytest.raises(ValueError):
        GateConfig(label_agreement_min_support=0)
