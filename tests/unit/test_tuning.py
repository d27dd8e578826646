"""The search space, the study's storage and name, and the SageMaker tuning job's request and metric parsing."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from components.config import PipelineConfig, TrainingConfig, load_config
from components.errors import ConfigError, TuningError
from components.training.trainer import TrainedModel
from components.tuning.sagemaker_tuning import (
    METRIC_LINE,
    metric_definitions,
    parameter_ranges,
    tuning_job_name,
    tuning_job_request,
)
from components.tuning.space import distributions, trial_training_config
from components.tuning.study import default_study_name, redact, resolve_storage

SPACE = "tuning.search_space"
IMAGE = "123456789012.dkr.ecr.us-east-1.amazonaws.com/fineship-training:test"


def test_a_declared_space_parses_into_distributions():
    cfg = load_config(None, [f"{SPACE}.learning_rate={{low: 1.0e-5, high: 1.0e-3}}", f"{SPACE}.batch_size=[8, 16]",
                             f"{SPACE}.max_length=[64, 128]", f"{SPACE}.epochs={{low: 1, high: 4}}",
                             f"{SPACE}.warmup_ratio={{low: 0.0, high: 0.2}}",
                             f"{SPACE}.weight_decay={{low: 0.0, high: 0.1}}"])
    dists = distributions(cfg.tuning.search_space)
    assert set(dists) == {"learning_rate", "batch_size", "max_length", "epochs", "warmup_ratio", "weight_decay"}
    assert dists["learning_rate"].log and (dists["learning_rate"].low, dists["learning_rate"].high) == (1e-5, 1e-3)
    assert dists["batch_size"].choices == (8, 16) and (dists["epochs"].low, dists["epochs"].high) == (1, 4)
    assert not dists["warmup_ratio"].log


def test_each_range_is_optional_and_an_empty_space_searches_the_optimiser():
    only_batch = load_config(None, [f"{SPACE}.batch_size=[8, 32]"])
    assert set(distributions(only_batch.tuning.search_space)) == {"batch_size"}
    assert set(distributions(PipelineConfig().tuning.search_space)) == {"learning_rate", "warmup_ratio",
                                                                        "weight_decay"}


@pytest.mark.parametrize("override, message", [
    (f"{SPACE}.learning_rate={{low: 1.0e-3, high: 1.0e-5}}", "must be below high"),
    (f"{SPACE}.learning_rate={{low: 0.0, high: 1.0e-3}}", "low > 0"),
    (f"{SPACE}.learning_rate={{low: 1.0e-3, high: 2.0}}", "below 1"),
    (f"{SPACE}.batch_size=[8, 8]", "distinct choices"),
    (f"{SPACE}.max_length=[4, 64]", "between 8 and 4096"),
    (f"{SPACE}.warmup_ratio={{low: 0.0, high: 1.5}}", "[0, 1)"),
    (f"{SPACE}.dropout={{low: 0.0, high: 0.5}}", "unknown field"),
    ("tuning.objective=test_accuracy", "tuning.objective"),
    ("tuning.storage=postgresql+psycopg://fineship:hunter2@db/optuna", "must not hold a password"),
])
def test_a_bad_search_setting_fails_at_load_time_naming_it(override, message):
    with pytest.raises(ConfigError, match=re.escape(message)):
        load_config(None, [override])


def test_the_objective_sets_the_direction():
    assert load_config(None).tuning.resolved_direction == "maximize"
    assert load_config(None, ["tuning.objective=val_loss"]).tuning.resolved_direction == "minimize"


def test_a_trial_config_takes_the_draw_and_shares_the_cores():
    base = TrainingConfig(learning_rate=5e-5, batch_size=16)
    one = trial_training_config(base, {"learning_rate": 1e-4, "batch_size": 32})
    assert (one.learning_rate, one.batch_size, one.num_threads) == (1e-4, 32, None)
    assert trial_training_config(base, {}, parallel=64).num_threads == 1
    assert trial_training_config(base.model_copy(update={"num_threads": 3}), {}, parallel=2).num_threads == 3
    with pytest.raises(TuningError, match="not training fields"):
        trial_training_config(base, {"dropout": 0.1})


def test_storage_defaults_to_sqlite_in_the_home_and_refuses_files_elsewhere(tmp_path):
    home = tmp_path / "home"
    url = resolve_storage(None, home)
    assert url == f"sqlite:///{home.resolve() / 'tuning' / 'optuna.db'}" and (home / "tuning").is_dir()
    inside = f"sqlite:///{home.resolve() / 'tuning' / 'team' / 'study.db'}"
    assert resolve_storage(inside, home) == inside
    # A run setting must not point Optuna at another database file, e.g. the MLflow store.
    for outside in (f"sqlite:///{home.resolve() / 'mlflow.db'}", f"sqlite:///{home}/tuning/../mlflow.db",
                    "sqlite:///:memory:"):
        with pytest.raises(TuningError):
            resolve_storage(outside, home)
    server = "postgresql+psycopg://fineship@db.internal:5432/optuna"
    assert resolve_storage(server, home) == server
    assert "hunter2" not in redact("postgresql+psycopg://u:hunter2@db/optuna")


def test_the_same_command_names_the_same_study_and_a_new_space_a_new_one():
    cfg = load_config(None)
    name = default_study_name(cfg, "abc")
    assert name == default_study_name(load_config(None), "abc") and name.startswith("fineship-news-")
    assert default_study_name(cfg, "other-data") != name
    assert default_study_name(load_config(None, [f"{SPACE}.batch_size=[8, 16]"]), "abc") != name
    assert default_study_name(load_config(None, ["tuning.heartbeat_seconds=5"]), "abc") == name  # no effect on trials


def _sagemaker_training(**extra) -> TrainingConfig:
    return TrainingConfig(backend="sagemaker", epochs=2, sagemaker={
        "image_uri": IMAGE, "role_arn": "arn:aws:iam::123456789012:role/r", "s3_prefix": "s3://b/p",
        "use_spot": True, "max_run_seconds": 3600, **extra})


def test_the_tuning_job_request_maps_the_space_spot_and_checkpoints():
    cfg = load_config(None, [f"{SPACE}.learning_rate={{low: 1.0e-5, high: 1.0e-3}}", f"{SPACE}.batch_size=[8, 16]",
                             f"{SPACE}.epochs={{low: 1, high: 3}}", "tuning.objective=val_loss"])
    req = tuning_job_request("tj-1", _sagemaker_training(), cfg.tuning, {"train": "s3://b/p/tj-1/input/train/"},
                             "text", "label", ["a", "b"], trials=8, parallel=2, tags={"fineship:mlflow_run_id": "r"})
    job = req["HyperParameterTuningJobConfig"]
    assert job["HyperParameterTuningJobObjective"] == {"Type": "Minimize", "MetricName": "val_loss"}
    assert job["ResourceLimits"] == {"MaxNumberOfTrainingJobs": 8, "MaxParallelTrainingJobs": 2}
    assert job["ParameterRanges"]["ContinuousParameterRanges"] == [
        {"Name": "training.learning_rate", "MinValue": "1e-05", "MaxValue": "0.001", "ScalingType": "Logarithmic"}]
    assert job["ParameterRanges"]["CategoricalParameterRanges"] == [{"Name": "training.batch_size",
                                                                     "Values": ["8", "16"]}]
    assert job["ParameterRanges"]["IntegerParameterRanges"][0]["Name"] == "training.epochs"
    definition = req["TrainingJobDefinition"]
    static = definition["StaticHyperParameters"]
    assert "training.learning_rate" not in static and "training.epochs" not in static  # tuned, not static
    assert static["data.labels"] == '["a", "b"]'
    assert definition["EnableManagedSpotTraining"] is True
    assert definition["StoppingCondition"] == {"MaxRuntimeInSeconds": 3600, "MaxWaitTimeInSeconds": 7200}
    assert definition["CheckpointConfig"] == {"S3Uri": "s3://b/p/checkpoints/tj-1", "LocalPath": "/opt/ml/checkpoints"}
    assert definition["AlgorithmSpecification"]["TrainingImage"] == IMAGE
    assert req["Tags"] == [{"Key": "fineship:mlflow_run_id", "Value": "r"}]
    assert len(tuning_job_name("fineship-training-long-prefix")) <= 32


def test_the_metric_definitions_parse_each_evaluation_and_the_final_objective_line(tmp_path: Path, capsys):
    from components.training.sagemaker_entry import print_objective_metrics

    trained = TrainedModel(package_dir="p", labels=["a", "b"], base_model="m", device="cpu", steps=20, best_step=10,
                           best_val_macro_f1=0.8123, train_seconds=1.0, samples_per_second=1.0, history=[
                               {"epoch": 0.5, "step": 10, "val_loss": 0.41, "val_accuracy": 0.85, "val_macro_f1": 0.8123},
                               {"epoch": 1.0, "step": 20, "val_loss": 0.52, "val_accuracy": 0.8, "val_macro_f1": 0.79}])
    result = tmp_path / "result.json"
    result.write_text(trained.model_dump_json())
    print_objective_metrics(result)
    printed = capsys.readouterr().out
    assert f"{METRIC_LINE} val_macro_f1=0.812300" in printed
    log = ("INFO components.training.trainer: evaluation at step 10: {'epoch': 0.5, 'step': 10.0, 'train_loss': "
           "0.7, 'val_loss': 0.41, 'val_accuracy': 0.85, 'val_macro_f1': 0.8123}\n"
           "INFO ... evaluation at step 20: {'val_loss': 0.52, 'val_accuracy': 0.8, 'val_macro_f1': 0.79}\n" + printed)
    regex = {d["Name"]: d["Regex"] for d in metric_definitions()}
    values = [float(v) for v in re.findall(regex["val_macro_f1"], log)]
    assert values == [0.8123, 0.79, 0.8123]  # each evaluation, then the kept model's value last (the objective)
    assert [float(v) for v in re.findall(regex["val_loss"], log)][-1] == 0.41
    assert "ParameterRanges" not in parameter_ranges(load_config(None).tuning)
