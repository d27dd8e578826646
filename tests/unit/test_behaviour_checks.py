"""Behavioural checks: the YAML contract (errors name the bad case) and the verdict with a fake classifier."""

from __future__ import annotations

import pytest

from components.config import GateConfig
from components.errors import ConfigError
from components.evaluation.behaviour import load_behaviour_suite, parse_behaviour_suite, run_behaviour_checks

LABELS = ["business", "sport", "tech"]
SUITE_YAML = """
- text: The striker scored twice in the cup final.
  expected: sport
- name: chip maker
  text: The chip maker unveiled a faster processor.
  expected: tech
- text: Manchester won the derby on Sunday.
  replace: {from: Manchester, to: Liverpool}
"""


def fake_classifier(texts: list[str]) -> list[str]:
    """Keyword rules standing in for a model: 'Liverpool' flips the label, to break invariance on purpose."""
    out = []
    for t in texts:
        out.append("business" if "Liverpool" in t else "sport" if ("striker" in t or "derby" in t) else "tech")
    return out


def _suite(tmp_path, text=SUITE_YAML):
    path = tmp_path / "checks.yaml"
    path.write_text(text)
    return load_behaviour_suite(path, LABELS)


def test_suite_loads_both_kinds(tmp_path):
    suite = _suite(tmp_path)
    assert [type(c).__name__ for c in suite.cases] == ["MinimumFunctionalityCase", "MinimumFunctionalityCase",
                                                       "InvarianceCase"]
    assert [c.name for c in suite.cases] == ["case 1", "chip maker", "case 3"]
    assert suite.cases[2].variant == "Liverpool won the derby on Sunday."


def test_fake_classifier_passes_mft_and_fails_invariance(tmp_path):
    report = run_behaviour_checks(fake_classifier, _suite(tmp_path), min_pass_rate=1.0)
    assert report.pass_rate("minimum functionality") == 1.0
    assert report.pass_rate("invariance") == 0.0
    assert not report.passed
    inv = report.of("invariance")[0]
    assert (inv.predicted, inv.variant_predicted) == ("sport", "business")
    reasons = report.reasons()
    assert reasons[0] == "behaviour (minimum functionality): 2/2 cases passed (100% >= required 100%)"
    assert reasons[1].startswith("behaviour (invariance): 0/1 cases passed (0% < required 100%); failed: case 3")


@pytest.mark.parametrize("min_pass_rate, passed", [(0.5, True), (0.51, False)])
def test_pass_rate_threshold_both_sides(tmp_path, min_pass_rate, passed):
    # the fake classifier gets the tech case right and the business case wrong: a pass rate of exactly 0.5
    suite = _suite(tmp_path, "- text: The chip maker unveiled a processor.\n  expected: tech\n"
                             "- text: Shares fell sharply.\n  expected: business\n")
    report = run_behaviour_checks(fake_classifier, suite, min_pass_rate)
    assert report.pass_rate("minimum functionality") == 0.5
    assert report.passed is passed


def test_an_empty_kind_does_not_count(tmp_path):
    suite = _suite(tmp_path)
    report = run_behaviour_checks(fake_classifier, suite.model_copy(update={"cases": suite.cases[:2]}))
    assert report.passed and report.pass_rate("invariance") is None and len(report.reasons()) == 1


@pytest.mark.parametrize("text, message", [
    ("- text: a\n  expected: sport\n- text: b\n", r"case 2 \(text 'b'\): a case needs 'text' and exactly one of"),
    ("- text: a\n  expected: sport\n  replace: {from: a, to: b}\n", "case 1 .*exactly one of"),
    ("- name: derby\n  text: City won.\n  replace: {from: Manchester, to: Liverpool}\n",
     r"case 1 \(derby\): .*'Manchester' does not occur in the text"),
    ("- text: a\n  replace: {from: a}\n", r"case 1 .*replace.to: Field required"),
    ("- text: Rain.\n  expected: weather\n", r"case 1 .*expected label 'weather' is not one of the model's labels"),
    ("- text: a\n  expected: sport\n  label: sport\n", r"case 1 .*label: Extra inputs are not permitted"),
    ("cases: 3\n", "expected a non-empty list of cases"),
    ("- text: [unclosed\n", "not valid YAML"),
])
def test_bad_files_name_the_case(tmp_path, text, message):
    with pytest.raises(ConfigError, match=message):
        _suite(tmp_path, text)


def test_missing_file_says_which_setting(tmp_path):
    with pytest.raises(ConfigError, match="gate.behaviour_checks"):
        load_behaviour_suite(tmp_path / "nope.yaml")


def test_parse_without_labels_accepts_any_expected_label():
    suite = parse_behaviour_suite([{"text": "Rain.", "expected": "weather"}], "inline")
    assert suite.cases[0].expected == "weather"


def test_config_fields():
    assert GateConfig().behaviour_checks is None and GateConfig().behaviour_min_pass_rate == 1.0
    with pytest.raises(ValueError):
        GateConfig(behaviour_min_pass_rate=1.1)
