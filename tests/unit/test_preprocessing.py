"""One text preprocessing for training and serving: `components.package.preprocess`, driven by the package's
`text_preprocessing` mode. Every path that tokenises goes through it; a hard-coded `.strip()` on any of them
(the trainer, the eager or exported model, the HTTP server, the SageMaker handler) fails a test here."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from components import package
from components.errors import ModelPackageError
from components.package import PackageMeta, TextClassifier, load_package, preprocess, read_meta
from tests.support.tiny import LABELS

TEXTS = ["  The striker scored twice in the cup final.  ", "\tShares fell after the profit warning.\n"]


@pytest.fixture
def seen(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Every text the "strip" mode cleans, recorded; the mode still strips."""
    record: list[str] = []

    def strip(text: str) -> str:
        record.append(text)
        return text.strip()

    monkeypatch.setitem(package.TEXT_PREPROCESSING, "strip", strip)
    return record


class RecordingTokenizer:
    """A tokenizer that remembers the texts it was given and hands them on."""

    def __init__(self, inner) -> None:
        self.inner = inner
        self.texts: list[str] = []

    def __call__(self, texts, *args, **kwargs):
        self.texts += list(texts)
        return self.inner(texts, *args, **kwargs)

    def __getattr__(self, name: str):
        return getattr(self.inner, name)


def test_strip_and_none():
    assert preprocess(TEXTS, "strip") == [t.strip() for t in TEXTS]
    assert preprocess(TEXTS, "none") == TEXTS
    assert preprocess(TEXTS, PackageMeta(labels=["a"], text_preprocessing="none")) == TEXTS
    assert PackageMeta(labels=["a"]).text_preprocessing == "strip"


def test_an_unknown_mode_is_a_package_error_that_names_the_known_ones():
    with pytest.raises(ModelPackageError, match=r"unknown text_preprocessing 'lower'.*strip, none"):
        preprocess([], "lower")


def test_a_package_with_an_unknown_mode_fails_when_it_loads(tmp_path: Path):
    (tmp_path / "fineship.json").write_text(json.dumps({"labels": ["a", "b"], "text_preprocessing": "lower"}))
    with pytest.raises(ModelPackageError, match="unknown text_preprocessing 'lower'"):
        read_meta(tmp_path)


def test_training_tokenises_what_preprocess_returns(seen: list[str], tiny_bert: Path, tmp_path: Path):
    from components.config import TrainingConfig
    from components.training.trainer import train

    train_texts, val_texts = TEXTS * 2, [" Ministers met on Tuesday. "]
    trained = train(train_texts, ["sport", "business"] * 2, val_texts, ["politics"], LABELS,
                    TrainingConfig(model=str(tiny_bert), max_length=16, batch_size=2, max_steps=1, epochs=1,
                                   learning_rate=1e-3, warmup_ratio=0.0),  # nothing left to the recipe
                    tmp_path / "package", progress=False)
    assert seen == train_texts + val_texts
    assert read_meta(trained.package_dir).text_preprocessing == "strip"  # and the package says so


def test_every_serving_path_tokenises_what_preprocess_returns(seen: list[str], tiny_package: Path,
                                                              monkeypatch: pytest.MonkeyPatch):
    from starlette.testclient import TestClient

    from components.export.runtime import ExportedClassifier
    from components.serving import inference
    from components.serving.app import ServerOptions, create_app

    clf = load_package(tiny_package, device="cpu")
    clf.predict(TEXTS)
    assert seen == TEXTS, "the eager model"

    seen.clear()
    inference.predict_fn(TEXTS, inference.model_fn(str(tiny_package)))
    assert seen == TEXTS, "the SageMaker handler"

    seen.clear()
    with TestClient(create_app(classifier=clf, options=ServerOptions(max_wait_ms=0))) as client:
        r = client.post("/invocations", json={"inputs": TEXTS})
    assert r.status_code == 200, r.text
    assert sorted(seen) == sorted(TEXTS * 2), "the HTTP server: counting tokens, then predicting"

    seen.clear()

    def runner(input_ids: np.ndarray, attention_mask: np.ndarray) -> np.ndarray:
        return np.zeros((len(input_ids), len(clf.labels)), dtype=np.float32)

    ExportedClassifier(runner, clf.tokenizer, clf.meta, "torchscript").predict(TEXTS)
    assert seen == TEXTS, "an exported model"


def test_a_package_that_says_none_keeps_the_spaces_when_serving(tiny_package: Path):
    clf = load_package(tiny_package, device="cpu")
    tokenizer = RecordingTokenizer(clf.tokenizer)
    none = TextClassifier(clf.model, tokenizer, clf.meta.model_copy(update={"text_preprocessing": "none"}))
    none.predict(TEXTS)
    assert sorted(tokenizer.texts) == sorted(TEXTS)
    strip = TextClassifier(clf.model, tokenizer, clf.meta)
    tokenizer.texts.clear()
    strip.predict(TEXTS)
    assert sorted(tokenizer.texts) == sorted(t.strip() for t in TEXTS)
