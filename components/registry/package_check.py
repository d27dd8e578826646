"""Package check before registration: load the package in a fresh process and compare predictions.

Catches what an in-process check cannot: a tokenizer file that was never written, a label map
that only lived in memory, weights saved in a format the loader will not read.
Run as `python -m components.registry.package_check DIR` with a JSON list of texts on stdin.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Sequence

import numpy as np

from components.errors import ModelPackageError
from components.package import PACKAGE_FILE, check_package, read_meta


def verify_package(package_dir: str | Path, texts: Sequence[str], expected_probs: np.ndarray,
                   atol: float = 1e-4, timeout: float = 300) -> float:
    """Raise `ModelPackageError` naming the missing piece or the disagreement; return the max abs difference."""
    p = Path(package_dir)
    missing = check_package(p)
    if not (p / PACKAGE_FILE).is_file():
        missing.append(f"{PACKAGE_FILE} (label map, max length, padding side)")
    if missing:
        raise ModelPackageError(f"model package {p} is incomplete: missing {', '.join(missing)}")
    meta = read_meta(p)
    if not meta.labels:
        raise ModelPackageError(f"{p / PACKAGE_FILE} has an empty label map")
    root = str(Path(__file__).resolve().parents[2])
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [root, os.environ.get("PYTHONPATH")])),
           "CUDA_VISIBLE_DEVICES": ""}
    proc = subprocess.run([sys.executable, "-m", "components.registry.package_check", str(p)],
                          input=json.dumps(list(texts)), capture_output=True, text=True, timeout=timeout, env=env)
    if proc.returncode != 0:
        raise ModelPackageError(f"model package {p} does not load in a fresh process: {proc.stderr.strip()[-800:]}")
    got = np.asarray(json.loads(proc.stdout.strip().splitlines()[-1]), dtype=np.float64)
    if got.shape != expected_probs.shape:
        raise ModelPackageError(f"fresh-process predictions have shape {got.shape}, expected {expected_probs.shape}: "
                                "the label map in the package does not match the model")
    if not np.array_equal(got.argmax(axis=1), expected_probs.argmax(axis=1)):
        raise ModelPackageError("the package loaded in a fresh process predicts different labels than the trained "
                                "model (tokenizer or weights differ from what was trained)")
    diff = float(np.max(np.abs(got - expected_probs))) if got.size else 0.0
    if diff > atol:
        raise ModelPackageError(f"fresh-process scores differ by up to {diff:.2e} (> {atol:.0e}): the saved "
                                "package is not the trained model")
    return diff


def _main() -> None:
    from components.package import load_package

    texts = json.loads(sys.stdin.read())
    clf = load_package(sys.argv[1], device="cpu")
    print(json.dumps(clf.predict_proba(texts).tolist()))


if __name__ == "__main__":
    _main()
