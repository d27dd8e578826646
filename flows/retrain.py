"""The scheduled retraining flow: train, then deploy when the gate passed and the policy allows."""

from __future__ import annotations

from prefect import flow, get_run_logger
from pydantic import BaseModel, ConfigDict

from components.config import PipelineConfig
from components.deploy.local import DeploymentRecord
from flows.deployment import DeployRequest, deployment_flow
from flows.hooks import notify_failure
from flows.training import TrainingOutcome, training_flow


class RetrainOutcome(BaseModel):
    model_config = ConfigDict(frozen=True)

    training: TrainingOutcome
    deployment: DeploymentRecord | None = None
    note: str = ""


@flow(name="retrain", on_failure=[notify_failure])
def retrain_flow(config: PipelineConfig = PipelineConfig()) -> RetrainOutcome:
    """Retrain on the configured data; deploy the new version when it became champion (approved or auto-promoted)."""
    logger = get_run_logger()
    outcome = training_flow(config)
    version = outcome.registered
    if config.deploy.target == "none":
        return RetrainOutcome(training=outcome, note="deploy.target is none")
    if "champion" not in version.aliases:
        note = (f"{version.name} v{version.version} awaits review: approve it (fineship approve {version.name} "
                f"{version.version} with a trusted reviewer key, or the promote deployment), then run deploy-model")
        logger.info(note)
        return RetrainOutcome(training=outcome, note=note)
    record = deployment_flow(DeployRequest(model_name=version.name, version=version.version,
                                           **config.deploy.model_dump()))
    return RetrainOutcome(training=outcome, deployment=record, note=f"deployed v{version.version} to {record.url}")
