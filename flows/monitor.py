"""The monitor flow: the served version's profile -> captured traffic -> compare -> report (and webhook on drift).

Runs on a schedule (`monitor` in prefect.yaml) or from `fineship monitor`, which exits 1 on drift.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from prefect import flow
from pydantic import BaseModel, ConfigDict, Field, model_validator

from components.config import (
    DEFAULT_MODEL_NAME,
    ENDPOINT_NAME_PATTERN,
    LOCAL_ENDPOINT,
    MODEL_NAME_PATTERN,
    MonitorConfig,
)
from components.deploy.sagemaker.plan import capture_destination
from components.monitoring.capture import resolve_capture_source
from components.monitoring.drift import MonitorReport
from components.monitoring.render import monitor_payload
from components.notify import post_webhook
from components.registry.mlflow_registry import MlflowRegistry
from flows.hooks import notify_failure
from flows.settings import Settings
from tasks.monitoring import compare_traffic, load_monitor_reference, read_captured_traffic, record_monitor_report



class MonitorRequest(BaseModel):
    """Which served version to watch, where its traffic was captured, and the thresholds."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    model_name: str = Field(DEFAULT_MODEL_NAME, pattern=MODEL_NAME_PATTERN, description="Registered model name.")
    version: str | None = Field(None, description="Version whose profile the traffic is compared with; empty: the "
                                "alias.")
    alias: str | None = Field(None, description="Alias of that version when no version is given (default champion).")
    capture: str | None = Field(None, description="Captured traffic: s3://bucket/prefix, 'sagemaker' (the SageMaker "
                                "endpoint's capture), or a directory inside the fineship home; empty: the local "
                                "endpoint's own capture.")
    endpoint_name: str = Field(LOCAL_ENDPOINT, pattern=ENDPOINT_NAME_PATTERN,
                               description="Endpoint whose capture is read when `capture` is empty or 'sagemaker'.")
    since: datetime | None = Field(None, description="Only traffic at or after this time (UTC when no offset).")
    window_hours: float | None = Field(None, gt=0, le=24 * 366, description="Only the last N hours of traffic "
                                       "(for schedules; ignored when `since` is set).")
    thresholds: MonitorConfig = Field(default_factory=MonitorConfig, description="Drift thresholds.")
    experiment: str = Field("fineship-monitoring", min_length=1, max_length=200,
                            description="MLflow experiment of the monitor runs.")

    @model_validator(mode="after")
    def _one_selector(self) -> MonitorRequest:
        if self.version is not None and self.alias is not None:
            raise ValueError("give either a version number or an alias, not both")
        return self


def _sagemaker_capture_uri(settings: Settings, endpoint: str | None) -> str | None:
    """Where `components/deploy/sagemaker/plan.py` points an endpoint's DataCaptureConfig."""
    if not settings.artifact_bucket:
        return None
    name = endpoint if endpoint and endpoint != LOCAL_ENDPOINT else settings.sagemaker_endpoint
    return capture_destination(settings.artifact_bucket, settings.artifact_prefix, name)


def _notify_drift(settings: Settings, report: MonitorReport, run_url: str | None) -> None:
    if report.drifted and settings.webhook_url:
        post_webhook(settings.webhook_url.get_secret_value(), monitor_payload(report, run_url))


@flow(name="monitor", log_prints=True, on_failure=[notify_failure])
def monitor_flow(request: MonitorRequest = MonitorRequest()) -> MonitorReport:
    """Compare the captured live traffic with the profile of the served version; report, and notify on drift."""
    settings = Settings()
    registry = MlflowRegistry(settings.mlflow_tracking_uri, settings.mlflow_artifact_root)
    source = resolve_capture_source(request.capture, settings.home_dir, settings.endpoints_dir, request.endpoint_name,
                                    _sagemaker_capture_uri(settings, request.endpoint_name))
    alias = request.alias or (None if request.version else "champion")
    since = request.since or (datetime.now(UTC) - timedelta(hours=request.window_hours) if request.window_hours
                              else None)
    served = load_monitor_reference(registry, request.model_name, request.version, alias,
                                    str(settings.home_dir / "monitor"))
    traffic = read_captured_traffic(source, since, settings.aws, request.thresholds)
    report = compare_traffic(served, traffic, request.thresholds, since)
    run_id = record_monitor_report(registry, report, served, request.experiment, settings.mlflow_ui_url)
    _notify_drift(settings, report, registry.run_url(run_id, settings.mlflow_ui_url))
    return report
