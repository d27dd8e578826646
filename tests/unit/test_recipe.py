"""The recipe from the data: each unset setting follows its documented rule; a setting given is never changed."""

from __future__ import annotations

import math
from types import SimpleNamespace

import numpy as np
import pytest

from components.config import TrainingConfig
from components.errors import TrainingError
from components.training.recipe import (
    MAX_AUTO_LENGTH,
    MIN_LENGTH,
    choose_recipe,
    recipe_tag,
    resolve_recipe,
    unset_fields,
    with_recipe,
)
from tests.support.tiny import LABELS

WORDS = "the market rose as the minister spoke about the new film and the match".split()
ALL_SET = {"max_length": 64, "batch_size": 8, "epochs": 2, "learning_rate": 3e-4, "warmup_ratio": 0.0}


@pytest.fixture(scope="module")
def tokenizer(tiny_bert):
    from components.training.model_factory import load_tokenizer

    return load_tokenizer(str(tiny_bert))


def _texts(n: int, words: int) -> list[str]:
    return [" ".join(WORDS[(i + k) % len(WORDS)] for k in range(words)) for i in range(n)]


def _bert(hidden: int = 384, positions: int = 512) -> SimpleNamespace:
    return SimpleNamespace(model_type="bert", hidden_size=hidden, max_position_embeddings=positions)


