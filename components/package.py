"""The model package: the one model format fineship writes, registers, serves and ships.

A package is a directory holding the Hugging Face `save_pretrained` files (config, safetensors
weights, tokenizer) plus `fineship.json` (label order, max length, padding side, how long texts are
read, format version). A plain Hugging Face classifier directory without `fineship.json` loads too,
with labels from its config's `id2label`.
"""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from components.errors import ModelPackageError
from components.long_text import (
    DEFAULT_MAX_WINDOWS,
    Windows,
    aggregate_logits,
    check_strategy,
    encode_windows,
    pad_windows,
)

log = logging.getLogger(__name__)

PACKAGE_FILE = "fineship.json"
FORMAT_VERSION = 2
"""Newest format this fineship reads. A package is written with the oldest version that holds it (see
`format_for`), so a package that reads long texts as fineship always did still loads in older releases."""
_TOKENIZER_FILES = ("tokenizer.json", "vocab.txt", "vocab.json", "spiece.model", "sentencepiece.bpe.model")


class PackageMeta(BaseModel):
    """Contents of `fineship.json`."""

    model_config = ConfigDict(frozen=True)

    format_version: int = FORMAT_VERSION
    labels: list[str] = Field(description="Label names in logit order.")
    max_length: int = 128
    padding_side: str = "right"
    text_preprocessing: str = Field(default="strip", description="How texts are cleaned before tokenising: "
                                    "'strip' (leading and trailing whitespace) or 'none'. See `preprocess`.")
    base_model: str | None = None
    created_at: float = Field(default_factory=time.time)
    long_text: str = Field(default="truncate", description="How a text longer than max_length is read: "
                           "'truncate', 'head_tail' or 'chunks' (see `components.long_text`); format 2.")
    long_text_stride: int | None = Field(default=None, ge=0, description="chunks: tokens consecutive windows "
                                         "share; unset: a quarter of max_length.")
    max_windows: int = Field(default=DEFAULT_MAX_WINDOWS, ge=1, description="chunks: most windows read per text.")


def format_for(meta: PackageMeta) -> int:
    """The oldest package format that holds `meta`: 1 unless it reads long texts other than by truncating."""
    return 1 if meta.long_text == "truncate" else 2


def encode_texts(tokenizer: Any, texts: Sequence[str], meta: PackageMeta) -> Windows:
    """The texts as model inputs under the package's preprocessing and long-text strategy.

    The one place texts become token ids: training encodes with it and every prediction path goes through
    `TextClassifier.logits`, which calls it; a document's logits are then `aggregate_logits` of its windows.
    """
    return encode_windows(tokenizer, preprocess(texts, meta), meta.long_text, meta.max_length,
                          meta.long_text_stride, meta.max_windows)


def _keep(text: str) -> str:
    return text


# `text_preprocessing` mode -> what it does to one text.
TEXT_PREPROCESSING: dict[str, Callable[[str], str]] = {"strip": str.strip, "none": _keep}


def preprocess(texts: Sequence[str], mode: str | PackageMeta) -> list[str]:
    """The texts as the model sees them under a package's `text_preprocessing` mode (or its `PackageMeta`).

    The one place texts are cleaned: training tokenises what this returns, and so does every serving path
    (eager and exported models, the HTTP server, the SageMaker handler), so the two cannot drift apart.
    "strip" removes leading and trailing whitespace; "none" keeps texts as they are. Any other mode raises
    `ModelPackageError`, whatever `texts` holds.
    """
    name = mode.text_preprocessing if isinstance(mode, PackageMeta) else mode
    clean = TEXT_PREPROCESSING.get(name)
    if clean is None:
        raise ModelPackageError(f"unknown text_preprocessing {name!r}; {PACKAGE_FILE} must name one of "
                                f"{', '.join(TEXT_PREPROCESSING)} (or upgrade fineship, if a newer one wrote "
                                f"the package)")
    return [clean(t) for t in texts]


def resolve_device(preference: str = "auto") -> str:
    """Pick 'cuda' when available (and allowed), else 'cpu'."""
    import torch

    if preference == "cpu":
        return "cpu"
    if torch.cuda.is_available():
        return "cuda"
    if preference == "cuda":
        raise ModelPackageError("device 'cuda' was requested but no CUDA device is visible; use device: auto or cpu")
    return "cpu"


