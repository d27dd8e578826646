"""Parity between a package's eager model and an export of it: same labels, logits within a tolerance.

Both sides get the very same token ids for every batch, so any difference is the export's. Texts are
batched in the order given (the test split is shuffled, so batches mix short and long texts and
carry padding) at each batch size, plus a few length variants (one word to past the maximum length)
so the check covers shapes the export was not made with.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from components.errors import ExportError

Tokenize = Callable[[list[str]], tuple[np.ndarray, np.ndarray]]
"""texts -> (input_ids, attention_mask), int64 arrays of shape (batch, length)."""
Runner = Callable[[np.ndarray, np.ndarray], np.ndarray]
"""(input_ids, attention_mask) -> logits, float32 array of shape (batch, n_labels)."""

DEFAULT_BATCH_SIZES = (1, 8, 32)
DEFAULT_TOLERANCE = 1e-4


class BatchSizeParity(BaseModel):
    """Parity at one batch size."""

    model_config = ConfigDict(frozen=True, ser_json_inf_nan="constants")

    batch_size: int
    n_texts: int
    n_batches: int
    min_length: int = Field(description="Shortest padded batch, in tokens.")
    max_length: int = Field(description="Longest padded batch, in tokens.")
    padded_share: float = Field(description="Share of positions that are padding.")
    argmax_agreement: float
    max_abs_diff: float


class Disagreement(BaseModel):
    """One text on which the export and the model disagree (label, or logits beyond the tolerance)."""

    model_config = ConfigDict(frozen=True, ser_json_inf_nan="constants")

    batch_size: int
    text: str = Field(description="The text's first 120 characters.")
    eager_label: str
    export_label: str
    max_abs_diff: float


class ParityReport(BaseModel):
    """Does the export give the model's answers? `passed` needs argmax agreement >= `min_agreement` (100% for
    exact exports), finite logits and max |diff| <= tolerance (infinite for a quantised export)."""

    model_config = ConfigDict(frozen=True, ser_json_inf_nan="constants")

    kind: str
    n_texts: int
    batch_sizes: list[int]
    tolerance: float
    min_agreement: float = 1.0
    argmax_agreement: float
    max_abs_diff: float
    passed: bool
    per_batch_size: list[BatchSizeParity]
    disagreements: list[Disagreement] = Field(default_factory=list, description="Up to 5 examples.")

    def reasons(self) -> list[str]:
        """Why the check failed (empty when it passed)."""
        out = []
        if not np.isfinite(self.max_abs_diff):
            out.append("the export produced non-finite logits (NaN or inf)")
        if self.argmax_agreement < self.min_agreement:
            worst = [f"batch {b.batch_size}: {b.argmax_agreement:.2%}" for b in self.per_batch_size
                     if b.argmax_agreement < 1.0]
            allowed = f" (at most {1 - self.min_agreement:.2%} allowed)" if self.min_agreement < 1.0 else ""
            out.append(f"the export's top label differs from the model's on {1 - self.argmax_agreement:.2%} of "
                       f"predictions{allowed} ({', '.join(worst)})")
        if np.isfinite(self.max_abs_diff) and self.max_abs_diff > self.tolerance:
            out.append(f"max |logit difference| {self.max_abs_diff:.3g} is over the tolerance {self.tolerance:.0e}")
        for d in self.disagreements[:2]:
            out.append(f"e.g. at batch size {d.batch_size} {d.text[:60]!r}: model {d.eager_label}, "
                       f"export {d.export_label}, |diff| {d.max_abs_diff:.3g}")
        return out


class LatencyRow(BaseModel):
    """Median wall time of one batch, eager model vs export, on the same token ids."""

    model_config = ConfigDict(frozen=True, ser_json_inf_nan="constants")

    batch_size: int
    mean_length: float = Field(description="Mean padded length of the timed batches, in tokens.")
    eager_ms: float
    export_ms: float
    speedup: float = Field(description="eager_ms / export_ms")


def length_variants(texts: Sequence[str], max_length: int) -> list[str]:
    """A few texts of chosen lengths: one word, a few words, a dozen, and one far past `max_length` tokens."""
    words = " ".join(texts).split()
    if not words:
        return []
    long_words = (words * (1 + (4 * max_length) // len(words)))[: 4 * max_length]
    return [words[0], " ".join(words[:3]), " ".join(words[:12]), " ".join(long_words)]


def _batches(n: int, batch_size: int) -> list[slice]:
    return [slice(i, min(i + batch_size, n)) for i in range(0, n, batch_size)]


def check_parity(kind: str, tokenize: Tokenize, reference: Runner, candidate: Runner, texts: Sequence[str],
                 labels: Sequence[str], batch_sizes: Sequence[int] = DEFAULT_BATCH_SIZES,
                 tolerance: float = DEFAULT_TOLERANCE, min_agreement: float = 1.0) -> ParityReport:
    """Run `reference` (the eager model) and `candidate` (the export) on the same batches and compare.

    An exact export (TorchScript, ONNX fp32) must agree on every text (`min_agreement` 1.0) within
    `tolerance`; a quantised one is held to `min_agreement` with an infinite tolerance.
    """
    texts = list(texts)
    if not texts:
        raise ExportError("no texts for the parity check; pass the test split's texts")
    per_bs: list[BatchSizeParity] = []
    examples: list[Disagreement] = []
    total, agree, worst = 0, 0, 0.0
    for bs in batch_sizes:
        bs_agree, bs_worst, lengths, pads, cells = 0, 0.0, [], 0, 0
        for sl in _batches(len(texts), bs):
            chunk = texts[sl]
            ids, mask = tokenize(chunk)
            ref = np.asarray(reference(ids, mask), dtype=np.float64)
            got = np.asarray(candidate(ids, mask), dtype=np.float64)
            if ref.shape != got.shape:
                raise ExportError(f"the {kind} export returned logits of shape {got.shape} for a batch of shape "
                                  f"{ids.shape}; the model returned {ref.shape}")
            lengths.append(ids.shape[1])
            pads += int((mask == 0).sum())
            cells += mask.size
            diff = np.abs(ref - got).max(axis=1)
            diff[~np.isfinite(got).all(axis=1)] = np.inf
            same = ref.argmax(axis=1) == got.argmax(axis=1)
            bs_agree += int(same.sum())
            bs_worst = max(bs_worst, float(diff.max()))
            for i in np.flatnonzero(~same | (diff > tolerance)):
                if len(examples) < 5:
                    examples.append(Disagreement(batch_size=bs, text=chunk[i][:120], eager_label=labels[ref[i].argmax()],
                                                 export_label=labels[got[i].argmax()], max_abs_diff=float(diff[i])))
        per_bs.append(BatchSizeParity(batch_size=bs, n_texts=len(texts), n_batches=len(lengths),
                                      min_length=min(lengths), max_length=max(lengths),
                                      padded_share=pads / max(cells, 1), argmax_agreement=bs_agree / len(texts),
                                      max_abs_diff=bs_worst))
        total += len(texts)
        agree += bs_agree
        worst = max(worst, bs_worst)
    agreement = agree / total
    return ParityReport(kind=kind, n_texts=len(texts), batch_sizes=list(batch_sizes), tolerance=tolerance,
                        min_agreement=min_agreement, argmax_agreement=agreement, max_abs_diff=worst,
                        passed=bool(agreement >= min_agreement and np.isfinite(worst) and worst <= tolerance),
                        per_batch_size=per_bs,
                        disagreements=examples)


def measure_latency(tokenize: Tokenize, reference: Runner, candidate: Runner, texts: Sequence[str],
                    batch_sizes: Sequence[int] = DEFAULT_BATCH_SIZES, max_batches: int = 4,
                    repeats: int = 3) -> list[LatencyRow]:
    """Median per-batch wall time of both runners on up to `max_batches` batches per batch size.

    The runners alternate batch by batch, each warmed up on every batch first (TorchScript's
    profiling executor optimises a shape on its first runs).
    """
    texts = list(texts)
    if not texts:
        return []
    rows = []
    for bs in batch_sizes:
        pool = (texts * (1 + (bs * max_batches) // len(texts)))[: bs * max_batches]
        encoded = [tokenize(pool[sl]) for sl in _batches(len(pool), bs)]
        for ids, mask in encoded:  # warm-up
            for run in (reference, candidate, candidate):
                run(ids, mask)
        times: dict[str, list[float]] = {"eager": [], "export": []}
        for _ in range(repeats):
            for ids, mask in encoded:
                for name, run in (("eager", reference), ("export", candidate)):
                    t0 = time.perf_counter()
                    run(ids, mask)
                    times[name].append(time.perf_counter() - t0)
        eager_ms = float(np.median(times["eager"]) * 1000)
        export_ms = float(np.median(times["export"]) * 1000)
        rows.append(LatencyRow(batch_size=bs, mean_length=float(np.mean([ids.shape[1] for ids, _ in encoded])),
                               eager_ms=round(eager_ms, 3), export_ms=round(export_ms, 3),
                               speedup=round(eager_ms / export_ms, 3) if export_ms > 0 else float("inf")))
    return rows


def require_parity(report: ParityReport) -> None:
    """Raise `ExportError` saying why, unless the report passed."""
    if not report.passed:
        raise ExportError(f"the {report.kind} export disagrees with its model and is refused: "
                          + "; ".join(report.reasons()))
