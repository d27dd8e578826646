"""Cleaning before validation: the `data.rules` drop and repair policies.

Repairs run first (control characters stripped, or restored when they are Windows-1252 punctuation
read as C1 controls; spreadsheet float labels read as integers), then the drops, in the order of
`DROP_ORDER`; a row is counted against the first rule that drops it. Each rule decides on the content
of a row alone (or, for duplicates and conflicts, on its group), so the same data and policy always
keep the same rows; the rows keep their index, so later reports name the rows of the file as it was
read. The input file's fingerprint is untouched: cleaning is a recorded step.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd

from components.data.split import Splits, row_hashes
from components.data.validation import (
    CONTROL_CHARS,
    FLOAT_LABEL,
    CleanedRule,
    CleaningReport,
    ValidationPolicy,
    conflicting,
    label_kind_ok,
    label_strings,
    normalise_text,
    string_mask,
)

log = logging.getLogger(__name__)

EXAMPLES = 5
_CONTROL = re.compile(CONTROL_CHARS)
_SPACE_LIKE = re.compile(r"[\x0b\x0c\x1c-\x1f\x85]")  # vertical tab, form feed, separators, next line
_BLANK = re.compile(r"^\s*$")
_FLOAT_LABEL = re.compile(FLOAT_LABEL)


@dataclass(frozen=True)
class Cleaned:
    """A frame after the drop / repair policies, what was done, and the content hashes of the dropped rows."""

    frame: pd.DataFrame
    report: CleaningReport | None  # None: no rule of the policy drops or repairs
    removed_rows: dict[str, list[str]] = field(default_factory=dict)


def _cp1252(c: str) -> str:
    try:
        return c.encode("latin-1").decode("cp1252")
    except UnicodeDecodeError:  # 0x81, 0x8d, 0x8f, 0x90, 0x9d: no Windows-1252 character
        return ""


# C1 controls are almost always Windows-1252 punctuation decoded as Latin-1 (\x92 for a right quote): restore it.
_C1 = {chr(b): _cp1252(chr(b)) for b in range(0x80, 0xA0) if chr(b) != "\x85"}


def repair_control_characters(text: str) -> str:
    """`text` without control characters, U+FFFD and lone surrogates: line-breaking ones become spaces, Windows-1252
    punctuation read as C1 controls becomes that punctuation (\x92 -> ’), the rest are removed."""
    text = _SPACE_LIKE.sub(" ", text)
    return _CONTROL.sub(lambda m: _C1.get(m.group(), ""), text)


def _strings(s: pd.Series) -> pd.Series:
    return s.where(string_mask(s), None)


def _not_null_text(df: pd.DataFrame, p: ValidationPolicy) -> np.ndarray:
    return df[p.text_column].isna().to_numpy()


def _not_string(df: pd.DataFrame, p: ValidationPolicy) -> np.ndarray:
    col = df[p.text_column]
    return ~string_mask(col) & col.notna().to_numpy()


def _blank(df: pd.DataFrame, p: ValidationPolicy) -> np.ndarray:
    return np.array([isinstance(t, str) and bool(_BLANK.search(t)) for t in df[p.text_column]], dtype=bool)


def _control(df: pd.DataFrame, p: ValidationPolicy) -> np.ndarray:
    return np.array([isinstance(t, str) and bool(_CONTROL.search(t)) for t in df[p.text_column]], dtype=bool)


def _length(df: pd.DataFrame, p: ValidationPolicy) -> np.ndarray:
    chars = df[p.text_column].map(lambda t: len(t) if isinstance(t, str) else None).astype("float")
    return ((chars < p.min_chars) | (chars > p.max_chars)).to_numpy()


def _no_label(df: pd.DataFrame, p: ValidationPolicy) -> np.ndarray:
    return df[p.label_column].isna().to_numpy()


def _label_kind(df: pd.DataFrame, p: ValidationPolicy) -> np.ndarray:
    return ~label_kind_ok(label_strings(df[p.label_column])).astype(bool).to_numpy()


def _outside_set(df: pd.DataFrame, p: ValidationPolicy) -> np.ndarray:
    labels = label_strings(df[p.label_column])
    if p.labels is None:
        return np.zeros(len(df), dtype=bool)
    return (labels.notna() & ~labels.isin(set(p.labels))).to_numpy()


def _conflicts(df: pd.DataFrame, p: ValidationPolicy) -> np.ndarray:
    return conflicting(normalise_text(df[p.text_column]), label_strings(df[p.label_column])).to_numpy()


def _duplicates(df: pd.DataFrame, p: ValidationPolicy) -> np.ndarray:
    """All but one row of each (normalised text, label): the kept one has the smallest text as written."""
    text = _strings(df[p.text_column])
    key = pd.DataFrame({"n": normalise_text(text).to_numpy(), "y": label_strings(df[p.label_column]).to_numpy(),
                        "raw": text.to_numpy(), "pos": np.arange(len(df))}).dropna(subset=["n"])
    key = key.sort_values(["n", "y", "raw", "pos"], na_position="last")
    mask = np.zeros(len(df), dtype=bool)
    mask[key.loc[key.duplicated(subset=["n", "y"]), "pos"].to_numpy()] = True
    return mask


def _small_class(df: pd.DataFrame, p: ValidationPolicy) -> np.ndarray:
    labels = label_strings(df[p.label_column])
    counts = labels.map(labels.value_counts(dropna=True))
    return (labels.notna() & (counts < p.min_examples_per_class)).to_numpy()


DROP_ORDER: dict[str, Callable[[pd.DataFrame, ValidationPolicy], np.ndarray]] = {
    "text_not_null": _not_null_text, "text_is_string": _not_string, "text_not_blank": _blank,
    "control_characters": _control, "text_length": _length, "label_not_null": _no_label, "label_types": _label_kind,
    "labels_in_set": _outside_set, "conflicting_labels": _conflicts, "duplicates": _duplicates,
    "min_examples_per_class": _small_class,
}
"""The rules that may drop rows, in the order they are applied."""


def _value(v: Any) -> Any:
    if v is None or (isinstance(v, float) and v != v):
        return None
    if isinstance(v, str):
        return v if len(v) <= 120 else v[:117] + "..."
    if isinstance(v, np.generic):
        return v.item()
    return v if isinstance(v, (int, float, bool)) else str(v)


def _row(i: Any) -> int | str:
    return int(i) if isinstance(i, (int, np.integer)) else str(i)


def _row_examples(df: pd.DataFrame, p: ValidationPolicy) -> list[dict[str, Any]]:
    head = df.head(EXAMPLES)
    return [{"row": _row(i), p.text_column: _value(t), p.label_column: _value(y)}
            for i, t, y in zip(head.index, head[p.text_column], head[p.label_column])]


def _excerpts(before: Any, after: Any, width: int = 60) -> dict[str, Any]:
    """Before and after, cut to the stretch around the first change so the change shows."""
    if not (isinstance(before, str) and isinstance(after, str)) or max(len(before), len(after)) <= 2 * width:
        return {"before": _value(before), "after": _value(after)}
    at = next((k for k, (a, b) in enumerate(zip(before, after)) if a != b), min(len(before), len(after)))
    start = max(0, at - width // 2)
    cut = lambda s: ("..." if start else "") + s[start:start + width] + ("..." if len(s) > start + width else "")  # noqa: E731
    return {"before": cut(before), "after": cut(after)}


def _repair(df: pd.DataFrame, column: str, fix: Callable[[Any], Any], applies: Callable[[Any], bool],
            rule: str) -> tuple[pd.DataFrame, CleanedRule]:
    values = df[column].astype(object).tolist()
    changed = [k for k, v in enumerate(values) if applies(v)]
    fixed = list(values)
    for k in changed:
        fixed[k] = fix(values[k])
    examples = [{"row": _row(df.index[k]), "column": column, **_excerpts(values[k], fixed[k])}
                for k in changed[:EXAMPLES]]
    out = df.copy()
    out[column] = pd.Series(fixed, index=df.index, dtype=object)
    return out, CleanedRule(rule=rule, action="repair", rows=len(changed), examples=examples)


def clean_frame(df: pd.DataFrame, policy: ValidationPolicy) -> Cleaned:
    """Apply the policy's drop and repair rules to `df` (returned as is when none applies)."""
    t, y = policy.text_column, policy.label_column
    if not policy.cleans or t not in df.columns or y not in df.columns:
        return Cleaned(frame=df, report=None)
    work, done, removed = df, [], {}
    if policy.action("control_characters") == "repair":
        work, rule = _repair(work, t, repair_control_characters,
                             lambda v: isinstance(v, str) and bool(_CONTROL.search(v)), "control_characters")
        done.append(rule)
    if policy.action("label_format") == "repair":
        work, rule = _repair(work, y, lambda v: str(v).split(".", 1)[0],
                             lambda v: not pd.isna(v) and bool(_FLOAT_LABEL.match(str(v))), "label_format")
        done.append(rule)
    for name, flagged in DROP_ORDER.items():
        if policy.action(name) != "drop":
            continue
        mask = flagged(work, policy)
        dropped = work[mask]
        done.append(CleanedRule(rule=name, action="drop", rows=int(mask.sum()), examples=_row_examples(dropped, policy)))
        removed[name] = sorted(row_hashes(normalise_text(dropped[t]), dropped[y].astype(str)))
        work = work[~mask]
    report = CleaningReport(rows_in=len(df), rows_out=len(work), rules=done)
    log.info("cleaned %d rows into %d: %s", len(df), len(work), "; ".join(report.lines()))
    return Cleaned(frame=work, report=report, removed_rows=removed)


