"""Statistics behind the evaluation report and the gate (numpy only, seeded)."""

from __future__ import annotations

from typing import Callable, Sequence

import numpy as np

Metric = Callable[[np.ndarray, np.ndarray], float]


def accuracy(y: np.ndarray, p: np.ndarray) -> float:
    return float(np.mean(y == p)) if len(y) else 0.0


def macro_f1(y: np.ndarray, p: np.ndarray, n_classes: int | None = None) -> float:
    """Macro-F1 over the classes present in y or p (as scikit-learn with zero_division=0)."""
    classes = np.union1d(y, p) if n_classes is None else np.arange(n_classes)
    f1s = []
    for c in classes:
        tp = np.sum((p == c) & (y == c))
        fp = np.sum((p == c) & (y != c))
        fn = np.sum((p != c) & (y == c))
        denom = 2 * tp + fp + fn
        f1s.append(2 * tp / denom if denom else 0.0)
    return float(np.mean(f1s)) if f1s else 0.0


METRICS: dict[str, Metric] = {"accuracy": accuracy, "macro_f1": macro_f1}


def encode(labels: Sequence[str], *columns: Sequence[str]) -> list[np.ndarray]:
    index = {name: i for i, name in enumerate(labels)}
    return [np.array([index.get(v, -1) for v in col], dtype=np.int64) for col in columns]


def bootstrap_ci(y: np.ndarray, p: np.ndarray, metric: Metric, n_boot: int = 1000, level: float = 0.95,
                 seed: int = 0) -> tuple[float, float]:
    """Percentile bootstrap confidence interval of `metric`."""
    if len(y) == 0:
        return (0.0, 0.0)
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, len(y), size=(n_boot, len(y)))
    values = np.array([metric(y[i], p[i]) for i in idx])
    alpha = (1 - level) / 2
    return float(np.quantile(values, alpha)), float(np.quantile(values, 1 - alpha))


def _paired_differences(y: np.ndarray, a: np.ndarray, b: np.ndarray, metric: Metric, n_boot: int,
                        seed: int) -> np.ndarray:
    """`metric` of a minus `metric` of b on each of `n_boot` resamples of the same rows."""
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, len(y), size=(n_boot, len(y)))
    return np.array([metric(y[i], a[i]) - metric(y[i], b[i]) for i in idx])


def paired_bootstrap_lower_bound(y: np.ndarray, cand: np.ndarray, champ: np.ndarray, metric: Metric,
                                 confidence: float = 0.95, n_boot: int = 2000, seed: int = 0) -> tuple[float, float]:
    """Observed difference (candidate - champion) and its one-sided lower confidence bound."""
    observed = metric(y, cand) - metric(y, champ)
    diffs = _paired_differences(y, cand, champ, metric, n_boot, seed)
    return float(observed), float(np.quantile(diffs, 1 - confidence))


def paired_bootstrap_ci(y: np.ndarray, a: np.ndarray, b: np.ndarray, metric: Metric, n_boot: int = 1000,
                        level: float = 0.95, seed: int = 0) -> tuple[float, tuple[float, float]]:
    """Observed difference (a - b, two models' predictions of the same rows `y`) and its two-sided percentile
    bootstrap interval, resampling rows so both models are scored on the same resample each time."""
    observed = metric(y, a) - metric(y, b)
    if len(y) == 0:
        return float(observed), (0.0, 0.0)
    diffs = _paired_differences(y, a, b, metric, n_boot, seed)
    alpha = (1 - level) / 2
    return float(observed), (float(np.quantile(diffs, alpha)), float(np.quantile(diffs, 1 - alpha)))


def wilson_lower_bound(successes: int, n: int, z: float = 1.96) -> float:
    """Lower end of the Wilson score interval of a proportion (z=1.96: the 95% two-sided interval); 0 for n=0."""
    if n <= 0:
        return 0.0
    p = successes / n
    centre = p + z * z / (2 * n)
    spread = z * np.sqrt(p * (1 - p) / n + z * z / (4 * n * n))
    return float(max(0.0, (centre - spread) / (1 + z * z / n)))


def mcnemar_p(y: np.ndarray, cand: np.ndarray, champ: np.ndarray) -> float:
    """Exact two-sided McNemar p-value on the discordant pairs."""
    from scipy.stats import binomtest

    b = int(np.sum((cand == y) & (champ != y)))
    c = int(np.sum((cand != y) & (champ == y)))
    if b + c == 0:
        return 1.0
    return float(binomtest(b, b + c, 0.5).pvalue)


def expected_calibration_error(confidence: np.ndarray, correct: np.ndarray, n_bins: int = 10
                               ) -> tuple[float, list[dict[str, float]]]:
    """ECE with equal-width confidence bins, plus the bins for a reliability plot."""
    edges = np.linspace(0, 1, n_bins + 1)
    ece, bins = 0.0, []
    for lo, hi in zip(edges[:-1], edges[1:]):
        mask = (confidence > lo) & (confidence <= hi)
        if not mask.any():
            continue
        conf, acc = float(confidence[mask].mean()), float(correct[mask].mean())
        ece += mask.mean() * abs(acc - conf)
        bins.append({"lower": float(lo), "upper": float(hi), "confidence": conf, "accuracy": acc,
                     "count": int(mask.sum())})
    return float(ece), bins
