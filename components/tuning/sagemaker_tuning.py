"""The same search as a SageMaker hyperparameter tuning job: the fineship training image, one training job per trial.

`tuning.search_space` maps to the job's parameter ranges (a log-uniform learning rate to a
Logarithmic continuous range, epochs to an integer range, batch size and max length to categorical
ones); the other training fields are static hyperparameters, as a single training job gets them
(`components/training/sagemaker_job.py`), spot capacity and checkpoints included. The training
entry point prints the objective at the kept evaluation as `fineship-metric <name>=<value>` after
logging each evaluation's metrics; one metric definition per metric parses both, so SageMaker
sees the intermediate values (for early stopping) and ends with the value of the model the job
keeps. Clients are boto3 clients passed in.
"""

from __future__ import annotations

import json
import logging
import secrets
import time
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

import pandas as pd
import yaml

from components.aws import wait_for_job
from components.config import TrainingConfig, TuningConfig
from components.errors import TuningError
from components.training.sagemaker_job import training_job_request, upload_channels
from components.tuning.result import TrialRecord
from components.tuning.space import distributions

log = logging.getLogger(__name__)

METRIC_LINE = "fineship-metric"
"""Prefix of the line the training entry point prints per objective metric at the end: `fineship-metric name=value`."""
METRICS = ("val_macro_f1", "val_accuracy", "val_loss")
# Fields of a CreateTrainingJob request that a tuning job's TrainingJobDefinition takes as they are.
_DEFINITION_FIELDS = ("RoleArn", "InputDataConfig", "OutputDataConfig", "ResourceConfig", "StoppingCondition",
                      "EnableManagedSpotTraining", "CheckpointConfig", "Environment")


def metric_definitions() -> list[dict[str, str]]:
    """One definition per validation metric; the regex reads the trainer's evaluation log line
    (`'val_macro_f1': 0.8123`) and the entry point's final line (`fineship-metric val_macro_f1=0.8123`)."""
    return [{"Name": m, "Regex": m + r"'?[:=] ?([0-9]+\.?[0-9]*)"} for m in METRICS]


def metric_line(name: str, value: float) -> str:
    """The line the training entry point prints for `name` (parsed by `metric_definitions`)."""
    return f"{METRIC_LINE} {name}={value:.6f}"


def tuning_job_name(prefix: str, now: datetime | None = None) -> str:
    """A unique tuning job name of at most 32 characters (SageMaker's limit for tuning jobs)."""
    stamp = (now or datetime.now(UTC)).strftime("%y%m%d-%H%M%S")
    return f"{prefix[:11].rstrip('-')}-{stamp}-{secrets.token_hex(2)}"


def parameter_ranges(tuning: TuningConfig) -> dict[str, list[dict[str, Any]]]:
    """`tuning.search_space` as the tuning job's ParameterRanges (names are the hyperparameters' `training.<field>`)."""
    from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution

    ranges: dict[str, list[dict[str, Any]]] = {"ContinuousParameterRanges": [], "IntegerParameterRanges": [],
                                               "CategoricalParameterRanges": []}
    for field, dist in distributions(tuning.search_space).items():
        name = f"training.{field}"
        if isinstance(dist, FloatDistribution):
            ranges["ContinuousParameterRanges"].append({
                "Name": name, "MinValue": repr(dist.low), "MaxValue": repr(dist.high),
                "ScalingType": "Logarithmic" if dist.log else "Linear"})
        elif isinstance(dist, IntDistribution):
            ranges["IntegerParameterRanges"].append({"Name": name, "MinValue": str(dist.low),
                                                     "MaxValue": str(dist.high), "ScalingType": "Linear"})
        elif isinstance(dist, CategoricalDistribution):
            ranges["CategoricalParameterRanges"].append({"Name": name, "Values": [str(v) for v in dist.choices]})
    return {k: v for k, v in ranges.items() if v}


def tuning_job_request(name: str, cfg: TrainingConfig, tuning: TuningConfig, channels: dict[str, str],
                       text_col: str, label_col: str, labels: list[str], trials: int, parallel: int,
                       tags: dict[str, str] | None = None) -> dict[str, Any]:
    """The CreateHyperParameterTuningJob request (a pure function: everything the tuning job will do)."""
    base = training_job_request(name, cfg, channels, text_col, label_col, labels)
    ranges = parameter_ranges(tuning)
    tuned = {r["Name"] for kind in ranges.values() for r in kind}
    definition: dict[str, Any] = {k: base[k] for k in _DEFINITION_FIELDS if k in base}
    definition["AlgorithmSpecification"] = {**base["AlgorithmSpecification"], "MetricDefinitions": metric_definitions()}
    definition["StaticHyperParameters"] = {k: v for k, v in base["HyperParameters"].items() if k not in tuned}
    request: dict[str, Any] = {
        "HyperParameterTuningJobName": name,
        "HyperParameterTuningJobConfig": {
            "Strategy": "Bayesian",
            "HyperParameterTuningJobObjective": {"Type": tuning.resolved_direction.capitalize(),
                                                 "MetricName": tuning.objective},
            "ResourceLimits": {"MaxNumberOfTrainingJobs": trials, "MaxParallelTrainingJobs": parallel},
            "ParameterRanges": ranges,
            # SageMaker's early stopping is its median rule over the intermediate objective values.
            "TrainingJobEarlyStoppingType": "Auto" if tuning.pruner.kind == "median" else "Off",
        },
        "TrainingJobDefinition": definition,
    }
    if tags:
        request["Tags"] = [{"Key": k, "Value": v} for k, v in tags.items()]
    return request


