"""The evaluation report: the typed contract between evaluation and the gate."""

from __future__ import annotations

import time
from typing import Sequence

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from components.evaluation import stats
from components.evaluation.baseline import BaselineComparison
from components.package import TextClassifier

REPORT_SCHEMA_VERSION = "1"


class ClassMetrics(BaseModel):
    model_config = ConfigDict(frozen=True)

    precision: float
    recall: float
    f1: float
    support: int


class Misclassified(BaseModel):
    model_config = ConfigDict(frozen=True)

    text: str
    label: str
    predicted: str
    score: float


class EvaluationReport(BaseModel):
    """Metrics of one model on one test split (identified by `split_digest`)."""

    model_config = ConfigDict(frozen=True)

    schema_version: str = REPORT_SCHEMA_VERSION
    model: str = Field(description="Which model was scored (package path or registry URI).")
    split_digest: str = Field("", description="Hash of the test split; reports compare only on equal digests.")
    n: int
    labels: list[str]
    accuracy: float
    macro_f1: float
    micro_f1: float
    mcc: float
    per_class: dict[str, ClassMetrics]
    confusion_matrix: list[list[int]] = Field(description="Rows: true label, columns: predicted, in `labels` order.")
    latency_ms_per_example: float
    accuracy_ci: tuple[float, float] = Field((0.0, 0.0), description="Bootstrap 95% interval of accuracy.")
    macro_f1_ci: tuple[float, float] = Field((0.0, 0.0), description="Bootstrap 95% interval of macro-F1.")
    ece: float | None = Field(None, description="Expected calibration error (10 equal-width bins).")
    reliability: list[dict[str, float]] = Field(default_factory=list, description="Bins of the reliability plot.")
    y_true: list[str] = Field(default_factory=list, description="True label per test row, in split order.")
    predictions: list[str] = Field(default_factory=list, description="Predicted label per test row, in split order.")
    misclassified: list[Misclassified] = Field(default_factory=list)
    baseline: BaselineComparison | None = Field(
        None, description="TF-IDF + LinearSVC fitted on the same training split and scored on these rows, and this "
        "model's accuracy margin over it (a run's candidate only).")

    def headline(self) -> dict[str, float]:
        return {"accuracy": self.accuracy, "macro_f1": self.macro_f1, "micro_f1": self.micro_f1, "mcc": self.mcc}

    def json_schema(self) -> dict:
        """The JSON schema of this contract (what the gate and any external reader may rely on)."""
        return type(self).model_json_schema()


def compute_report(y_true: Sequence[str], y_pred: Sequence[str], labels: list[str], model: str,
                   texts: Sequence[str] = (), scores: Sequence[float] = (), latency_ms: float = 0.0,
                   split_digest: str = "", max_misclassified: int = 20) -> EvaluationReport:
    """Build an `EvaluationReport` from true and predicted labels (scikit-learn metrics)."""
    from sklearn.metrics import (accuracy_score, confusion_matrix, f1_score, matthews_corrcoef,
                                 precision_recall_fscore_support)

    y_true, y_pred = list(map(str, y_true)), list(map(str, y_pred))
    p, r, f, s = precision_recall_fscore_support(y_true, y_pred, labels=labels, zero_division=0)
    yt, yp = stats.encode(labels, y_true, y_pred)
    ece, bins = (None, [])
    if len(scores):
        ece, bins = stats.expected_calibration_error(np.asarray(scores, dtype=float), yt == yp)
    wrong = [i for i, (a, b) in enumerate(zip(y_true, y_pred)) if a != b]
    return EvaluationReport(
        model=model, split_digest=split_digest, n=len(y_true), labels=labels,
        accuracy=float(accuracy_score(y_true, y_pred)),
        macro_f1=float(f1_score(y_true, y_pred, labels=labels, average="macro", zero_division=0)),
        micro_f1=float(f1_score(y_true, y_pred, labels=labels, average="micro", zero_division=0)),
        mcc=float(matthews_corrcoef(y_true, y_pred)) if len(set(y_true) | set(y_pred)) > 1 else 0.0,
        per_class={lab: ClassMetrics(precision=float(p[i]), recall=float(r[i]), f1=float(f[i]), support=int(s[i]))
                   for i, lab in enumerate(labels)},
        confusion_matrix=confusion_matrix(y_true, y_pred, labels=labels).tolist(),
        latency_ms_per_example=latency_ms,
        accuracy_ci=stats.bootstrap_ci(yt, yp, stats.accuracy),
        macro_f1_ci=stats.bootstrap_ci(yt, yp, stats.macro_f1),
        ece=ece, reliability=bins,
        y_true=y_true,
        predictions=y_pred,
        misclassified=[Misclassified(text=texts[i][:300], label=y_true[i], predicted=y_pred[i],
                                     score=float(scores[i]) if len(scores) else 0.0)
                       for i in wrong[:max_misclassified]] if len(texts) else [],
    )


def evaluate_classifier(clf: TextClassifier, texts: Sequence[str], y_true: Sequence[str], model: str,
                        split_digest: str = "", batch_size: int = 32) -> EvaluationReport:
    """Score `clf` on a test split and time it."""
    start = time.perf_counter()
    probs = clf.predict_proba(list(texts), batch_size=batch_size)
    elapsed = time.perf_counter() - start
    top = probs.argmax(axis=1)
    y_pred = [clf.labels[i] for i in top]
    labels = list(clf.labels)
    extra = sorted(set(map(str, y_true)) - set(labels))
    return compute_report(y_true, y_pred, labels + extra, model, texts=list(texts),
                          scores=probs.max(axis=1).tolist(),
                          latency_ms=1000 * elapsed / max(len(texts), 1), split_digest=split_digest)


def predicted_labels(clf: TextClassifier, texts: Sequence[str], batch_size: int = 32) -> list[str]:
    """The top label `clf` predicts for each text."""
    if not len(texts):
        return []
    return [clf.labels[i] for i in clf.predict_proba(list(texts), batch_size=batch_size).argmax(axis=1)]
