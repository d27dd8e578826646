"""ONNX Runtime export: the package's classifier as an ONNX graph, held to the same parity gate.

Made with torch's dynamo-based exporter (`torch.onnx.export(..., dynamo=True)`, which needs
`onnxscript`) with dynamic batch and sequence dimensions. torch 2.13's older TorchScript-based
exporter (`dynamo=False`) also runs on these models but gives logits off by 1e-2 to 1e-1 on both
tiny BERT and GPT-2 here (measured), which the parity check refuses; it is kept only as an option.
Needs the `onnx` extra: `pip install 'fineship[onnx]'` (onnx, onnxscript, onnxruntime).
"""

from __future__ import annotations

import logging
import warnings
from collections.abc import Sequence
from pathlib import Path

from components.errors import ExportError
from components.export.common import (
    example_inputs,
    fresh_export_dir,
    load_for_export,
    logits_module,
    write_spec,
)
from components.export.parity import DEFAULT_BATCH_SIZES, DEFAULT_TOLERANCE
from components.export.runtime import import_onnxruntime
from components.export.spec import MODEL_FILES, ExportResult
from components.export.verify import verify_export

log = logging.getLogger(__name__)

KIND = "onnx"


def onnx_available() -> bool:
    """True when the exporter's and the runtime's packages import."""
    try:
        import onnx  # noqa: F401
        import onnxruntime  # noqa: F401
        import onnxscript  # noqa: F401
    except ImportError:
        return False
    return True


def convert_package(package_dir: str | Path, dynamo: bool = True) -> Path:
    """Export the package's classifier to `<package>/export/onnx/model.onnx` (+ `export.json`)."""
    import torch

    if not onnx_available():
        import_onnxruntime()  # raises the install hint when the runtime is missing
        raise ExportError("the ONNX exporter needs onnx and onnxscript: pip install 'fineship[onnx]'")
    clf = load_for_export(package_dir)
    module = logits_module(clf.model)
    input_ids, attention_mask = example_inputs(clf)
    d = fresh_export_dir(package_dir, KIND)
    path = d / MODEL_FILES[KIND]
    names = ["input_ids", "attention_mask"]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        warnings.simplefilter("ignore", torch.jit.TracerWarning)
        warnings.filterwarnings("ignore", message=r"# The axis name", category=UserWarning)
        try:
            if dynamo:
                from torch.export import Dim

                batch = Dim("batch", min=1, max=4096)
                length = Dim("length", min=1, max=max(2, clf.meta.max_length))
                torch.onnx.export(module, (input_ids, attention_mask), str(path), dynamo=True, verbose=False,
                                  input_names=names, output_names=["logits"],
                                  dynamic_shapes={"input_ids": {0: batch, 1: length},
                                                  "attention_mask": {0: batch, 1: length}})
            else:
                axes = {"input_ids": {0: "batch", 1: "length"}, "attention_mask": {0: "batch", 1: "length"},
                        "logits": {0: "batch"}}
                torch.onnx.export(module, (input_ids, attention_mask), str(path), dynamo=False,
                                  input_names=names, output_names=["logits"], dynamic_axes=axes, opset_version=17)
        except ExportError:
            raise
        except Exception as err:  # exporters raise many types; say which model failed and why
            raise ExportError(f"ONNX export of {package_dir} failed ({type(err).__name__}: {str(err)[:1000]}); "
                              "serve it with backend 'eager' or 'torchscript'") from err
    exporter = f"torch.onnx.export(dynamo={dynamo}) (torch {torch.__version__})"
    write_spec(package_dir, KIND, path.name, exporter, clf, tuple(input_ids.shape))
    log.info("exported %s to %s", package_dir, path)
    return path


def export_onnx(package_dir: str | Path, texts: Sequence[str], batch_sizes: Sequence[int] = DEFAULT_BATCH_SIZES,
                tolerance: float = DEFAULT_TOLERANCE, latency: bool = True, raise_on_failure: bool = True,
                dynamo: bool = True) -> ExportResult:
    """Export to ONNX, reload in a fresh ONNX Runtime process and check parity on `texts`."""
    convert_package(package_dir, dynamo)
    return verify_export(package_dir, KIND, texts, batch_sizes, tolerance, latency, raise_on_failure)
