"""Pre-flight: everything about a SageMaker deployment that can be checked without calling AWS.

Each issue says what is wrong and where the value comes from. The per-field limits of the options
(serverless memory steps, concurrency, waits, percentages) are enforced by `SageMakerOptions` itself;
the pre-flight checks the environment, the combinations, the model package and the image.
"""

from __future__ import annotations

import functools
import math
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict

from components.deploy.package_tar import package_size_bytes
from components.deploy.sagemaker.settings import (
    MIN_FRAMEWORK,
    RUNTIME_MEMORY_MB,
    SERVERLESS_DISK_MB,
    SERVERLESS_IMAGE_MAX_MB,
    SageMakerTarget,
)
from components.errors import PreflightError, PreflightIssue
from components.package import check_package

_NAME = re.compile(r"^[a-zA-Z0-9](-*[a-zA-Z0-9]){0,62}$")
_ROLE_ARN = re.compile(r"^arn:aws(-[a-z]+)*:iam::\d{12}:role/[\w+=,.@/-]{1,512}$")
_BUCKET = re.compile(r"^(?!xn--)(?!.*\.\.)[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]$")
_REGION = re.compile(r"^[a-z]{2}(-gov|-iso[a-z]?)?-[a-z]+-\d$")
_ECR_IMAGE = re.compile(r"^(?P<account>\d{12})\.dkr\.ecr\.(?P<region>[a-z0-9-]+)\.amazonaws\.com(\.cn)?/"
                        r"(?P<repo>[a-z0-9][a-z0-9._/-]*)(?P<ref>:[\w][\w.-]{0,127}|@sha256:[0-9a-f]{64})?$")


class PreflightResult(BaseModel):
    """A target and model package that passed the pre-flight checks, with the serving image they resolved to.

    `prepare_deployment` takes this, so the checks run once per deployment, before any client exists.
    """

    model_config = ConfigDict(frozen=True)

    target: SageMakerTarget
    package_dir: str
    image_uri: str


def rollback_alarm_names(project: str, environment: str, endpoint_name: str) -> tuple[str, str]:
    """The alarms infra/aws/fineship.yaml creates for an endpoint (5xx errors, model latency)."""
    base = f"{project}-{environment}-{endpoint_name}"
    return f"{base}-invocation-5xx-errors", f"{base}-model-latency"


def _version_tuple(text: str) -> tuple[int, ...]:
    return tuple(int(p) for p in re.findall(r"\d+", text)[:2])


def resolve_image_uri(target: SageMakerTarget) -> str:
    """The serving image: `target.image_uri`, or the official SageMaker PyTorch inference image for the region.

    The official URI comes from the tables bundled with the sagemaker SDK, so this works offline.
    """
    if target.image_uri:
        return target.image_uri
    from sagemaker.core import image_uris

    o = target.options
    kwargs: dict[str, Any] = {"framework": "pytorch", "region": target.region, "version": target.framework_version,
                              "py_version": target.py_version, "image_scope": "inference"}
    if o.serverless:
        from sagemaker.core.serverless_inference_config import ServerlessInferenceConfig

        kwargs["serverless_inference_config"] = ServerlessInferenceConfig(
            memory_size_in_mb=o.serverless_memory_mb, max_concurrency=o.serverless_max_concurrency)
    else:
        kwargs["instance_type"] = o.instance_type
    return image_uris.retrieve(**kwargs)


@functools.lru_cache(maxsize=1)
def _instance_types() -> frozenset[str]:
    """Hosting instance types from botocore's SageMaker service model (offline)."""
    import botocore.session

    shape = botocore.session.get_session().get_service_model("sagemaker").shape_for("ProductionVariantInstanceType")
    return frozenset(shape.enum)


def _local_torch() -> str:
    import importlib.metadata

    return importlib.metadata.version("torch")


def _torchscript_problem(package_dir: str | Path) -> str | None:
    """Why the package's TorchScript export cannot be served, or None (the loader re-checks its hashes)."""
    from components.export.spec import RESULT_FILE, SPEC_FILE, export_dir, read_result

    d = export_dir(package_dir, "torchscript")
    if not (d / SPEC_FILE).is_file():
        return f"{package_dir} has no TorchScript export ({d / SPEC_FILE} is missing)"
    if not (d / RESULT_FILE).is_file():
        return f"the TorchScript export in {d} has no parity report"
    if not read_result(d).passed:
        return f"the TorchScript export in {d} failed its parity check"
    return None


