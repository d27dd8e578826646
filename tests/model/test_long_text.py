"""Long documents are read, not cut: `training.long_text` truncate | head_tail | chunks.

The windows are checked token by token against the tokenizer (and against Hugging Face's own
overlapping windows); a document whose deciding word is only at its end is classified by chunks
and head_tail but not by truncate; a package trained with chunks records the strategy and every
consumer (the eager model and a TorchScript export, through `TextClassifier.logits`) applies it;
validation during training scores documents exactly as the loaded package does; GPT-2 (no special
tokens) works too.
"""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from components.config import TrainingConfig
from components.errors import ConfigError, ModelPackageError
from components.long_text import (
    HEAD_SHARE,
    aggregate_logits,
    encode_windows,
    pad_windows,
    special_token_counts,
    window_starts,
)
from components.package import PACKAGE_FILE, PackageMeta, TextClassifier, encode_texts, load_package, read_meta
from tests.support.tiny import ASSETS

MAX_LENGTH = 16
STRIDE = 4
KEYWORD = "striker"
EPOCHS = 6


@pytest.fixture(scope="module")
def bert_tokenizer(tiny_bert):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(tiny_bert)


@pytest.fixture(scope="module")
def words() -> list[str]:
    """Distinct plain words of the tiny vocabulary: each is one token, so positions are easy to check."""
    vocab = (ASSETS / "vocab.txt").read_text(encoding="utf-8").split()
    return [w for w in vocab if w.isalpha() and w.islower() and w != KEYWORD][:200]


def _body(tokenizer, text: str) -> list[int]:
    return tokenizer(text, add_special_tokens=False)["input_ids"]


def test_chunk_windows_cover_the_text_with_the_configured_overlap(bert_tokenizer, words):
    text = " ".join(words[:100])
    body = _body(bert_tokenizer, text)
    assert len(body) == 100 and len(set(body)) == 100
    w = encode_windows(bert_tokenizer, [text, "short text"], "chunks", MAX_LENGTH, STRIDE, max_windows=64)
    cls, sep = bert_tokenizer.cls_token_id, bert_tokenizer.sep_token_id
    rows = [r for r, d in zip(w.input_ids, w.doc_index) if d == 0]
    assert w.doc_index == [0] * len(rows) + [1] and w.n_docs == 2
    assert all(r[0] == cls and r[-1] == sep and len(r) <= MAX_LENGTH for r in rows)
    inner = [r[1:-1] for r in rows]
    assert all(len(x) == MAX_LENGTH - 2 for x in inner[:-1])
    for a, b in zip(inner, inner[1:]):  # consecutive windows share exactly STRIDE tokens
        assert a[-STRIDE:] == b[:STRIDE]
    rebuilt = inner[0] + [t for x in inner[1:] for t in x[STRIDE:]]
    assert rebuilt == body  # every token, in order, none lost, none repeated beyond the overlap
    # They are the windows Hugging Face's tokenizers make with the same `stride`.
    hf = bert_tokenizer([text], truncation=True, max_length=MAX_LENGTH, stride=STRIDE,
                        return_overflowing_tokens=True)["input_ids"]
    assert rows == [list(r) for r in hf]
    # A short text is one window, the tokenizer's own encoding.
    assert w.input_ids[-1] == bert_tokenizer("short text")["input_ids"]


def test_windows_are_capped_spread_over_the_text_first_and_last_kept(bert_tokenizer, words):
    assert window_starts(100, 14, 4, 64) == [0, 10, 20, 30, 40, 50, 60, 70, 80, 90]
    assert window_starts(100, 14, 4, 3) == [0, 40, 90]
    assert window_starts(10, 14, 4, 3) == [0]
    # A text past the server's size limit (100,000 characters) costs at most max_windows forward rows.
    huge = " ".join(words[i % len(words)] for i in range(20_000))
    assert len(huge) > 100_000
    w = encode_windows(bert_tokenizer, [huge], "chunks", MAX_LENGTH, STRIDE, max_windows=5)
    assert len(w.input_ids) == 5 and all(len(r) == MAX_LENGTH for r in w.input_ids[:-1])
    body = _body(bert_tokenizer, huge)
    last = w.input_ids[-1][1:-1]
    assert w.input_ids[0][1:-1] == body[:MAX_LENGTH - 2] and last == body[len(body) - len(last):]


