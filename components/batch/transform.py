"""Batch prediction on SageMaker Batch Transform: the same serving image and `model.tar.gz` as an endpoint.

    pre-flight (no AWS call) -> model.tar.gz from the approved bytes -> S3 PutObject (unless there already)
    -> CreateModel (unless it exists) -> the texts as JSON Lines -> S3 upload -> CreateTransformJob
    (SplitType Line, BatchStrategy MultiRecord, AssembleWith Line, JSON Lines in and out)
    -> wait for Completed -> download `<input>.out` -> merge with the input's rows -> the output file

Each input record is one line `{"inputs": "<text>"}`; the container answers each mini-batch with one JSON line
per text (`{"label", "score", "scores"}`, the serving handler's JSON Lines output), and AssembleWith Line joins
the answers in input order, so the n-th prediction is the n-th text's. The merge re-reads the input and writes
the output exactly as local scoring does (`score.score_file`, with the predictions read from the job's output).

The inference handler answers at most `MAX_TEXTS` texts per request (413 beyond), and MultiRecord packs as
many records as fit in `MaxPayloadInMB`; records are padded with trailing spaces (valid JSON) so that one
payload can never hold more than `MAX_TEXTS` of them.

Resumable: the job's name is kept in the output's state directory with the resume key; a rerun with the same
input, model and options waits for (or collects) that job instead of starting another. The boto3 clients are
passed in (`AwsClients`), so the same code runs against AWS or a moto server.
"""

from __future__ import annotations

import json
import logging
import math
import re
import secrets
import shutil
import time
from collections.abc import Callable, Mapping, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from components.aws import wait_for_job
from components.batch.files import atomic_write_bytes, split_s3
from components.batch.score import (
    MAX_INPUT_BYTES,
    BatchOptions,
    BatchResult,
    ModelRef,
    fetch_input,
    fingerprint,
    iter_present_texts,
    resume_key,
    score_file,
    state_dir_for,
)
from components.deploy.package_tar import build_model_archive
from components.deploy.sagemaker.calls import describe, is_not_found
from components.deploy.sagemaker.checks import PreflightResult
from components.deploy.sagemaker.plan import artifact_key
from components.deploy.sagemaker.settings import AwsClients, SageMakerOptions, SageMakerTarget
from components.deploy.sagemaker.state import sha256_base64
from components.errors import BatchPredictionError, DeploymentError, PreflightError, PreflightIssue
from components.serving.handler import JSONLINES, MAX_TEXTS

log = logging.getLogger(__name__)

STATE_FILE = "transform.json"
PART = "part-{:05d}.jsonl"  # the input files; SageMaker writes <name>.out for each


class TransformOptions(BaseModel):
    """The transform job's shape and waits (SageMaker's own limits per field)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    instance_type: str = Field("ml.m5.large", description="Transform instance type.")
    instance_count: int = Field(1, ge=1, le=100, description="Instances; the texts are split into as many input "
                                "files, since SageMaker gives each instance whole files.")
    max_payload_mb: int = Field(1, ge=1, le=100, description="MaxPayloadInMB: the size of one mini-batch request.")
    max_concurrent_transforms: int | None = Field(None, ge=1, le=100, description="Parallel requests per "
                                                  "instance; empty: SageMaker's default.")
    poll_seconds: float = Field(30, gt=0, description="Interval of DescribeTransformJob polls (s).")
    timeout_seconds: float = Field(86400, gt=0, description="Longest wait for the job (s); it keeps running after.")


class TransformTarget(BaseModel):
    """Where the job runs: the account and stack (from the environment) plus the options."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    region: str | None
    role_arn: str | None = Field(None, description="The role the model runs as (FINESHIP_SAGEMAKER_ROLE_ARN).")
    bucket: str | None = Field(None, description="Artifact bucket (FINESHIP_ARTIFACT_BUCKET): archive, input, "
                               "output.")
    prefix: str = Field("fineship", description="Key prefix the role may read and write (FINESHIP_ARTIFACT_PREFIX).")
    image_uri: str | None = Field(None, description="Serving image; None: the official PyTorch inference image.")
    options: TransformOptions = Field(default_factory=TransformOptions)

    def deployment_target(self, name: str) -> SageMakerTarget:
        """The endpoint-shaped target the deployment pre-flight checks (region, role, bucket, image, package)."""
        return SageMakerTarget(endpoint_name=name, region=self.region, role_arn=self.role_arn, bucket=self.bucket,
                               prefix=self.prefix, image_uri=self.image_uri,
                               options=SageMakerOptions(instance_type=self.options.instance_type,
                                                        instance_count=self.options.instance_count))