def evaluation_file_policy(policy: ValidationPolicy) -> ValidationPolicy:
    """The policy an explicit validation or test file is checked (and cleaned) with: any class size will do."""
    return policy.model_copy(update={"min_examples_per_class": 1})


def clean_frames(frames: Mapping[str, pd.DataFrame | None], policy: ValidationPolicy | None,
                 ) -> tuple[dict[str, pd.DataFrame | None], list[Cleaned]]:
    """Clean the training frame ("train") with `policy` and the explicit evaluation files with
    `evaluation_file_policy(policy)`; frames are returned as they are when `policy` is None."""
    if policy is None:
        return dict(frames), []
    out: dict[str, pd.DataFrame | None] = {}
    done = []
    for name, frame in frames.items():
        if frame is None:
            out[name] = None
            continue
        cleaned = clean_frame(frame, policy if name == "train" else evaluation_file_policy(policy))
        out[name] = cleaned.frame
        done.append(cleaned)
    return out, done


def with_removals(splits: Splits, cleaned: Sequence[Cleaned]) -> Splits:
    """`splits` whose manifest records the rows the policies removed (counts and content hashes) and repaired."""
    removed: dict[str, int] = {}
    hashes: dict[str, list[str]] = {}
    repaired: dict[str, int] = {}
    for c in cleaned:
        if c.report is None:
            continue
        for r in c.report.rules:
            target = removed if r.action == "drop" else repaired
            target[r.rule] = target.get(r.rule, 0) + r.rows
        for rule, rows in c.removed_rows.items():
            hashes[rule] = sorted(hashes.get(rule, []) + rows)
    manifest = splits.manifest.model_copy(update={"removed": removed, "removed_rows": hashes, "repaired": repaired})
    return splits.model_copy(update={"manifest": manifest})
