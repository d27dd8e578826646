"""Near-duplicate detection: MinHash over word shingles with LSH banding, vectorised with numpy.

Two texts whose estimated Jaccard similarity of word 3-shingles reaches the threshold end up in
one group; the splitter keeps every group inside one split.
"""

from __future__ import annotations

import zlib
from typing import Sequence

import numpy as np

_PRIME = np.uint64((1 << 61) - 1)
_MASK32 = np.uint64(0xFFFFFFFF)


def _shingle_hashes(texts: Sequence[str], k: int) -> tuple[np.ndarray, np.ndarray]:
    """Concatenated crc32 hashes of each text's word k-shingles, and the offset of each text."""
    hashes: list[int] = []
    offsets = np.zeros(len(texts) + 1, dtype=np.int64)
    crc = zlib.crc32
    for i, t in enumerate(texts):
        words = t.split()
        if len(words) < k:
            shingles = [" ".join(words)] if words else [""]
        else:
            shingles = [" ".join(words[j:j + k]) for j in range(len(words) - k + 1)]
        hashes.extend(crc(s.encode()) for s in shingles)
        offsets[i + 1] = len(hashes)
    return np.asarray(hashes, dtype=np.uint64), offsets


def minhash_signatures(texts: Sequence[str], num_perm: int = 64, shingle: int = 3, seed: int = 0) -> np.ndarray:
    """(n_texts, num_perm) MinHash signatures of normalised texts."""
    hashes, offsets = _shingle_hashes(texts, shingle)
    rng = np.random.default_rng(seed)
    a = rng.integers(1, (1 << 31) - 1, size=num_perm, dtype=np.uint64)
    b = rng.integers(0, (1 << 31) - 1, size=num_perm, dtype=np.uint64)
    sig = np.empty((len(texts), num_perm), dtype=np.uint64)
    starts = offsets[:-1]
    for j in range(num_perm):
        # 32-bit hashes times 31-bit multipliers stay below 2**63: no overflow before the modulus.
        permuted = (hashes * a[j] + b[j]) % _PRIME & _MASK32
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
        block = np.ascontiguousarray(sig[:, band * rows:(band + 1) * rows])
        keys = block.view(np.dtype((np.void, block.dtype.itemsize * rows))).ravel()
        order = np.argsort(keys, kind="stable")
        sorted_keys = keys[order]
        same = np.nonzero(sorted_keys[1:] == sorted_keys[:-1])[0]
        for pos in same:
            i, j = int(order[pos]), int(order[pos + 1])
            ri, rj = find(i), find(j)
            if ri != rj and np.mean(sig[i] == sig[j]) >= threshold:
                parent[max(ri, rj)] = min(ri, rj)
    return np.array([find(i) for i in range(n)])
