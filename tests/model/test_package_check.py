"""The package check loads a package in a fresh process and must agree with the in-memory model."""

from __future__ import annotations

import shutil

import numpy as np
import pytest

from components.errors import ModelPackageError
from components.package import load_package
from components.registry.package_check import verify_package

TEXTS = ["The striker scored twice in the final.", "Shares fell after a profit warning.", "A new phone launches."]


def test_complete_package_passes(tiny_package):
    probs = load_package(tiny_package).predict_proba(TEXTS)
    assert verify_package(tiny_package, TEXTS, probs) <= 1e-4


@pytest.mark.parametrize("remove, named", [("tokenizer.json", "tokenizer"), ("fineship.json", "fineship.json"),
                                           ("model.safetensors", "safetensors")])
def test_missing_piece_is_named(tiny_package, tmp_path, remove, named):
    pkg = tmp_path / "pkg"
    shutil.copytree(tiny_package, pkg)
    probs = load_package(tiny_package).predict_proba(TEXTS)
    (pkg / remove).unlink()
    with pytest.raises(ModelPackageError, match=named):
        verify_package(pkg, TEXTS, probs)


def test_disagreeing_model_is_refused(tiny_package):
    probs = load_package(tiny_package).predict_proba(TEXTS)
    wrong = np.roll(probs, 1, axis=1)  # what a model with a shuffled label map would predict
    with pytest.raises(ModelPackageError, match="different labels|differ"):
        verify_package(tiny_package, TEXTS, wrong)
