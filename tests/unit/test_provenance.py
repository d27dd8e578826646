"""Provenance helpers: code digests (data cache keys) and pinned requirements."""

from __future__ import annotations

import importlib
import sys

import pytest

from components.errors import FineshipError
from components.provenance import pinned_requirements, source_digest


def test_source_digest_changes_with_the_code(tmp_path, monkeypatch):
    mod = tmp_path / "fs_probe_rules.py"
    mod.write_text("LIMIT = 1\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    importlib.invalidate_caches()
    before = source_digest(["fs_probe_rules"])
    assert source_digest(["fs_probe_rules"]) == before
    mod.write_text("LIMIT = 2\n")  # a rule fix
    assert source_digest(["fs_probe_rules"]) != before
    sys.modules.pop("fs_probe_rules", None)
    with pytest.raises(FineshipError, match="cannot find the source"):
        source_digest(["fs_no_such_module_here"])


def test_pins_are_the_installed_versions():
    import transformers

    assert pinned_requirements(["transformers"]) == [f"transformers=={transformers.__version__}"]
    with pytest.raises(FineshipError, match="not installed"):
        pinned_requirements(["fs-not-a-package"])
