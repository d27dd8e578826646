"""Data profiles and drift: what the champion was trained on, compared with today's data.

A profile is stored with every model version (as a run artifact) so the next run can compare
label distribution (PSI), text length (two-sample Kolmogorov-Smirnov), vocabulary
(out-of-vocabulary rate) and the label set itself.
"""

from __future__ import annotations

import re
from collections import Counter

import numpy as np
import pandas as pd
from pydantic import BaseModel, ConfigDict, Field

from components.config import DriftPolicy
from components.data.validation import RuleResult

__all__ = ["DataProfile", "DriftPolicy", "build_profile", "compare_profiles", "oov_rate", "psi"]

PROFILE_VERSION = 1
_TOKEN = re.compile(r"[a-z0-9']+")
LENGTH_SAMPLE = 2000
VOCAB_SIZE = 20_000
TEXT_SAMPLE = 50_000


class DataProfile(BaseModel):
    """A compact summary of a labelled text dataset."""

    model_config = ConfigDict(frozen=True)

    profile_version: int = PROFILE_VERSION
    rows: int
    label_counts: dict[str, int]
    length_quantiles: dict[str, float] = Field(description="Characters per text at 0, 5, 25, 50, 75, 95, 100%.")
    length_sample: list[int] = Field(description="Up to 2,000 text lengths (characters), for the KS test.")
    vocabulary: list[str] = Field(description="The most frequent word tokens (up to 20,000).")


def _tokens(texts: pd.Series) -> Counter:
    counts: Counter = Counter()
    for t in texts:
        counts.update(_TOKEN.findall(t.lower()))
    return counts


def _sample(s: pd.Series, n: int, seed: int) -> pd.Series:
    return s.sample(n, random_state=seed) if len(s) > n else s


def build_profile(df: pd.DataFrame, text_col: str, label_col: str, seed: int = 0) -> DataProfile:
    """Profile a (validated) dataset."""
    text = df[text_col].astype(str)
    lengths = text.str.len()
    qs = [0, 5, 25, 50, 75, 95, 100]
    vocab = _tokens(_sample(text, TEXT_SAMPLE, seed)).most_common(VOCAB_SIZE)
    return DataProfile(
        rows=len(df),
        label_counts={str(k): int(v) for k, v in df[label_col].astype(str).value_counts().sort_index().items()},
        length_quantiles={f"p{q}": float(np.percentile(lengths, q)) if len(lengths) else 0.0 for q in qs},
        length_sample=[int(v) for v in _sample(lengths, LENGTH_SAMPLE, seed)],
        vocabulary=[w for w, _ in vocab],
    )


def psi(reference: dict[str, int], current: dict[str, int], eps: float = 1e-4) -> float:
    """Population stability index between two label distributions."""
    labels = sorted(set(reference) | set(current))
    r = np.array([reference.get(k, 0) for k in labels], dtype=float)
    c = np.array([current.get(k, 0) for k in labels], dtype=float)
    r = np.clip(r / max(r.sum(), 1), eps, None)
    c = np.clip(c / max(c.sum(), 1), eps, None)
    return float(np.sum((c - r) * np.log(c / r)))


def oov_rate(reference_vocab: list[str], texts: pd.Series, seed: int = 0) -> float:
    """Share of word tokens in `texts` that the reference vocabulary does not hold."""
    known = set(reference_vocab)
    counts = _tokens(_sample(texts.astype(str), TEXT_SAMPLE, seed))
    total = sum(counts.values())
    return float(sum(n for w, n in counts.items() if w not in known) / total) if total else 0.0


def compare_profiles(reference: DataProfile, current: DataProfile, texts: pd.Series, policy: DriftPolicy,
                     reference_name: str = "champion") -> list[RuleResult]:
    """Drift findings as rule results, ready to append to a `ValidationReport`."""
    from scipy.stats import ks_2samp

    out: list[RuleResult] = []
    appeared = sorted(set(current.label_counts) - set(reference.label_counts))
    vanished = sorted(set(reference.label_counts) - set(current.label_counts))
    changed = bool(appeared or vanished)
    out.append(RuleResult(
        rule="drift_label_set", severity="error" if policy.label_set_change == "error" else "warning",
        success=not changed, column=None,
        message="ok" if not changed else f"labels appeared {appeared} / vanished {vanished} since the "
        f"{reference_name}'s data; if intended, set data.labels explicitly (a new label set is a new model)"))
    value = psi(reference.label_counts, current.label_counts)
    out.append(RuleResult(
        rule="drift_label_distribution", severity="warning", success=value <= policy.max_label_psi,
        message="ok" if value <= policy.max_label_psi else f"label distribution PSI {value:.3f} > "
        f"{policy.max_label_psi} against the {reference_name}'s data; check the sampling of the new data",
        examples=[{"psi": round(value, 4), "reference": reference.label_counts, "current": current.label_counts}]))
    ks = ks_2samp(reference.length_sample, current.length_sample) if reference.length_sample and current.length_sample \
        else None
    stat = float(ks.statistic) if ks is not None else 0.0
    out.append(RuleResult(
        rule="drift_text_length", severity="warning", success=stat <= policy.max_length_ks,
        message="ok" if stat <= policy.max_length_ks else f"text lengths moved: KS statistic {stat:.3f} > "
        f"{policy.max_length_ks} (median {reference.length_quantiles.get('p50', 0):.0f} -> "
        f"{current.length_quantiles.get('p50', 0):.0f} characters)",
        examples=[{"ks_statistic": round(stat, 4), "p_value": float(ks.pvalue) if ks is not None else 1.0}]))
    rate = oov_rate(reference.vocabulary, texts)
    out.append(RuleResult(
        rule="drift_vocabulary", severity="warning", success=rate <= policy.max_oov_rate,
        message="ok" if rate <= policy.max_oov_rate else f"{rate:.0%} of word tokens are outside the "
        f"{reference_name}'s vocabulary (> {policy.max_oov_rate:.0%}); the data may come from another domain",
        examples=[{"oov_rate": round(rate, 4)}]))
    return out
