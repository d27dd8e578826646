"""The `fineship` console script as a user runs it."""

from __future__ import annotations

import os
import subprocess
import sys

from tests.support.cli import run_cli
from tests.support.tiny import REPO, SAMPLE, seed_mlflow_db

FINESHIP = [sys.executable, "-m", "flows.cli"]


def _subprocess(args, cwd, **env):
    return subprocess.run(FINESHIP + args, cwd=cwd, capture_output=True, text=True, timeout=300,
                          env={**os.environ, "PYTHONPATH": str(REPO), **env})


_run = run_cli


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
    r = _subprocess(["validate", "--data", str(tmp_path / "nope.csv")], tmp_path)
    assert r.returncode == 2
    assert "does not exist" in r.stderr


def test_every_command_has_help(tmp_path):
    for cmd in ([], ["run"], ["validate"], ["serve"], ["deploy"], ["endpoint"], ["endpoint", "list"]):
        r = _run(cmd + ["--help"], tmp_path)
        assert r.returncode == 0, (cmd, r.stderr)
        assert "Usage" in r.stdout


def test_bad_config_value_fails_naming_field(tmp_path):
    r = _subprocess(["run", "--config", "demo", "--set", "training.epochs=0"], REPO, FINESHIP_HOME=str(tmp_path / "h"))
    assert r.returncode == 2
    assert "training.epochs" in r.stderr


def test_approve_reject_rollback_commands(tmp_path, tiny_package):
    from components.registry.mlflow_registry import MlflowRegistry

    home = tmp_path / "h"
    home.mkdir()
    registry = MlflowRegistry(f"sqlite:///{seed_mlflow_db(home / 'mlflow.db').resolve()}")
    for i in range(3):
        run_id = registry.start_run("cli", f"r{i}")
        registry.log_and_register(run_id, tiny_package, "clim", ["hello"], ["torch==2.13.0"], {"fineship.gate": "passed"})
    trusted = tmp_path / "trusted"
    env = {"FINESHIP_HOME": str(home), "FINESHIP_REVIEWER_KEYS": str(tmp_path / "keys"),
           "FINESHIP_TRUSTED_REVIEWERS": str(trusted)}
    r = _run(["reviewer", "init", "ana"], tmp_path, **env)
    assert r.returncode == 0 and "ana.pub" in r.stdout, r.stderr
    # Not yet trusted by the operator: the approval is refused and nothing is recorded.
    trusted.mkdir()
    r = _run(["approve", "clim", "1"], tmp_path, **env)
    assert r.returncode == 1 and "not in the trust store" in r.stderr
    (trusted / "ana.pub").write_bytes((tmp_path / "keys" / "ana.pub").read_bytes())
    assert _run(["approve", "clim", "1"], tmp_path, **env).returncode == 0
    r = _run(["approve", "clim", "3", "--key", "ana", "--comment", "better"], tmp_path, **env)
    assert r.returncode == 0 and "champion 1 -> 3" in r.stdout and "approved by ana" in r.stdout
    signed = _run(["approve", "clim", "2", "--sign-only"], tmp_path, **env)
    assert signed.returncode == 0 and '"signer":"ana"' in signed.stdout.replace(" ", "")
    assert _run(["reject", "clim", "2", "--by", "bo"], tmp_path, **env).returncode == 0
    r = _run(["rollback", "clim", "--by", "cy"], tmp_path, **env)
    assert r.returncode == 0 and "v3 -> v1" in r.stdout
    r = _run(["approve", "clim", "7"], tmp_path, **env)
    assert r.returncode == 1 and "has no version 7" in r.stderr


def test_validate_uses_the_training_policy_for_every_field(tmp_path):
    """`fineship validate` builds its policy with the training flow's mapping: every field, none dropped."""
    import json

    from components.config import load_config
    from components.data.policy import validation_policy
    from components.data.validation import ValidationPolicy

    changed = {"data.labels": "[business, entertainment, politics, sport, tech, weather]",
               "data.min_examples_per_class": "1", "data.min_chars": "2", "data.max_chars": "99999",
               "data.max_duplicate_rate": "0.4", "data.warn_on_duplicates": "false",
               "data.max_imbalance_ratio": "30", "data.max_truncated_share": "0.3", "training.max_length": "96",
               "data.text_column": "body", "data.label_column": "topic",
               "data.rules.duplicates": "drop", "data.rules.control_characters": "repair"}
    config = load_config(None, [f"{k}={v}" for k, v in changed.items()])
    policy = validation_policy(config)
    defaults = ValidationPolicy()
    # Each field of the policy is set from the config (and differs from the policy's own default here).
    assert [f for f in ValidationPolicy.model_fields if getattr(policy, f) == getattr(defaults, f)] == []
    assert (policy.rules["duplicates"], policy.rules["control_characters"]) == ("drop", "repair")

    import pandas as pd

    data = tmp_path / "renamed.csv"
    pd.read_csv(SAMPLE).rename(columns={"text": "body", "label": "topic"}).to_csv(data, index=False)
    args = ["validate", "--data", str(data), "--json"] + [a for k, v in changed.items() for a in ("--set", f"{k}={v}")]
    r = _run(args, tmp_path, FINESHIP_HOME=str(tmp_path / "h"))
    report = json.loads(r.stdout)
    assert ValidationPolicy.model_validate(report["policy"]) == policy


