"""`fineship tune`: trials as Prefect task runs and nested MLflow runs, parallel trials, a preset that reproduces
the best trial, pruning of a diverging trial, and a search killed mid-trial that resumes without repeating a trial.

Real Optuna (SQLite storage), real MLflow (SQLite store), real Prefect (the session's test server), the real
trainer on a tiny random BERT shrunk to 10 steps per trial (`max_steps`). The objective is the validation loss
where a test needs trials to differ: a 10-step tiny model predicts one class, so its macro-F1 ties.
"""

from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest

from components.config import load_config
from tests.support.cli import run_cli
from tests.support.tiny import REPO, SAMPLE, seed_mlflow_db

pytestmark = pytest.mark.e2e

CI = REPO / "flows" / "configs" / "ci.yaml"
SPACE = "tuning.search_space"
IMAGE = "123456789012.dkr.ecr.us-east-1.amazonaws.com/fineship-training:test"
SHRINK = ["training.max_length=32", "training.batch_size=16", "training.max_steps=10", "training.eval_every_steps=5",
          "training.epochs=1", "training.early_stopping_patience=5"]


def _overrides(tiny_bert: Path, *extra: str) -> list[str]:
    return [f"training.model={tiny_bert}", *SHRINK, *extra]


def _mlflow(home: Path):
    from mlflow import MlflowClient

    return MlflowClient(f"sqlite:///{home / 'mlflow.db'}")


def _runs(home: Path, experiment: str = "fineship-ci") -> list:
    client = _mlflow(home)
    exp = client.get_experiment_by_name(experiment)
    return client.search_runs([exp.experiment_id], max_results=100) if exp else []


@pytest.fixture(scope="module")
def searched(prefect_harness, tiny_bert, tmp_path_factory):
    """One search: 4 trials, 2 at a time, on the validation loss, pruning from the first finished trial on.

    Trials 0 and 1 are enqueued with the same sane learning rate (they run at once and tie, so neither can prune
    the other), trial 2 with one that diverges (it starts only when a slot frees, so one trial has finished and
    sets the median); trial 3 is TPE's. Returns (result, home, config, flow run id, storage URL).
    """
    from components.tuning.study import open_study, resolve_storage
    from flows.tune import tune_flow

    home = tmp_path_factory.mktemp("tune-home")
    seed_mlflow_db(home / "mlflow.db")
    cfg = load_config(CI, _overrides(tiny_bert, "tuning.objective=val_loss", "tuning.study_name=search",
                                     "tuning.pruner.startup_trials=1",
                                     f"{SPACE}.learning_rate={{low: 1.0e-3, high: 0.5}}"))
    storage = resolve_storage(None, home)
    study = open_study(storage, "search", cfg.tuning)
    for lr in (3e-3, 3e-3, 0.5):
        study.enqueue_trial({"learning_rate": lr})
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("FINESHIP_HOME", str(home))
        mp.delenv("FINESHIP_TRACKING_URI", raising=False)
        state = tune_flow(cfg, trials=4, parallel=2, return_state=True)
    return state.result(), home, cfg, state.state_details.flow_run_id, storage


