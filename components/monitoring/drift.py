"""Live traffic against the served version's profile: four measures, each with its threshold.

- text_length: two-sample Kolmogorov-Smirnov statistic of characters per text;
- oov_rate: increase of the out-of-vocabulary word rate over the test split's;
- predicted_labels: population stability index of the predicted-label distribution;
- confidence: KS statistic of the predicted label's score.

`compare` is a pure function; the thresholds are `components.config.MonitorConfig`.
"""

from __future__ import annotations

from datetime import datetime

from pydantic import BaseModel, ConfigDict, Field

from components.config import MonitorConfig
from components.data.profile import LENGTH_SAMPLE, psi
from components.monitoring.capture import CapturedTraffic
from components.monitoring.reference import SCORE_SAMPLE, TrafficReference
from components.monitoring.text import length_quantiles, oov_stats, sample

MEASURES = ("text_length", "oov_rate", "predicted_labels", "confidence")


class Measure(BaseModel):
    """One drift measure: its statistic, the threshold it is held to and the verdict."""

    model_config = ConfigDict(frozen=True)

    name: str
    statistic: str = Field(description="KS, PSI or 'increase'.")
    value: float
    threshold: float
    p_value: float | None = None
    drifted: bool
    reference: str = Field(description="The served version's side, for people to read.")
    current: str = Field(description="The live traffic's side, for people to read.")


class MonitorReport(BaseModel):
    """The verdict on live traffic: measures, the thresholds applied, and which measures drifted."""

    model_config = ConfigDict(frozen=True)

    model_name: str
    model_version: str
    source: str = Field(description="Where the capture was read (a directory or s3:// prefix).")
    since: datetime | None = None
    requests: int
    texts: int
    skipped: int = 0
    truncated: bool = False
    first: datetime | None = None
    last: datetime | None = None
    enough_traffic: bool
    measures: list[Measure] = Field(default_factory=list)
    thresholds: MonitorConfig
    drifted: list[str] = Field(default_factory=list, description="Names of the measures over their thresholds.")
    reference_label_counts: dict[str, int] = Field(default_factory=dict)
    label_counts: dict[str, int] = Field(default_factory=dict, description="Predicted labels of the live traffic.")
    length_quantiles: dict[str, float] = Field(default_factory=dict)
    top_unknown_words: list[tuple[str, int]] = Field(default_factory=list)
    length_sample: list[int] = Field(default_factory=list, description="For the plot: up to 2,000 lengths.")
    confidence_sample: list[float] = Field(default_factory=list, description="For the plot: up to 5,000 scores.")

    def summary(self) -> str:
        """One line: the verdict and the drifted measures with their values."""
        who = f"{self.model_name} v{self.model_version}"
        if not self.enough_traffic:
            return (f"{who}: {self.texts} captured texts, fewer than {self.thresholds.min_texts}: no verdict "
                    f"(send more traffic or widen --since)")
        if not self.drifted:
            return f"{who}: no drift in {self.texts} texts ({self.requests} requests)"
        parts = [f"{m.name} {m.statistic} {m.value:.3f} > {m.threshold:g}" for m in self.measures if m.drifted]
        return f"{who}: DRIFT in {', '.join(self.drifted)} over {self.texts} texts ({'; '.join(parts)})"


def _ks(a: list, b: list) -> tuple[float, float]:
    import warnings

    from scipy.stats import ks_2samp

    if not a or not b:
        return 0.0, 1.0
    with warnings.catch_warnings():  # "exact calculation unsuccessful": scipy falls back to the asymptotic p-value
        warnings.simplefilter("ignore", RuntimeWarning)
        res = ks_2samp(a, b)
    return float(res.statistic), float(res.pvalue)


def _q(quantiles: dict[str, float]) -> str:
    return f"median {quantiles.get('p50', 0):.0f} chars (p5 {quantiles.get('p5', 0):.0f}, p95 " \
           f"{quantiles.get('p95', 0):.0f})"


def _shares(counts: dict[str, int]) -> str:
    total = max(sum(counts.values()), 1)
    return ", ".join(f"{k} {v / total:.0%}" for k, v in sorted(counts.items(), key=lambda kv: -kv[1])[:6])


def compare(reference: TrafficReference, traffic: CapturedTraffic, config: MonitorConfig, model_name: str,
            model_version: str, since: datetime | None = None) -> MonitorReport:
    """Judge `traffic` against the version's `reference`.

    A measure drifts when its statistic is strictly above its threshold (equal passes); the KS measures also
    need a p-value below `config.max_p_value`. Under `config.min_texts` texts no measure is judged.
    """
    enough = len(traffic.texts) >= config.min_texts
    lengths = [len(t) for t in traffic.texts]
    counts: dict[str, int] = {}
    for lab in traffic.labels:
        counts[lab] = counts.get(lab, 0) + 1
    quantiles = length_quantiles(lengths)
    oov = oov_stats(reference.vocabulary, traffic.texts)
    measures: list[Measure] = []
    if traffic.texts:
        ks, p = _ks(reference.length_sample, lengths)
        measures.append(Measure(
            name="text_length", statistic="KS", value=ks, threshold=config.max_length_ks, p_value=p,
            drifted=enough and ks > config.max_length_ks and p < config.max_p_value,
            reference=_q(reference.length_quantiles), current=_q(quantiles)))
        increase = oov.rate - reference.oov_rate
        measures.append(Measure(
            name="oov_rate", statistic="increase", value=increase, threshold=config.max_oov_increase,
            drifted=enough and increase > config.max_oov_increase,
            reference=f"{reference.oov_rate:.1%} of word tokens unknown",
            current=f"{oov.rate:.1%} of {oov.tokens} word tokens unknown"))
        value = psi(reference.predicted_label_counts, counts)
        measures.append(Measure(
            name="predicted_labels", statistic="PSI", value=value, threshold=config.max_label_psi,
            drifted=enough and value > config.max_label_psi,
            reference=_shares(reference.predicted_label_counts), current=_shares(counts)))
        ks, p = _ks(reference.confidence_sample, traffic.confidences)
        mean = sum(traffic.confidences) / len(traffic.confidences)
        ref_mean = sum(reference.confidence_sample) / max(len(reference.confidence_sample), 1)
        measures.append(Measure(
            name="confidence", statistic="KS", value=ks, threshold=config.max_confidence_ks, p_value=p,
            drifted=enough and ks > config.max_confidence_ks and p < config.max_p_value,
            reference=f"mean score {ref_mean:.3f}", current=f"mean score {mean:.3f}"))
    return MonitorReport(
        model_name=model_name, model_version=model_version, source=traffic.source, since=since,
        requests=traffic.requests, texts=len(traffic.texts), skipped=traffic.skipped, truncated=traffic.truncated,
        first=traffic.first, last=traffic.last, enough_traffic=enough, measures=measures, thresholds=config,
        drifted=[m.name for m in measures if m.drifted], reference_label_counts=reference.predicted_label_counts,
        label_counts=counts, length_quantiles=quantiles, top_unknown_words=oov.top_unknown,
        length_sample=sample(lengths, LENGTH_SAMPLE), confidence_sample=sample(traffic.confidences, SCORE_SAMPLE))
