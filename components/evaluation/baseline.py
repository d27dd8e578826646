"""The classic baseline every candidate is measured against: TF-IDF (1-2 grams) + LinearSVC fitted on the run's
training split and scored on its test split, and the candidate's accuracy margin over it."""

from __future__ import annotations

import logging
import time
from typing import Sequence

from pydantic import BaseModel, ConfigDict, Field

from components.evaluation import stats

logger = logging.getLogger(__name__)

BASELINE_MODEL = "TF-IDF (1-2 grams) + LinearSVC"


class BaselineReport(BaseModel):
    """The baseline's scores on one test split."""

    model_config = ConfigDict(frozen=True)

    model: str = BASELINE_MODEL
    n: int = Field(description="Test rows scored.")
    train_rows: int
    accuracy: float
    macro_f1: float
    fit_seconds: float = Field(description="Wall-clock seconds to fit and predict.")
    predictions: list[str] = Field(description="Predicted label per test row, in split order.")


class BaselineComparison(BaseModel):
    """The candidate's accuracy margin over the baseline on the same test rows."""

    model_config = ConfigDict(frozen=True)

    baseline: BaselineReport
    candidate_accuracy: float
    margin: float = Field(description="Candidate accuracy minus baseline accuracy (the point estimate).")
    margin_ci: tuple[float, float] = Field(description="Paired bootstrap interval of `margin` (rows resampled once "
                                                       "for both models).")
    level: float = Field(0.95, description="Coverage of `margin_ci`.")

    def summary(self) -> str:
        """E.g. 'TF-IDF (1-2 grams) + LinearSVC accuracy 0.9733; transformer margin +0.0133 (95% CI -0.0100..+0.0400)'."""
        lo, hi = self.margin_ci
        return (f"{self.baseline.model} accuracy {self.baseline.accuracy:.4f}; transformer margin {self.margin:+.4f} "
                f"({self.level:.0%} CI {lo:+.4f}..{hi:+.4f})")


def fit_baseline(train_texts: Sequence[str], train_labels: Sequence[str], test_texts: Sequence[str],
                 test_labels: Sequence[str], seed: int = 0) -> BaselineReport:
    """Fit TF-IDF (1-2 grams, sublinear tf) + LinearSVC on the training texts and score it on the test texts.

    Pass texts already cleaned by `components.package.preprocess` with the candidate's mode, so both models see
    the same text. Needs at least two labels in the training split (as any classifier does)."""
    from sklearn.feature_extraction.text import TfidfVectorizer
    from sklearn.metrics import accuracy_score, f1_score
    from sklearn.pipeline import make_pipeline
    from sklearn.svm import LinearSVC

    y_train, y_test = list(map(str, train_labels)), list(map(str, test_labels))
    start = time.perf_counter()
    pipeline = make_pipeline(TfidfVectorizer(ngram_range=(1, 2), sublinear_tf=True), LinearSVC(random_state=seed))
    pipeline.fit(list(train_texts), y_train)
    predicted = [str(p) for p in pipeline.predict(list(test_texts))] if len(test_texts) else []
    seconds = time.perf_counter() - start
    labels = sorted(set(y_train) | set(y_test))
    report = BaselineReport(
        n=len(y_test), train_rows=len(y_train), fit_seconds=seconds, predictions=predicted,
        accuracy=float(accuracy_score(y_test, predicted)) if y_test else 0.0,
        macro_f1=float(f1_score(y_test, predicted, labels=labels, average="macro", zero_division=0)) if y_test else 0.0)
    logger.info("baseline %s: accuracy %.4f on %d rows (%.1f s)", report.model, report.accuracy, report.n, seconds)
    return report


def compare_to_baseline(y_true: Sequence[str], candidate_predictions: Sequence[str], baseline: BaselineReport,
                        level: float = 0.95, n_boot: int = 1000, seed: int = 0) -> BaselineComparison:
    """The candidate's accuracy minus the baseline's on the same test rows, with a paired bootstrap interval."""
    if not len(y_true) == len(candidate_predictions) == len(baseline.predictions):
        raise ValueError(f"the candidate ({len(candidate_predictions)} predictions), the baseline "
                         f"({len(baseline.predictions)}) and the labels ({len(y_true)}) must cover the same test rows")
    labels = sorted(set(map(str, y_true)) | set(map(str, candidate_predictions)) | set(baseline.predictions))
    y, cand, base = stats.encode(labels, list(map(str, y_true)), list(map(str, candidate_predictions)),
                                 baseline.predictions)
    margin, ci = stats.paired_bootstrap_ci(y, cand, base, stats.accuracy, n_boot=n_boot, level=level, seed=seed)
    return BaselineComparison(baseline=baseline, candidate_accuracy=stats.accuracy(y, cand), margin=margin,
                              margin_ci=ci, level=level)


def margin_metrics(comparison: BaselineComparison, role: str = "candidate") -> dict[str, float]:
    """The MLflow metrics of a comparison: the baseline's scores and `role`'s margin over it with its interval."""
    return {"baseline_test_accuracy": comparison.baseline.accuracy,
            "baseline_test_macro_f1": comparison.baseline.macro_f1,
            "baseline_fit_seconds": comparison.baseline.fit_seconds,
            f"{role}_margin_over_baseline": comparison.margin,
            f"{role}_margin_over_baseline_ci_low": comparison.margin_ci[0],
            f"{role}_margin_over_baseline_ci_high": comparison.margin_ci[1]}

