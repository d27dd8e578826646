"""Deterministic, stratified, leakage-free splitting.

Each row is keyed by a seeded hash of its normalised text, so the same data gives the same
split whatever the row order, and exact duplicates (after normalising case and whitespace)
always land in the same split. Within each class, groups are ordered by that hash and cut
into test, validation and train by the configured shares.
"""

from __future__ import annotations

import hashlib
import logging
import math

import pandas as pd
from pydantic import BaseModel, ConfigDict

from components.data.validation import normalise_text

log = logging.getLogger(__name__)

SPLITS = ("train", "validation", "test")


class SplitManifest(BaseModel):
    """Which rows went where: content hashes per split, sizes per class, and cross-split leakage."""

    model_config = ConfigDict(frozen=True)

    seed: int
    fractions: dict[str, float]
    sizes: dict[str, int]
    class_sizes: dict[str, dict[str, int]]
    row_hashes: dict[str, list[str]]
    leakage: int  # normalised texts present in more than one split; always 0 for our own splits
    dropped_from_train: int = 0  # rows removed from train because an explicit eval file held them
    duplicate_groups: int = 0  # groups of two or more exact or near-duplicate rows, each kept in one split

    @property
    def digest(self) -> str:
        """A short hash identifying this exact split."""
        h = hashlib.sha256()
        for name in SPLITS:
            h.update(name.encode())
            for r in self.row_hashes.get(name, []):
                h.update(r.encode())
        return h.hexdigest()[:16]


class Splits(BaseModel):
    """The three frames plus their manifest."""

    model_config = ConfigDict(frozen=True, arbitrary_types_allowed=True)

    train: pd.DataFrame
    validation: pd.DataFrame
    test: pd.DataFrame
    manifest: SplitManifest

    def frame(self, name: str) -> pd.DataFrame:
        return getattr(self, name)


def _row_hash(norm: pd.Series, labels: pd.Series) -> pd.Series:
    return pd.Series([hashlib.sha256(f"{t}\x1f{y}".encode()).hexdigest()[:20] for t, y in zip(norm, labels)],
                     index=norm.index)


def _group_keys(norm: pd.Series, seed: int) -> pd.Series:
    return pd.Series([hashlib.sha256(f"{seed}\x1f{t}".encode()).hexdigest() for t in norm], index=norm.index)


def _manifest(frames: dict[str, pd.DataFrame], text_col: str, label_col: str, seed: int,
              fractions: dict[str, float], dropped: int = 0, near_duplicate_groups: int = 0) -> SplitManifest:
    norms = {k: set(normalise_text(f[text_col])) for k, f in frames.items()}
    leakage = len((norms["train"] & norms["validation"]) | (norms["train"] & norms["test"])
                  | (norms["validation"] & norms["test"]))
    return SplitManifest(
        seed=seed,
        fractions=fractions,
        sizes={k: len(f) for k, f in frames.items()},
        class_sizes={k: {str(c): int(n) for c, n in f[label_col].astype(str).value_counts().sort_index().items()}
                     for k, f in frames.items()},
        row_hashes={k: sorted(_row_hash(normalise_text(f[text_col]), f[label_col].astype(str))) for k, f in frames.items()},
        leakage=leakage,
        dropped_from_train=dropped,
        duplicate_groups=near_duplicate_groups,
    )


def split_frame(df: pd.DataFrame, text_col: str, label_col: str, train: float, validation: float,
                test: float, seed: int, near_duplicate_threshold: float | None = None) -> Splits:
    """Split `df` into train/validation/test, stratified by label.

    Exact duplicates (after normalisation) and, when `near_duplicate_threshold` is set, MinHash
    near-duplicates form groups that never span two splits.
    """
    norm = normalise_text(df[text_col]).fillna("")
    labels = df[label_col].astype(str)
    group = _group_ids(norm, near_duplicate_threshold, seed)
    # A group's identity is its smallest normalised text, so keys do not depend on row order.
    anchor = norm.groupby(group).transform("min")
    key = _group_keys(anchor, seed)
    work = pd.DataFrame({"group": anchor, "key": key, "label": labels}, index=df.index)
    groups = work.groupby("group", sort=False).agg(key=("key", "first"), label=("label", _majority),
                                                   n=("key", "size"))
    assignment: dict[str, str] = {}
    for _, g in groups.groupby("label", sort=True):
        g = g.sort_values("key")
        total = int(g["n"].sum())
        want_test = math.ceil(total * test) if total >= 3 and test > 0 else 0
        want_val = math.ceil(total * validation) if total >= 3 and validation > 0 else 0
        taken = {"test": 0, "validation": 0}
        for name, n in zip(g.index, g["n"]):
            dest = "test" if taken["test"] < want_test else "validation" if taken["validation"] < want_val else "train"
            if dest != "train":
                taken[dest] += int(n)
            assignment[name] = dest
    dest = work["group"].map(assignment)
    # Order rows by content key inside each split so the frames do not depend on input order.
    ordered = work.assign(dest=dest, norm=norm).sort_values(["key", "norm", "label"])
    frames = {name: df.loc[ordered.index[ordered["dest"] == name]].reset_index(drop=True) for name in SPLITS}
    manifest = _manifest(frames, text_col, label_col, seed, {"train": train, "validation": validation, "test": test},
                         near_duplicate_groups=int((work.groupby("group")["key"].size() > 1).sum()))
    log.info("split sizes %s, leakage %d", manifest.sizes, manifest.leakage)
    return Splits(train=frames["train"], validation=frames["validation"], test=frames["test"], manifest=manifest)


def _majority(s: pd.Series) -> str:
    counts = s.value_counts()
    return str(counts.index[counts.to_numpy() == counts.max()].min())


def _group_ids(norm: pd.Series, threshold: float | None, seed: int) -> pd.Series:
    exact = norm.factorize()[0]
    if threshold is None or len(norm) < 2:
        return pd.Series(exact, index=norm.index)
    from components.data.near_dup import near_duplicate_groups

    uniques = sorted(set(norm))  # sorted: the grouping must not depend on row order
    near = near_duplicate_groups(uniques, threshold, seed=seed)
    by_text = dict(zip(uniques, near.tolist()))
    return pd.Series([by_text[t] for t in norm], index=norm.index)


def explicit_splits(train_df: pd.DataFrame, validation_df: pd.DataFrame | None, test_df: pd.DataFrame,
                    text_col: str, label_col: str, seed: int, validation: float = 0.1) -> Splits:
    """Use given evaluation files; rows of `train_df` whose text also appears in them are dropped from train.

    Without a validation file, validation rows are split off the (de-duplicated) training data.
    """
    held_out = set(normalise_text(test_df[text_col]))
    if validation_df is not None:
        held_out |= set(normalise_text(validation_df[text_col]))
    overlap = normalise_text(train_df[text_col]).isin(held_out)
    if overlap.any():
        log.warning("%d training rows also appear in the validation/test files; dropped from train", int(overlap.sum()))
    train_df = train_df[~overlap]
    if validation_df is None:
        inner = split_frame(train_df, text_col, label_col, 1 - validation, validation, 0.0, seed)
        train_df, validation_df = inner.train, inner.validation
    frames = {"train": train_df.reset_index(drop=True),
              "validation": validation_df.reset_index(drop=True), "test": test_df.reset_index(drop=True)}
    manifest = _manifest(frames, text_col, label_col, seed, {}, dropped=int(overlap.sum()))
    return Splits(**frames, manifest=manifest)
