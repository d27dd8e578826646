"""The classic baseline: TF-IDF + LinearSVC fitted and scored, and the candidate's margin over it."""

import random

import pytest

from components.evaluation.baseline import BASELINE_MODEL, compare_to_baseline, fit_baseline, margin_metrics
from components.evaluation.metrics import compute_report
from components.evaluation.render import baseline_markdown

WORDS = {"sport": ["goal", "striker", "match", "league", "coach", "penalty"],
         "business": ["shares", "profit", "market", "investor", "merger", "revenue"]}
FILLER = ["the", "a", "on", "after", "today", "said"]


def _texts(n: int, seed: int) -> tuple[list[str], list[str]]:
    rng = random.Random(seed)
    labels = [("sport", "business")[i % 2] for i in range(n)]
    texts = [" ".join(rng.sample(WORDS[lab], 3) + rng.sample(FILLER, 3)) for lab in labels]
    return texts, labels


def test_baseline_learns_separable_text():
    train, test = _texts(60, seed=1), _texts(40, seed=2)
    report = fit_baseline(*train, *test)
    assert report.model == BASELINE_MODEL
    assert report.n == 40 and report.train_rows == 60 and len(report.predictions) == 40
    assert report.accuracy == 1.0 and report.macro_f1 == 1.0
    assert report.fit_seconds >= 0


def test_baseline_on_noise_is_near_chance():
    (texts, labels), (test_texts, test_labels) = _texts(60, seed=1), _texts(200, seed=2)
    shuffled = random.Random(0).sample(labels, len(labels))  # labels unrelated to the words
    assert fit_baseline(texts, shuffled, test_texts, test_labels).accuracy < 0.75


def _candidate(y, wrong):
    flip = {"sport": "business", "business": "sport"}
    return [flip[v] if i in wrong else v for i, v in enumerate(y)]


@pytest.mark.parametrize("candidate_wrong, sign", [(set(range(0, 40, 2)), -1), (set(), 0)])
def test_margin_sign_and_interval(candidate_wrong, sign):
    train, (test_texts, y) = _texts(60, seed=1), _texts(100, seed=2)
    baseline = fit_baseline(*train, test_texts, y)  # scores 1.0 on this separable data
    comparison = compare_to_baseline(y, _candidate(y, candidate_wrong), baseline)
    expected = (100 - len(candidate_wrong)) / 100 - baseline.accuracy
    assert comparison.margin == pytest.approx(expected)
    assert (comparison.margin > 0) - (comparison.margin < 0) == sign
    lo, hi = comparison.margin_ci
    assert lo <= comparison.margin <= hi
    if sign < 0:
        assert hi < 0  # 20 of 100 rows worse: clearly worse, the interval excludes 0


def test_candidate_beating_baseline_has_positive_margin():
    (texts, labels), (test_texts, y) = _texts(60, seed=1), _texts(100, seed=2)
    baseline = fit_baseline(texts, random.Random(0).sample(labels, len(labels)), test_texts, y)
    comparison = compare_to_baseline(y, y, baseline)  # a perfect candidate
    assert comparison.margin == pytest.approx(1.0 - baseline.accuracy) and comparison.margin > 0
    assert comparison.margin_ci[0] > 0
    metrics = margin_metrics(comparison)
    assert metrics["candidate_margin_over_baseline"] == comparison.margin
    assert metrics["baseline_test_accuracy"] == baseline.accuracy
    assert metrics["candidate_margin_over_baseline_ci_low"] <= metrics["candidate_margin_over_baseline_ci_high"]
    assert f"{comparison.margin:+.4f}" in baseline_markdown(comparison)


def test_margin_needs_the_same_rows():
    train, (test_texts, y) = _texts(60, seed=1), _texts(20, seed=2)
    baseline = fit_baseline(*train, test_texts, y)
    with pytest.raises(ValueError, match="same test rows"):
        compare_to_baseline(y[:-1], y[:-1], baseline)


def test_report_round_trips_with_its_baseline():
    train, (test_texts, y) = _texts(60, seed=1), _texts(20, seed=2)
    report = compute_report(y, y, ["business", "sport"], "m")
    report = report.model_copy(update={"baseline": compare_to_baseline(y, report.predictions,
                                                                       fit_baseline(*train, test_texts, y))})
    restored = type(report).model_validate(report.model_dump())
    assert restored.baseline == report.baseline
