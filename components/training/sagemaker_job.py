"""Launch fineship training as a SageMaker training job and bring the model package back.

The job runs the fineship training image (docker/training.Dockerfile), whose entry point is
`components.training.sagemaker_entry`: the same trainer, the same package format. This module
uploads the training and validation frames as S3 input channels, creates the job (instance type
and count, managed spot with a checkpoint S3 URI, data-parallel processes per host), waits for
it, and downloads and unpacks `model.tar.gz` (the package) and `output.tar.gz` (the run's
`TrainedModel`: history and health warnings). Clients are boto3 clients passed in.
"""

from __future__ import annotations

import io
import json
import logging
import secrets
import tarfile
import tempfile
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pandas as pd

from components.aws import wait_for_job
from components.config import TrainingConfig
from components.errors import TrainingError
from components.package import check_package
from components.training.trainer import TrainedModel

log = logging.getLogger(__name__)

CHECKPOINT_LOCAL_PATH = "/opt/ml/checkpoints"
# Not passed to the job: they describe where and how to launch, not what to train.
_LAUNCH_ONLY = {"backend", "sagemaker", "processes", "checkpoint_dir", "device"}


def split_s3_uri(uri: str) -> tuple[str, str]:
    """('bucket', 'key') of an s3:// URI."""
    if not uri.startswith("s3://"):
        raise TrainingError(f"{uri!r} is not an s3:// URI")
    bucket, _, key = uri[5:].partition("/")
    return bucket, key


def job_name(prefix: str, now: datetime | None = None) -> str:
    """A unique training job name: prefix, UTC time, random suffix (at most 63 characters)."""
    stamp = (now or datetime.now(UTC)).strftime("%Y%m%d-%H%M%S")
    return f"{prefix[:40]}-{stamp}-{secrets.token_hex(3)}"


def hyperparameters(cfg: TrainingConfig, text_col: str, label_col: str, labels: list[str]) -> dict[str, str]:
    """The job's hyperparameters: the training fields that differ from the defaults, and the data columns.

    SageMaker passes hyperparameters as strings; the entry point reads each one as YAML.
    """
    defaults = TrainingConfig().model_dump(mode="json")
    hp = {f"training.{k}": json.dumps(v) if isinstance(v, (list, dict)) else str(v)
          for k, v in cfg.model_dump(mode="json").items() if k not in _LAUNCH_ONLY and v != defaults.get(k)}
    hp.update({"data.text_column": text_col, "data.label_column": label_col, "data.labels": json.dumps(labels)})
    if cfg.sagemaker.processes_per_host:
        hp["processes_per_host"] = str(cfg.sagemaker.processes_per_host)
    return hp


def training_job_request(name: str, cfg: TrainingConfig, channels: dict[str, str], text_col: str, label_col: str,
                         labels: list[str], tags: dict[str, str] | None = None) -> dict[str, Any]:
    """The `CreateTrainingJob` request for `cfg.sagemaker` (a pure function: everything the job will do)."""
    sm = cfg.sagemaker
    if not (sm.image_uri and sm.role_arn and sm.s3_prefix):
        raise TrainingError("a SageMaker training job needs training.sagemaker.image_uri, role_arn and s3_prefix")
    prefix = sm.s3_prefix.rstrip("/")
    stopping: dict[str, int] = {"MaxRuntimeInSeconds": sm.max_run_seconds}
    if sm.use_spot:
        stopping["MaxWaitTimeInSeconds"] = sm.max_wait_seconds or 2 * sm.max_run_seconds
    request: dict[str, Any] = {
        "TrainingJobName": name,
        "AlgorithmSpecification": {
            "TrainingImage": sm.image_uri, "TrainingInputMode": "File",
            "MetricDefinitions": [
                {"Name": "val_macro_f1", "Regex": r"'val_macro_f1': ([0-9.]+)"},
                {"Name": "val_loss", "Regex": r"'val_loss': ([0-9.]+)"},
                {"Name": "train_loss", "Regex": r"'train_loss': ([0-9.]+)"},
            ],
        },
        "RoleArn": sm.role_arn,
        "HyperParameters": hyperparameters(cfg, text_col, label_col, labels),
        "InputDataConfig": [
            {"ChannelName": channel, "InputMode": "File", "ContentType": "application/x-parquet",
             "DataSource": {"S3DataSource": {"S3DataType": "S3Prefix", "S3Uri": uri,
                                             "S3DataDistributionType": "FullyReplicated"}}}
            for channel, uri in channels.items()
        ],
        "OutputDataConfig": {"S3OutputPath": f"{prefix}/output"},
        "ResourceConfig": {"InstanceType": sm.instance_type, "InstanceCount": sm.instance_count,
                           "VolumeSizeInGB": sm.volume_size_gb},
        "StoppingCondition": stopping,
        "EnableManagedSpotTraining": sm.use_spot,
        # Always: a spot interruption, or a retry of the same job, resumes from the newest checkpoint.
        "CheckpointConfig": {"S3Uri": sm.checkpoint_s3_uri or f"{prefix}/checkpoints/{name}",
                             "LocalPath": CHECKPOINT_LOCAL_PATH},
        "Environment": {"TOKENIZERS_PARALLELISM": "false", **sm.environment},
        "Tags": [{"Key": k, "Value": v} for k, v in (tags or {}).items()],
    }
    if not request["Tags"]:
        del request["Tags"]
    return request


