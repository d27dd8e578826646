"""Defaults that fit the data: the training recipe for every setting a configuration leaves unset.

`max_length`, `batch_size` (with `batch_tokens`), `epochs`, `learning_rate` and `warmup_ratio` default to
unset (None) in `TrainingConfig`; before training, `choose_recipe` fills each unset one from the training
split and the model, by these rules (what a user who gives only a dataset gets):

| setting | rule | why (measured: docs/benchmarks.md, "Quality" and "Quality: BBC News settings tried") |
|---|---|---|
| max_length | the 95th percentile of the training texts' token counts (special tokens included), rounded up to a multiple of 16, within 32..128 and the model's positions | short texts stop paying for padding; on long articles (BBC News) 256 tokens scored no better than 128 (0.9422 vs 0.9511 test accuracy in one run, 0.9556 in earlier ones, 512: 0.9556) and took twice the time (14.4 vs 6.9 minutes): longer reading is `long_text` or an explicit max_length |
| batch_size, batch_tokens | 16 rows, and (when batch_tokens is unset too) a token budget of 16 x max_length per batch | batches of short texts grow, long ones stay 16: SMS Spam trained faster at equal accuracy |
| learning_rate | 1e-4 for models of hidden size <= 384 (MiniLM), 5e-5 up to 768 (BERT-base, RoBERTa-base, GPT-2), 2e-5 above | small encoders under-train at 5e-5 in three epochs (0.883 vs 0.947 on BBC News); larger ones are commonly tuned at 2e-5..5e-5 |
| epochs | 3 when the rarest class has fewer than 2,000 training texts, else 2 | early stopping keeps the best epoch; more epochs scored no better on BBC News |
| warmup_ratio | 10% of the optimizer steps, at least 20 steps, at most a quarter of them (steps counted as training will draw them: processes, accumulation, chunk windows) | a few dozen steps settle the new head before the full learning rate |

A setting given in the configuration (file, `--set`, Prefect form) is never changed. The choices are printed
at the start of training and recorded on the run (resolved parameters and the `fineship.recipe` tag).
"""

from __future__ import annotations

import math
import random
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from components.config import TrainingConfig
from components.errors import TrainingError

RECIPE_FIELDS = ("max_length", "batch_size", "batch_tokens", "epochs", "learning_rate", "warmup_ratio")
LENGTH_QUANTILE = 0.95
LENGTH_STEP = 16
MIN_LENGTH = 32
MAX_AUTO_LENGTH = 128
ROWS_PER_BATCH = 16
FEW_PER_CLASS = 2000
MIN_WARMUP_STEPS = 20
LENGTH_SAMPLE = 20_000  # texts tokenised for the length distribution (a seeded sample of larger splits)


@dataclass(frozen=True)
class Choice:
    """One setting the recipe chose, and the data behind it."""

    field: str
    value: Any
    reason: str

    def line(self) -> str:
        return f"{self.field}={self.value} ({self.reason})"


def unset_fields(cfg: TrainingConfig) -> list[str]:
    """The recipe's settings this configuration leaves to the data."""
    return [name for name in RECIPE_FIELDS if getattr(cfg, name) is None and name != "batch_tokens"]


