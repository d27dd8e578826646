"""Tuning tasks: open the study and its MLflow parent run, run each trial as a task run, write the best preset."""

from __future__ import annotations

import json
import shutil
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from prefect import get_run_logger, task
from prefect.artifacts import create_table_artifact
from prefect.cache_policies import NO_CACHE
from prefect.futures import as_completed

from components.aws import AwsSettings
from components.config import PipelineConfig, TrainingConfig
from components.data.split import Splits
from components.registry.mlflow_registry import MlflowRegistry
from components.training.recipe import RECIPE_FIELDS
from components.tuning.preset import best_config, write_preset
from components.tuning.result import TrialRecord, TuningResult
from components.tuning.space import distributions, trial_training_config
from components.tuning.study import (
    MLFLOW_RUN_ATTR,
    OWNER_ATTR,
    PARENT_RUN_ATTR,
    best_record,
    fail_abandoned_trials,
    finished_trials,
    open_study,
    redact,
    this_process,
    trial_records,
)
from components.tuning.trial import TrialPool, TrialRequest
from tasks.common import artifact_key, report_stage

TRAINING_ATTR = "fineship.training"  # the exact training config a trial ran: the preset is built from it


@dataclass
class Search:
    """An open search: the study, where its trial data is, and its MLflow parent run."""

    study: Any
    storage: str
    work_dir: Path
    train_path: Path
    validation_path: Path
    labels: list[str]
    parent_run_id: str
    pool: TrialPool


def _end_abandoned(registry: MlflowRegistry):
    def on_abandoned(trial: Any) -> None:
        run_id = trial.user_attrs.get(MLFLOW_RUN_ATTR)
        if run_id:
            registry.set_tags(run_id, {"fineship.trial_state": "FAIL",
                                       "fineship.end_reason": "its worker died; the trial was marked FAIL"})
            registry.end_run(run_id, "FAILED")
    return on_abandoned


@task(name="open-search", timeout_seconds=600, cache_policy=NO_CACHE)
def open_search(registry: MlflowRegistry, config: PipelineConfig, storage: str, study_name: str, splits: Splits,
                labels: list[str], work_dir: str, trials: int, parallel: int) -> Search:
    """Create or resume the study, write the trial data, and open (or reopen) the MLflow parent run."""
    logger = get_run_logger()
    study = open_study(storage, study_name, config.tuning, _end_abandoned(registry), parallel)
    resumed = fail_abandoned_trials(study, _end_abandoned(registry))
    work = Path(work_dir)
    data = work / "data"
    data.mkdir(parents=True, exist_ok=True)
    d = config.data
    paths = {}
    for name in ("train", "validation"):
        frame = splits.frame(name)
        paths[name] = data / f"{name}.parquet"
        frame[[d.text_column, d.label_column]].astype(str).set_axis(["text", "label"], axis=1).reset_index(
            drop=True).to_parquet(paths[name], index=False)
    parent = study.user_attrs.get(PARENT_RUN_ATTR)
    if parent and _run_exists(registry, parent):
        registry.client.update_run(parent, status="RUNNING")
        logger.info("resuming study %s (%d trials so far) under MLflow run %s", study_name,
                    len(study.get_trials(deepcopy=False)), parent)
    else:
        parent = registry.start_run(config.registry.experiment, run_name=f"tune-{study_name}",
                                    tags={"fineship.study": study_name, "fineship.kind": "tuning"})
        study.set_user_attr(PARENT_RUN_ATTR, parent)
        registry.log_params(parent, {"tuning.study": study_name, "tuning.storage": redact(storage),
                                     "tuning.objective": config.tuning.objective,
                                     "tuning.direction": config.tuning.resolved_direction,
                                     "tuning.search_space": json.dumps(
                                         config.tuning.search_space.effective().model_dump(mode="json",
                                                                                           exclude_none=True)),
                                     "tuning.pruner": config.tuning.pruner.kind})
        registry.log_dict(parent, config.model_dump(mode="json"), "config.json")
    registry.log_metrics(parent, {"tuning.trials_requested": trials, "tuning.parallel": parallel})
    report_stage("study", "%s in %s: %d finished trial(s)%s", study_name, redact(storage), finished_trials(study),
                 f", {len(resumed)} left by a dead worker marked FAIL" if resumed else "")
    return Search(study=study, storage=storage, work_dir=work, train_path=paths["train"],
                  validation_path=paths["validation"], labels=labels, parent_run_id=parent,
                  pool=TrialPool(parallel, work / "logs"))


def _run_exists(registry: MlflowRegistry, run_id: str) -> bool:
    from mlflow.exceptions import MlflowException

    try:
        registry.client.get_run(run_id)
        return True
    except MlflowException:
        return False