_Report = Callable[[str, str], None]  # bad(check, message): record one issue


def _check_environment(t: SageMakerTarget, bad: _Report) -> None:
    if not t.region:
        bad("region", "no AWS region: set FINESHIP_AWS_REGION (the region of the infra/aws stack)")
    elif not _REGION.match(t.region):
        bad("region", f"'{t.region}' is not an AWS region name (like eu-west-1); fix FINESHIP_AWS_REGION")
    if not t.role_arn:
        bad("role", "no SageMaker execution role for the endpoint: set FINESHIP_SAGEMAKER_ROLE_ARN to the stack's "
                    "SageMakerServingRoleArn output (the serving role, not the training role)")
    elif not _ROLE_ARN.match(t.role_arn):
        bad("role", f"'{t.role_arn}' is not an IAM role ARN of the form arn:aws:iam::<12-digit account>:role/<name>;"
                    " use the stack's SageMakerServingRoleArn output")
    if not t.bucket:
        bad("bucket", "no artifact bucket: set FINESHIP_ARTIFACT_BUCKET to the stack's ArtifactBucketName output")
    elif not _BUCKET.match(t.bucket):
        bad("bucket", f"'{t.bucket}' is not a valid S3 bucket name (3-63 lower-case letters, digits, dots, "
                      "hyphens); use the stack's ArtifactBucketName output")
    if not t.prefix.strip("/") or t.prefix != t.prefix.strip("/"):
        bad("bucket", f"artifact prefix '{t.prefix}' must be non-empty without leading or trailing '/'; "
                      "use the stack's ArtifactPrefix (default fineship)")
    if not _NAME.match(t.endpoint_name):
        bad("endpoint", f"endpoint name '{t.endpoint_name}' must be 1-63 letters, digits and hyphens, starting and "
                        "ending with a letter or digit")


def _check_shape(t: SageMakerTarget, bad: _Report) -> None:
    """The endpoint shape and the blue/green settings (DeploymentConfig limits from the SageMaker API reference)."""
    o = t.options
    if o.serverless:
        pc = o.serverless_provisioned_concurrency
        if pc is not None and not 1 <= pc <= o.serverless_max_concurrency:
            bad("serverless", f"provisioned concurrency {pc} must be between 1 and the max concurrency "
                              f"({o.serverless_max_concurrency}); lower it or raise the max concurrency")
        if o.data_capture_percent is not None:
            bad("serverless", "serverless endpoints do not support data capture: drop the data capture setting or "
                              "deploy to an instance type")
        if t.image_size_mb is not None and t.image_size_mb > SERVERLESS_IMAGE_MAX_MB:
            bad("serverless", f"the image is {t.image_size_mb} MB; serverless endpoints take images up to "
                              f"{SERVERLESS_IMAGE_MAX_MB} MB: slim the image or deploy to an instance type")
    else:
        if o.instance_type not in _instance_types():
            bad("instance", f"'{o.instance_type}' is not a SageMaker hosting instance type (e.g. ml.m5.large, "
                            "ml.c5.xlarge, ml.g5.xlarge); fix the instance type")
        if o.strategy != "all_at_once" and o.instance_count < 2:
            bad("strategy", f"{o.strategy} traffic shifting needs at least 2 instances to shift part of the "
                            "traffic; raise the instance count or use all_at_once")
    if o.strategy == "canary" and not 1 <= o.traffic_percent <= 50:
        bad("strategy", f"canary size {o.traffic_percent}% must be 1..50% of the new fleet")
    if o.strategy == "linear" and not 10 <= o.traffic_percent <= 50:
        bad("strategy", f"linear step {o.traffic_percent}% must be 10..50% of the new fleet")
    if o.max_execution_timeout_seconds is not None:
        floor = max(600, o.wait_interval_seconds + o.termination_wait_seconds + 1)
        if not floor <= o.max_execution_timeout_seconds <= 28800:
            bad("strategy", f"max execution timeout {o.max_execution_timeout_seconds} s must be {floor}..28800 s "
                            "(above the wait interval plus the termination wait)")
    if len(t.rollback_alarms) > 10 or any(not a.strip() for a in t.rollback_alarms):
        bad("alarms", "give at most 10 non-empty rollback alarm names (FINESHIP_ROLLBACK_ALARMS)")