def test_head_tail_keeps_the_head_and_the_tail(bert_tokenizer, words):
    text = " ".join(words[:100])
    body = _body(bert_tokenizer, text)
    budget = MAX_LENGTH - 2
    head = math.ceil(budget * HEAD_SHARE)
    (row,) = encode_windows(bert_tokenizer, [text], "head_tail", MAX_LENGTH).input_ids
    assert head == 4 and math.ceil(510 * HEAD_SHARE) == 128  # Sun et al. 2019: head 128 + tail 382 of 510
    assert row == [bert_tokenizer.cls_token_id] + body[:head] + body[-(budget - head):] + [bert_tokenizer.sep_token_id]
    # truncate is the tokenizer's truncation, as before the setting existed; short texts are never cut.
    (cut,) = encode_windows(bert_tokenizer, [text], "truncate", MAX_LENGTH).input_ids
    assert cut == bert_tokenizer(text, truncation=True, max_length=MAX_LENGTH)["input_ids"]
    short = " ".join(words[:5])
    assert (encode_windows(bert_tokenizer, [short], "head_tail", MAX_LENGTH).input_ids
            == encode_windows(bert_tokenizer, [short], "truncate", MAX_LENGTH).input_ids)


class KeywordModel(TextClassifier):
    """A classifier whose forward pass is a rule, through the same hook exported backends use: a window
    scores label "keyword" 10 when it contains the keyword's token, else "other" 1."""

    def __init__(self, tokenizer, meta: PackageMeta) -> None:
        super().__init__(model=None, tokenizer=tokenizer, meta=meta)
        self.keyword_id = tokenizer.convert_tokens_to_ids(KEYWORD)
        self.rows_seen = 0

    def _forward(self, enc) -> np.ndarray:
        ids, mask = enc["input_ids"].numpy(), enc["attention_mask"].numpy()
        self.rows_seen += len(ids)
        hit = ((ids == self.keyword_id) & (mask == 1)).any(axis=1)
        return np.stack([np.where(hit, 0.0, 1.0), np.where(hit, 10.0, 0.0)], axis=1).astype(np.float32)


@pytest.mark.parametrize("strategy, expected", [("truncate", "other"), ("head_tail", "keyword"),
                                                ("chunks", "keyword")])
def test_a_word_only_at_the_end_decides_under_chunks_and_head_tail_not_truncate(bert_tokenizer, words, strategy,
                                                                                 expected):
    document = " ".join(words[:50] + [KEYWORD])  # 51 tokens: 5 windows of 14, the keyword in the last
    meta = PackageMeta(labels=["other", "keyword"], max_length=MAX_LENGTH, long_text=strategy,
                       long_text_stride=STRIDE, max_windows=8)
    clf = KeywordModel(bert_tokenizer, meta)
    short = " ".join(words[:3])
    preds = clf.predict([document, short, KEYWORD + " " + document])
    assert [p.label for p in preds] == [expected, "other", "keyword"]
    if strategy == "chunks":  # the windows' logits are averaged: one keyword window of 5 outweighs the rest
        assert clf.rows_seen == 5 + 1 + 5
        np.testing.assert_allclose(clf.logits([document])[0], [4 / 5, 10 / 5])


def test_the_server_and_the_sagemaker_handler_split_a_long_request_text(bert_tokenizer, words):
    from starlette.testclient import TestClient

    from components.serving import inference
    from components.serving.app import ServerOptions, create_app

    document = " ".join(words[:50] + [KEYWORD])
    meta = PackageMeta(labels=["other", "keyword"], max_length=MAX_LENGTH, long_text="chunks",
                       long_text_stride=STRIDE, max_windows=3)
    clf = KeywordModel(bert_tokenizer, meta)
    texts = [document, " ".join(words[:3]), document]
    with TestClient(create_app(classifier=clf, options=ServerOptions(max_wait_ms=0))) as client:
        answer = client.post("/invocations", json={"inputs": texts})
    assert answer.status_code == 200, answer.text
    assert [p["label"] for p in answer.json()["predictions"]] == ["keyword", "other", "keyword"]
    # max_windows bounds the work: 3 rows for each long text (of its 5 windows), 1 for the short one.
    assert clf.rows_seen == 3 + 1 + 3
    assert [p.label for p in inference.predict_fn(texts, clf)] == ["keyword", "other", "keyword"]