class TransformJob(BaseModel):
    """A started (or re-attached) transform job and where its data is."""

    model_config = ConfigDict(frozen=True)

    name: str
    model_name: str
    input_uri: str = Field(description="The S3 prefix holding the input files (S3DataType S3Prefix).")
    output_prefix: str
    parts: list[str] = Field(description="The input files' names, in input order.")
    part_records: list[int] = Field(description="Texts in each input file.")
    key: str
    reattached: bool = False

    @property
    def records(self) -> int:
        return sum(self.part_records)


def _safe(text: str, n: int) -> str:
    return re.sub(r"[^A-Za-z0-9-]+", "-", text).strip("-")[:n].strip("-") or "model"


def new_job_name(model_name: str, version: str, now: datetime | None = None) -> str:
    """`fineship-<model>-v<version>-<UTC time>-<random>`, within SageMaker's 63 characters."""
    stamp = f"{(now or datetime.now(UTC)):%Y%m%d%H%M%S}-{secrets.token_hex(2)}"
    tail = f"-v{_safe(version, 8)}-{stamp}"
    return f"fineship-{_safe(model_name, 63 - 9 - len(tail))}{tail}"


def sagemaker_model_name(model_name: str, version: str, archive_sha256: str) -> str:
    """The SageMaker model of a version's archive: the same archive, the same model (reused across jobs)."""
    tail = f"-v{_safe(version, 8)}-{archive_sha256[:12]}"
    return f"fineship-batch-{_safe(model_name, 63 - 15 - len(tail))}{tail}"


def container_environment(region: str) -> dict[str, str]:
    """The serving container's environment (as for an endpoint: `inference.py` from `code/`, offline)."""
    return {"SAGEMAKER_PROGRAM": "inference.py", "SAGEMAKER_SUBMIT_DIRECTORY": "/opt/ml/model/code",
            "SAGEMAKER_CONTAINER_LOG_LEVEL": "20", "SAGEMAKER_REGION": region, "HF_HUB_OFFLINE": "1",
            "TOKENIZERS_PARALLELISM": "false", "FINESHIP_BACKEND": "eager"}


def record_bytes(max_payload_mb: int) -> int:
    """The padded size of one input record: one payload of `max_payload_mb` holds at most `MAX_TEXTS` records."""
    return math.ceil(max_payload_mb * 1024 * 1024 / MAX_TEXTS) + 1


def transform_job_request(name: str, model: str, input_uri: str, output_prefix: str, options: TransformOptions,
                          tags: Sequence[Mapping[str, str]] = ()) -> dict[str, Any]:
    """The `CreateTransformJob` request (pure): JSON Lines in and out, one record per line, mini-batches."""
    request: dict[str, Any] = {
        "TransformJobName": name, "ModelName": model, "BatchStrategy": "MultiRecord",
        "MaxPayloadInMB": options.max_payload_mb,
        "TransformInput": {"DataSource": {"S3DataSource": {"S3DataType": "S3Prefix", "S3Uri": input_uri}},
                           "ContentType": JSONLINES, "CompressionType": "None", "SplitType": "Line"},
        "TransformOutput": {"S3OutputPath": output_prefix, "Accept": JSONLINES, "AssembleWith": "Line"},
        "TransformResources": {"InstanceType": options.instance_type, "InstanceCount": options.instance_count},
        "Tags": [dict(t) for t in tags],
    }
    if options.max_concurrent_transforms is not None:
        request["MaxConcurrentTransforms"] = options.max_concurrent_transforms
    return request


