"""Monitoring tasks: the served version's profile, the captured traffic, the comparison and its report."""

from __future__ import annotations

import tempfile
from datetime import datetime
from pathlib import Path

from prefect import task
from prefect.artifacts import create_markdown_artifact
from prefect.cache_policies import NO_CACHE
from pydantic import BaseModel, ConfigDict

from components.aws import AwsSettings
from components.config import MonitorConfig
from components.errors import MonitoringError
from components.monitoring.capture import CaptureLimits, CapturedTraffic, read_capture
from components.monitoring.drift import MonitorReport, compare
from components.monitoring.plots import plot_monitor
from components.monitoring.reference import (MONITOR_REFERENCE_ARTIFACT, TrafficReference, load_reference,
                                             record_reference)
from components.monitoring.render import monitor_markdown
from components.registry.mlflow_registry import MlflowRegistry, RegisteredVersion
from tasks.common import RETRIED_IO, artifact_key, report_stage
from tasks.plots import publish_plot



class ServedReference(BaseModel):
    """The version being watched and the profile stored with it."""

    model_config = ConfigDict(frozen=True)

    version: RegisteredVersion
    reference: TrafficReference


@task(name="load-monitor-reference", timeout_seconds=900, **RETRIED_IO)
def load_monitor_reference(registry: MlflowRegistry, name: str, version: str | None, alias: str | None,
                           work_dir: str) -> ServedReference:
    """The version (by number or alias) and its monitoring profile; a version registered before profiles were
    stored gets one now, from its run's frozen test split (and keeps it for the next time)."""
    v = registry.get_version(name, version=version, alias=alias)
    reference = load_reference(registry, v.run_id) if v.run_id else None
    if reference is None and v.run_id:
        package = registry.download_version(name, v.version, str(Path(work_dir) / f"{name}-v{v.version}"))
        reference = record_reference(registry, v.run_id, package.package_dir)
    if reference is None:
        raise MonitoringError(f"{name} v{v.version} has no monitoring profile ({MONITOR_REFERENCE_ARTIFACT}) and "
                              "its training run stored no test split to build one from; register it with `fineship "
                              "run` to monitor it")
    return ServedReference(version=v, reference=reference)


@task(name="read-capture", timeout_seconds=1800, **RETRIED_IO)
def read_captured_traffic(source: str, since: datetime | None, aws: AwsSettings,
                          config: MonitorConfig) -> CapturedTraffic:
    """Read the captured requests (a local directory or s3://), newest first, within the configured limits."""
    limits = CaptureLimits(max_texts=config.max_texts, max_total_bytes=config.max_capture_mb * 1024 * 1024)
    s3 = aws.client("s3") if source.startswith("s3://") else None
    traffic = read_capture(source, since, s3, limits)
    report_stage("capture", "%d requests, %d texts from %s%s", traffic.requests, len(traffic.texts), source,
                 f" ({traffic.skipped} malformed records skipped)" if traffic.skipped else "")
    return traffic


@task(name="compare-traffic", timeout_seconds=600, cache_policy=NO_CACHE)
def compare_traffic(served: ServedReference, traffic: CapturedTraffic, config: MonitorConfig,
                    since: datetime | None) -> MonitorReport:
    """Judge the traffic against the version's profile (no retries: deterministic)."""
    report = compare(served.reference, traffic, config, served.version.name, served.version.version, since)
    report_stage("monitor", report.summary(), outcome="warning" if report.drifted else "ok")
    return report


@task(name="record-monitor-report", timeout_seconds=300, cache_policy=NO_CACHE)
def record_monitor_report(registry: MlflowRegistry, report: MonitorReport, served: ServedReference,
                          experiment: str, mlflow_ui_url: str | None = None) -> str:
    """An MLflow run tagged with the version (metrics, report JSON, plot), the verdict on the version's tags, and a
    Prefect markdown artifact with the plot. Returns the run id."""
    v = served.version
    verdict = ",".join(report.drifted) or ("none" if report.enough_traffic else "no-verdict")
    run_id = registry.start_run(experiment, run_name=f"monitor-{v.name}-v{v.version}", tags={
        "fineship.kind": "monitor", "fineship.model_name": v.name, "fineship.model_version": v.version,
        "fineship.training_run_id": v.run_id or "", "fineship.monitor.drifted": verdict})
    try:
        registry.log_metrics(run_id, {"monitor_texts": report.texts, "monitor_requests": report.requests}
                             | {f"monitor_{m.name}": m.value for m in report.measures})
        registry.log_dict(run_id, report.model_dump(mode="json"), "monitoring/report.json")
        with tempfile.TemporaryDirectory() as tmp:
            png = plot_monitor(report, served.reference, Path(tmp) / "monitor.png")
            plot = publish_plot(registry, run_id, png, f"Live traffic of {v.name} v{v.version}",
                                artifact_key("monitor", v.name, "plot"), mlflow_ui_url)
        registry.end_run(run_id)
    except BaseException:
        registry.end_run(run_id, "FAILED")
        raise
    # Tags mirror the verdict for people reading the registry; they authorise nothing.
    registry.set_version_tags(v.name, v.version, {"fineship.monitor.last_run_id": run_id,
                                                  "fineship.monitor.drifted": verdict})
    create_markdown_artifact(monitor_markdown(report, plot), key=artifact_key("monitor", v.name),
                             description=f"Live traffic of {v.name} v{v.version}: {verdict}")
    return run_id