def _round_up(value: int, step: int) -> int:
    return -(-value // step) * step


def _learning_rate(hidden_size: int | None) -> tuple[float, str]:
    if hidden_size is None:
        return 5e-5, "model width unknown"
    if hidden_size <= 384:
        return 1e-4, f"hidden size {hidden_size} <= 384"
    if hidden_size <= 768:
        return 5e-5, f"hidden size {hidden_size} <= 768"
    return 2e-5, f"hidden size {hidden_size} > 768"


def _positions(model_config: Any, tokenizer: Any) -> int | None:
    """Tokens one model input can hold: the model's positions (RoBERTa-style models lose two to their padding
    offset) and the tokenizer's own limit, whichever is lower."""
    limits = []
    for name in ("max_position_embeddings", "n_positions"):
        value = getattr(model_config, name, None)
        if isinstance(value, int) and value > 0:
            offset = 2 if getattr(model_config, "model_type", "") in ROBERTA_LIKE else 0
            limits.append(value - offset)
            break
    declared = getattr(tokenizer, "model_max_length", None)
    if isinstance(declared, int) and 0 < declared < 1_000_000:  # unset limits are a huge sentinel
        limits.append(declared)
    return min(limits) if limits else None


# Models whose position ids start after the padding index, so two positions are not usable.
ROBERTA_LIKE = ("roberta", "xlm-roberta", "camembert", "mpnet", "longformer", "data2vec-text",
                "roberta-prelayernorm", "xmod")


def _optimizer_steps(cfg: TrainingConfig, sample: Sequence[str], n_texts: int, labels: Sequence[str],
                     tokenizer: Any, max_length: int, batch_size: int, batch_tokens: int | None, epochs: int,
                     world_size: int) -> int:
    """Optimizer steps training will take, counted as the trainer counts them: the inputs as encoded (chunk windows
    included), batches drawn per epoch, divided by processes and accumulation; scaled up from a sample."""
    from components.package import PackageMeta, encode_texts
    from components.training.batching import batches_per_epoch, optimizer_steps

    meta = PackageMeta(labels=sorted(set(labels)) or ["_"], max_length=max_length, long_text=cfg.long_text,
                       long_text_stride=cfg.long_text_stride, max_windows=cfg.max_windows)
    inputs = encode_texts(tokenizer, sample, meta).input_ids  # as the trainer encodes them
    counts = batches_per_epoch([len(ids) for ids in inputs], batch_size, random.Random(cfg.seed), epochs,
                               world_size, batch_tokens)
    scale = n_texts / max(1, len(sample))  # the sample stands for the whole split
    steps = max(1, optimizer_steps([n * scale for n in counts], world_size * cfg.gradient_accumulation_steps))
    return steps if cfg.max_steps is None else min(steps, cfg.max_steps)


def choose_recipe(cfg: TrainingConfig, texts: Sequence[str], labels: Sequence[str], tokenizer: Any,
                  model_config: Any, world_size: int = 1) -> tuple[TrainingConfig, list[Choice]]:
    """`cfg` with every unset recipe setting filled by the rules above, and what was chosen and why.

    `texts` and `labels` are the training split; `tokenizer` and `model_config` those of `cfg.model`;
    `world_size` the data-parallel processes that will train. Deterministic: the same data and configuration
    give the same recipe (a resumed run finds its checkpoints). A configuration with nothing unset comes back
    unchanged with no choices.
    """
    if not unset_fields(cfg):
        return cfg, []
    if not texts:
        raise TrainingError("the training split is empty; check the data and the split shares")
    from components.package import PackageMeta, preprocess

    rng = random.Random(cfg.seed)
    sample = list(texts) if len(texts) <= LENGTH_SAMPLE else rng.sample(list(texts), LENGTH_SAMPLE)
    cleaned = preprocess(sample, PackageMeta(labels=["_"]))  # the texts as training will read them
    lengths = sorted(len(ids) for ids in tokenizer(cleaned, add_special_tokens=True, truncation=False,
                                                   verbose=False)["input_ids"])
    choices: list[Choice] = []
    update: dict[str, Any] = {}

    max_length = cfg.max_length
    if max_length is None:
        p95 = lengths[min(len(lengths) - 1, math.ceil(LENGTH_QUANTILE * len(lengths)) - 1)]  # nearest rank
        positions = _positions(model_config, tokenizer)
        max_length = min(MAX_AUTO_LENGTH, positions or MAX_AUTO_LENGTH, max(MIN_LENGTH, _round_up(p95, LENGTH_STEP)))
        if cfg.long_text_stride is not None and cfg.long_text_stride >= max_length // 2:
            # Windows must advance: a configured stride needs a window over twice as long, up to the model's limit.
            max_length = 2 * cfg.long_text_stride + 2
            if positions is not None and max_length > positions:
                raise TrainingError(f"training.long_text_stride {cfg.long_text_stride} needs max_length of at least "
                                    f"{max_length}, more than the model's {positions} positions: lower the stride "
                                    "or set training.max_length")
        longer = sum(n > max_length for n in lengths) / max(1, len(lengths))
        choices.append(Choice("max_length", max_length, f"95% of training texts fit {p95} tokens; "
                              f"{longer:.0%} are longer and read by long_text={cfg.long_text}"))
        update["max_length"] = max_length

    batch_size, batch_tokens = cfg.batch_size, cfg.batch_tokens
    if batch_size is None:
        batch_size = ROWS_PER_BATCH
        update["batch_size"] = batch_size
        if batch_tokens is None:
            batch_tokens = ROWS_PER_BATCH * max_length
            update["batch_tokens"] = batch_tokens
            choices.append(Choice("batch_tokens", batch_tokens, f"{ROWS_PER_BATCH} rows of the longest length; "
                                  "shorter texts fill larger batches"))
        choices.append(Choice("batch_size", batch_size, "rows per batch"
                              + (" of the longest texts" if batch_tokens else "")))

    if cfg.learning_rate is None:
        update["learning_rate"], why = _learning_rate(getattr(model_config, "hidden_size", None)
                                                      or getattr(model_config, "n_embd", None))
        choices.append(Choice("learning_rate", update["learning_rate"], why))

    epochs = cfg.epochs
    if epochs is None:
        rarest = min(Counter(labels).values()) if labels else 0
        epochs = 3 if rarest < FEW_PER_CLASS else 2
        choices.append(Choice("epochs", epochs, f"rarest class has {rarest} training texts "
                              f"({'<' if rarest < FEW_PER_CLASS else '>='} {FEW_PER_CLASS})"))
        update["epochs"] = epochs

    if cfg.warmup_ratio is None:
        steps = _optimizer_steps(cfg, sample, len(texts), labels, tokenizer, max_length, batch_size, batch_tokens,
                                 epochs, world_size)
        # Rounded up to 4 places, so the trainer's int(ratio x steps) reaches the 20-step floor.
        ratio = math.ceil(min(0.25, max(0.1, MIN_WARMUP_STEPS / steps)) * 10_000) / 10_000
        update["warmup_ratio"] = ratio
        choices.append(Choice("warmup_ratio", ratio, f"{int(ratio * steps)} of about {steps} optimizer steps"))

    return TrainingConfig.model_validate({**cfg.model_dump(), **update}), choices


def recipe_tag(choices: Sequence[Choice]) -> str:
    """The choices as one line for the run's `fineship.recipe` tag (empty: the configuration set everything)."""
    return "; ".join(c.line() for c in choices)


def resolve_recipe(cfg: TrainingConfig, texts: Sequence[str], labels: Sequence[str],
                   world_size: int = 1) -> tuple[TrainingConfig, list[Choice]]:
    """`choose_recipe` with the tokenizer and configuration of `cfg.model` loaded (weights are not)."""
    if not unset_fields(cfg):
        return cfg, []
    from components.training.model_factory import load_model_config, load_tokenizer

    return choose_recipe(cfg, texts, labels, load_tokenizer(cfg.model), load_model_config(cfg.model), world_size)


def with_recipe(given: TrainingConfig, trained: TrainingConfig | None) -> TrainingConfig:
    """`given` with the recipe's settings as `trained` (the configuration training ran with) has them; nothing else
    of `trained` (such as a checkpoint directory the flow chose) is taken over."""
    if trained is None:
        return given
    return given.model_copy(update={k: getattr(trained, k) for k in RECIPE_FIELDS})
