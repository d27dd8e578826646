"""Which model a server runs: the package's eager model, one of its parity-checked exports, or its bf16 cast.

Only serving chooses; the package loader (`components.package.load_package`) knows nothing of exports,
and the export stage (`components.export`) builds on the package, so the two never import each other.
`auto` serves the backend the deployment chose and recorded in the package's `export/variants.json`
(`components.export.choice`): the fastest variant that passed the variant gate on this machine.
"""

from __future__ import annotations

import os
from pathlib import Path

from components.errors import ModelPackageError
from components.export.choice import AUTO, VARIANTS, load_bf16, require_gated, resolve_backend
from components.export.runtime import load_export
from components.package import TextClassifier, load_package

BACKENDS = (AUTO, *VARIANTS)
BACKEND_ENV = "FINESHIP_BACKEND"


def backend_from_env(default: str = AUTO) -> str:
    """The backend `FINESHIP_BACKEND` names (`default` when unset or empty): how a server that takes no flags
    (the SageMaker handler, the container's `serve`) is told to serve another backend than the recorded one."""
    return os.environ.get(BACKEND_ENV, "") or default


def load_backend(package_dir: str | Path, backend: str = AUTO, device: str = "auto") -> TextClassifier:
    """Load a package for serving with `backend`: "auto" (the recorded choice, else eager), "eager",
    "torchscript", "onnx", "onnx-int8" or "bf16".

    An export under `export/<backend>/` loads only when it passed its parity check against these very
    weights (see `components.export.runtime.load_export`); a variant that the package's variant report
    shows failed its gate is refused (`components.export.choice.require_gated`). Non-eager backends run
    on the CPU.
    """
    if backend not in BACKENDS:
        raise ModelPackageError(f"unknown backend {backend!r}; use one of {', '.join(BACKENDS)} "
                                f"(the --backend flag or {BACKEND_ENV})")
    chosen = resolve_backend(package_dir, backend)
    require_gated(package_dir, chosen)
    if chosen == "eager":
        return load_package(package_dir, device)
    if chosen == "bf16":
        return load_bf16(package_dir)
    return load_export(package_dir, chosen, device)
