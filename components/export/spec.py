"""Where exports live and what is written beside them: `export.json` (`ExportSpec`) and `parity.json`
(`ExportResult`)."""

from __future__ import annotations

import hashlib
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from components.export.parity import LatencyRow, ParityReport

EXPORT_KINDS = ("torchscript", "onnx", "onnx-int8")
EXPORT_ROOT = "export"
SPEC_FILE = "export.json"
RESULT_FILE = "parity.json"
MODEL_FILES = {"torchscript": "model.pt", "onnx": "model.onnx", "onnx-int8": "model.onnx"}


class ExportSpec(BaseModel):
    """How to feed an exported model (`export.json`), and which files it and its source package were."""

    model_config = ConfigDict(frozen=True)

    kind: Literal["torchscript", "onnx", "onnx-int8"]
    file: str = Field(description="Model file name inside the export directory.")
    exporter: str = Field(description="What produced the file, e.g. torch.jit.trace.")
    input_names: list[str] = ["input_ids", "attention_mask"]
    output_names: list[str] = ["logits"]
    max_length: int
    padding_side: str
    labels: list[str]
    example_shape: list[int] = Field(description="(batch, length) of the inputs the export was made with; "
                                                 "other shapes are checked by the parity report.")
    sha256: str = Field(description="Hash of the exported file(s).")
    package_sha256: str = Field(description="Hash of the package weights the export was made from.")
    torch_version: str
    transformers_version: str
    created_at: float = Field(default_factory=time.time)


class ExportResult(BaseModel):
    """An export and its verdict: the parity report and the eager-vs-export latency table."""

    model_config = ConfigDict(frozen=True, ser_json_inf_nan="constants")

    kind: Literal["torchscript", "onnx", "onnx-int8"]
    path: str = Field(description="The exported model file.")
    parity: ParityReport
    latency: list[LatencyRow] = Field(default_factory=list)
    spec: ExportSpec

    @property
    def passed(self) -> bool:
        return self.parity.passed


def export_dir(package_dir: str | Path, kind: str) -> Path:
    """`<package>/export/<kind>`."""
    return Path(package_dir) / EXPORT_ROOT / kind


def sha256_files(paths: Iterable[Path]) -> str:
    """One hash over the files' names and contents (in name order)."""
    h = hashlib.sha256()
    for p in sorted(paths, key=lambda q: q.name):
        h.update(p.name.encode())
        with open(p, "rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                h.update(block)
    return h.hexdigest()


def export_files(directory: Path) -> list[Path]:
    """The exported model's files in `directory` (the model file and any external-data files)."""
    return [p for p in directory.iterdir() if p.is_file() and p.suffix != ".json"]


def package_weights_sha256(package_dir: str | Path) -> str:
    return sha256_files(Path(package_dir).glob("*.safetensors"))


def read_spec(directory: Path) -> ExportSpec:
    return ExportSpec.model_validate_json((directory / SPEC_FILE).read_text(encoding="utf-8"))


def read_result(directory: Path) -> ExportResult:
    return ExportResult.model_validate_json((directory / RESULT_FILE).read_text(encoding="utf-8"))
