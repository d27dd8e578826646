"""The one mapping from the pipeline configuration to the validation suite's policy.

`fineship validate` and the training flow both call `validation_policy`, so a dataset passes the
one exactly when it passes the other.
"""

from __future__ import annotations

import logging
from typing import Any

from components.config import RULE_ACTIONS, DataConfig, PipelineConfig
from components.data.validation import DEFAULT_SEVERITY, ValidationPolicy
from components.training.recipe import MAX_AUTO_LENGTH

log = logging.getLogger(__name__)


def validation_policy(config: PipelineConfig) -> ValidationPolicy:
    """Every field of `ValidationPolicy`, taken from `config.data` (and `training.max_length`)."""
    d = config.data
    return ValidationPolicy(
        text_column=d.text_column, label_column=d.label_column, labels=d.labels,
        min_examples_per_class=d.min_examples_per_class, min_chars=d.min_chars, max_chars=d.max_chars,
        max_duplicate_rate=d.max_duplicate_rate, warn_on_duplicates=d.warn_on_duplicates,
        max_imbalance_ratio=d.max_imbalance_ratio,
        # Unset: the recipe chooses at most MAX_AUTO_LENGTH, so texts longer than that are truncated in any case.
        max_length=config.training.max_length or MAX_AUTO_LENGTH,
        max_truncated_share=d.max_truncated_share, rules=rule_actions(d))


def rule_actions(data: DataConfig) -> dict[str, str]:
    """Every configurable rule's action: `data.rules.<rule>` when set, else the suite's default severity (so the
    report records the whole policy); duplicates are left out when unset and `warn_on_duplicates` is false."""
    chosen = data.rules.model_dump(exclude_none=True)
    actions = {rule: chosen.get(rule, DEFAULT_SEVERITY[rule]) for rule in RULE_ACTIONS}
    if "duplicates" not in chosen and not data.warn_on_duplicates:
        del actions["duplicates"]
    return actions


def rule_tokenizer(model: str | None) -> Any | None:
    """The training model's tokenizer, for the truncation rule; None (rule skipped) when it cannot load."""
    if not model:
        return None
    from transformers import AutoTokenizer

    from components.training.model_factory import resolve_model_path

    try:
        return AutoTokenizer.from_pretrained(resolve_model_path(model))
    except (OSError, ValueError) as err:
        log.warning("truncation rule skipped: cannot load the tokenizer of %s (%s)", model, err)
        return None
