"""Helpers of the monitoring tests: an untrained classifier package in seconds, SMS-like texts."""

from __future__ import annotations

import json
import random
import shutil
from pathlib import Path

LABELS = ["sport", "tech"]


def random_package(tiny_bert: Path, out: Path) -> Path:
    """The session's random tiny BERT with label names (a plain Hugging Face classifier directory)."""
    shutil.copytree(tiny_bert, out)
    cfg_file = out / "config.json"
    cfg = json.loads(cfg_file.read_text())
    cfg["id2label"] = {str(i): lab for i, lab in enumerate(LABELS)}
    cfg["label2id"] = {lab: i for i, lab in enumerate(LABELS)}
    cfg_file.write_text(json.dumps(cfg))
    return out


_OPEN = ["hey", "hi", "ok", "yo", "omg", "lol", "hiya", "oi"]
_BODY = ["r u coming 2nite", "wat time u finish", "call me wen u get this", "c u l8r", "gonna b late soz",
         "txt me ur address", "luv u xx", "wanna grab pizza", "u still at work?", "haha thats gr8",
         "FREE entry 2 win a prize txt WIN to 80082", "ur mobile has won £1000 call 09061701461 now",
         "dont 4get the milk", "k cool", "where r u", "im at the bus stop", "nite nite"]
_CLOSE = ["", " :)", " x", " lol", " ;-)", "!!", " pls", " ta"]


def sms_texts(n: int, seed: int = 0) -> list[str]:
    """`n` short SMS-like messages: texting abbreviations, a few spam offers."""
    rng = random.Random(seed)
    return [f"{rng.choice(_OPEN)} {rng.choice(_BODY)}{rng.choice(_CLOSE)}" for _ in range(n)]
