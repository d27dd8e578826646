"""TorchScript export: trace the package's classifier and check it against the package.

The graph is traced with `return_dict=False` on a padded batch of 2 at about half the max length;
the traced graph keeps batch and sequence length dynamic (sizes are read from the inputs, checked
at batch sizes 1, 8 and 32 and lengths from one token to the max by the parity report), and decoder
models (GPT-2) pool their last non-pad token inside the graph, as they do eagerly.
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
from components.export.spec import MODEL_FILES, ExportResult
from components.export.verify import verify_export

log = logging.getLogger(__name__)

KIND = "torchscript"


def trace_package(package_dir: str | Path) -> Path:
    """Trace the package's classifier and save it as `<package>/export/torchscript/model.pt` (+ `export.json`)."""
    import torch

    clf = load_for_export(package_dir)
    module = logits_module(clf.model)
    input_ids, attention_mask = example_inputs(clf)
    d = fresh_export_dir(package_dir, KIND)
    path = d / MODEL_FILES[KIND]
    with warnings.catch_warnings():
        # torch 2.13 deprecates torch.jit; the tracer also warns about Python-side shape arithmetic,
        # which the parity check across batch sizes and lengths is there to catch if it matters.
        warnings.simplefilter("ignore", DeprecationWarning)
        warnings.simplefilter("ignore", torch.jit.TracerWarning)
        try:
            with torch.inference_mode(False), torch.no_grad():
                traced = torch.jit.trace(module, (input_ids, attention_mask), strict=False, check_trace=False)
            torch.jit.save(traced, str(path))
        except Exception as err:  # the tracer raises a variety of types; say which model failed and why
            raise ExportError(f"TorchScript tracing of {package_dir} failed ({type(err).__name__}: {err}); "
                              "serve it with backend 'eager' or try the onnx export") from err
    write_spec(package_dir, KIND, path.name, f"torch.jit.trace (torch {torch.__version__})", clf,
               tuple(input_ids.shape))
    log.info("traced %s into %s with inputs of shape %s", package_dir, path, tuple(input_ids.shape))
    return path


def export_torchscript(package_dir: str | Path, texts: Sequence[str],
                       batch_sizes: Sequence[int] = DEFAULT_BATCH_SIZES, tolerance: float = DEFAULT_TOLERANCE,
                       latency: bool = True, raise_on_failure: bool = True) -> ExportResult:
    """Trace, save, reload in a fresh process and check parity on `texts`; `ExportError` if it disagrees."""
    trace_package(package_dir)
    return verify_export(package_dir, KIND, texts, batch_sizes, tolerance, latency, raise_on_failure)
