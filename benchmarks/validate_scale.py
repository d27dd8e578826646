"""Validation plus split of N synthetic rows: wall time and peak memory.

    .venv/bin/python benchmarks/validate_scale.py [--rows 1000000]

Last line: RESULT rows=<n> seconds=<s> peak_mib=<m>. Target: 1,000,000 rows in <= 60 s and <= 4 GiB.
The timed part is exactly what the training flow runs: the GX suite (every rule, Data Docs
excluded), the profile, and the stratified split with exact and MinHash near-duplicate grouping.
"""

from __future__ import annotations

import argparse
import resource
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks._report import Results, bar_chart, machine  # noqa: E402
from components.data.profile import build_profile  # noqa: E402
from components.data.split import split_frame  # noqa: E402
from components.data.validation import ValidationPolicy, validate_frame  # noqa: E402

LABELS = ["business", "entertainment", "politics", "sport", "tech"]


def synthetic(rows: int, seed: int = 0) -> pd.DataFrame:
    """Rows of 8-30 words; each class draws most words from its own part of a 20k-word vocabulary; 2% duplicates."""
    rng = np.random.default_rng(seed)
    vocab = np.array([f"w{i}" for i in range(20_000)])
    labels = rng.integers(0, len(LABELS), size=rows)
    lengths = rng.integers(8, 31, size=rows)
    words = rng.integers(0, 4_000, size=(rows, 30)) + labels[:, None] * 4_000
    texts = [" ".join(vocab[w[:n]]) for w, n in zip(words, lengths)]
    dup = rng.choice(rows, size=rows // 50, replace=False)
    for i in dup:
        texts[i] = texts[(i + 1) % rows].upper()
        labels[i] = labels[(i + 1) % rows]
    return pd.DataFrame({"text": texts, "label": np.array(LABELS)[labels]})


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--no-write", action="store_true", help="do not update docs/benchmarks.md")
    args = parser.parse_args()
    df = synthetic(args.rows)
    print(f"generated {len(df):,} rows; validating and splitting...", flush=True)
    start = time.perf_counter()
    t0 = time.perf_counter()
    report = validate_frame(df, ValidationPolicy(labels=LABELS, min_examples_per_class=5), "synthetic")
    t_validate = time.perf_counter() - t0
    t0 = time.perf_counter()
    build_profile(df, "text", "label")
    t_profile = time.perf_counter() - t0
    t0 = time.perf_counter()
    splits = split_frame(df, "text", "label", 0.8, 0.1, 0.1, 42, near_duplicate_threshold=0.8)
    t_split = time.perf_counter() - t0
    seconds = time.perf_counter() - start
    peak_mib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    assert report.passed, report.summary()
    print(f"validate {t_validate:.1f}s, profile {t_profile:.1f}s, split {t_split:.1f}s; "
          f"split sizes {splits.manifest.sizes}, leakage {splits.manifest.leakage}, "
          f"{splits.manifest.duplicate_groups} duplicate groups; warnings: {[r.rule for r in report.warnings]}")
    results = Results("Validation and split at scale")
    results.add(f"RESULT rows={len(df)} seconds={seconds:.1f} peak_mib={peak_mib:.0f}")
    if not args.no_write:
        results.write(f"""
`benchmarks/validate_scale.py --rows {args.rows}` on {machine()}.

| rows | validate (GX suite) | profile | split (exact + MinHash near-duplicates) | total | peak RSS (whole process) |
|---|---|---|---|---|---|
| {len(df):,} | {t_validate:.1f} s | {t_profile:.1f} s | {t_split:.1f} s | **{seconds:.1f} s** | **{peak_mib:,.0f} MiB** |

Target: 1,000,000 rows in at most 60 s and 4 GiB. Split leakage {splits.manifest.leakage}; \
{splits.manifest.duplicate_groups} duplicate groups kept inside one split.

{bar_chart("validate_scale", f"Validation and split of {len(df):,} rows: seconds per stage and peak memory",
           {"seconds": {"validate": t_validate, "profile": t_profile, "split": t_split, "total": seconds,
                        "target": 60.0}},
           "seconds", second=("MiB", {"peak RSS": {"measured": peak_mib, "target": 4096.0}}))}
""")


if __name__ == "__main__":
    main()
