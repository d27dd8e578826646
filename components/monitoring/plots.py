"""The monitor's picture: live traffic beside the served version's profile, one panel per measure."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from components.monitoring.drift import MonitorReport
from components.monitoring.reference import TrafficReference

_REF, _LIVE, _BAD = "#4c72b0", "#dd8452", "#c44e52"


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")  # headless: never needs a display
    import matplotlib.pyplot as plt

    return plt


def plot_monitor(report: MonitorReport, reference: TrafficReference, path: str | Path) -> Path:
    """Write a 2x2 PNG: text lengths, predicted labels, confidence and OOV rate (reference vs. traffic)."""
    plt = _pyplot()
    fig, axes = plt.subplots(2, 2, figsize=(11, 7.5))
    verdict = {m.name: m for m in report.measures}

    def title(ax, name: str, label: str) -> None:
        m = verdict.get(name)
        text = f"{label}: {m.statistic} {m.value:.3f} (limit {m.threshold:g})" if m else label
        ax.set_title(text + (" DRIFT" if m and m.drifted else ""), color=_BAD if m and m.drifted else "black",
                     fontsize=10)

    ax = axes[0, 0]
    both = reference.length_sample + report.length_sample
    if both:
        bins = np.logspace(0, np.log10(max(max(both), 10)), 30)
        for sample, colour, label in ((reference.length_sample, _REF, "served version"),
                                      (report.length_sample, _LIVE, "live traffic")):
            if sample:  # an empty sample has no density
                ax.hist(sample, bins=bins, alpha=0.6, density=True, color=colour, label=label)
        ax.set_xscale("log")
    ax.set_xlabel("characters per text")
    ax.legend()
    title(ax, "text_length", "text length")

    ax = axes[0, 1]
    labels = list(dict.fromkeys(list(reference.labels) + list(report.label_counts)))
    ref_total = max(sum(reference.predicted_label_counts.values()), 1)
    live_total = max(sum(report.label_counts.values()), 1)
    x = np.arange(len(labels))
    ax.bar(x - 0.2, [reference.predicted_label_counts.get(k, 0) / ref_total for k in labels], 0.4, color=_REF,
           label="served version")
    ax.bar(x + 0.2, [report.label_counts.get(k, 0) / live_total for k in labels], 0.4, color=_LIVE,
           label="live traffic")
    ax.set_xticks(x, labels, rotation=30, ha="right")
    ax.set_ylabel("share of predictions")
    ax.legend()
    title(ax, "predicted_labels", "predicted labels")

    ax = axes[1, 0]
    bins = np.linspace(0, 1, 21)
    for sample, colour, label in ((reference.confidence_sample, _REF, "served version"),
                                  (report.confidence_sample, _LIVE, "live traffic")):
        if sample:
            ax.hist(sample, bins=bins, alpha=0.6, density=True, color=colour, label=label)
    ax.set_xlabel("score of the predicted label")
    ax.legend()
    title(ax, "confidence", "confidence")

    ax = axes[1, 1]
    oov = verdict.get("oov_rate")
    live_rate = reference.oov_rate + oov.value if oov else 0.0
    ax.bar([0, 1], [reference.oov_rate, live_rate], color=[_REF, _BAD if oov and oov.drifted else _LIVE])
    if oov:
        ax.axhline(reference.oov_rate + oov.threshold, color="grey", linestyle="--", label="limit")
        ax.legend()
    ax.set_xticks([0, 1], ["served version", "live traffic"])
    ax.set_ylabel("out-of-vocabulary word rate")
    ax.set_ylim(0, max(1e-3, live_rate, reference.oov_rate + (oov.threshold if oov else 0)) * 1.2)
    title(ax, "oov_rate", "vocabulary")

    fig.suptitle(f"{report.model_name} v{report.model_version}: {report.texts} live texts "
                 f"({report.requests} requests) vs. the served version's profile ({reference.rows} test texts)", fontsize=11)
    fig.tight_layout()
    out = Path(path)
    fig.savefig(out, dpi=100)
    plt.close(fig)
    return out
