"""Long documents: how a text longer than `max_length` tokens becomes model inputs, and how the logits of
its windows become the document's logits.

A package records its strategy (`long_text`, `long_text_stride`, `max_windows` in `fineship.json`, from
`training.long_text` and kin), and training, evaluation, the HTTP server, the SageMaker handler, exported
backends and batch prediction all go through `encode_windows` and `aggregate_logits` (via
`components.package.TextClassifier.logits`), so they read a document the same way.

- ``truncate``: the first `max_length` tokens, cut by the tokenizer (fineship's behaviour before this
  setting existed, and the default, so older packages load and predict unchanged).
- ``head_tail``: one window of the text's first quarter of the token budget and the rest from its end.
  Sun et al. 2019, "How to Fine-Tune BERT for Text Classification", found head 128 + tail 382 tokens
  (of BERT's 510) the best way to cut IMDb reviews: a quarter head, three quarters tail.
- ``chunks``: overlapping windows of `max_length` tokens (special tokens included); consecutive windows
  share `stride` tokens, the meaning of `stride` in Hugging Face tokenizers' `return_overflowing_tokens`,
  so the windows are theirs. A document gets at most `max_windows` windows: a longer one gets that many
  spread evenly over it, its first and last window always among them (the middle is then read in part).
  The cap bounds the work one text can cost a server: at most `max_windows` forward rows per text.

Every window carries the model's special tokens where the tokenizer puts them ([CLS] ... [SEP] for BERT,
<s> ... </s> for RoBERTa, none for GPT-2). A document's logits are the mean of its windows' logits
(`aggregate_logits`): every window counts the same, whichever way it leans; training gives each window
its document's label, and validation scores documents through the same mean.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal, get_args

import numpy as np

from components.errors import ModelPackageError

LongText = Literal["truncate", "head_tail", "chunks"]
LONG_TEXT_STRATEGIES: tuple[str, ...] = get_args(LongText)
HEAD_SHARE = 0.25
"""head_tail: the head's share of the token budget, rounded up (128 of BERT's 510, as Sun et al. 2019)."""
DEFAULT_MAX_WINDOWS = 8


def default_stride(max_length: int) -> int:
    """chunks: the overlap used when none is configured, a quarter of the window."""
    return max_length // 4


@dataclass(frozen=True)
class Windows:
    """Model inputs for a list of documents: one row of token ids per window (special tokens included,
    unpadded) and, for each window, the position of its document in the input list."""

    input_ids: list[list[int]]
    doc_index: list[int]
    n_docs: int


def check_strategy(strategy: str) -> None:
    """Raise `ModelPackageError` when `strategy` is no known long-text strategy."""
    if strategy not in LONG_TEXT_STRATEGIES:
        raise ModelPackageError(f"unknown long_text strategy {strategy!r}; it must be one of "
                                f"{', '.join(LONG_TEXT_STRATEGIES)} (or upgrade fineship, if a newer one wrote the "
                                f"package)")


def special_token_counts(tokenizer: Any) -> tuple[int, int]:
    """How many special tokens the tokenizer puts before and after a single text (BERT: 1 and 1; GPT-2: 0 and 0)."""
    probe = "long text probe"
    bare = tokenizer(probe, add_special_tokens=False)["input_ids"]
    full = tokenizer(probe)["input_ids"]
    for before in range(len(full) - len(bare) + 1):
        if full[before:before + len(bare)] == bare:
            return before, len(full) - len(bare) - before
    raise ModelPackageError(f"cannot tell where the tokenizer {type(tokenizer).__name__} puts its special tokens "
                            "(the text's tokens do not appear as one run in its encoding); use long_text truncate")


def window_starts(n_tokens: int, body: int, overlap: int, max_windows: int) -> list[int]:
    """Where each chunk window starts in a text of `n_tokens` tokens (special tokens excluded).

    Windows hold `body` tokens and consecutive ones share `overlap` tokens; the last ends at the text's end.
    More than `max_windows` windows are thinned to `max_windows` evenly spaced ones, first and last kept.
    """
    step = body - overlap
    starts = [0]
    while starts[-1] + body < n_tokens:
        starts.append(starts[-1] + step)
    if len(starts) > max_windows:
        keep = np.linspace(0, len(starts) - 1, max_windows).round().astype(int)
        starts = [starts[i] for i in keep]
    return starts


def encode_windows(tokenizer: Any, texts: Sequence[str], strategy: str, max_length: int, stride: int | None = None,
                   max_windows: int = DEFAULT_MAX_WINDOWS) -> Windows:
    """The model inputs of `texts` (already preprocessed) under a long-text strategy; see the module docstring.

    `stride` (chunks) is the tokens consecutive windows share, `default_stride` when None; it is clamped
    below the window's text tokens so windows always advance.
    """
    check_strategy(strategy)
    if max_windows < 1:
        raise ModelPackageError(f"max_windows must be at least 1, got {max_windows}")
    texts = list(texts)
    if not texts:  # fast tokenizers fail on an empty batch
        return Windows([], [], 0)
    if strategy == "truncate":
        ids = tokenizer(texts, truncation=True, max_length=max_length)["input_ids"]
        return Windows([list(i) for i in ids], list(range(len(texts))), len(texts))
    before, after = special_token_counts(tokenizer)
    body = max_length - before - after
    if body < 2:
        raise ModelPackageError(f"max_length {max_length} leaves {body} tokens beside the tokenizer's "
                                f"{before + after} special tokens; raise max_length")
    overlap = min(default_stride(max_length) if stride is None else stride, body - 1)
    # verbose=False: these encodings are meant to be longer than the model's maximum, the windows are not.
    full = tokenizer(texts, verbose=False)["input_ids"]
    rows: list[list[int]] = []
    doc_index: list[int] = []
    for d, ids in enumerate(full):
        prefix, text_ids, suffix = ids[:before], ids[before:len(ids) - after], ids[len(ids) - after:]
        if len(text_ids) <= body:
            pieces = [text_ids]
        elif strategy == "head_tail":
            head = math.ceil(body * HEAD_SHARE)
            pieces = [text_ids[:head] + text_ids[len(text_ids) - (body - head):]]
        else:
            pieces = [text_ids[s:s + body] for s in window_starts(len(text_ids), body, overlap, max_windows)]
        rows.extend(prefix + piece + suffix for piece in pieces)
        doc_index.extend([d] * len(pieces))
    return Windows(rows, doc_index, len(texts))


def aggregate_logits(window_logits: np.ndarray, doc_index: Sequence[int], n_docs: int) -> np.ndarray:
    """Document logits, shape (n_docs, n_labels): the mean of each document's window logits.

    The one aggregation every path uses (validation during training, every prediction path). A document
    must have at least one window.
    """
    window_logits = np.asarray(window_logits, dtype=np.float64)
    index = np.asarray(doc_index, dtype=np.int64)
    counts = np.bincount(index, minlength=n_docs)
    if (counts == 0).any():
        raise ModelPackageError(f"documents {np.flatnonzero(counts == 0).tolist()[:5]} have no windows")
    sums = np.zeros((n_docs, window_logits.shape[1]), dtype=np.float64)
    np.add.at(sums, index, window_logits)
    return (sums / counts[:, None]).astype(np.float32)


def pad_windows(rows: Sequence[Sequence[int]], pad_id: int, padding_side: str) -> tuple[np.ndarray, np.ndarray]:
    """`rows` padded to the longest on `padding_side`: (input_ids, attention_mask), int64 arrays."""
    width = max((len(r) for r in rows), default=0)
    ids = np.full((len(rows), width), pad_id, dtype=np.int64)
    mask = np.zeros((len(rows), width), dtype=np.int64)
    for i, row in enumerate(rows):
        span = slice(width - len(row), width) if padding_side == "left" else slice(0, len(row))
        ids[i, span] = row
        mask[i, span] = 1
    return ids, mask