def upload_channels(s3: Any, frames: dict[str, pd.DataFrame], s3_prefix: str, name: str) -> dict[str, str]:
    """Upload each frame as Parquet under `<s3_prefix>/<job name>/input/<channel>/`; the channel URIs."""
    channels = {}
    for channel, df in frames.items():
        uri = f"{s3_prefix.rstrip('/')}/{name}/input/{channel}/"
        bucket, key = split_s3_uri(uri + f"{channel}.parquet")
        buf = io.BytesIO()
        df.astype(str).reset_index(drop=True).to_parquet(buf, index=False)
        s3.put_object(Bucket=bucket, Key=key, Body=buf.getvalue())
        channels[channel] = uri
    return channels


def wait_for_training_job(sagemaker: Any, name: str, poll_seconds: float = 30.0, timeout_seconds: float | None = None,
                          sleep: Callable[[float], None] = time.sleep) -> dict[str, Any]:
    """Poll until the job ends; its description when Completed, `TrainingError` with the reason otherwise."""
    return wait_for_job(lambda: sagemaker.describe_training_job(TrainingJobName=name), kind="training job",
                        name=name, status_key="TrainingJobStatus", error=TrainingError,
                        logs_hint=f"see its CloudWatch logs (/aws/sagemaker/TrainingJobs, stream {name}/algo-1-*)",
                        stop_command=f"stop it with `aws sagemaker stop-training-job --training-job-name {name}`",
                        poll_seconds=poll_seconds, timeout_seconds=timeout_seconds,
                        progress=lambda desc: f"({desc.get('SecondaryStatus')})", sleep=sleep)


def _safe_extract(archive: bytes, dest: Path) -> None:
    root = dest.resolve()
    with tarfile.open(fileobj=io.BytesIO(archive), mode="r:gz") as tar:
        for member in tar.getmembers():
            target = (root / member.name).resolve()
            if not (target == root or root in target.parents) or member.issym() or member.islnk():
                raise TrainingError(f"refusing to unpack {member.name!r}: it points outside the package directory")
        tar.extractall(root)


def download_package(s3: Any, description: dict[str, Any], dest: str | Path) -> Path:
    """Download the job's `model.tar.gz` and unpack it into `dest`; the package directory."""
    uri = description["ModelArtifacts"]["S3ModelArtifacts"]
    bucket, key = split_s3_uri(uri)
    from botocore.exceptions import BotoCoreError, ClientError

    try:
        body = s3.get_object(Bucket=bucket, Key=key)["Body"].read()
    except (BotoCoreError, ClientError) as err:
        raise TrainingError(f"cannot download the job's model from {uri}: {err}") from err
    out = Path(dest)
    out.mkdir(parents=True, exist_ok=True)
    _safe_extract(body, out)
    missing = check_package(out)
    if missing:
        raise TrainingError(f"the model from {uri} is not a complete package: missing {', '.join(missing)}")
    return out


def download_result(s3: Any, description: dict[str, Any]) -> TrainedModel | None:
    """The `TrainedModel` the job wrote to output/data (in `output.tar.gz`), or None if there is none."""
    name = description["TrainingJobName"]
    uri = f"{description['OutputDataConfig']['S3OutputPath'].rstrip('/')}/{name}/output/output.tar.gz"
    bucket, key = split_s3_uri(uri)
    from botocore.exceptions import BotoCoreError, ClientError

    try:
        body = s3.get_object(Bucket=bucket, Key=key)["Body"].read()
    except (BotoCoreError, ClientError) as err:  # a missing output is not fatal: the package is what matters
        log.warning("no training result at %s (%s); history and health checks are unavailable", uri, err)
        return None
    with tempfile.TemporaryDirectory() as tmp:
        _safe_extract(body, Path(tmp))
        result = Path(tmp) / "result.json"
        return TrainedModel.model_validate_json(result.read_text(encoding="utf-8")) if result.is_file() else None


def run_training_job(sagemaker: Any, s3: Any, cfg: TrainingConfig, train_df: pd.DataFrame, val_df: pd.DataFrame,
                     text_col: str, label_col: str, labels: list[str], out_dir: str | Path,
                     on_started: Callable[[str], None] | None = None, tags: dict[str, str] | None = None,
                     timeout_seconds: float | None = None) -> TrainedModel:
    """Train in a SageMaker job and unpack its model package into `out_dir`.

    `on_started` is called with the job name as soon as the job exists (to record it, say, in
    the MLflow run) — before the wait, which lasts as long as the training.
    """
    sm = cfg.sagemaker
    name = job_name(sm.job_name_prefix)
    cols = [text_col, label_col]
    channels = upload_channels(s3, {"train": train_df[cols], "validation": val_df[cols]}, sm.s3_prefix or "", name)
    request = training_job_request(name, cfg, channels, text_col, label_col, labels, tags)
    sagemaker.create_training_job(**request)
    log.info("created SageMaker training job %s (%d x %s%s)", name, sm.instance_count, sm.instance_type,
             ", spot" if sm.use_spot else "")
    if on_started:
        on_started(name)
    description = wait_for_training_job(sagemaker, name, sm.poll_seconds, timeout_seconds)
    package = download_package(s3, description, out_dir)
    result = download_result(s3, description)
    seconds = float(description.get("BillableTimeInSeconds") or description.get("TrainingTimeInSeconds") or 0)
    if result is None:
        return TrainedModel(package_dir=str(package), labels=labels, base_model=cfg.model, device=sm.instance_type,
                            steps=0, best_step=0, best_val_macro_f1=None, train_seconds=seconds,
                            samples_per_second=0.0)
    return result.model_copy(update={"package_dir": str(package), "device": f"{sm.instance_type} ({result.device})"})