@task(name="trial", cache_policy=NO_CACHE)  # training: never retried; no timeout (a thread cannot be stopped)
def run_trial(search: Search, registry: MlflowRegistry, config: PipelineConfig, number: int, trial_id: int,
              training: TrainingConfig) -> TrialRecord:
    """Train one trial in its own process (pruned from its validation metric), as a nested MLflow run."""
    from optuna.trial import TrialState

    study, tuning = search.study, config.tuning
    params = dict(study._storage.get_trial(trial_id).params)
    run_id = registry.start_run(config.registry.experiment, run_name=f"trial-{number}", tags={
        "mlflow.parentRunId": search.parent_run_id, "fineship.study": study.study_name, "fineship.trial": str(number),
        "fineship.kind": "tuning-trial"})
    study._storage.set_trial_user_attr(trial_id, MLFLOW_RUN_ATTR, run_id)
    study._storage.set_trial_user_attr(trial_id, TRAINING_ATTR, training.model_dump(mode="json"))
    state, outcome = "FAIL", None
    try:
        registry.log_params(run_id, {**{f"training.{k}": v for k, v in params.items()},
                                     "training.num_threads": training.num_threads, "trial.number": number})
        request = TrialRequest(storage=search.storage, study_name=study.study_name, trial_id=trial_id,
                               trial_number=number, tuning=tuning, training=training, labels=search.labels,
                               train_path=str(search.train_path), validation_path=str(search.validation_path),
                               work_dir=str(search.work_dir / "trials" / f"trial-{number:04d}"))
        outcome = search.pool.run(request, heartbeat=lambda: study._storage.record_heartbeat(trial_id),
                                  heartbeat_seconds=tuning.heartbeat_seconds)
        for record in outcome.history:
            registry.log_metrics(run_id, {k: v for k, v in record.items() if k not in ("step", "epoch")},
                                 int(record["step"]))
        if outcome.training:  # what the trial trained with, the recipe's choices included: the preset's source
            study._storage.set_trial_user_attr(trial_id, TRAINING_ATTR, outcome.training)
            registry.log_params(run_id, {f"training.{k}": outcome.training[k] for k in RECIPE_FIELDS
                                         if k not in params and getattr(training, k) is None})
        if outcome.best_step is not None:
            study._storage.set_trial_user_attr(trial_id, "fineship.best_step", outcome.best_step)
        if outcome.error:
            study._storage.set_trial_user_attr(trial_id, "fineship.error", outcome.error[:2000])
        if outcome.state == "COMPLETE":
            study.tell(number, outcome.value, skip_if_finished=True)
            registry.log_metrics(run_id, {"trial.objective": outcome.value, "trial.best_step": outcome.best_step})
        else:
            study.tell(number, state=TrialState[outcome.state], skip_if_finished=True)
        state = outcome.state
    finally:
        if state == "FAIL":
            study.tell(number, state=TrialState.FAIL, skip_if_finished=True)
        registry.set_tags(run_id, {"fineship.trial_state": state,
                                   **({"fineship.error": outcome.error[:4000]} if outcome and outcome.error else {})})
        registry.end_run(run_id, "FAILED" if state == "FAIL" else "FINISHED")
        shutil.rmtree(search.work_dir / "trials" / f"trial-{number:04d}" / "package", ignore_errors=True)
    drawn = ", ".join(f"{k}={v:.3g}" if isinstance(v, float) else f"{k}={v}" for k, v in params.items())
    figure = f"{tuning.objective} {outcome.value:.4f}" if outcome.value is not None else (outcome.error or "")[:120]
    report_stage(f"trial {number}", "%s: %s (%s)", state.lower(), figure, drawn,
                 outcome="ok" if state == "COMPLETE" else "skipped" if state == "PRUNED" else "failed")
    return TrialRecord(number=number, state=state, value=outcome.value, params=params, mlflow_run_id=run_id,
                       best_step=outcome.best_step, seconds=outcome.train_seconds, error=outcome.error)


def run_trials(search: Search, registry: MlflowRegistry, config: PipelineConfig, trials: int, parallel: int,
               timeout_seconds: float | None = None) -> None:
    """Run trials, `parallel` at a time, until the study has `trials` finished (completed or pruned) ones.

    Trials other workers are running count too, so several searches on one study stop together.
    No new trial starts after `timeout_seconds`, nor after `tuning.max_failed_trials` failures in a row.
    """
    try:
        _schedule(search, registry, config, trials, parallel, timeout_seconds)
    except BaseException:
        search.pool.close(force=True)
        raise
    search.pool.close()


def _schedule(search: Search, registry: MlflowRegistry, config: PipelineConfig, trials: int, parallel: int,
              timeout_seconds: float | None) -> None:
    from optuna.trial import TrialState

    study, dists = search.study, distributions(config.tuning.search_space)
    deadline = time.monotonic() + timeout_seconds if timeout_seconds else None
    running: dict[Any, int] = {}  # task-run future -> trial number
    failures = 0
    while True:
        fail_abandoned_trials(study, _end_abandoned(registry))
        in_study = len(study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)))
        while (len(running) < parallel and finished_trials(study) + in_study < trials
               and failures < config.tuning.max_failed_trials and (deadline is None or time.monotonic() < deadline)):
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # "heartbeat is supposed to be used with optimize": we beat ourselves
                trial = study.ask(fixed_distributions=dists)
            trial.set_user_attr(OWNER_ATTR, this_process())
            training = trial_training_config(config.training, dict(trial.params), parallel)
            future = run_trial.with_options(task_run_name=f"trial-{trial.number}").submit(
                search, registry, config, trial.number, trial._trial_id, training)
            running[future] = trial.number
            in_study += 1
        if not running:
            return
        done = next(as_completed(list(running)))
        number = running.pop(done)
        try:
            record = done.result()
            failures = failures + 1 if record.state == "FAIL" else 0
        except Exception as err:  # noqa: BLE001 - one broken trial must not end the search
            failures += 1
            get_run_logger().error("trial %d failed: %s", number, err)