def write_transform_input(input_uri: str, local: Path, options: BatchOptions, out_dir: Path, max_payload_mb: int,
                          files: int = 1) -> list[tuple[Path, int]]:
    """Write the input's texts as padded JSON Lines records (`{"inputs": text}`), in order, into `files` files of
    (nearly) equal length in `out_dir` (SageMaker gives each instance whole files); (path, records) of each."""
    size = record_bytes(max_payload_mb)
    limit = max_payload_mb * 1024 * 1024
    everything = out_dir / "records.jsonl"
    n = 0
    with open(everything, "w", encoding="utf-8", newline="\n") as f:
        for texts in iter_present_texts(input_uri, local, options):
            for text in texts:
                line = json.dumps({"inputs": text}, ensure_ascii=False)
                encoded = len(line.encode("utf-8"))
                if encoded >= limit:
                    raise BatchPredictionError(f"{input_uri}: text {n + 1} is {encoded} bytes as JSON, over "
                                               f"MaxPayloadInMB={max_payload_mb}; raise max_payload_mb")
                f.write(line + " " * max(0, size - encoded) + "\n")
                n += 1
    if not n:
        raise BatchPredictionError(f"{input_uri}: holds no text in column '{options.text_column}' to score")
    per = math.ceil(n / max(1, min(files, n)))
    parts: list[tuple[Path, int]] = []
    with open(everything, encoding="utf-8", newline="\n") as src:
        for i in range(math.ceil(n / per)):
            path = out_dir / PART.format(i)
            count = min(per, n - i * per)
            with open(path, "w", encoding="utf-8", newline="\n") as dst:
                for _ in range(count):
                    dst.write(src.readline())
            parts.append((path, count))
    everything.unlink()
    return parts


class TransformOutput:
    """The job's `<input>.out` read as a `Scorer`: the next texts' probabilities are the next output lines."""

    def __init__(self, path: str | Path, labels: Sequence[str]) -> None:
        self.path = Path(path)
        self.labels = list(labels)
        self._file = open(self.path, encoding="utf-8")  # noqa: SIM115 - closed by close()
        self.read = 0

    def _next(self) -> dict[str, Any]:
        while True:
            line = self._file.readline()
            if not line:
                raise BatchPredictionError(f"{self.path}: the transform output ends after {self.read} predictions, "
                                           "before the last text sent; see the job's CloudWatch logs")
            if line.strip():
                break
        self.read += 1
        try:
            obj = json.loads(line)
            scores = obj["scores"]
            return {lab: float(scores[lab]) for lab in self.labels}
        except (ValueError, KeyError, TypeError) as err:
            raise BatchPredictionError(f"{self.path}: prediction {self.read} is not the serving handler's JSON Lines "
                                       f"output with every label's score ({type(err).__name__}: {err})") from None

    def predict_proba(self, texts: Sequence[str], batch_size: int = 0) -> np.ndarray:
        rows = [self._next() for _ in texts]
        return np.array([[r[lab] for lab in self.labels] for r in rows], dtype=np.float64).reshape(len(rows),
                                                                                                  len(self.labels))

    def skip(self, n: int) -> None:
        for _ in range(n):
            self._next()

    def close(self) -> None:
        self._file.close()


def _check_instance_type(name: str) -> None:
    import botocore.session

    shape = botocore.session.get_session().get_service_model("sagemaker").shape_for("TransformInstanceType")
    if name not in shape.enum:
        raise PreflightError([PreflightIssue(check="instance", message=f"{name} is not a Batch Transform instance "
                                             "type (e.g. ml.m5.large, ml.c5.xlarge); fix --instance-type")])


def _ensure_archive(clients: AwsClients, bucket: str, key: str, archive: Any) -> None:
    try:
        head = clients.s3.head_object(Bucket=bucket, Key=key, ChecksumMode="ENABLED")
        if head.get("ChecksumSHA256") == sha256_base64(archive.sha256):
            log.info("s3://%s/%s already holds this archive", bucket, key)
            return
    except Exception as err:
        if getattr(err, "response", {}).get("Error", {}).get("Code") not in ("404", "NoSuchKey", "NotFound"):
            raise
    with open(archive.path, "rb") as body:
        clients.s3.put_object(Bucket=bucket, Key=key, Body=body, ContentType="application/gzip",
                              ChecksumAlgorithm="SHA256", ChecksumSHA256=sha256_base64(archive.sha256))