def check_package(path: str | Path) -> list[str]:
    """Return what a package directory is missing (empty when complete)."""
    p = Path(path)
    if not p.is_dir():
        return [f"directory {p} does not exist"]
    missing = []
    if not (p / "config.json").is_file():
        missing.append("config.json (model config)")
    if not any(p.glob("*.safetensors")):
        missing.append("model weights as *.safetensors" + (" (found pickle weights: re-save with safetensors)"
                                                          if any(p.glob("*.bin")) else ""))
    if not any((p / f).is_file() for f in _TOKENIZER_FILES):
        missing.append("tokenizer files (tokenizer.json or a vocabulary file)")
    return missing


def require_complete(path: str | Path) -> None:
    """Raise `ModelPackageError` naming what the package directory is missing (see `check_package`)."""
    missing = check_package(path)
    if missing:
        raise ModelPackageError(f"model package {path} is incomplete: missing {', '.join(missing)}")


def save_package(model: Any, tokenizer: Any, out_dir: str | Path, meta: PackageMeta) -> Path:
    """Write `model`, `tokenizer` and `fineship.json` into `out_dir` (safetensors weights)."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    model.config.id2label = dict(enumerate(meta.labels))
    model.config.label2id = {label: i for i, label in enumerate(meta.labels)}
    model.save_pretrained(out, safe_serialization=True)
    tokenizer.save_pretrained(out)
    meta = meta.model_copy(update={"format_version": format_for(meta)})
    (out / PACKAGE_FILE).write_text(meta.model_dump_json(indent=2), encoding="utf-8")
    missing = check_package(out)
    if missing:
        raise ModelPackageError(f"package {out} was written incomplete: missing {', '.join(missing)}")
    return out


def read_meta(path: str | Path) -> PackageMeta:
    """Read `fineship.json`, or derive it from a plain Hugging Face classifier's config."""
    p = Path(path)
    f = p / PACKAGE_FILE
    if f.is_file():
        meta = PackageMeta.model_validate_json(f.read_text(encoding="utf-8"))
        if meta.format_version > FORMAT_VERSION:
            raise ModelPackageError(
                f"{f} has format version {meta.format_version}; this fineship reads up to {FORMAT_VERSION}: upgrade fineship"
            )
        preprocess((), meta)  # an unknown mode fails here, when the package loads, not on its first text
        check_strategy(meta.long_text)
        return meta
    cfg_file = p / "config.json"
    if not cfg_file.is_file():
        raise ModelPackageError(f"{p} is not a model package: no {PACKAGE_FILE} and no config.json")
    cfg = json.loads(cfg_file.read_text(encoding="utf-8"))
    id2label = cfg.get("id2label") or {}
    if not id2label:
        raise ModelPackageError(f"{cfg_file} has no id2label; add the label names or write {PACKAGE_FILE}")
    labels = [id2label[k] for k in sorted(id2label, key=int)]
    max_length = min(int(cfg.get("max_position_embeddings") or cfg.get("n_positions") or 512), 512)
    return PackageMeta(labels=labels, max_length=max_length, base_model=cfg.get("_name_or_path"))


class Prediction(BaseModel):
    """One text's prediction: the top label and the scores of the top-k labels."""

    label: str
    score: float
    scores: dict[str, float]


def forward_logits(model: Any, input_ids: Any, attention_mask: Any) -> Any:
    """The logits tensor of one tokenised batch: what serving computes, and what exports trace.

    Single texts only, so token type ids are all zero (the models' default). Keep the eager path and
    the exported graphs on this one function: the export parity check compares the two.
    """
    return model(input_ids=input_ids, attention_mask=attention_mask, return_dict=False)[0]


