"""Running exports: one runner per kind, and a `TextClassifier` that serves an export.

Exports run on the CPU: a traced graph keeps the device it was traced on, and the ONNX session uses
ONNX Runtime's CPU provider.
"""

from __future__ import annotations

import logging
import warnings
from pathlib import Path
from typing import Any

import numpy as np

from components.errors import ExportError
from components.export.spec import (
    EXPORT_KINDS,
    RESULT_FILE,
    SPEC_FILE,
    ExportSpec,
    export_dir,
    export_files,
    package_weights_sha256,
    read_result,
    read_spec,
    sha256_files,
)
from components.package import PackageMeta, TextClassifier, load_tokenizer, read_meta, require_complete

log = logging.getLogger(__name__)


class TorchScriptRunner:
    """A saved TorchScript module: (input_ids, attention_mask) -> logits."""

    def __init__(self, path: str | Path) -> None:
        import torch

        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)  # torch.jit is deprecated in torch 2.13
            self.module = torch.jit.load(str(path), map_location="cpu")
        self.module.eval()

    def __call__(self, input_ids: np.ndarray, attention_mask: np.ndarray) -> np.ndarray:
        import torch

        with torch.inference_mode():
            return self.module(torch.from_numpy(input_ids), torch.from_numpy(attention_mask)).float().numpy()


class OnnxRunner:
    """An ONNX Runtime session on the CPU: (input_ids, attention_mask) -> logits."""

    def __init__(self, path: str | Path, threads: int | None = None) -> None:
        ort = import_onnxruntime()
        import torch

        options = ort.SessionOptions()
        # The same thread budget as the eager model, so latency tables and servers compare like with like.
        options.intra_op_num_threads = threads or torch.get_num_threads()
        options.inter_op_num_threads = 1
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        options.log_severity_level = 3
        # Idle pool threads sleep instead of spinning (ORT spins by default): on a shared or small CPU a
        # spinning pool competes with the server's own threads, as OpenMP's does (OMP_WAIT_POLICY).
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        self.session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        self.input_names = [i.name for i in self.session.get_inputs()]

    def __call__(self, input_ids: np.ndarray, attention_mask: np.ndarray) -> np.ndarray:
        feeds = dict(zip(self.input_names, (input_ids.astype(np.int64, copy=False),
                                            attention_mask.astype(np.int64, copy=False))))
        return np.asarray(self.session.run(None, feeds)[0], dtype=np.float32)


def import_onnxruntime() -> Any:
    try:
        import onnxruntime
    except ImportError:
        raise ExportError("ONNX Runtime is not installed: pip install 'fineship[onnx]' "
                          "(onnx, onnxscript, onnxruntime), or use the torchscript export") from None
    return onnxruntime


def open_runner(directory: Path, spec: ExportSpec) -> TorchScriptRunner | OnnxRunner:
    """The runner for the export in `directory` (no parity check: see `load_export`)."""
    path = directory / spec.file
    if not path.is_file():
        raise ExportError(f"{path} is missing; re-export the package")
    if spec.kind == "torchscript":
        return TorchScriptRunner(path)
    return OnnxRunner(path)


class ExportedClassifier(TextClassifier):
    """A `TextClassifier` whose forward pass is an export; tokenising, batching and scores are the package's."""

    def __init__(self, runner: TorchScriptRunner | OnnxRunner, tokenizer: Any, meta: PackageMeta, kind: str) -> None:
        super().__init__(model=None, tokenizer=tokenizer, meta=meta, device="cpu")
        self.runner = runner
        self.backend = kind

    def _forward(self, enc: Any) -> np.ndarray:
        return self.runner(enc["input_ids"].numpy(), enc["attention_mask"].numpy())


def load_export(package_dir: str | Path, kind: str, device: str = "cpu") -> ExportedClassifier:
    """Load the package's `kind` export for serving; refuse one without a passing, matching parity report.

    The report must have passed, be about these very export files, and the export must have been
    made from the package's current weights.
    """
    if kind not in EXPORT_KINDS:
        raise ExportError(f"unknown export kind {kind!r}; use one of {', '.join(EXPORT_KINDS)}")
    if device not in ("auto", "cpu"):
        raise ExportError(f"exports run on the CPU; device {device!r} needs backend 'eager'")
    p = Path(package_dir)
    require_complete(p)
    d = export_dir(p, kind)
    how = f"export it first (components.export.export_package(..., kind={kind!r}))"
    if not (d / SPEC_FILE).is_file():
        raise ExportError(f"{p} has no {kind} export ({d / SPEC_FILE} is missing); {how}")
    if not (d / RESULT_FILE).is_file():
        raise ExportError(f"the {kind} export in {d} has no parity report; it was never checked: {how}")
    spec = read_spec(d)
    result = read_result(d)
    if not result.passed:
        raise ExportError(f"the {kind} export in {d} failed its parity check and is not served: "
                          + "; ".join(result.parity.reasons()))
    if sha256_files(export_files(d)) != result.spec.sha256:
        raise ExportError(f"the {kind} export files in {d} changed after their parity check; {how}")
    if package_weights_sha256(p) != spec.package_sha256:
        raise ExportError(f"the {kind} export in {d} was made from other weights than the package now holds; {how}")
    meta = read_meta(p)
    if spec.labels != meta.labels or spec.max_length != meta.max_length or spec.padding_side != meta.padding_side:
        raise ExportError(f"the {kind} export in {d} was made for other labels, max length or padding side "
                          f"than the package's; {how}")
    runner = open_runner(d, spec)
    log.info("loaded the %s export of %s (parity: max |diff| %.2e over %d texts)", kind, p,
             result.parity.max_abs_diff, result.parity.n_texts)
    return ExportedClassifier(runner, load_tokenizer(p, meta), meta, kind)
