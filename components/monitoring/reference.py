"""The profile stored with every registered version: what its traffic looked like on the test split.

Written at registration (`monitoring/reference.json` in the version's training run): the version's
predicted labels and their scores on its test split, the training data's text lengths (the data
profile's sample) and vocabulary. `fineship monitor` compares live traffic with it.
"""

from __future__ import annotations

import logging
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from components.data.profile import LENGTH_SAMPLE, DataProfile
from components.evaluation.reference import REFERENCE_ARTIFACT, read_reference_set
from components.monitoring.text import length_quantiles, oov_stats, sample

log = logging.getLogger(__name__)

MONITOR_REFERENCE_ARTIFACT = "monitoring/reference.json"
"""Where a training run stores the monitoring profile of the version it registers."""
PROFILE_ARTIFACT = "data/profile.json"  # components/registry/model_card.py: the run's data profile
REFERENCE_VERSION = 1
SCORE_SAMPLE = 5000


class TrafficReference(BaseModel):
    """Traffic as the version saw it at evaluation: lengths, predicted labels, scores, vocabulary."""

    model_config = ConfigDict(frozen=True)

    reference_version: int = REFERENCE_VERSION
    source: str = Field("", description="Where the texts came from, e.g. 'test split of MLflow run <id>'.")
    rows: int
    labels: list[str] = Field(description="The version's label set.")
    length_quantiles: dict[str, float]
    length_sample: list[int] = Field(description="Characters per text (up to 2,000; the data profile's when "
                                     "stored at registration).")
    predicted_label_counts: dict[str, int]
    confidence_sample: list[float] = Field(description="Score of the predicted label per text (up to 5,000).")
    vocabulary: list[str] = Field(description="The training data's most frequent word tokens.")
    oov_rate: float = Field(description="Share of the texts' word tokens outside `vocabulary`.")


def build_reference(texts: Sequence[str], predicted: Sequence[str], confidences: Sequence[float],
                    labels: Sequence[str], vocabulary: Sequence[str], source: str = "") -> TrafficReference:
    """The monitoring profile of a version from its predictions on held-out texts."""
    lengths = [len(t) for t in texts]
    counts = {lab: 0 for lab in labels}
    for p in predicted:
        counts[p] = counts.get(p, 0) + 1
    return TrafficReference(
        source=source, rows=len(texts), labels=list(labels), length_quantiles=length_quantiles(lengths),
        length_sample=sample(lengths, LENGTH_SAMPLE), predicted_label_counts=counts,
        confidence_sample=[round(float(c), 6) for c in sample(list(confidences), SCORE_SAMPLE)],
        vocabulary=list(vocabulary), oov_rate=oov_stats(vocabulary, texts).rate)


def reference_from_classifier(clf: Any, texts: Sequence[str], vocabulary: Sequence[str],
                              source: str = "") -> TrafficReference:
    """Predict `texts` with a loaded package (`TextClassifier`) and profile them."""
    probs = clf.predict_proba(list(texts))
    top = probs.argmax(axis=1)
    return build_reference(texts, [clf.labels[i] for i in top], probs.max(axis=1).tolist(), clf.labels,
                           vocabulary, source)


def record_reference(registry: Any, run_id: str, package_dir: str | Path) -> TrafficReference | None:
    """Profile the package on the run's frozen test split and store it with the run; None (and a warning) when
    the run has no test split or data profile stored (a version registered by hand)."""
    from components.package import load_package

    stored = {f.path for f in registry.client.list_artifacts(run_id, str(Path(REFERENCE_ARTIFACT).parent))}
    profile = registry.load_run_json(run_id, PROFILE_ARTIFACT)
    if REFERENCE_ARTIFACT not in stored or profile is None:
        log.warning("run %s has no %s or %s: no monitoring profile stored, `fineship monitor` cannot judge this "
                    "version", run_id, REFERENCE_ARTIFACT, PROFILE_ARTIFACT)
        return None
    with tempfile.TemporaryDirectory() as tmp:
        test = read_reference_set(registry.client.download_artifacts(run_id, REFERENCE_ARTIFACT, tmp),
                                  source=f"MLflow run {run_id}")
    data = DataProfile.model_validate(profile)
    texts = sample(test.texts, SCORE_SAMPLE)  # a large test split: a seeded sample is as good and bounded in time
    reference = reference_from_classifier(load_package(package_dir), texts, data.vocabulary,
                                          source=f"test split of MLflow run {run_id}")
    if data.length_sample:  # lengths from the whole dataset (up to 2,000): a test split of 100 is a noisy yardstick
        reference = reference.model_copy(update={"length_sample": data.length_sample,
                                                 "length_quantiles": data.length_quantiles})
    registry.log_dict(run_id, reference.model_dump(), MONITOR_REFERENCE_ARTIFACT)
    return reference


def load_reference(registry: Any, run_id: str) -> TrafficReference | None:
    """The monitoring profile stored with a run, or None."""
    stored = registry.load_run_json(run_id, MONITOR_REFERENCE_ARTIFACT)
    return TrafficReference.model_validate(stored) if stored else None
