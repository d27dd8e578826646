"""Export stage: TorchScript and ONNX Runtime exports of a model package, held to a parity gate.

An export lives beside the package it came from, under `<package>/export/<kind>/`: the exported
model, `export.json` (input names, max length, padding side, hashes) and `parity.json` (the
`ExportResult`: parity report and latency table). The parity check runs in a fresh process that
loads both the package and the export from disk; an export that disagrees with its model raises
`ExportError` and is never served (`runtime.load_export`, which serving's
`components.serving.backends.load_backend` calls, refuses it).

`onnx-int8` (the ONNX graph with dynamic int8 weights) is held to an argmax-agreement floor instead of
a logit tolerance. At deployment, `variants.build_variants` builds every serving variant, gates each
on the version's test split (agreement with eager, accuracy drop) and times it on the machine;
`choice.choose_backend` picks what serves and `choice.write_report` records it as `export/variants.json`.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from components.errors import ExportError
from components.export.parity import LatencyRow, ParityReport
from components.export.spec import EXPORT_KINDS, ExportResult, ExportSpec, export_dir

__all__ = ["EXPORT_KINDS", "ExportResult", "ExportSpec", "LatencyRow", "ParityReport", "export_dir",
           "export_package"]


def export_package(package_dir: str | Path, kind: str, texts: Sequence[str], batch_sizes: Sequence[int] = (1, 8, 32),
                   tolerance: float = 1e-4, latency: bool = True, raise_on_failure: bool = True,
                   min_agreement: float | None = None) -> ExportResult:
    """Export a package as `kind` ("torchscript", "onnx" or "onnx-int8") and check it against the package on `texts`.

    `onnx-int8` is held to argmax agreement (`min_agreement`, default
    `components.export.onnx.INT8_MIN_AGREEMENT`) instead of `tolerance`.

    Raises `ExportError` (carrying the `ExportResult` when there is one) when the export cannot be
    made or, unless `raise_on_failure` is False, when it fails the parity check.
    """
    if kind == "torchscript":
        from components.export.torchscript import export_torchscript

        return export_torchscript(package_dir, texts, batch_sizes, tolerance, latency, raise_on_failure)
    if kind == "onnx":
        from components.export.onnx import export_onnx

        return export_onnx(package_dir, texts, batch_sizes, tolerance, latency, raise_on_failure)
    if kind == "onnx-int8":
        from components.export.onnx import export_onnx_int8

        from components.export.onnx import INT8_MIN_AGREEMENT

        return export_onnx_int8(package_dir, texts, batch_sizes, INT8_MIN_AGREEMENT if min_agreement is None
                                else min_agreement, latency=latency, raise_on_failure=raise_on_failure)
    raise ExportError(f"unknown export kind {kind!r}; use one of {', '.join(EXPORT_KINDS)}")
