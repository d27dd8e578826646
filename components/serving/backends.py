"""Which model a server runs: the package's eager model or one of its parity-checked exports.

Only serving chooses; the package loader (`components.package.load_package`) knows nothing of exports,
and the export stage (`components.export`) builds on the package, so the two never import each other.
"""

from __future__ import annotations

import os
from pathlib import Path

from components.errors import ModelPackageError
from components.export.runtime import load_export
from components.package import TextClassifier, load_package

BACKENDS = ("eager", "torchscript", "onnx")
BACKEND_ENV = "FINESHIP_BACKEND"


def backend_from_env(default: str = "eager") -> str:
    """The backend `FINESHIP_BACKEND` names (`default` when unset or empty): how a server that takes no flags
    (the SageMaker handler, the container's `serve`) is told to serve an export."""
    return os.environ.get(BACKEND_ENV, "") or default


def load_backend(package_dir: str | Path, backend: str = "eager", device: str = "auto") -> TextClassifier:
    """Load a package for serving with `backend`: "eager" (its model), "torchscript" or "onnx".

    An export under `export/<backend>/` loads only when it passed its parity check against these very
    weights (see `components.export.runtime.load_export`); it runs on the CPU.
    """
    if backend not in BACKENDS:
        raise ModelPackageError(f"unknown backend {backend!r}; use one of {', '.join(BACKENDS)} "
                                f"(the --backend flag or {BACKEND_ENV})")
    if backend == "eager":
        return load_package(package_dir, device)
    return load_export(package_dir, backend, device)