def test_four_parallel_trials_are_task_runs_and_nested_mlflow_runs(searched):
    import optuna
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId

    result, home, cfg, flow_run_id, storage = searched
    assert [t.number for t in result.trials] == [0, 1, 2, 3] and result.objective == "val_loss"
    assert result.direction == "minimize" and result.counts().get("FAIL") is None
    assert result.best.value == min(t.value for t in result.trials if t.state == "COMPLETE")
    runs = _runs(home)
    parents = [r for r in runs if r.data.tags.get("fineship.kind") == "tuning"]
    assert len(parents) == 1 and parents[0].info.run_id == result.parent_run_id
    assert parents[0].info.status == "FINISHED"
    children = [r for r in runs if r.data.tags.get("mlflow.parentRunId") == result.parent_run_id]
    assert sorted(r.info.run_name for r in children) == ["trial-0", "trial-1", "trial-2", "trial-3"]
    assert all(r.info.status == "FINISHED" for r in children)
    first = next(r for r in children if r.info.run_name == "trial-0")
    assert sorted(m.step for m in _mlflow(home).get_metric_history(first.info.run_id, "val_loss")) == [5, 10]
    # Each trial is a Prefect task run of the flow run.
    with get_client(sync_client=True) as client:
        task_runs = client.read_task_runs(flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[flow_run_id])))
    trial_runs = [t for t in task_runs if t.name.startswith("trial-")]
    assert sorted(t.name for t in trial_runs) == ["trial-0", "trial-1", "trial-2", "trial-3"]
    assert all(t.state_type.value == "COMPLETED" for t in trial_runs)
    # Two at a time: the first two trials overlapped, each with half the cores' torch threads.
    trials = {t.number: t for t in optuna.load_study(study_name="search", storage=storage).trials}
    assert trials[0].datetime_start < trials[1].datetime_complete and trials[1].datetime_start < trials[0].datetime_complete
    cores = len(os.sched_getaffinity(0))
    assert all(t.user_attrs["fineship.training"]["num_threads"] == max(1, cores // 2) for t in trials.values())


def test_the_median_rule_prunes_the_diverging_trial(searched):
    import optuna

    result, home, _, _, storage = searched
    trials = {t.number: t for t in optuna.load_study(study_name="search", storage=storage).trials}
    # Positive control: the sane trials ran every evaluation and completed.
    assert [trials[n].state.name for n in (0, 1)] == ["COMPLETE", "COMPLETE"]
    assert sorted(trials[0].intermediate_values) == [5, 10]
    # The diverging one was stopped at its first evaluation, worse than the median of the finished trials.
    assert trials[2].params["learning_rate"] == 0.5 and trials[2].state.name == "PRUNED"
    assert sorted(trials[2].intermediate_values) == [5]
    assert trials[2].intermediate_values[5] > trials[0].intermediate_values[5]
    assert result.best.number != 2
    states = {r.info.run_name: r.data.tags["fineship.trial_state"] for r in _runs(home)
              if r.data.tags.get("fineship.kind") == "tuning-trial"}
    assert states["trial-2"] == "PRUNED" and states["trial-0"] == "COMPLETE"


def test_the_preset_reproduces_the_best_trial(searched):
    from components.data.split import split_frame
    from components.training.trainer import train
    from components.tuning.trial import objective_value
    from tests.support.tiny import sample_frame

    result, home, cfg, _, _ = searched
    preset = Path(result.preset_path)
    assert preset.is_file() and preset.parent == home / "tuning" / result.study_name
    artifacts = _mlflow(home).list_artifacts(result.parent_run_id, "tuning")
    assert "tuning/best.yaml" in {a.path for a in artifacts}
    rerun = load_config(preset)  # what `fineship run --config <preset>` trains
    assert rerun.training.learning_rate == result.best.params["learning_rate"]
    assert cfg.training.warmup_ratio is None and rerun.training.warmup_ratio is not None  # the recipe's, spelled out
    assert rerun.model_dump(exclude={"training", "data", "tuning"}) == cfg.model_dump(exclude={"training", "data",
                                                                                              "tuning"})
    s, d = cfg.split, rerun.data
    splits = split_frame(sample_frame(), d.text_column, d.label_column, s.train, s.validation, s.test, s.seed,
                         s.near_duplicate_threshold)
    trained = train(splits.train.text.tolist(), splits.train.label.tolist(), splits.validation.text.tolist(),
                    splits.validation.label.tolist(), d.labels, rerun.training, home / "rerun", progress=False)
    score = objective_value(trained.history, trained.best_step, "val_loss")
    assert score == pytest.approx(result.best.value, abs=0.01)
    assert trained.best_step == result.best.best_step


def _trial_states(db: Path) -> dict[int, tuple[str, str]]:
    """Trial number -> (state, start time) read straight from the study's SQLite file."""
    if not db.exists():
        return {}
    with sqlite3.connect(db, timeout=30) as conn:
        try:
            rows = conn.execute("SELECT number, state, datetime_start FROM trials").fetchall()
        except sqlite3.OperationalError:  # tables not created yet
            return {}
    return {n: (state, str(started)) for n, state, started in rows}


def _training(db: Path, number: int) -> bool:
    """True once trial `number` runs in its worker (its MLflow run is open and recorded on the trial)."""
    with sqlite3.connect(db, timeout=30) as conn:
        return bool(conn.execute(
            "SELECT 1 FROM trials t JOIN trial_user_attributes a ON a.trial_id = t.trial_id WHERE t.number = ? "
            "AND t.state = 'RUNNING' AND a.key = 'fineship.mlflow_run_id'", (number,)).fetchall())


@pytest.mark.slow  # a CLI subprocess killed mid-trial plus the resumed search (~35 s): run by .ci/run
def test_a_search_killed_during_its_second_trial_resumes_without_repeating_the_first(prefect_harness, tmp_path,
                                                                                     tiny_bert):
    import psutil
    from prefect.settings import PREFECT_API_URL

    home = tmp_path / "home"
    seed_mlflow_db(home / "mlflow.db")
    # No pruning, so every trial completes; the kill lands while trial 1 is RUNNING in the study.
    sets = [a for o in _overrides(tiny_bert, "tuning.pruner.kind=none", f"data.path={SAMPLE}",
                                  "training.num_threads=1") for a in ("--set", o)]
    cmd = [sys.executable, "-m", "flows.cli", "tune", "--config", str(CI), "--trials", "4", "--parallel", "1", *sets]
    env = {**os.environ, "PYTHONPATH": str(REPO), "FINESHIP_HOME": str(home),
           "FINESHIP_PREFECT_API_URL": PREFECT_API_URL.value()}
    env.pop("FINESHIP_TRACKING_URI", None)
    db = home / "tuning" / "optuna.db"
    first = subprocess.Popen(cmd, cwd=tmp_path, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 240
        while _trial_states(db).get(1, ("",))[0] != "RUNNING" or not _training(db, 1):
            assert first.poll() is None, "the search ended before its second trial"
            assert time.monotonic() < deadline, f"trial 1 never ran: {_trial_states(db)}"
            time.sleep(0.2)
        workers = [p for p in psutil.Process(first.pid).children(recursive=True)]
        before = _trial_states(db)
        first.send_signal(signal.SIGKILL)  # no chance to clean up: the trial stays RUNNING in the study
        first.wait(timeout=30)
    finally:
        if first.poll() is None:
            first.kill()
    assert before[0][0] == "COMPLETE" and before[1][0] == "RUNNING"
    gone, alive = psutil.wait_procs(workers, timeout=15)
    assert not alive, "trial processes outlived the killed search"

    # The same command again (in this process: it saves an interpreter start; the killed one was a real process).
    second = run_cli(cmd[3:], tmp_path, FINESHIP_HOME=str(home), FINESHIP_PREFECT_API_URL=env["FINESHIP_PREFECT_API_URL"])
    assert second.returncode == 0, second.stdout + second.stderr
    after = _trial_states(db)
    assert after[0] == before[0]  # trial 0 kept, not run again
    assert after[1][0] == "FAIL"  # the killed trial, its worker found dead
    assert sum(state == "COMPLETE" for state, _ in after.values()) == 4 and len(after) == 5
    runs = _runs(home)
    parents = [r for r in runs if r.data.tags.get("fineship.kind") == "tuning"]
    assert len(parents) == 1 and parents[0].info.status == "FINISHED"  # the resumed search reopened its run
    children = {r.info.run_name: r.info.status for r in runs
                if r.data.tags.get("mlflow.parentRunId") == parents[0].info.run_id}
    assert children == {"trial-0": "FINISHED", "trial-1": "FAILED", "trial-2": "FINISHED", "trial-3": "FINISHED",
                        "trial-4": "FINISHED"}
    assert "fineship tune complete" in second.stdout and "4 complete" in second.stdout


def test_the_sagemaker_backend_runs_the_search_as_a_tuning_job_over_http(prefect_harness, fineship_home, tiny_bert):
    """`training.backend: sagemaker`: the same flow sends CreateHyperParameterTuningJob to a moto server over HTTP
    (`tests/support/moto_sagemaker_tuning.py` plays the tuning job) and writes the best training job's preset."""
    import boto3

    from flows.tune import tune_flow
    from tests.support.moto_server import aws_env_to_unset, boto3_env, moto_server

    bucket, role = "fineship-tuning-test", "arn:aws:iam::123456789012:role/fineship-training"
    cfg = load_config(CI, _overrides(
        tiny_bert, "training.backend=sagemaker", f"training.sagemaker.image_uri={IMAGE}",
        f"training.sagemaker.role_arn={role}", f"training.sagemaker.s3_prefix=s3://{bucket}/jobs",
        "training.sagemaker.use_spot=true", "training.sagemaker.max_run_seconds=3600",
        "training.sagemaker.poll_seconds=0.05", f"{SPACE}.learning_rate={{low: 1.0e-4, high: 1.0e-2}}",
        f"{SPACE}.batch_size=[8, 16]", f"{SPACE}.epochs={{low: 1, high: 3}}"))
    with moto_server(plugins=("tests.support.moto_sagemaker_tuning",)) as url, pytest.MonkeyPatch.context() as mp:
        for name in aws_env_to_unset(os.environ):
            mp.delenv(name)
        for name, value in {**boto3_env(url), "FINESHIP_AWS_ENDPOINT_URL": url,
                            "FINESHIP_AWS_REGION": "us-east-1"}.items():
            mp.setenv(name, value)
        s3, sm = boto3.client("s3", endpoint_url=url), boto3.client("sagemaker", endpoint_url=url)
        s3.create_bucket(Bucket=bucket)
        result = tune_flow(cfg, trials=6, parallel=3)
        job = sm.describe_hyper_parameter_tuning_job(HyperParameterTuningJobName=result.storage)
        uploaded = {o["Key"] for o in s3.list_objects_v2(Bucket=bucket)["Contents"]}

    spec, definition = job["HyperParameterTuningJobConfig"], job["TrainingJobDefinition"]
    assert spec["HyperParameterTuningJobObjective"] == {"Type": "Maximize", "MetricName": "val_macro_f1"}
    assert spec["ResourceLimits"] == {"MaxNumberOfTrainingJobs": 6, "MaxParallelTrainingJobs": 3}
    assert spec["ParameterRanges"]["ContinuousParameterRanges"][0]["ScalingType"] == "Logarithmic"
    assert definition["AlgorithmSpecification"]["TrainingImage"] == IMAGE and definition["RoleArn"] == role
    assert {d["Name"] for d in definition["AlgorithmSpecification"]["MetricDefinitions"]} >= {"val_macro_f1"}
    assert definition["EnableManagedSpotTraining"] is True
    assert definition["StoppingCondition"] == {"MaxRuntimeInSeconds": 3600, "MaxWaitTimeInSeconds": 7200}
    assert definition["CheckpointConfig"]["S3Uri"] == f"s3://{bucket}/jobs/checkpoints/{result.storage}"
    assert definition["StaticHyperParameters"]["training.max_steps"] == "10"
    assert {f"jobs/{result.storage}/input/{c}/{c}.parquet" for c in ("train", "validation")} <= uploaded
    # The best training job (the ranges' upper ends in the plugin) becomes the preset.
    assert result.backend == "sagemaker" and result.best.value == 0.85 and len(result.trials) == 2
    assert result.best.params == {"learning_rate": 0.01, "batch_size": 16, "epochs": 3}
    preset = load_config(result.preset_path)
    assert (preset.training.learning_rate, preset.training.batch_size, preset.training.epochs) == (0.01, 16, 3)
    assert preset.training.backend == "sagemaker"  # `fineship run --config <preset>` trains it on SageMaker too
    parent = _mlflow(fineship_home).get_run(result.parent_run_id)
    assert parent.data.tags["fineship.sagemaker_tuning_job"] == result.storage and parent.info.status == "FINISHED"