def _ensure_model(clients: AwsClients, name: str, request: dict[str, Any]) -> None:
    try:
        clients.sagemaker.describe_model(ModelName=name)
        return
    except Exception as err:
        if not is_not_found(err):
            raise
    clients.sagemaker.create_model(**request)


def _load_state(state: Path, key: str) -> TransformJob | None:
    path = state / STATE_FILE
    if not path.is_file():
        return None
    try:
        job = TransformJob.model_validate_json(path.read_text(encoding="utf-8"))
    except ValueError:
        return None
    return job if job.key == key else None


def start_transform(clients: AwsClients, checked: PreflightResult, target: TransformTarget, input_uri: str,
                    output_uri: str, options: BatchOptions, *, model: ModelRef, labels: Sequence[str],
                    work_root: str | Path, git_commit: str, expected_files: Mapping[str, str] | None = None,
                    job_name: str | None = None, max_input_bytes: int = MAX_INPUT_BYTES) -> TransformJob:
    """Start the transform job for `input_uri` (or re-attach to the one an interrupted run started).

    `checked` is the deployment pre-flight of `target.deployment_target(...)` on the package to run;
    `expected_files` the approval signature's file digests: the archive holds exactly those bytes.
    """
    _check_instance_type(target.options.instance_type)
    if not (target.region and target.role_arn and target.bucket):
        raise BatchPredictionError("a transform job needs the region, role and bucket: run the pre-flight first")
    state = state_dir_for(work_root, output_uri)
    state.mkdir(parents=True, exist_ok=True)
    local = fetch_input(input_uri, state, clients.s3, max_input_bytes)
    key = resume_key(fingerprint(local) + "|sagemaker|" + target.model_dump_json(exclude={"options"}), model,
                     options, "transform", labels)
    found = _load_state(state, key)
    if found is not None:
        try:
            status = clients.sagemaker.describe_transform_job(TransformJobName=found.name)["TransformJobStatus"]
        except Exception as err:
            if not is_not_found(err):
                raise
            status = "missing"
        if status not in ("Failed", "Stopped", "missing"):
            log.info("re-attaching to transform job %s (%s) started by an interrupted run", found.name, status)
            return found.model_copy(update={"reattached": True})
        log.warning("transform job %s of an interrupted run is %s; starting another", found.name, status)
    name = job_name or new_job_name(model.name, model.version)
    try:
        archive = build_model_archive(checked.package_dir, state / "model.tar.gz", {"git_commit": git_commit},
                                      expected_files=expected_files)
    except DeploymentError as err:
        raise BatchPredictionError(f"building model.tar.gz failed: {err}") from err
    base = target.prefix.strip("/")
    archive_key = artifact_key(base, model.name, model.version, archive.sha256)
    sm_model = sagemaker_model_name(model.name, model.version, archive.sha256)
    tags = [{"Key": f"fineship:{k}", "Value": v[:256]} for k, v in
            {"managed-by": "fineship", "model-name": model.name, "model-version": model.version,
             "git-commit": git_commit}.items()]
    inputs = state / "transform-input"
    shutil.rmtree(inputs, ignore_errors=True)
    inputs.mkdir()
    parts = write_transform_input(input_uri, local, options, inputs, target.options.max_payload_mb,
                                  target.options.instance_count)
    input_prefix = f"{base}/batch/{name}/input/"
    try:
        _ensure_archive(clients, target.bucket, archive_key, archive)
        _ensure_model(clients, sm_model, {
            "ModelName": sm_model, "ExecutionRoleArn": target.role_arn, "Tags": tags,
            "PrimaryContainer": {"Image": checked.image_uri, "ModelDataUrl": f"s3://{target.bucket}/{archive_key}",
                                 "Environment": container_environment(target.region)}})
        for path, _ in parts:
            clients.s3.upload_file(str(path), target.bucket, input_prefix + path.name)
        job = TransformJob(name=name, model_name=sm_model, input_uri=f"s3://{target.bucket}/{input_prefix}",
                           output_prefix=f"s3://{target.bucket}/{base}/batch/{name}/output",
                           parts=[p.name for p, _ in parts], part_records=[c for _, c in parts], key=key)
        # Recorded before the call: a run killed right after it re-attaches instead of starting a second job
        # (and one whose call never reached SageMaker finds no such job and starts another).
        atomic_write_bytes(state / STATE_FILE, job.model_dump_json().encode("utf-8"))
        clients.sagemaker.create_transform_job(**transform_job_request(name, sm_model, job.input_uri,
                                                                      job.output_prefix, target.options, tags))
    except BatchPredictionError:
        raise
    except Exception as err:
        raise BatchPredictionError(f"starting transform job {name} failed: {describe(err)}; check the region, "
                                   "credentials, FINESHIP_SAGEMAKER_ROLE_ARN and FINESHIP_ARTIFACT_BUCKET") from err
    shutil.rmtree(inputs, ignore_errors=True)
    log.info("created transform job %s (%d records in %d files, %d x %s)", name, job.records, len(parts),
             target.options.instance_count, target.options.instance_type)
    return job


