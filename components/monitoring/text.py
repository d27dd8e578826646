"""Text measures shared by the reference profile and the traffic: lengths and out-of-vocabulary words."""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Iterable, Sequence

import numpy as np
from pydantic import BaseModel, ConfigDict

# The word tokens of `components.data.profile` (its vocabulary is what OOV is measured against);
# tests/unit/test_monitoring.py checks both give the same rate.
_TOKEN = re.compile(r"[a-z0-9']+")
QUANTILES = (0, 5, 25, 50, 75, 95, 100)


class OovStats(BaseModel):
    """Share of word tokens outside a vocabulary, and the most frequent of them."""

    model_config = ConfigDict(frozen=True)

    rate: float
    tokens: int
    top_unknown: list[tuple[str, int]]


def sample(values: Sequence, n: int, seed: int = 0) -> list:
    """Up to `n` of `values`, a seeded random choice kept in order."""
    if len(values) <= n:
        return list(values)
    idx = np.random.default_rng(seed).choice(len(values), n, replace=False)
    return [values[i] for i in sorted(idx)]


def length_quantiles(lengths: Sequence[int]) -> dict[str, float]:
    """Characters per text at the 0, 5, 25, 50, 75, 95 and 100th percentiles."""
    return {f"p{q}": float(np.percentile(lengths, q)) if len(lengths) else 0.0 for q in QUANTILES}


def oov_stats(vocabulary: Iterable[str], texts: Iterable[str], top: int = 15) -> OovStats:
    """Out-of-vocabulary rate of `texts` against `vocabulary` (lower-cased word tokens)."""
    known = set(vocabulary)
    counts: Counter = Counter()
    for t in texts:
        counts.update(_TOKEN.findall(str(t).lower()))
    total = sum(counts.values())
    unknown = Counter({w: n for w, n in counts.items() if w not in known})
    return OovStats(rate=sum(unknown.values()) / total if total else 0.0, tokens=total,
                    top_unknown=unknown.most_common(top))
