"""What the TorchScript and ONNX exporters share: the module they export, its example inputs, the spec."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

from components.export.spec import (
    SPEC_FILE,
    ExportSpec,
    export_dir,
    export_files,
    package_weights_sha256,
    sha256_files,
)
from components.package import TextClassifier, forward_logits, load_package, preprocess

# Two texts of different lengths: the example batch carries padding, so the attention mask is a real
# input of the exported graph (a batch without padding lets a tracer drop it as "all ones").
_EXAMPLE_TEXTS = ("hello", "the quick brown fox jumps over the lazy dog " * 64)


def logits_module(model: Any) -> Any:
    """`model` as a module of (input_ids, attention_mask) -> logits tensor, computed as serving computes it."""
    import torch

    class LogitsOnly(torch.nn.Module):
        def __init__(self, inner: Any) -> None:
            super().__init__()
            self.inner = inner

        def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
            return forward_logits(self.inner, input_ids, attention_mask)

    return LogitsOnly(model).eval()


def load_for_export(package_dir: str | Path) -> TextClassifier:
    """The package's eager model on the CPU (exports are made and served on the CPU)."""
    return load_package(package_dir, device="cpu")


def example_inputs(clf: TextClassifier) -> tuple[Any, Any]:
    """A padded batch of 2 at about half the package's max length: (input_ids, attention_mask)."""
    length = max(8, clf.meta.max_length // 2)
    enc = clf.tokenizer(preprocess(_EXAMPLE_TEXTS, clf.meta), padding=True, truncation=True,
                        max_length=length, return_tensors="pt")
    return enc["input_ids"], enc["attention_mask"]


def fresh_export_dir(package_dir: str | Path, kind: str) -> Path:
    """An empty `<package>/export/<kind>` (an earlier export of that kind, and its report, are removed)."""
    d = export_dir(package_dir, kind)
    if d.exists():
        shutil.rmtree(d)
    d.mkdir(parents=True)
    return d


def write_spec(package_dir: str | Path, kind: str, file: str, exporter: str, clf: TextClassifier,
               example_shape: tuple[int, ...]) -> ExportSpec:
    """Write `export.json` beside the exported file(s) and return it."""
    import torch
    import transformers

    d = export_dir(package_dir, kind)
    spec = ExportSpec(kind=kind, file=file, exporter=exporter, max_length=clf.meta.max_length,
                      padding_side=clf.meta.padding_side, labels=clf.labels, example_shape=list(example_shape),
                      sha256=sha256_files(export_files(d)), package_sha256=package_weights_sha256(package_dir),
                      torch_version=torch.__version__, transformers_version=transformers.__version__)
    (d / SPEC_FILE).write_text(spec.model_dump_json(indent=2), encoding="utf-8")
    return spec
