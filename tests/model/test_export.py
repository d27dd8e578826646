"""TorchScript (and ONNX) exports held to the parity gate: they pass when faithful, and are refused otherwise.

Every export is reloaded and checked in a fresh process, on the sample data's test split at batch
sizes 1, 8 and 32 (padded batches, lengths from one token past the max length).
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from components.errors import ExportError
from components.export import ExportResult, export_package
from components.export.parity import check_parity, require_parity
from components.export.spec import RESULT_FILE, SPEC_FILE, export_dir
from components.export.verify import run_check, verify_export
from components.package import PackageMeta, load_package
from components.serving.backends import load_backend

TOL = 1e-4


@pytest.fixture(scope="module")
def test_texts(sample_df) -> list[str]:
    from components.data.split import split_frame

    return split_frame(sample_df, "text", "label", 0.8, 0.1, 0.1, 42).test.text.tolist()


def build_tiny_gpt2(out_dir: Path, texts: list[str], padding_side: str, seed: int = 0) -> Path:
    """A 2-layer random GPT-2 classifier package with a byte-level BPE trained on `texts`, pad = end-of-text.

    (tests/support/tiny.py's builder hands `vocab_file` to GPT2TokenizerFast, which transformers 5
    ignores, leaving an empty vocabulary; this one builds the tokenizer from the `tokenizers` object.)
    """
    import torch
    from tokenizers import ByteLevelBPETokenizer
    from transformers import GPT2Config, GPT2ForSequenceClassification, GPT2TokenizerFast

    torch.manual_seed(seed)
    out_dir.mkdir(parents=True, exist_ok=True)
    bpe = ByteLevelBPETokenizer()
    bpe.train_from_iterator(texts, vocab_size=600, min_frequency=1, special_tokens=["<|endoftext|>"])
    eot = "<|endoftext|>"
    tok = GPT2TokenizerFast(tokenizer_object=bpe._tokenizer, eos_token=eot, bos_token=eot, unk_token=eot, pad_token=eot)
    cfg = GPT2Config(vocab_size=len(tok), n_embd=32, n_layer=2, n_head=2, n_positions=128, num_labels=2,
                     pad_token_id=tok.pad_token_id, bos_token_id=tok.eos_token_id, eos_token_id=tok.eos_token_id)
    GPT2ForSequenceClassification(cfg).save_pretrained(out_dir)
    tok.save_pretrained(out_dir)
    meta = PackageMeta(labels=["ham", "spam"], max_length=64, padding_side=padding_side)
    (out_dir / "fineship.json").write_text(meta.model_dump_json(), encoding="utf-8")
    return out_dir


@pytest.fixture(scope="module")
def bert_export(tiny_package: Path, tmp_path_factory: pytest.TempPathFactory, test_texts) -> ExportResult:
    pkg = tmp_path_factory.mktemp("export-bert") / "package"
    shutil.copytree(tiny_package, pkg)
    return export_package(pkg, "torchscript", test_texts)


def assert_parity_shape(result: ExportResult) -> None:
    p = result.parity
    assert p.passed, p.reasons()
    assert p.argmax_agreement == 1.0 and p.max_abs_diff <= TOL
    assert [b.batch_size for b in p.per_batch_size] == [1, 8, 32]
    single, *batched = p.per_batch_size
    assert single.min_length <= 8 and single.max_length == result.spec.max_length  # a word ... truncated
    assert all(b.padded_share > 0 for b in batched)  # padded batches were checked
    assert all(b.argmax_agreement == 1.0 and b.max_abs_diff <= TOL for b in p.per_batch_size)


def test_torchscript_export_of_tiny_bert_passes_parity_at_batch_1_8_32(bert_export: ExportResult, test_texts):
    assert_parity_shape(bert_export)
    assert bert_export.parity.n_texts == len(test_texts) + 4  # the test split plus 4 length variants
    d = Path(bert_export.path).parent
    assert bert_export.path.endswith("export/torchscript/model.pt") and Path(bert_export.path).is_file()
    spec = json.loads((d / SPEC_FILE).read_text())
    assert spec["input_names"] == ["input_ids", "attention_mask"]
    assert spec["max_length"] == 48 and spec["padding_side"] == "right"
    assert ExportResult.model_validate_json((d / RESULT_FILE).read_text()).passed
    # The latency table: eager vs TorchScript per batch size, measured.
    assert [r.batch_size for r in bert_export.latency] == [1, 8, 32]
    assert all(r.eager_ms > 0 and r.export_ms > 0 for r in bert_export.latency)


def test_the_export_serves_the_models_answers(bert_export: ExportResult, test_texts):
    package = Path(bert_export.path).parents[2]
    eager = load_package(package, device="cpu")
    traced = load_backend(package, "torchscript")
    assert type(traced).__name__ == "ExportedClassifier" and traced.model is None
    assert traced.labels == eager.labels
    np.testing.assert_allclose(traced.logits(test_texts), eager.logits(test_texts), atol=TOL)
    assert [p.label for p in traced.predict(test_texts)] == [p.label for p in eager.predict(test_texts)]


@pytest.mark.parametrize("side", ["left", "right"])
def test_torchscript_export_of_tiny_gpt2_passes_parity_with_padding(side: str, tmp_path: Path, test_texts,
                                                                    sample_df):
    pkg = build_tiny_gpt2(tmp_path / "gpt2", sample_df.text.tolist(), side)
    result = export_package(pkg, "torchscript", test_texts, latency=False)
    assert_parity_shape(result)
    # The traced graph pools the last real token of each row: a text scores the same alone and in a
    # right-padded batch beside a longer one (left padding shifts GPT-2's positions, eagerly too).
    clf = load_backend(pkg, "torchscript")
    if side == "right":
        short, long = test_texts[0][:40], test_texts[1]
        np.testing.assert_allclose(clf.logits([short], batch_size=1)[0], clf.logits([long, short])[1], atol=1e-5)


def _perturb_torchscript(path: Path, scale: float) -> None:
    import torch

    module = torch.jit.load(str(path))
    with torch.no_grad():
        weight = next(p for n, p in module.named_parameters() if n.endswith("classifier.weight"))
        weight.add_(scale * torch.linspace(-1, 1, weight.numel()).reshape(weight.shape))
    torch.jit.save(module, str(path))


def test_an_export_with_a_corrupted_weight_is_refused(bert_export: ExportResult, tmp_path: Path, test_texts):
    pkg = tmp_path / "package"
    shutil.copytree(Path(bert_export.path).parents[2], pkg)
    _perturb_torchscript(export_dir(pkg, "torchscript") / "model.pt", 5.0)
    with pytest.raises(ExportError) as err:
        verify_export(pkg, "torchscript", test_texts, latency=False)
    message = str(err.value)
    assert "disagrees with its model and is refused" in message
    assert "top label differs" in message and "over the tolerance" in message
    assert isinstance(err.value.result, ExportResult) and not err.value.result.passed
    # The refusal is on disk: the server's loader will not serve it.
    with pytest.raises(ExportError, match="failed its parity check"):
        load_backend(pkg, "torchscript")


def test_a_model_changed_after_export_is_refused(bert_export: ExportResult, tmp_path: Path, test_texts):
    """The eager model is what the export must match: change the package's weights and the export fails."""
    from safetensors.torch import load_file, save_file

    pkg = tmp_path / "package"
    shutil.copytree(Path(bert_export.path).parents[2], pkg)
    weights = pkg / "model.safetensors"
    tensors = load_file(weights)
    key = next(k for k in tensors if k.endswith("classifier.bias"))
    tensors[key] = tensors[key] + 1e-3  # small: labels hold, logits move past the 1e-4 tolerance
    save_file(tensors, weights, metadata={"format": "pt"})
    with pytest.raises(ExportError, match="made from other weights"):  # the loader notices before any check
        load_backend(pkg, "torchscript")
    # The check itself (in this process: the fresh-process path is exercised by the test above).
    report, latency = run_check(pkg, "torchscript", test_texts, latency=False)
    assert not report.passed and latency == []
    assert report.argmax_agreement == 1.0 and report.max_abs_diff > TOL
    with pytest.raises(ExportError, match="over the tolerance 1e-04"):
        require_parity(report)


