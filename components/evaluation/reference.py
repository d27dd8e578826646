"""The frozen reference set: the test split a model version was evaluated on, stored with it.

Every training run writes its test split (text and label only) as JSON lines. When a version of that
run is champion, the next candidate is scored on this set as well as on its own new test split, so
that new data cannot move the yardstick: a candidate trained on relabelled data does well on its own,
equally relabelled, test split but not on the champion's. JSON lines are read with pandas as plain
data: nothing is ever unpickled.
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Sequence

import pandas as pd
from pydantic import BaseModel, ConfigDict, Field

from components.data.validation import normalise_text
from components.errors import DataLoadError
from components.evaluation.metrics import EvaluationReport

REFERENCE_ARTIFACT = "data/reference_test.jsonl"
"""Where a training run stores its frozen reference set (relative to the run's artifact root)."""
TEXT, LABEL = "text", "label"


class ReferenceSet(BaseModel):
    """Labelled texts frozen with a model version, identified by the hash of their content."""

    model_config = ConfigDict(frozen=True)

    texts: list[str]
    labels: list[str]
    source: str = Field("", description="Where the set came from, e.g. 'champion v3'.")

    @property
    def rows(self) -> int:
        return len(self.texts)

    @property
    def digest(self) -> str:
        """A short hash of the rows (in order): reports on the same set carry the same digest."""
        h = hashlib.sha256()
        for text, label in zip(self.texts, self.labels):
            h.update(f"{text}\x1f{label}\x1e".encode())
        return "reference-" + h.hexdigest()[:16]


class ReferenceScores(BaseModel):
    """Candidate and champion scored on the champion's frozen reference set, or why they were not."""

    model_config = ConfigDict(frozen=True)

    source: str = Field("", description="Whose reference set, e.g. 'champion v3'.")
    candidate: EvaluationReport | None = None
    champion: EvaluationReport | None = None
    left_out: int = Field(0, description="Reference rows this run trained on with the same label (left out: their "
                                         "scores would flatter the candidate).")
    missing: str | None = Field(None, description="Why there are no scores (no reference set stored, ...).")


def write_reference_set(test: pd.DataFrame, text_col: str, label_col: str, path: str | Path) -> Path:
    """Write a test split's texts and labels as JSON lines (`{"text": ..., "label": ...}` per row)."""
    out = Path(path)
    frame = pd.DataFrame({TEXT: test[text_col].astype(str).to_numpy(), LABEL: test[label_col].astype(str).to_numpy()})
    frame.to_json(out, orient="records", lines=True, force_ascii=False)
    return out


def read_reference_set(path: str | Path, source: str = "") -> ReferenceSet:
    """Read a reference set written by `write_reference_set`; `DataLoadError` names what is wrong with it."""
    p = Path(path)
    try:
        # dtype=False and convert_dates=False: take the values as written (a text "2024-01-01" stays a text).
        frame = pd.read_json(p, lines=True, dtype=False, convert_dates=False)
    except ValueError as err:
        raise DataLoadError(f"reference set {p} ({source or 'unknown source'}) is not JSON lines: {err}") from None
    missing = [c for c in (TEXT, LABEL) if c not in frame.columns]
    if missing or frame.empty:
        raise DataLoadError(f"reference set {p} ({source or 'unknown source'}) must hold rows with 'text' and "
                            f"'label'; it has {len(frame)} rows and columns {list(frame.columns)}")
    bad = frame[[TEXT, LABEL]].map(lambda v: not isinstance(v, str))
    if bad.to_numpy().any():
        row = int(bad.any(axis=1).to_numpy().argmax())
        raise DataLoadError(f"reference set {p} ({source or 'unknown source'}): row {row + 1} has a text or label "
                            "that is not a string")
    return ReferenceSet(texts=frame[TEXT].tolist(), labels=frame[LABEL].tolist(), source=source)


def leave_out_seen(reference: ReferenceSet, texts: Sequence[str], labels: Sequence[str]) -> tuple[ReferenceSet, int]:
    """Drop reference rows that appear among (`texts`, `labels`) with the same label; return the rest and the count.

    A candidate trained on a row with the same label scores it too well. A row trained on with a different
    label stays: how the candidate scores it is exactly the evidence the reference set is for.
    """
    seen = set(zip(normalise_text(pd.Series(list(texts), dtype=object)), map(str, labels)))
    keys = zip(normalise_text(pd.Series(reference.texts, dtype=object)), reference.labels)
    keep = [i for i, key in enumerate(keys) if key not in seen]
    if len(keep) == reference.rows:
        return reference, 0
    kept = reference.model_copy(update={"texts": [reference.texts[i] for i in keep],
                                        "labels": [reference.labels[i] for i in keep]})
    return kept, reference.rows - len(keep)
