"""moto server plugin: SageMaker hyperparameter tuning jobs that pick values from their own ranges.

moto 5.2.5 records CreateHyperParameterTuningJob and reports it `Completed` at once with a fixed
best training job ("FakeTrainingJobName", tuned hyperparameter `string`), and has no
ListTrainingJobsForHyperParameterTuningJob. Imported into a test's moto server (`plugins=`), this
module makes a tuning job play two training jobs from its own request, following the API
reference: the first DescribeHyperParameterTuningJob answers `InProgress`, the next `Completed`
with `BestTrainingJob` = the better of the two. Job 0 takes every range's lower end (a categorical
range's first value), job 1 the upper end (the last value); their objective values are 0.7 and 0.85
(maximize) or 0.85 and 0.7 (minimize), so job 1 is always the best. ListTrainingJobsForHyper-
ParameterTuningJob returns both summaries.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from moto.core.responses import ActionResult
from moto.sagemaker import models
from moto.sagemaker.responses import SageMakerResponse

_original_init = models.HyperParameterTuningJob.__init__


def _tuned(ranges: dict[str, list[dict[str, Any]]], upper: bool) -> dict[str, str]:
    values = {}
    for kind in ("ContinuousParameterRanges", "IntegerParameterRanges"):
        for r in ranges.get(kind, []):
            values[r["Name"]] = r["MaxValue" if upper else "MinValue"]
    for r in ranges.get("CategoricalParameterRanges", []):
        values[r["Name"]] = r["Values"][-1 if upper else 0]
    return values


def _init(self: Any, *args: Any, **kwargs: Any) -> None:
    _original_init(self, *args, **kwargs)
    config = self.hyper_parameter_tuning_job_config
    objective = config["HyperParameterTuningJobObjective"]
    scores = (0.7, 0.85) if objective["Type"] == "Maximize" else (0.85, 0.7)
    self.fineship_jobs = [{
        "TrainingJobName": f"{self.hyper_parameter_tuning_job_name}-{i + 1:03d}-abcdef12",
        "TrainingJobArn": f"arn:aws:sagemaker:{self.region_name}:{self.account_id}:training-job/"
                          f"{self.hyper_parameter_tuning_job_name}-{i + 1:03d}-abcdef12",
        "TuningJobName": self.hyper_parameter_tuning_job_name, "CreationTime": datetime(2026, 1, 1, 0, i),
        "TrainingStartTime": datetime(2026, 1, 1, 0, i), "TrainingEndTime": datetime(2026, 1, 1, 1, i),
        "TrainingJobStatus": "Completed", "ObjectiveStatus": "Succeeded",
        "TunedHyperParameters": _tuned(config.get("ParameterRanges", {}), upper=bool(i)),
        "FinalHyperParameterTuningJobObjectiveMetric": {"Type": objective["Type"],
                                                        "MetricName": objective["MetricName"], "Value": score},
    } for i, score in enumerate(scores)]
    self.best_training_job = self.OverallBestTrainingJob = self.fineship_jobs[1]
    self.training_job_status_counters = {**self.training_job_status_counters, "Completed": 2}
    self.hyper_parameter_tuning_job_status = "InProgress"
    self.fineship_described = 0


_original_describe = models.HyperParameterTuningJob.describe


def _describe(self: Any) -> dict[str, Any]:
    self.fineship_described += 1
    out = _original_describe(self)
    if self.fineship_described == 1:
        out.pop("BestTrainingJob", None)
        out.pop("OverallBestTrainingJob", None)
    else:
        self.hyper_parameter_tuning_job_status = out["HyperParameterTuningJobStatus"] = "Completed"
    return out


def _list_training_jobs(self: SageMakerResponse) -> ActionResult:
    name = self._get_param("HyperParameterTuningJobName")
    job = self.sagemaker_backend.hyper_parameter_tuning_jobs[name]
    return ActionResult({"TrainingJobSummaries": job.fineship_jobs})


models.HyperParameterTuningJob.__init__ = _init
models.HyperParameterTuningJob.describe = _describe
SageMakerResponse.list_training_jobs_for_hyper_parameter_tuning_job = _list_training_jobs
