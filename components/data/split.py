"""Deterministic, stratified, leakage-free splitting.

Each row is keyed by a seeded hash of its normalised text, so the same data gives the same
split whatever the row order, and exact duplicates (after normalising case and whitespace)
always land in the same split. Within each class, groups are ordered by that hash and cut
into test, validation and train by the configured shares.
"""

from __future__ import annotations

import hashlib
import logging

import numpy as np
import pandas as pd
from pydantic import BaseModel, ConfigDict, Field

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
    removed: dict[str, int] = Field(
        default_factory=dict, description="Rows a data.rules drop policy removed before the split, per rule.")
    removed_rows: dict[str, list[str]] = Field(
        default_factory=dict, description="The content hashes (as row_hashes) of those rows, per rule.")
    repaired: dict[str, int] = Field(
        default_factory=dict, description="Rows a data.rules repair policy fixed before the split, per rule.")

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


def row_hashes(norm: pd.Series, labels: pd.Series) -> list[str]:
    """A 64-bit content hash (hex) of each row's normalised text and label (vectorised SipHash)."""
    hashed = pd.util.hash_pandas_object(pd.DataFrame({"t": norm.to_numpy(), "y": labels.to_numpy()}), index=False)
    return [f"{h:016x}" for h in hashed.to_numpy()]


def _group_keys(norm: pd.Series, seed: int) -> pd.Series:
    return pd.Series([hashlib.sha256(f"{seed}\x1f{t}".encode()).hexdigest() for t in norm], index=norm.index)


def _manifest(frames: dict[str, pd.DataFrame], text_col: str, label_col: str, seed: int,
              fractions: dict[str, float], dropped: int = 0, near_duplicate_groups: int = 0,
              normed: dict[str, pd.Series] | None = None) -> SplitManifest:
    normed = normed or {k: normalise_text(f[text_col]) for k, f in frames.items()}
    norms = {k: set(v.dropna()) for k, v in normed.items()}
    leakage = len((norms["train"] & norms["validation"]) | (norms["train"] & norms["test"])
                  | (norms["validation"] & norms["test"]))
    return SplitManifest(
        seed=seed,
        fractions=fractions,
        sizes={k: len(f) for k, f in frames.items()},
        class_sizes={k: {str(c): int(n) for c, n in f[label_col].astype(str).value_counts().sort_index().items()}
                     for k, f in frames.items()},
        row_hashes={k: sorted(row_hashes(normed[k], f[label_col].astype(str))) for k, f in frames.items()},
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
    # A group's identity is its smallest normalised text, so keys do not depend on row order.
    anchor = _group_anchors(norm, near_duplicate_threshold, seed)
    group, anchors = pd.factorize(anchor)
    group_key = _group_keys(pd.Series(anchors), seed).to_numpy()
    # Integer ranks make every later sort and groupby cheap, and order by content, not by input.
    key_rank = pd.Series(group_key).rank(method="dense").to_numpy().astype(np.int64)[group]
    label_code, label_names = pd.factorize(labels, sort=True)
    work = pd.DataFrame({"group": group, "key": key_rank, "label": label_code}, index=df.index)
    groups = _group_table(work)
    # Per class, in key order: a prefix of groups fills test, the next groups fill validation, the rest train.
    total = groups.groupby("label")["n"].transform("sum")
    small = total < 3  # too few rows to hold out any
    want_test = np.where(small | (test <= 0), 0, np.ceil(total * test))
    want_val = np.where(small | (validation <= 0), 0, np.ceil(total * validation))
    before = groups.groupby("label")["n"].cumsum() - groups["n"]
    in_test = before < want_test
    test_taken = groups["n"].where(in_test, 0).groupby(groups["label"]).transform("sum")
    in_val = ~in_test & (before - test_taken < want_val)
    dest_of_group = np.empty(len(anchors), dtype=np.int8)
    dest_of_group[groups.index.to_numpy()] = np.where(in_test, 2, np.where(in_val, 1, 0))
    dest = dest_of_group[group]
    # Order rows by content inside each split (group key, then text, then label).
    norm_rank = pd.factorize(norm, sort=True)[0]
    order = np.lexsort((label_code, norm_rank, key_rank))
    rows = {name: order[dest[order] == code] for code, name in ((0, "train"), (1, "validation"), (2, "test"))}
    frames = {name: df.iloc[idx].reset_index(drop=True) for name, idx in rows.items()}
    sizes = np.bincount(group, minlength=len(anchors))
    manifest = _manifest(frames, text_col, label_col, seed, {"train": train, "validation": validation, "test": test},
                         near_duplicate_groups=int((sizes > 1).sum()),
                         normed={name: norm.iloc[idx].reset_index(drop=True) for name, idx in rows.items()})
    log.info("split sizes %s, leakage %d", manifest.sizes, manifest.leakage)
    return Splits(train=frames["train"], validation=frames["validation"], test=frames["test"], manifest=manifest)


def _group_table(work: pd.DataFrame) -> pd.DataFrame:
    """One row per group: majority label (ties: the smallest label), size and key, sorted by (label, key)."""
    counts = work.groupby(["group", "label"], sort=False).size().rename("c").reset_index()
    majority = counts.sort_values(["group", "c", "label"], ascending=[True, False, True]).drop_duplicates("group")
    table = majority.set_index("group")[["label"]]
    table["n"] = work.groupby("group", sort=False).size()
    table["key"] = work.groupby("group", sort=False)["key"].first()
    return table.sort_values(["label", "key"])


def _group_anchors(norm: pd.Series, threshold: float | None, seed: int) -> pd.Series:
    """For each row, the smallest normalised text of its duplicate group (exact, or MinHash near-duplicate)."""
    if threshold is None or len(norm) < 2:
        return norm
    from components.data.near_dup import near_duplicate_groups, paused_gc

    uniques = sorted(set(norm))  # sorted: grouping must not depend on row order, and roots are the smallest texts
    roots = near_duplicate_groups(uniques, threshold, seed=seed)
    with paused_gc():
        by_text = {t: uniques[r] for t, r in zip(uniques, roots.tolist())}
        return pd.Series([by_text[t] for t in norm.tolist()], index=norm.index, dtype=object)


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
