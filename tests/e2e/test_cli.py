"""The `fineship` console script as a user runs it."""

from __future__ import annotations

import os
import subprocess
import sys

from tests.support.tiny import REPO, SAMPLE, seed_mlflow_db

FINESHIP = [sys.executable, "-m", "flows.cli"]


def _run(args, cwd, **env):
    return subprocess.run(FINESHIP + args, cwd=cwd, capture_output=True, text=True, timeout=300,
                          env={**os.environ, "PYTHONPATH": str(REPO), **env})


def test_validate_sample_exits_zero(tmp_path):
    r = _run(["validate", "--data", str(SAMPLE)], tmp_path, FINESHIP_HOME=str(tmp_path / "h"))
    assert r.returncode == 0, r.stdout + r.stderr
    assert "PASSED" in r.stdout


def test_validate_missing_label_column_names_it(tmp_path, sample_df):
    bad = tmp_path / "nolabel.csv"
    sample_df.rename(columns={"label": "category"}).to_csv(bad, index=False)
    r = _run(["validate", "--data", str(bad)], tmp_path, FINESHIP_HOME=str(tmp_path / "h"))
    assert r.returncode != 0
    assert "label column 'label' is missing" in r.stdout
    ok = _run(["validate", "--data", str(bad), "--label-column", "category"], tmp_path,
              FINESHIP_HOME=str(tmp_path / "h"))
    assert ok.returncode == 0, ok.stdout


def test_unreadable_file_exits_2_with_message(tmp_path):
    r = _run(["validate", "--data", str(tmp_path / "nope.csv")], tmp_path)
    assert r.returncode == 2
    assert "does not exist" in r.stderr


def test_every_command_has_help(tmp_path):
    for cmd in ([], ["run"], ["validate"], ["serve"], ["deploy"], ["endpoint"], ["endpoint", "list"]):
        r = _run(cmd + ["--help"], tmp_path)
        assert r.returncode == 0, (cmd, r.stderr)
        assert "Usage" in r.stdout


def test_bad_config_value_fails_naming_field(tmp_path):
    r = _run(["run", "--config", "demo", "--set", "training.epochs=0"], REPO, FINESHIP_HOME=str(tmp_path / "h"))
    assert r.returncode == 2
    assert "training.epochs" in r.stderr


def test_approve_reject_rollback_commands(tmp_path, tiny_package):
    from components.registry.mlflow_registry import MlflowRegistry

    home = tmp_path / "h"
    home.mkdir()
    registry = MlflowRegistry(f"sqlite:///{seed_mlflow_db(home / 'mlflow.db').resolve()}")
    for i in range(3):
        run_id = registry.start_run("cli", f"r{i}")
        registry.log_and_register(run_id, tiny_package, "clim", ["hello"], ["torch==2.13.0"], {})
    env = {"FINESHIP_HOME": str(home)}
    assert _run(["approve", "clim", "1", "--by", "ana"], tmp_path, **env).returncode == 0
    r = _run(["approve", "clim", "3", "--by", "ana", "--comment", "better"], tmp_path, **env)
    assert r.returncode == 0 and "champion 1 -> 3" in r.stdout
    assert _run(["reject", "clim", "2", "--by", "bo"], tmp_path, **env).returncode == 0
    r = _run(["rollback", "clim", "--by", "cy"], tmp_path, **env)
    assert r.returncode == 0 and "v3 -> v1" in r.stdout
    r = _run(["approve", "clim", "7", "--by", "ana"], tmp_path, **env)
    assert r.returncode == 1 and "has no version 7" in r.stderr