def _choose(tokenizer, texts, labels=None, model=None, **given):
    cfg = TrainingConfig(model="m", **given)
    return choose_recipe(cfg, texts, labels or ["a", "b"] * (len(texts) // 2), tokenizer, model or _bert())


def test_a_configuration_that_sets_everything_is_returned_unchanged(tokenizer):
    cfg = TrainingConfig(model="m", **ALL_SET)
    assert unset_fields(cfg) == []
    got, choices = choose_recipe(cfg, _texts(50, 300), ["a", "b"] * 25, tokenizer, _bert())
    assert got is cfg and choices == [] and recipe_tag(choices) == ""
    # resolve_recipe does not even load the model then: a model id that exists nowhere is fine
    assert resolve_recipe(TrainingConfig(model="/nonexistent/model", **ALL_SET), ["x"], ["a"])[1] == []


def test_given_settings_are_kept_and_only_the_unset_ones_are_chosen(tokenizer):
    cfg, choices = _choose(tokenizer, _texts(40, 200), max_length=40, learning_rate=2e-3)
    assert (cfg.max_length, cfg.learning_rate) == (40, 2e-3)
    assert {c.field for c in choices} == {"batch_size", "batch_tokens", "epochs", "warmup_ratio"}
    assert cfg.batch_tokens == 16 * 40  # follows the given length


def test_max_length_is_the_95th_percentile_rounded_up_within_bounds(tokenizer):
    texts = _texts(100, 20) + _texts(100, 60)  # half short, half about three times as long
    lengths = [len(ids) for ids in tokenizer(texts)["input_ids"]]
    p95 = int(np.percentile(lengths, 95, method="inverted_cdf"))  # nearest rank
    cfg, choices = _choose(tokenizer, texts)
    assert cfg.max_length == math.ceil(p95 / 16) * 16 and cfg.max_length % 16 == 0 and cfg.max_length >= p95
    assert f"95% of training texts fit {p95} tokens" in choices[0].line()

    assert _choose(tokenizer, _texts(40, 2))[0].max_length == MIN_LENGTH  # one-word texts: the floor
    assert _choose(tokenizer, _texts(40, 400))[0].max_length == MAX_AUTO_LENGTH  # long articles: the cap
    # A model with fewer positions caps it lower; RoBERTa's two offset positions are not usable.
    assert _choose(tokenizer, _texts(40, 400), model=_bert(positions=100))[0].max_length == 100
    roberta = SimpleNamespace(model_type="roberta", hidden_size=768, max_position_embeddings=102)
    assert _choose(tokenizer, _texts(40, 400), model=roberta)[0].max_length == 100


def test_a_configured_stride_keeps_the_chosen_window_wide_enough(tokenizer):
    cfg, _ = _choose(tokenizer, _texts(40, 2), long_text="chunks", long_text_stride=40)
    assert cfg.max_length == 82 and cfg.long_text_stride < cfg.max_length // 2  # windows advance
    wide, _ = _choose(tokenizer, _texts(40, 2), long_text="chunks", long_text_stride=200)
    assert wide.max_length == 402  # past the 128 the rule stops at, within the model's 512 positions
    with pytest.raises(TrainingError, match="long_text_stride 200 needs max_length of at least 402.*positions"):
        _choose(tokenizer, _texts(40, 2), model=_bert(positions=300), long_text="chunks", long_text_stride=200)


def test_the_tokenizers_own_limit_caps_the_length(tokenizer, monkeypatch):
    monkeypatch.setattr(tokenizer, "model_max_length", 80)
    assert _choose(tokenizer, _texts(40, 400))[0].max_length == 80


def test_warm_up_counts_steps_as_training_will_take_them(tokenizer):
    texts, labels = _texts(1280, 10), ["a", "b"] * 640
    one, _ = _choose(tokenizer, texts, batch_size=16, epochs=3)  # 80 batches x 3 epochs = 240 steps
    accumulated, _ = _choose(tokenizer, texts, batch_size=16, epochs=3, gradient_accumulation_steps=2)
    two_procs, _ = choose_recipe(TrainingConfig(model="m", batch_size=16, epochs=3), texts, labels, tokenizer,
                                 _bert(), world_size=2)
    assert one.warmup_ratio == 0.1
    assert accumulated.warmup_ratio == two_procs.warmup_ratio == pytest.approx(20 / 120, abs=1e-4)
    # Under chunks every window of a long text is an example: more steps than the texts alone would make.
    long = _texts(640, 300)
    truncated, _ = _choose(tokenizer, long, max_length=64, batch_size=16, epochs=1)  # 40 steps
    windows, _ = _choose(tokenizer, long, max_length=64, batch_size=16, epochs=1, long_text="chunks")
    assert truncated.warmup_ratio == 0.25 and windows.warmup_ratio == 0.1  # several windows per text


def test_the_trainer_reaches_the_warm_up_floor(tokenizer):
    # 150 steps: 20 / 150 = 0.13333..; rounded down the trainer's int(ratio x steps) would be 19.
    cfg, choices = _choose(tokenizer, _texts(800, 10), batch_size=16, epochs=3)
    assert int(cfg.warmup_ratio * 150) == 20
    assert "20 of about 150 optimizer steps" in recipe_tag(choices)


def test_given_settings_are_kept_when_taken_over_from_a_trained_configuration(tokenizer):
    given = TrainingConfig(model="m", max_length=40)
    trained, _ = _choose(tokenizer, _texts(40, 10), max_length=40)
    trained = trained.model_copy(update={"checkpoint_dir": "/somewhere/chosen/by/the/flow"})
    merged = with_recipe(given, trained)
    assert merged.checkpoint_dir is None and merged.max_length == 40 and merged.epochs == trained.epochs
    assert with_recipe(given, None) is given


def test_an_empty_training_split_is_named(tokenizer):
    with pytest.raises(TrainingError, match="training split is empty"):
        _choose(tokenizer, [])


def test_batches_get_a_token_budget_only_when_the_batch_size_is_unset(tokenizer):
    texts = _texts(64, 30)
    auto, _ = _choose(tokenizer, texts)
    assert auto.batch_size == 16 and auto.batch_tokens == 16 * auto.max_length
    rows, _ = _choose(tokenizer, texts, batch_size=8)
    assert rows.batch_size == 8 and rows.batch_tokens is None  # a given batch size keeps meaning rows
    budget, _ = _choose(tokenizer, texts, batch_tokens=999)
    assert budget.batch_size == 16 and budget.batch_tokens == 999


@pytest.mark.parametrize(("model", "rate"), [
    (_bert(hidden=384), 1e-4), (_bert(hidden=768), 5e-5), (_bert(hidden=1024), 2e-5),
    (SimpleNamespace(model_type="gpt2", n_embd=768, n_positions=1024), 5e-5),
])
def test_learning_rate_follows_the_model_width(tokenizer, model, rate):
    cfg, choices = _choose(tokenizer, _texts(20, 5), model=model)
    assert cfg.learning_rate == rate
    assert any(c.field == "learning_rate" and "hidden size" in c.reason for c in choices)


def test_epochs_follow_the_rarest_class(tokenizer):
    texts = _texts(4200, 3)
    rare = ["a"] * 2200 + ["b"] * 1999 + ["c"]
    assert _choose(tokenizer, texts, labels=rare[:4200])[0].epochs == 3  # 'c' has one text
    common = ["a"] * 2200 + ["b"] * 2000
    cfg, choices = _choose(tokenizer, texts, labels=common)
    assert cfg.epochs == 2
    assert "rarest class has 2000 training texts" in recipe_tag(choices)


def test_warm_up_is_a_tenth_of_the_steps_with_at_least_twenty(tokenizer):
    few, _ = _choose(tokenizer, _texts(40, 10), batch_size=16, epochs=3)  # 9 steps: capped at a quarter
    assert few.warmup_ratio == 0.25
    some, _ = _choose(tokenizer, _texts(640, 10), batch_size=16, epochs=3)  # 120 steps: 20 of them
    assert some.warmup_ratio == pytest.approx(20 / 120, abs=1e-4)
    many, choices = _choose(tokenizer, _texts(4000, 10), batch_size=16, epochs=2)  # 500 steps: 10%
    assert many.warmup_ratio == 0.1
    assert "50 of about 500 optimizer steps" in recipe_tag(choices)
    capped, _ = _choose(tokenizer, _texts(4000, 10), batch_size=16, epochs=2, max_steps=40)
    assert capped.warmup_ratio == 0.25  # 20 of 40 steps would be half: at most a quarter


def test_the_recipe_is_deterministic_and_samples_large_splits(tokenizer, monkeypatch):
    import components.training.recipe as recipe

    texts = _texts(300, 8) + _texts(300, 40)
    first = _choose(tokenizer, texts)[0]
    assert _choose(tokenizer, texts)[0] == first
    monkeypatch.setattr(recipe, "LENGTH_SAMPLE", 100)  # a seeded sample stands for the split
    sampled = _choose(tokenizer, texts)[0]
    assert sampled == _choose(tokenizer, texts)[0]
    assert abs(sampled.max_length - first.max_length) <= 16


def test_labels_of_the_sample_data_choose_three_epochs(tokenizer, sample_df):
    cfg, _ = _choose(tokenizer, sample_df.text.tolist(), labels=sample_df.label.tolist())
    assert cfg.epochs == 3 and set(sample_df.label) == set(LABELS)
