"""ONNX Runtime export: the package's classifier as an ONNX graph, held to the same parity gate.

Made with torch's dynamo-based exporter (`torch.onnx.export(..., dynamo=True)`, which needs
`onnxscript`) with dynamic batch and sequence dimensions. torch 2.13's older TorchScript-based
exporter (`dynamo=False`) also runs on these models but gives logits off by 1e-2 to 1e-1 on both
tiny BERT and GPT-2 here (measured), which the parity check refuses; it is kept only as an option.
Needs the `onnx` extra: `pip install 'fineship[onnx]'` (onnx, onnxscript, onnxruntime).

`onnx-int8` is that graph with ONNX Runtime's dynamic int8 quantisation of its weights
(`onnxruntime.quantization.quantize_dynamic`): smaller and often faster on CPUs, but not exact, so
its parity check asks for argmax agreement of at least `INT8_MIN_AGREEMENT` (no logit tolerance),
and the deployment's variant gate (`components.export.variants`) adds an accuracy-drop limit.
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
from components.export.spec import (
    MODEL_FILES,
    SPEC_FILE,
    ExportResult,
    export_dir,
    export_files,
    package_weights_sha256,
    read_spec,
    sha256_files,
)
from components.export.verify import record_result, run_check, verify_export

log = logging.getLogger(__name__)

KIND = "onnx"
INT8_KIND = "onnx-int8"
INT8_MIN_AGREEMENT = 0.995  # the share of test texts on which the int8 graph must pick the eager model's label


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


def quantize_package(package_dir: str | Path) -> Path:
    """Quantise the package's ONNX export (made first if missing or stale) to `<package>/export/onnx-int8/`.

    Dynamic quantisation: int8 weights, activations quantised per batch at run time, so no
    calibration data is needed. The value shapes the dynamo exporter records are dropped first: they
    were inferred at the example shape and ONNX's shape inference, which the quantiser runs, rejects them.
    """
    ort = import_onnxruntime()
    source = export_dir(package_dir, KIND)
    if not (source / SPEC_FILE).is_file() or read_spec(source).package_sha256 != package_weights_sha256(package_dir):
        convert_package(package_dir)
    import onnx
    from onnxruntime.quantization import QuantType, quantize_dynamic

    fp32 = read_spec(source)
    model = onnx.load(str(source / fp32.file))
    del model.graph.value_info[:]
    d = fresh_export_dir(package_dir, INT8_KIND)
    path = d / MODEL_FILES[INT8_KIND]
    quant_log = logging.getLogger()  # the quantiser logs a pre-processing hint at WARNING on the root logger
    level = quant_log.level
    quant_log.setLevel(logging.ERROR)
    try:
        quantize_dynamic(model, str(path), weight_type=QuantType.QInt8)
    except Exception as err:  # the quantiser raises many types; say which model failed and why
        raise ExportError(f"int8 quantisation of {package_dir}'s ONNX export failed ({type(err).__name__}: "
                          f"{str(err)[:1000]}); serve it with backend 'onnx' or 'eager'") from err
    finally:
        quant_log.setLevel(level)
    spec = fp32.model_copy(update={
        "kind": INT8_KIND, "file": path.name, "sha256": sha256_files(export_files(d)),
        "exporter": f"{fp32.exporter} + onnxruntime.quantization.quantize_dynamic(QInt8) (onnxruntime "
                    f"{ort.__version__})"})
    (d / SPEC_FILE).write_text(spec.model_dump_json(indent=2), encoding="utf-8")
    log.info("quantised %s to %s", source / fp32.file, path)
    return path


def export_onnx_int8(package_dir: str | Path, texts: Sequence[str], batch_sizes: Sequence[int] = DEFAULT_BATCH_SIZES,
                     min_agreement: float = INT8_MIN_AGREEMENT, latency: bool = True,
                     raise_on_failure: bool = True) -> ExportResult:
    """Quantise the ONNX export to int8 and hold it to `min_agreement` with the package on `texts`.

    The check runs in this process: the quantised graph is read back from its file by a new ONNX
    Runtime session, and no torch state of an exporter is involved (the fp32 graph it came from is
    checked in a fresh process by `export_onnx`).
    """
    quantize_package(package_dir)
    report, table = run_check(package_dir, INT8_KIND, texts, batch_sizes, float("inf"), latency, min_agreement)
    return record_result(package_dir, INT8_KIND, report, table, raise_on_failure)