def test_document_logits_are_the_mean_of_their_windows():
    z = np.array([[1.0, 0.0], [3.0, 2.0], [0.0, 5.0], [2.0, 2.0]])
    np.testing.assert_allclose(aggregate_logits(z, [0, 0, 1, 0], 2), [[2.0, 4 / 3], [0.0, 5.0]])
    with pytest.raises(ModelPackageError, match="no windows"):
        aggregate_logits(z, [0, 0, 0, 0], 2)
    ids, mask = pad_windows([[5, 6, 7], [8]], pad_id=0, padding_side="left")
    assert ids.tolist() == [[5, 6, 7], [0, 0, 8]] and mask.tolist() == [[1, 1, 1], [0, 0, 1]]
    ids, mask = pad_windows([[5, 6, 7], [8]], pad_id=0, padding_side="right")
    assert ids.tolist() == [[5, 6, 7], [8, 0, 0]] and mask.tolist() == [[1, 1, 1], [1, 0, 0]]


def test_old_packages_read_as_truncate_and_unknown_strategies_are_refused(tmp_path):
    old = {"format_version": 1, "labels": ["a", "b"], "max_length": 64, "padding_side": "right",
           "text_preprocessing": "strip", "base_model": None, "created_at": 0.0}
    (tmp_path / PACKAGE_FILE).write_text(json.dumps(old))
    meta = read_meta(tmp_path)
    assert meta.long_text == "truncate" and meta.format_version == 1
    (tmp_path / PACKAGE_FILE).write_text(json.dumps({**old, "format_version": 2, "long_text": "sliding"}))
    with pytest.raises(ModelPackageError, match="unknown long_text strategy 'sliding'"):
        read_meta(tmp_path)
    with pytest.raises(ConfigError, match="long_text_stride"):
        from components.config import load_config

        load_config(None, [f"training.max_length={MAX_LENGTH}", f"training.long_text_stride={MAX_LENGTH // 2}"])
    assert TrainingConfig(max_length=MAX_LENGTH, long_text_stride=MAX_LENGTH // 2 - 1).long_text == "truncate"


# --- trained packages: BERT with chunks (eager and TorchScript), GPT-2 with chunks -------------------------------


def _long_docs(sample_df, n: int, offset: int = 0) -> tuple[list[str], list[str]]:
    """`n` documents of two sample news texts each (several windows at max_length 16), labelled by the first."""
    rows = sample_df.iloc[offset:offset + 2 * n]
    texts = [f"{a} {b}" for a, b in zip(rows.text[::2], rows.text[1::2])]
    return texts, rows.label[::2].tolist()


def _chunk_cfg(model, **kw) -> TrainingConfig:
    base = {"model": str(model), "max_length": MAX_LENGTH, "long_text": "chunks", "long_text_stride": STRIDE,
            "max_windows": 6, "batch_size": 8, "learning_rate": 3e-3, "epochs": 1, "num_threads": 1,
            "precision": "fp32"}
    return TrainingConfig(**{**base, **kw})


@pytest.fixture(scope="module")
def chunk_run(tiny_bert, sample_df, tmp_path_factory):
    from components.training.trainer import train
    from tests.support.tiny import LABELS

    train_docs, train_labels = _long_docs(sample_df, 24)
    val_docs, val_labels = train_docs[:7], train_labels[:7]  # seen ones: the model learns them (about 1 s)
    out = tmp_path_factory.mktemp("long-text") / "package"
    trained = train(train_docs, train_labels, val_docs, val_labels, LABELS,
                    _chunk_cfg(tiny_bert, epochs=EPOCHS, early_stopping_patience=100), out, progress=False)
    return trained, (train_docs, val_docs, val_labels)


def test_training_with_chunks_uses_every_window_as_an_example_and_records_the_strategy(chunk_run):
    trained, (train_docs, _, _) = chunk_run
    meta = read_meta(trained.package_dir)
    assert (meta.long_text, meta.long_text_stride, meta.max_windows, meta.format_version) == ("chunks", STRIDE, 6, 2)
    clf = load_package(trained.package_dir, device="cpu")
    windows = encode_texts(clf.tokenizer, train_docs, clf.meta)
    assert len(windows.input_ids) > 2 * len(train_docs)  # the documents really are long
    assert trained.steps == EPOCHS * math.ceil(len(windows.input_ids) / 8)  # epochs over windows, not documents


def test_validation_scores_documents_as_the_loaded_package_does(chunk_run):
    import torch

    from components.training.distributed import current_context
    from components.training.trainer import _evaluate

    trained, (_, val_docs, val_labels) = chunk_run
    clf = load_package(trained.package_dir, device="cpu")
    windows = encode_texts(clf.tokenizer, val_docs, clf.meta)
    assert len(windows.input_ids) > len(val_docs)
    y = [clf.labels.index(label) for label in val_labels]
    metrics = _evaluate(clf.model, windows.input_ids, y, clf.tokenizer.pad_token_id, "right", "cpu", 8, False, False,
                        current_context(), doc_index=windows.doc_index)
    clf.model.train(False)
    logits = clf.logits(val_docs)
    assert metrics["val_accuracy"] == pytest.approx(float(np.mean(logits.argmax(axis=1) == y)))
    loss = torch.nn.functional.cross_entropy(torch.from_numpy(logits), torch.tensor(y)).item()
    assert metrics["val_loss"] == pytest.approx(loss, abs=1e-5)
    # The run's own history counts the 7 validation documents, not their windows.
    assert all(round(h["val_accuracy"] * 7, 6).is_integer() for h in trained.history)


def test_a_loaded_package_and_its_torchscript_export_read_long_texts_in_chunks(chunk_run, tmp_path):
    import shutil

    import torch

    from components.export.runtime import ExportedClassifier, open_runner
    from components.export.spec import export_dir, read_spec
    from components.export.torchscript import trace_package
    from components.package import load_tokenizer

    trained, (_, val_docs, _) = chunk_run
    pkg = tmp_path / "package"
    shutil.copytree(trained.package_dir, pkg)
    eager = load_package(pkg, device="cpu")
    windows = encode_texts(eager.tokenizer, val_docs[:3], eager.meta)
    with torch.inference_mode():  # the windows scored one by one, then averaged by hand
        single = np.stack([eager.model(input_ids=torch.tensor([r])).logits[0].numpy() for r in windows.input_ids])
    expected = np.stack([single[np.asarray(windows.doc_index) == d].mean(axis=0) for d in range(3)])
    np.testing.assert_allclose(eager.logits(val_docs[:3], batch_size=4), expected, atol=1e-5)
    # Under truncate the same weights read only the first window: another answer.
    truncated = TextClassifier(eager.model, eager.tokenizer, eager.meta.model_copy(update={"long_text": "truncate"}))
    assert not np.allclose(truncated.logits(val_docs[:3]), expected, atol=1e-3)

    # The exported runtime as `load_export` builds it (its parity gate is tests/model/test_export.py's, and
    # runs in a fresh process: too slow to repeat here): the package's meta, the traced graph's forward pass.
    trace_package(pkg)
    d = export_dir(pkg, "torchscript")
    meta = read_meta(pkg)
    traced = ExportedClassifier(open_runner(d, read_spec(d)), load_tokenizer(pkg, meta), meta, "torchscript")
    assert traced.meta.long_text == "chunks"
    # One forward pass of all windows: TorchScript's profiling executor re-specialises (about 1 s) per new shape.
    np.testing.assert_allclose(traced.logits(val_docs[:3], batch_size=64), expected, atol=1e-4)


def test_gpt2_without_special_tokens_trains_and_predicts_in_chunks(sample_df, tmp_path):
    from components.training.trainer import train
    from tests.support.tiny import LABELS, build_tiny_gpt2

    gpt2 = build_tiny_gpt2(tmp_path / "gpt2", sample_df.text.tolist())
    docs, labels = _long_docs(sample_df, 8)
    trained = train(docs, labels, docs[:3], labels[:3], LABELS, _chunk_cfg(gpt2, max_steps=2), tmp_path / "pkg",
                    progress=False)
    clf = load_package(trained.package_dir, device="cpu")
    assert special_token_counts(clf.tokenizer) == (0, 0)
    windows = encode_texts(clf.tokenizer, docs[:2], clf.meta)
    ids = clf.tokenizer(docs[0], verbose=False)["input_ids"]
    first = [r for r, d in zip(windows.input_ids, windows.doc_index) if d == 0]
    assert first[0] == ids[:MAX_LENGTH] and first[-1] == ids[-len(first[-1]):]  # no special tokens added
    assert "val_accuracy" in trained.history[-1]
    # Windows of different lengths padded together score as each alone (the package pads right for GPT-2).
    batched = clf.logits(docs[:2], batch_size=16)
    alone = np.concatenate([clf.logits([d], batch_size=1) for d in docs[:2]])
    np.testing.assert_allclose(batched, alone, atol=1e-5)