class TextClassifier:
    """A loaded model package: tokenizer + model + label map, ready to predict."""

    def __init__(self, model: Any, tokenizer: Any, meta: PackageMeta, device: str = "cpu") -> None:
        self.model = model
        self.tokenizer = tokenizer
        self.meta = meta
        self.device = device
        self.labels = list(meta.labels)

    def logits(self, texts: Sequence[str], batch_size: int = 32) -> np.ndarray:
        """Raw logits, shape (len(texts), n_labels), computed in length-sorted batches of `batch_size` rows.

        Under the package's `long_text` strategy 'head_tail' or 'chunks' the rows are the texts' windows
        (`encode_texts`), and a text's logits are the mean of its windows' (`aggregate_logits`).
        """
        import torch

        if self.meta.long_text != "truncate":
            return self._window_logits(texts, batch_size)
        texts = preprocess(texts, self.meta)
        if not texts:
            return np.zeros((0, len(self.labels)), dtype=np.float32)
        order = np.argsort([len(t) for t in texts], kind="stable")
        out = np.zeros((len(texts), len(self.labels)), dtype=np.float32)
        with torch.inference_mode():
            for start in range(0, len(texts), batch_size):
                idx = order[start:start + batch_size]
                enc = self.tokenizer([texts[i] for i in idx], padding=True, truncation=True,
                                     max_length=self.meta.max_length, return_tensors="pt").to(self.device)
                out[idx] = self._forward(enc)
        return out

    def _window_logits(self, texts: Sequence[str], batch_size: int) -> np.ndarray:
        import torch

        windows = encode_texts(self.tokenizer, texts, self.meta)
        if not windows.n_docs:
            return np.zeros((0, len(self.labels)), dtype=np.float32)
        rows = windows.input_ids
        order = np.argsort([len(r) for r in rows], kind="stable")
        out = np.zeros((len(rows), len(self.labels)), dtype=np.float32)
        with torch.inference_mode():
            for start in range(0, len(rows), batch_size):
                idx = order[start:start + batch_size]
                ids, mask = pad_windows([rows[i] for i in idx], self.tokenizer.pad_token_id, self.meta.padding_side)
                enc = {"input_ids": torch.from_numpy(ids).to(self.device),
                       "attention_mask": torch.from_numpy(mask).to(self.device)}
                out[idx] = self._forward(enc)
        return aggregate_logits(out, windows.doc_index, windows.n_docs)

    def _forward(self, enc: Any) -> np.ndarray:
        """Logits of one tokenised batch (`input_ids` and `attention_mask` tensors); exported backends override this."""
        return forward_logits(self.model, enc["input_ids"], enc["attention_mask"]).float().cpu().numpy()

    def predict_proba(self, texts: Sequence[str], batch_size: int = 32) -> np.ndarray:
        """Softmax probabilities, shape (len(texts), n_labels)."""
        z = self.logits(texts, batch_size)
        z = z - z.max(axis=1, keepdims=True)
        e = np.exp(z)
        return e / e.sum(axis=1, keepdims=True)

    def predict(self, texts: Sequence[str], top_k: int | None = None, batch_size: int = 32) -> list[Prediction]:
        """Top label and the top-k scores for each text (all labels when `top_k` is None)."""
        probs = self.predict_proba(texts, batch_size)
        k = len(self.labels) if top_k is None else max(1, min(top_k, len(self.labels)))
        preds = []
        for row in probs:
            top = np.argsort(-row, kind="stable")[:k]
            preds.append(Prediction(label=self.labels[top[0]], score=float(row[top[0]]),
                                    scores={self.labels[i]: float(row[i]) for i in top}))
        return preds


def load_tokenizer(path: str | Path, meta: PackageMeta) -> Any:
    """The package's tokenizer with its padding side, and a pad token (end-of-text for GPT-2 and kin)."""
    from transformers import AutoTokenizer

    p = Path(path)
    tokenizer = AutoTokenizer.from_pretrained(p)
    tokenizer.padding_side = meta.padding_side
    if tokenizer.pad_token is None:
        if tokenizer.eos_token is None:
            raise ModelPackageError(f"the tokenizer in {p} has neither a pad nor an end-of-text token; set pad_token")
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def load_package(path: str | Path, device: str = "auto") -> TextClassifier:
    """Load a package (or plain Hugging Face classifier directory) for inference with its eager model.

    A server that may serve one of the package's exports instead picks it with
    `components.serving.backends.load_backend`.
    """
    from transformers import AutoModelForSequenceClassification

    p = Path(path)
    require_complete(p)
    meta = read_meta(p)
    dev = resolve_device(device)
    tokenizer = load_tokenizer(p, meta)
    model = AutoModelForSequenceClassification.from_pretrained(p, use_safetensors=True)
    if model.config.num_labels != len(meta.labels):
        raise ModelPackageError(
            f"{p}: the model has {model.config.num_labels} outputs but {PACKAGE_FILE} lists {len(meta.labels)} labels"
        )
    if model.config.pad_token_id is None:
        model.config.pad_token_id = tokenizer.pad_token_id
    model.to(dev).eval()
    log.info("loaded model package %s on %s (%d labels)", p, dev, len(meta.labels))
    return TextClassifier(model, tokenizer, meta, dev)