def wait_for_tuning_job(sagemaker: Any, name: str, poll_seconds: float = 60.0, timeout_seconds: float | None = None,
                        sleep: Callable[[float], None] = time.sleep) -> dict[str, Any]:
    """Poll until the tuning job ends; its description when Completed, `TuningError` with the reason otherwise."""
    return wait_for_job(lambda: sagemaker.describe_hyper_parameter_tuning_job(HyperParameterTuningJobName=name),
                        kind="tuning job", name=name, status_key="HyperParameterTuningJobStatus", error=TuningError,
                        logs_hint="see its training jobs in the SageMaker console",
                        stop_command="stop it with `aws sagemaker stop-hyper-parameter-tuning-job "
                                     f"--hyper-parameter-tuning-job-name {name}`",
                        poll_seconds=poll_seconds, timeout_seconds=timeout_seconds,
                        progress=lambda desc: json.dumps(desc.get("TrainingJobStatusCounters") or {}, sort_keys=True),
                        sleep=sleep)


def _record(summary: dict[str, Any], number: int) -> TrialRecord:
    params = {}
    for key, raw in (summary.get("TunedHyperParameters") or {}).items():
        if not key.startswith("training."):
            raise TuningError(f"the tuning job reported an unknown hyperparameter {key!r}")
        params[key.removeprefix("training.")] = yaml.safe_load(str(raw))
    metric = summary.get("FinalHyperParameterTuningJobObjectiveMetric") or {}
    status = summary.get("TrainingJobStatus")
    state = "COMPLETE" if status == "Completed" and "Value" in metric else "PRUNED" if status == "Stopped" else "FAIL"
    return TrialRecord(number=number, state=state, value=metric.get("Value"), params=params,
                       error=summary.get("FailureReason") if state == "FAIL" else None,
                       mlflow_run_id=None)


def tuning_trials(sagemaker: Any, name: str, best: dict[str, Any]) -> list[TrialRecord]:
    """Every training job of the tuning job as a trial (oldest first); the best alone when they cannot be listed."""
    from botocore.exceptions import BotoCoreError, ClientError

    summaries: list[dict[str, Any]] = []
    try:
        kwargs: dict[str, Any] = {"HyperParameterTuningJobName": name, "SortBy": "CreationTime",
                                  "SortOrder": "Ascending", "MaxResults": 100}
        while True:
            page = sagemaker.list_training_jobs_for_hyper_parameter_tuning_job(**kwargs)
            summaries += page.get("TrainingJobSummaries", [])
            if not page.get("NextToken"):
                break
            kwargs["NextToken"] = page["NextToken"]
    except (BotoCoreError, ClientError) as err:
        log.warning("could not list the training jobs of %s (%s); reporting the best one only", name, err)
        summaries = [best]
    return [_record(s, i) for i, s in enumerate(summaries)]


def run_tuning_job(sagemaker: Any, s3: Any, cfg: TrainingConfig, tuning: TuningConfig, train_df: pd.DataFrame,
                   val_df: pd.DataFrame, text_col: str, label_col: str, labels: list[str], trials: int, parallel: int,
                   tags: dict[str, str] | None = None, on_started: Callable[[str], None] | None = None,
                   timeout_seconds: float | None = None) -> tuple[str, TrialRecord, list[TrialRecord]]:
    """Upload the splits, create the tuning job, wait; (job name, best trial, all trials)."""
    sm = cfg.sagemaker
    if not (sm.image_uri and sm.role_arn and sm.s3_prefix):
        raise TuningError("a SageMaker tuning job needs training.sagemaker.image_uri, role_arn and s3_prefix")
    name = tuning_job_name(sm.job_name_prefix)
    cols = [text_col, label_col]
    channels = upload_channels(s3, {"train": train_df[cols], "validation": val_df[cols]}, sm.s3_prefix, name)
    sagemaker.create_hyper_parameter_tuning_job(
        **tuning_job_request(name, cfg, tuning, channels, text_col, label_col, labels, trials, parallel, tags))
    log.info("created SageMaker tuning job %s (%d training jobs, %d at a time)", name, trials, parallel)
    if on_started:
        on_started(name)
    desc = wait_for_tuning_job(sagemaker, name, sm.poll_seconds, timeout_seconds)
    best_summary = desc.get("BestTrainingJob")
    if not best_summary:
        raise TuningError(f"SageMaker tuning job {name} completed without a best training job (did every job fail "
                          f"to print its objective {tuning.objective}?)")
    best = _record(best_summary, -1)
    trials_found = tuning_trials(sagemaker, name, best_summary)
    number = next((t.number for t in trials_found if t.params == best.params and t.value == best.value), 0)
    return name, best.model_copy(update={"number": number, "state": "COMPLETE"}), trials_found