def _check_package(t: SageMakerTarget, package_dir: str | Path, bad: _Report) -> None:
    o = t.options
    missing = check_package(package_dir)
    if missing:
        bad("package", f"model package {package_dir} is incomplete: missing {', '.join(missing)}; "
                       "re-register the version from a complete training run")
    if o.torchscript and not missing:
        problem = _torchscript_problem(package_dir)
        if problem:
            bad("package", f"--torchscript was asked for but {problem}; export this version first "
                           "(components.export.export_package(..., kind='torchscript')) or deploy without --torchscript")
        if not t.image_uri and _version_tuple(t.framework_version) < _version_tuple(_local_torch()):
            bad("image", f"the TorchScript export comes from torch {_local_torch()} and may not load in the official "
                         f"PyTorch {t.framework_version} image; set FINESHIP_IMAGE_URI to the project's serving image "
                         "(docker/) or deploy without --torchscript")
    if not missing and o.serverless_memory_mb is not None:
        size_mb = package_size_bytes(package_dir) / 2 ** 20
        need = math.ceil(size_mb + RUNTIME_MEMORY_MB)
        if need > o.serverless_memory_mb:
            bad("serverless", f"the model is {size_mb:.0f} MB and needs about {need} MB with the runtime, more than "
                              f"the {o.serverless_memory_mb} MB serverless memory: raise the memory (up to 6144) "
                              "or deploy to an instance type")
        if size_mb * 2 > SERVERLESS_DISK_MB:  # the archive and its unpacked copy share the 5 GB disk
            bad("serverless", f"the model is {size_mb:.0f} MB; a serverless endpoint's 5 GB disk holds the "
                              "archive and its unpacked files: deploy to an instance type")


def _check_image(t: SageMakerTarget, bad: _Report) -> str | None:
    """The serving image URI, or None with the reason reported."""
    if t.image_uri:
        m = _ECR_IMAGE.match(t.image_uri)
        if not m:
            bad("image", f"'{t.image_uri}' is not an ECR image URI (<account>.dkr.ecr.<region>.amazonaws.com/"
                         "<repository>:<tag>); use the stack's ServingRepositoryUri with a tag")
        elif t.region and m["region"] != t.region:
            bad("image", f"the image is in {m['region']} but the endpoint is in {t.region}; push the image to "
                         f"{t.region}'s repository")
        elif not m["ref"] or m["ref"] == ":latest":
            bad("image", f"'{t.image_uri}' has no fixed tag; tag the image with a version or git commit "
                         "(the repositories' tags are immutable)")
        else:
            return t.image_uri
    elif t.region and _REGION.match(t.region):
        if _version_tuple(t.framework_version) < MIN_FRAMEWORK:
            bad("image", f"PyTorch {t.framework_version} is too old for transformers 5; use framework version "
                         f"{'.'.join(map(str, MIN_FRAMEWORK))} or newer")
        else:
            try:
                return resolve_image_uri(t)
            except (ValueError, KeyError) as err:
                bad("image", f"no official PyTorch inference image for version {t.framework_version}, "
                             f"{t.py_version} in {t.region} ({err}); pick a listed version or set FINESHIP_IMAGE_URI")
    return None


def preflight(target: SageMakerTarget, package_dir: str | Path) -> tuple[list[PreflightIssue], str | None]:
    """Check everything that can be checked without AWS; return the issues and the resolved image URI."""
    issues: list[PreflightIssue] = []

    def bad(check: str, message: str) -> None:
        issues.append(PreflightIssue(check=check, message=message))

    _check_environment(target, bad)
    _check_shape(target, bad)
    _check_package(target, package_dir, bad)
    return issues, _check_image(target, bad)


def require_preflight(target: SageMakerTarget, package_dir: str | Path) -> PreflightResult:
    """Run the pre-flight checks once; raise `PreflightError` listing every issue, else return what passed."""
    issues, image = preflight(target, package_dir)
    if issues or image is None:
        raise PreflightError(issues)
    return PreflightResult(target=target, package_dir=str(package_dir), image_uri=image)