def test_validate_applies_the_length_rule_like_training(tmp_path):
    r = _run(["validate", "--config", "demo", "--set", "data.max_chars=40", "--data", "data/sample/news.csv"], REPO,
             FINESHIP_HOME=str(tmp_path / "h"))
    assert r.returncode == 1, r.stdout + r.stderr
    assert "text_length" in r.stdout and "outside 1..40 characters" in r.stdout
    ok = _run(["validate", "--config", "demo", "--data", "data/sample/news.csv"], REPO, FINESHIP_HOME=str(tmp_path / "h"))
    assert ok.returncode == 0, ok.stdout + ok.stderr


def test_models_list_and_show(tmp_path, tiny_package):
    import json

    from components.deploy.local import DeploymentRecord
    from components.registry.mlflow_registry import MlflowRegistry
    from tests.support.reviewers import Reviewers, approve_as

    home = tmp_path / "h"
    home.mkdir()
    registry = MlflowRegistry(f"sqlite:///{seed_mlflow_db(home / 'mlflow.db').resolve()}", home / "artifacts")
    tags = {"fineship.gate": "passed", "fineship.gate_reasons": "accuracy 0.91 >= floor 0.80; no champion yet",
            "metric.accuracy": "0.9100", "metric.accuracy_ci95": "[0.8800, 0.9400]", "fineship.split_digest": "abc",
            "fineship.data_fingerprint": "f" * 64, "fineship.git_commit": "1234567"}
    for i in range(2):
        run_id = registry.start_run("models", f"r{i}")
        registry.set_tags(run_id, {"fineship.prefect_flow_run_url": f"http://127.0.0.1:4200/runs/flow-run/{i}"})
        registry.log_and_register(run_id, tiny_package, "shown", ["hello"], ["torch==2.13.0"], tags,
                                  aliases=("challenger",))
    reviewers = Reviewers(tmp_path / "rev")
    approve_as(registry, "shown", "1", reviewers.signer("ana"), reviewers.policy(home))
    (home / "endpoints").mkdir()
    record = DeploymentRecord(endpoint_name="ep", url="http://127.0.0.1:9", model_name="shown", model_version="1",
                              package_dir=str(tiny_package), port=9)
    (home / "endpoints" / "ep.json").write_text(record.model_dump_json())
    env = {"FINESHIP_HOME": str(home), "FINESHIP_MLFLOW_UI_URL": "http://127.0.0.1:5000", **reviewers.env()}

    listed = json.loads(_run(["models", "list", "--json"], tmp_path, **env).stdout)
    assert [(m["name"], m["versions"], m["champion"]["version"], m["challenger"]["version"]) for m in listed] == [
        ("shown", 2, "1", "2")]
    assert listed[0]["champion"]["review"] == "approved" and listed[0]["challenger"]["review"] == "awaiting review"
    r = _run(["models", "list"], tmp_path, **env)
    assert r.returncode == 0 and "v1 (approved, gate passed)" in r.stdout

    shown = json.loads(_run(["models", "show", "shown", "1", "--json"], tmp_path, **env).stdout)
    assert shown["aliases"] == ["champion"] and shown["metrics"]["accuracy_ci95"] == "[0.8800, 0.9400]"
    assert shown["gate"] == "passed" and shown["gate_reasons"][1] == "no champion yet"
    assert shown["signature"] == {**shown["signature"], "present": True, "signer": "ana", "signer_trusted": True}
    assert shown["split_digest"] == "abc" and shown["git_commit"] == "1234567"
    assert shown["prefect_flow_run_url"].endswith("/runs/flow-run/0")
    assert shown["mlflow_version_url"] == "http://127.0.0.1:5000/#/models/shown/versions/1"
    assert shown["deployed"] == [{"target": "local", "endpoint": "ep", "url": "http://127.0.0.1:9", "running": False}]
    text = _run(["models", "show", "shown"], tmp_path, **env).stdout  # default: the champion
    assert "shown v1  [champion]" in text and "approval by ana" in text and "trusted here" in text
    missing = _run(["models", "show", "shown", "9"], tmp_path, **env)
    assert missing.returncode == 1 and "has no version 9" in missing.stderr