def wait_for_transform(sagemaker: Any, name: str, poll_seconds: float, timeout_seconds: float,
                       sleep: Callable[[float], None] = time.sleep) -> dict[str, Any]:
    """Poll until the job ends: its description when Completed, `BatchPredictionError` with the reason otherwise."""
    return wait_for_job(lambda: sagemaker.describe_transform_job(TransformJobName=name), kind="transform job",
                        name=name, status_key="TransformJobStatus", error=BatchPredictionError,
                        logs_hint=f"see its CloudWatch logs (/aws/sagemaker/TransformJobs, {name}/*)",
                        stop_command="run the same command again to collect it, or stop it with "
                                     f"`aws sagemaker stop-transform-job --transform-job-name {name}`",
                        poll_seconds=poll_seconds, timeout_seconds=timeout_seconds, sleep=sleep)


def collect_transform(clients: AwsClients, job: TransformJob, input_uri: str, output_uri: str, options: BatchOptions,
                      *, model: ModelRef, labels: Sequence[str], work_root: str | Path,
                      poll_seconds: float, timeout_seconds: float) -> BatchResult:
    """Wait for the job, download its output and write the output file: the input's rows plus the predictions."""
    wait_for_transform(clients.sagemaker, job.name, poll_seconds, timeout_seconds)
    state = state_dir_for(work_root, output_uri)
    local_out = state / "predictions.jsonl"
    with open(local_out, "wb") as merged:
        for part, expected in zip(job.parts, job.part_records):
            bucket, key = split_s3(f"{job.output_prefix.rstrip('/')}/{part}.out")
            piece = state / f"{part}.out"
            try:
                clients.s3.download_file(bucket, key, str(piece))
            except Exception as err:
                raise BatchPredictionError(f"transform job {job.name} completed but its output s3://{bucket}/{key} "
                                           f"could not be read ({describe(err)})") from err
            with open(piece, "rb") as f:
                found = sum(1 for line in f if line.strip())
            if found != expected:  # checked before anything is written: a short or foreign output writes nothing
                raise BatchPredictionError(f"transform job {job.name} wrote {found} predictions for {expected} texts "
                                           f"in {part}; see its CloudWatch logs (/aws/sagemaker/TransformJobs) and "
                                           "run again")
            with open(piece, "rb") as f:
                shutil.copyfileobj(f, merged)
            merged.write(b"\n")
            piece.unlink()
    reader = TransformOutput(local_out, labels)
    try:
        result = score_file(reader, input_uri, output_uri, options, model=model, work_root=work_root, s3=clients.s3,
                            backend="sagemaker", skip=reader.skip, extra_key="|transform|" + job.name)
    finally:
        reader.close()
    return result.model_copy(update={"transform_job": job.name})