@task(name="finish-search", timeout_seconds=600, cache_policy=NO_CACHE)
def finish_search(search: Search, registry: MlflowRegistry, config: PipelineConfig) -> TuningResult:
    """Write the best trial's preset, log it and the trials to the parent run, and close that run."""
    study, tuning = search.study, config.tuning
    records = trial_records(study)
    best = best_record(study)
    ran = study.best_trial.user_attrs.get(TRAINING_ATTR)
    training = TrainingConfig.model_validate(ran) if ran else trial_training_config(config.training, best.params)
    path = search.work_dir / "best.yaml"
    write_preset(best_config(config, training), path, {
        "study": f"{study.study_name} ({redact(search.storage)})", "best trial": best.number,
        tuning.objective: f"{best.value:.6f} (validation, at step {best.best_step})",
        "drawn": json.dumps(best.params)})
    parent = search.parent_run_id
    registry.log_artifact(parent, path, "tuning")
    registry.log_dict(parent, [r.model_dump(mode="json") for r in records], "tuning/trials.json")
    registry.log_metrics(parent, {f"best_{tuning.objective}": best.value, "tuning.best_trial": best.number,
                                  "tuning.trials_finished": finished_trials(study)})
    registry.set_tags(parent, {"fineship.best_trial": str(best.number), "fineship.best_run_id": best.mlflow_run_id or "",
                               "fineship.preset": str(path)})
    registry.end_run(parent, "FINISHED")
    create_table_artifact(
        [{"trial": r.number, "state": r.state, tuning.objective: None if r.value is None else round(r.value, 4),
          **{k: v for k, v in r.params.items()}} for r in records],
        key=artifact_key("tuning-trials"), description=f"Trials of study {study.study_name}; best: trial {best.number}")
    report_stage("best", "trial %d: %s %.4f; preset %s", best.number, tuning.objective, best.value, path)
    return TuningResult(study_name=study.study_name, storage=redact(search.storage), objective=tuning.objective,
                        direction=tuning.resolved_direction, best=best, preset_path=str(path), trials=records,
                        parent_run_id=parent)


@task(name="sagemaker-tuning-job", timeout_seconds=7 * 24 * 3600, cache_policy=NO_CACHE)  # never retried
def sagemaker_search(registry: MlflowRegistry, config: PipelineConfig, splits: Splits, labels: list[str],
                     study_name: str, trials: int, parallel: int, aws: AwsSettings | None, work_dir: str
                     ) -> TuningResult:
    """Run the search as a SageMaker hyperparameter tuning job and write its best training job as a preset."""
    from components.tuning.sagemaker_tuning import run_tuning_job

    tuning, d = config.tuning, config.data
    aws = aws or AwsSettings()
    session = aws.session()
    parent = registry.start_run(config.registry.experiment, run_name=f"tune-{study_name}",
                                tags={"fineship.study": study_name, "fineship.kind": "tuning"})
    try:
        name, best, found = run_tuning_job(
            aws.client("sagemaker", session), aws.client("s3", session), config.training, tuning, splits.train,
            splits.validation, d.text_column, d.label_column, labels, trials, parallel,
            tags={"fineship:mlflow_run_id": parent},
            on_started=lambda job: registry.set_tags(parent, {"fineship.sagemaker_tuning_job": job}))
        path = Path(work_dir) / "best.yaml"
        write_preset(best_config(config, trial_training_config(config.training, best.params)), path, {
            "SageMaker tuning job": name, tuning.objective: f"{best.value} (validation)", "drawn": json.dumps(best.params)})
        registry.log_artifact(parent, path, "tuning")
        registry.log_metrics(parent, {f"best_{tuning.objective}": best.value or 0.0})
        registry.end_run(parent, "FINISHED")
    except BaseException:
        registry.end_run(parent, "FAILED")
        raise
    report_stage("best", "SageMaker tuning job %s: %s %s; preset %s", name, tuning.objective, best.value, path)
    return TuningResult(backend="sagemaker", study_name=study_name, storage=name, objective=tuning.objective,
                        direction=tuning.resolved_direction, best=best, preset_path=str(path), trials=found,
                        parent_run_id=parent)


@task(name="end-search-run", timeout_seconds=120, cache_policy=NO_CACHE)
def fail_search_run(registry: MlflowRegistry, run_id: str) -> None:
    """Close the parent run FAILED after a search that broke (a resumed search reopens it)."""
    registry.end_run(run_id, "FAILED")


__all__ = ["Search", "fail_search_run", "finish_search", "open_search", "run_trial", "run_trials", "sagemaker_search"]
