"""Batch prediction tasks: score a file here, or start and collect a SageMaker Batch Transform job."""

from __future__ import annotations

from typing import Any

from prefect import task
from prefect.artifacts import create_markdown_artifact
from prefect.cache_policies import NO_CACHE

from components.aws import AwsSettings
from components.batch import (
    BatchOptions,
    BatchResult,
    ModelRef,
    TransformJob,
    TransformTarget,
    collect_transform,
    score_file,
    start_transform,
)
from components.deploy.sagemaker import AwsClients, PreflightResult, require_preflight
from components.package import load_package, read_meta
from tasks.common import artifact_key, md_table, report_stage


def _s3(aws: AwsSettings, *uris: str) -> Any | None:
    return aws.client("s3") if any(u.startswith("s3://") for u in uris) else None


def _publish(result: BatchResult) -> None:
    rows = [("rows", f"{result.rows:,}"), ("output", f"`{result.output_uri}`"),
            ("rows/s", f"{result.rows_per_second:,.0f}"), ("seconds", f"{result.seconds:,.1f}"),
            ("chunks", f"{result.chunks} ({result.resumed_chunks} resumed)"),
            ("added columns", ", ".join(f"`{c}`" for c in result.added_columns)),
            ("rows without text", str(result.missing_texts))]
    if result.transform_job:
        rows.append(("transform job", f"`{result.transform_job}`"))
    create_markdown_artifact(f"# Batch prediction: {result.model_name} v{result.model_version}\n\n"
                             + md_table(["", ""], rows), key=artifact_key("batch-prediction"),
                             description="Batch prediction")
    report_stage("predict", "%s rows -> %s at %.0f rows/s%s", f"{result.rows:,}", result.output_uri,
                 result.rows_per_second, f" ({result.resumed_chunks} chunks resumed)" if result.resumed_chunks else "")


# No retries: a failed run resumes at its first unfinished chunk when it is run again; single S3 calls are
# retried by botocore.
@task(name="score-file", cache_policy=NO_CACHE)
def score_file_task(package_dir: str, input_uri: str, output_uri: str, options: BatchOptions, model: ModelRef,
                    work_root: str, aws: AwsSettings, max_input_bytes: int) -> BatchResult:
    """Score the file with the package here, chunk by chunk (resumable), and write the output."""
    result = score_file(load_package(package_dir), input_uri, output_uri, options, model=model, work_root=work_root,
                        s3=_s3(aws, input_uri, output_uri), max_input_bytes=max_input_bytes)
    _publish(result)
    return result


@task(name="transform-preflight", timeout_seconds=300, cache_policy=NO_CACHE)
def transform_preflight(target: TransformTarget, package_dir: str, name: str) -> PreflightResult:
    """The deployment pre-flight (region, role, bucket, image, package), before any AWS client exists."""
    checked = require_preflight(target.deployment_target(name), package_dir)
    report_stage("pre-flight", "passed; image %s", checked.image_uri)
    return checked


@task(name="start-transform-job", cache_policy=NO_CACHE)
def start_transform_task(checked: PreflightResult, target: TransformTarget, input_uri: str, output_uri: str,
                         options: BatchOptions, model: ModelRef, work_root: str, git_commit: str,
                         aws: AwsSettings, expected_files: dict[str, str], max_input_bytes: int) -> TransformJob:
    """Upload the archive and the texts, create the model and the transform job (or re-attach to a running one)."""
    job = start_transform(AwsClients.create(aws), checked, target, input_uri, output_uri, options, model=model,
                          labels=read_meta(checked.package_dir).labels, work_root=work_root, git_commit=git_commit,
                          expected_files=expected_files, max_input_bytes=max_input_bytes)
    report_stage("transform job", "%s %s (%d texts)", "re-attached to" if job.reattached else "started", job.name,
                 job.records)
    return job


@task(name="collect-transform-job", cache_policy=NO_CACHE)
def collect_transform_task(job: TransformJob, package_dir: str, target: TransformTarget, input_uri: str,
                           output_uri: str, options: BatchOptions, model: ModelRef, work_root: str,
                           aws: AwsSettings) -> BatchResult:
    """Wait for the job, then merge its predictions with the input's rows into the output."""
    result = collect_transform(AwsClients.create(aws), job, input_uri, output_uri, options, model=model,
                               labels=read_meta(package_dir).labels, work_root=work_root,
                               poll_seconds=target.options.poll_seconds,
                               timeout_seconds=target.options.timeout_seconds)
    _publish(result)
    return result
