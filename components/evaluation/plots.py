"""PNG plots a reviewer would rather look at than read: confusion matrix, training curves."""

from __future__ import annotations

from pathlib import Path

from components.evaluation.metrics import EvaluationReport


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")  # headless: never needs a display
    import matplotlib.pyplot as plt

    return plt


def plot_confusion_matrix(report: EvaluationReport, path: str | Path) -> Path:
    """Write the confusion matrix (counts, rows = true label) as a PNG."""
    import numpy as np

    plt = _pyplot()
    cm = np.array(report.confusion_matrix)
    n = len(report.labels)
    fig, ax = plt.subplots(figsize=(1.2 * n + 2.5, 1.1 * n + 2))
    im = ax.imshow(cm, cmap="Blues")
    ax.set_xticks(range(n), report.labels, rotation=45, ha="right")
    ax.set_yticks(range(n), report.labels)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title(f"accuracy {report.accuracy:.3f}, macro-F1 {report.macro_f1:.3f} (n={report.n})")
    threshold = cm.max() / 2 if cm.size else 0
    for i in range(n):
        for j in range(n):
            ax.text(j, i, str(cm[i, j]), ha="center", va="center", color="white" if cm[i, j] > threshold else "black")
    fig.colorbar(im, ax=ax, fraction=0.046)
    fig.tight_layout()
    out = Path(path)
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return out


def plot_training_curves(history: list[dict[str, float]], path: str | Path) -> Path:
    """Write train/validation loss and validation metrics per epoch as a PNG."""
    plt = _pyplot()
    epochs = [h["epoch"] for h in history]
    fig, (left, right) = plt.subplots(1, 2, figsize=(10, 4))
    left.plot(epochs, [h["train_loss"] for h in history], marker="o", label="train loss")
    if history and "val_loss" in history[0]:
        left.plot(epochs, [h["val_loss"] for h in history], marker="o", label="validation loss")
        right.plot(epochs, [h["val_accuracy"] for h in history], marker="o", label="validation accuracy")
        right.plot(epochs, [h["val_macro_f1"] for h in history], marker="o", label="validation macro-F1")
    left.set_xlabel("epoch")
    left.set_title("loss")
    left.legend()
    right.set_xlabel("epoch")
    right.set_title("validation metrics")
    right.set_ylim(0, 1.02)
    right.legend()
    fig.tight_layout()
    out = Path(path)
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return out


def plot_reliability(report: EvaluationReport, path: str | Path) -> Path:
    """Reliability diagram: accuracy against mean confidence per bin, with the ECE in the title."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(4.5, 4.5))
    ax.plot([0, 1], [0, 1], linestyle="--", color="grey", label="perfect calibration")
    bins = report.reliability
    if bins:
        ax.bar([(b["lower"] + b["upper"]) / 2 for b in bins], [b["accuracy"] for b in bins],
               width=[b["upper"] - b["lower"] for b in bins], edgecolor="black", alpha=0.7, label="accuracy")
        ax.plot([b["confidence"] for b in bins], [b["accuracy"] for b in bins], marker="o", color="C1")
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1)
    ax.set_xlabel("confidence")
    ax.set_ylabel("accuracy")
    ax.set_title(f"reliability (ECE {report.ece or 0:.3f})")
    ax.legend(loc="upper left")
    fig.tight_layout()
    out = Path(path)
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return out