def test_an_unchecked_or_missing_export_is_not_served(bert_export: ExportResult, tmp_path: Path):
    pkg = tmp_path / "package"
    shutil.copytree(Path(bert_export.path).parents[2], pkg)
    with pytest.raises(ExportError, match="has no onnx export"):
        load_backend(pkg, "onnx")
    (export_dir(pkg, "torchscript") / RESULT_FILE).unlink()
    with pytest.raises(ExportError, match="never checked"):
        load_backend(pkg, "torchscript")


def test_the_parity_report_says_why_it_failed():
    labels = ["a", "b"]

    def tokenize(texts):
        n = len(texts)
        return np.ones((n, 4), dtype=np.int64), np.ones((n, 4), dtype=np.int64)

    def reference(ids, mask):
        return np.tile(np.array([[1.0, 0.0]], dtype=np.float32), (len(ids), 1))

    def nan_export(ids, mask):
        return np.full((len(ids), 2), np.nan, dtype=np.float32)

    report = check_parity("torchscript", tokenize, reference, nan_export, ["x"] * 9, labels)
    assert not report.passed
    assert any("non-finite" in r for r in report.reasons())
    with pytest.raises(ExportError, match="non-finite"):
        require_parity(report)
    # The report survives a JSON round trip with inf in it (parity.json, MLflow).
    assert type(report).model_validate_json(report.model_dump_json()).max_abs_diff == float("inf")


def _onnx_or_skip() -> None:
    from components.export.onnx import onnx_available

    if not onnx_available():
        pytest.skip("onnx, onnxscript or onnxruntime is not installed (pip install 'fineship[onnx]')")


def test_onnx_export_of_tiny_bert_passes_the_same_gate(bert_export: ExportResult, tmp_path: Path, test_texts):
    _onnx_or_skip()
    pkg = tmp_path / "package"
    shutil.copytree(Path(bert_export.path).parents[2], pkg)
    result = export_package(pkg, "onnx", test_texts, latency=False)
    assert_parity_shape(result)
    assert Path(result.path).name == "model.onnx"
    served = load_backend(pkg, "onnx")
    eager = load_package(pkg, device="cpu")
    np.testing.assert_allclose(served.logits(test_texts), eager.logits(test_texts), atol=TOL)


@pytest.mark.slow
def test_onnx_export_of_tiny_gpt2_left_padded_passes_the_gate(tmp_path: Path, test_texts, sample_df):
    _onnx_or_skip()
    pkg = build_tiny_gpt2(tmp_path / "gpt2", sample_df.text.tolist(), "left")
    assert_parity_shape(export_package(pkg, "onnx", test_texts, latency=False))
