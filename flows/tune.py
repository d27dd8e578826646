"""The tuning flow: load -> validate -> split -> open the study -> trials (K at a time) -> best preset.

Each trial is a task run and a nested MLflow run under the search's parent run; the study lives in
Optuna storage, so the same command resumes a killed search and several workers can share one study.
With `training.backend: sagemaker` the search is a SageMaker hyperparameter tuning job instead.
"""

from __future__ import annotations

from prefect import flow
from prefect.task_runners import ThreadPoolTaskRunner

from components.config import PipelineConfig
from components.data.policy import validation_policy
from components.errors import TuningError
from components.registry.mlflow_registry import MlflowRegistry
from components.tuning.result import TuningResult
from components.tuning.study import default_study_name, resolve_storage, tuning_dir
from flows.hooks import notify_failure
from flows.settings import Settings
from tasks.data import load_inputs, split_data, validate_data
from tasks.tuning import fail_search_run, finish_search, open_search, run_trials, sagemaker_search

MAX_PARALLEL = 64


@flow(name="tune", log_prints=True, on_failure=[notify_failure],
      task_runner=ThreadPoolTaskRunner(max_workers=MAX_PARALLEL))  # the trials themselves run in processes
def tune_flow(config: PipelineConfig = PipelineConfig(), trials: int = 10, parallel: int = 1,
              timeout_seconds: float | None = None) -> TuningResult:
    """Search `tuning.search_space` until the study holds `trials` finished trials; write the best as a preset.

    The preset goes to `<home>/tuning/<study>/best.yaml` (never a path a run parameter names: the form is
    untrusted input); `fineship tune --preset PATH` copies it where its user asks."""
    if not 1 <= trials <= 10_000 or not 1 <= parallel <= MAX_PARALLEL:
        raise TuningError(f"trials must be 1..10000 and parallel 1..{MAX_PARALLEL}, got {trials} and {parallel}")
    settings = Settings()
    registry = MlflowRegistry(settings.mlflow_tracking_uri, settings.mlflow_artifact_root)
    d = config.data
    inputs = load_inputs(d, settings.s3_client)
    check = validate_data(inputs.main, validation_policy(config), settings.home_dir / "cache" / "data_docs",
                          config.training.model, None, d.drift)
    labels = list(d.labels) if d.labels else sorted(check.report.class_counts)  # as the training flow does
    splits = split_data(inputs, config)  # the split `fineship run` makes: a trial's score is the run's
    study_name = config.tuning.study_name or default_study_name(config, inputs.fingerprints)
    if config.training.backend == "sagemaker":
        return sagemaker_search(registry, config, splits, labels, study_name, trials, parallel, settings.aws,
                                str(tuning_dir(settings.home_dir) / study_name))
    storage = resolve_storage(config.tuning.storage, settings.home_dir)
    search = open_search(registry, config, storage, study_name, splits, labels,
                         str(tuning_dir(settings.home_dir) / study_name), trials, parallel)
    try:
        run_trials(search, registry, config, trials, parallel, timeout_seconds)
        return finish_search(search, registry, config)
    except BaseException:
        fail_search_run(registry, search.parent_run_id)  # a resumed search reopens it
        raise
