"""Near-duplicate detection: MinHash over word shingles with LSH banding, vectorised with numpy.

Two texts whose estimated Jaccard similarity of word 3-shingles reaches the threshold end up in
one group; the splitter keeps every group inside one split.
"""

from __future__ import annotations

import gc
from contextlib import contextmanager
from itertools import chain
from typing import Iterator, Sequence

import numpy as np

_MASK32 = np.uint64(0xFFFFFFFF)
_SHIFT = np.uint64(32)


@contextmanager
def paused_gc() -> Iterator[None]:
    """Pause the cyclic garbage collector while millions of short-lived strings are created.

    Splitting a million texts into words allocates tens of millions of objects, none of them in a
    reference cycle; the collector's repeated passes over them more than doubled the time measured.
    """
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was_enabled:
            gc.enable()


def _shingle_hashes(texts: Sequence[str], k: int) -> tuple[np.ndarray, np.ndarray]:
    """Concatenated hashes of each text's word k-shingles, and the offset of each text's first shingle.

    Words are mapped to integer ids once (pandas factorize); a shingle's hash mixes the ids of its k
    words with numpy, so no per-shingle Python work is done. A text shorter than k words has one
    shingle made of all its words.
    """
    import pandas as pd

    with paused_gc():
        split = [t.split() for t in texts]
        lengths = np.fromiter(map(len, split), dtype=np.int64, count=len(split))
        flat = list(chain.from_iterable(split))
        del split
        ids = (pd.factorize(pd.Series(flat, dtype=object))[0].astype(np.uint64) + np.uint64(1)) if flat \
            else np.zeros(0, dtype=np.uint64)
        del flat
    word_start = np.concatenate([[0], np.cumsum(lengths)])
    n_shingles = np.maximum(lengths - k + 1, 1)
    offsets = np.concatenate([[0], np.cumsum(n_shingles)])
    # position of each shingle's first word in `ids`
    text_of = np.repeat(np.arange(len(texts)), n_shingles)
    first = word_start[text_of] + (np.arange(offsets[-1]) - offsets[text_of])
    padded = np.concatenate([ids, np.zeros(k, dtype=np.uint64)])
    h = np.zeros(offsets[-1], dtype=np.uint64)
    for j in range(k):
        # words past a short text's end count as id 0 (the padding word), never the next text's words
        valid = (first + j) < word_start[text_of + 1]
        part = np.where(valid, padded[np.minimum(first + j, len(padded) - 1)], np.uint64(0))
        h = (h * np.uint64(1_000_003) + part) & _MASK32  # stays below 2**52: no overflow
    return h, offsets


def minhash_signatures(texts: Sequence[str], num_perm: int = 64, shingle: int = 3, seed: int = 0) -> np.ndarray:
    """(n_texts, num_perm) MinHash signatures of normalised texts."""
    hashes, offsets = _shingle_hashes(texts, shingle)
    rng = np.random.default_rng(seed)
    # Multiply-shift hashing (Dietzfelbinger): odd 64-bit multipliers, arithmetic wraps mod 2**64,
    # the high 32 bits are the permuted value. No modulus, so it is fast in numpy.
    a = rng.integers(0, 1 << 63, size=num_perm, dtype=np.uint64) * np.uint64(2) + np.uint64(1)
    b = rng.integers(0, 1 << 63, size=num_perm, dtype=np.uint64)
    sig = np.empty((len(texts), num_perm), dtype=np.uint32)
    starts = offsets[:-1]
    with np.errstate(over="ignore"):
        for j in range(num_perm):
            permuted = ((hashes * a[j] + b[j]) >> _SHIFT).astype(np.uint32)
            sig[:, j] = np.minimum.reduceat(permuted, starts)
    return sig


def _bands_for(threshold: float, num_perm: int) -> tuple[int, int]:
    """Pick (bands, rows) with bands * rows == num_perm whose S-curve midpoint is nearest the threshold."""
    best = (num_perm, 1)
    best_gap = float("inf")
    for rows in range(1, num_perm + 1):
        if num_perm % rows:
            continue
        bands = num_perm // rows
        gap = abs((1 / bands) ** (1 / rows) - threshold)
        if gap < best_gap:
            best, best_gap = (bands, rows), gap
    return best


def near_duplicate_groups(texts: Sequence[str], threshold: float = 0.8, num_perm: int = 64, shingle: int = 3,
                          seed: int = 0) -> np.ndarray:
    """Group id per text; texts with estimated Jaccard >= threshold share a group (transitively)."""
    n = len(texts)
    parent = np.arange(n)

    def find(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    if n < 2:
        return parent
    sig = minhash_signatures(texts, num_perm, shingle, seed)
    bands, rows = _bands_for(threshold, num_perm)
    for band in range(bands):
        # One 64-bit key per band (a wrapping multiply-add hash of its rows): sorting integers is far
        # cheaper than sorting byte strings, and a rare key collision is caught by the Jaccard check.
        keys = np.zeros(len(sig), dtype=np.uint64)
        with np.errstate(over="ignore"):
            for col in range(band * rows, (band + 1) * rows):
                keys = keys * np.uint64(0x9E3779B97F4A7C15) + sig[:, col].astype(np.uint64)
        order = np.argsort(keys, kind="stable")
        sorted_keys = keys[order]
        same = np.nonzero(sorted_keys[1:] == sorted_keys[:-1])[0]
        for pos in same:
            i, j = int(order[pos]), int(order[pos + 1])
            ri, rj = find(i), find(j)
            if ri != rj and np.mean(sig[i] == sig[j]) >= threshold:
                parent[max(ri, rj)] = min(ri, rj)
    # Pointer jumping: every link points to a smaller index, so this converges to the roots.
    while True:
        nxt = parent[parent]
        if np.array_equal(nxt, parent):
            return parent
        parent = nxt
