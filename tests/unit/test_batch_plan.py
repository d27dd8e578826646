"""`plan_batches` under a token budget: long texts go in smaller passes, every text exactly once."""

from __future__ import annotations

from components.serving.batcher import plan_batches


def _padded(runs: list[list[int]], lengths: list[int]) -> list[int]:
    return [len(run) * max(lengths[i] for i in run) for run in runs]


def test_a_token_budget_caps_each_pass_and_keeps_every_text_once():
    lengths = [512] * 8 + [20] * 24
    free = plan_batches(lengths, max_batch=32, overhead_tokens=16)
    capped = plan_batches(lengths, max_batch=32, overhead_tokens=16, max_batch_tokens=1024)
    assert max(_padded(free, lengths)) > 1024  # without a budget the long texts share one large pass
    assert max(_padded(capped, lengths)) <= 1024
    assert sorted(i for run in capped for i in run) == list(range(len(lengths)))


def test_a_text_longer_than_the_budget_still_gets_its_own_pass():
    runs = plan_batches([4000, 10, 10], max_batch=32, max_batch_tokens=512)
    assert [2000 <= max([4000, 10, 10][i] for i in run) for run in runs].count(True) == 1
    assert [0] in runs and sorted(i for run in runs for i in run) == [0, 1, 2]
