"""Batches that pad little: length-grouped batch order, dynamic padding, and sharding across processes.

One `random.Random(seed)` draws the batch order of every epoch in turn; a checkpoint stores its
state at the start of the epoch, so a resumed run (and every process of a data-parallel run)
rebuilds exactly the same order.
"""

from __future__ import annotations

import math
import random
from collections.abc import Sequence
from typing import Any


def _token_budget_cuts(chunk: list[int], lengths: Sequence[int], batch_tokens: int) -> list[list[int]]:
    """Cut rows sorted by falling length into batches of rows x longest row <= batch_tokens (at least one row)."""
    batches: list[list[int]] = []
    start = 0
    while start < len(chunk):
        width = max(1, lengths[chunk[start]])  # the longest row of the batch: rows are sorted
        rows = max(1, batch_tokens // width)
        batches.append(chunk[start:start + rows])
        start += rows
    return batches


def length_grouped_batches(lengths: Sequence[int], batch_size: int, rng: random.Random,
                           group_factor: int = 50, batch_tokens: int | None = None) -> list[list[int]]:
    """Shuffle, then sort by length inside mega-batches so each batch pads little; shuffle batch order.

    With `batch_tokens` a batch holds as many rows as fit the token budget (short texts: more rows) instead
    of `batch_size`; the mega-batches stay `batch_size * group_factor` rows.
    """
    idx = list(range(len(lengths)))
    rng.shuffle(idx)
    mega = batch_size * group_factor
    batches: list[list[int]] = []
    for start in range(0, len(idx), mega):
        chunk = sorted(idx[start:start + mega], key=lambda i: lengths[i], reverse=True)
        if batch_tokens:
            batches.extend(_token_budget_cuts(chunk, lengths, batch_tokens))
        else:
            batches.extend(chunk[j:j + batch_size] for j in range(0, len(chunk), batch_size))
    rng.shuffle(batches)
    return batches


def epoch_batches(lengths: Sequence[int], batch_size: int, order_rng: random.Random,
                  world_size: int = 1, batch_tokens: int | None = None) -> list[list[int]]:
    """The next epoch's global batch order drawn from `order_rng`, padded (wrapping around) to a
    multiple of `world_size`.

    Process `r` of `world_size` takes batches r, r + world_size, ... so every process runs the
    same number of steps; the few repeated batches are what `DistributedSampler` does too.
    """
    batches = length_grouped_batches(lengths, batch_size, order_rng, batch_tokens=batch_tokens)
    short = -len(batches) % world_size
    return batches + batches[:short]


def count_batches(n: int, batch_size: int, world_size: int = 1, group_factor: int = 50) -> int:
    """How many global batches `epoch_batches` yields for `n` examples without a token budget (every epoch)."""
    mega = batch_size * group_factor
    full, rest = divmod(n, mega)
    count = full * math.ceil(mega / batch_size) + math.ceil(rest / batch_size)
    return count + (-count % world_size)


def optimizer_steps(epoch_counts: Sequence[float], per_step: int) -> int:
    """Optimizer steps of a run whose epochs hold `epoch_counts` global batches, `per_step` batches to a step
    (processes x accumulation); an epoch's last step may take fewer."""
    return sum(math.ceil(n / per_step) for n in epoch_counts)


def batches_per_epoch(lengths: Sequence[int], batch_size: int, seed_state: random.Random, epochs: int,
                      world_size: int = 1, batch_tokens: int | None = None) -> list[int]:
    """Global batches in each of `epochs` epochs drawn from a copy of `seed_state` (the order RNG at epoch 0).

    Fixed-size batches give the same count every epoch; under a token budget the count depends on how the
    shuffle groups lengths, so the epochs are drawn exactly as training will draw them.
    """
    if not batch_tokens:
        return [count_batches(len(lengths), batch_size, world_size)] * epochs
    rng = random.Random()
    rng.setstate(seed_state.getstate())
    return [len(epoch_batches(lengths, batch_size, rng, world_size, batch_tokens)) for _ in range(epochs)]


def collate(encodings: Sequence[Sequence[int]], ids: Sequence[int], labels: Sequence[int] | None, pad_id: int,
            padding_side: str, device: str, position_ids: bool = False) -> dict[str, Any]:
    """Pad the rows `ids` to the longest of them (dynamic padding) and move the batch to `device`.

    `position_ids=True` adds positions that skip padding, for decoder-only models, whose default
    positions would shift under left padding.
    """
    import torch

    from components.training.model_factory import position_ids_from_mask

    width = max(len(encodings[i]) for i in ids)
    input_ids = torch.full((len(ids), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(ids), width), dtype=torch.long)
    for row, i in enumerate(ids):
        seq = torch.as_tensor(encodings[i], dtype=torch.long)
        if padding_side == "left":
            input_ids[row, width - len(seq):] = seq
            mask[row, width - len(seq):] = 1
        else:
            input_ids[row, :len(seq)] = seq
            mask[row, :len(seq)] = 1
    batch: dict[str, Any] = {"input_ids": input_ids, "attention_mask": mask}
    if position_ids:
        batch["position_ids"] = position_ids_from_mask(mask)
    if labels is not None:
        batch["labels"] = torch.tensor([labels[i] for i in ids], dtype=torch.long)
    return {k: v.to(device) for k, v in batch.items()}
