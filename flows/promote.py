"""The promote flow: a reviewer approves or rejects a version through a typed form in the Prefect UI."""

from __future__ import annotations

from prefect import flow, get_run_logger, pause_flow_run
from prefect.artifacts import create_markdown_artifact
from prefect.input import RunInput
from pydantic import Field

from components.errors import RegistryError
from components.registry.mlflow_registry import MlflowRegistry
from components.registry.review import approve, reject
from flows.settings import Settings
from tasks.common import artifact_key


class ApprovalForm(RunInput):
    """What the reviewer fills in (rendered as a form by the Prefect UI)."""

    approve: bool = Field(False, description="Approve this version and promote it to champion.")
    reviewer: str = Field("", description="Your name; recorded on the model version.")
    comment: str = Field("", description="Why (recorded on the model version).")


@flow(name="promote")
def promote_flow(model_name: str = "fineship-news", version: str = "1", timeout_hours: float = 72) -> str:
    """Show the version's evidence, wait for a reviewer's decision, and record it in the registry."""
    logger = get_run_logger()
    settings = Settings()
    registry = MlflowRegistry(settings.mlflow_tracking_uri)
    v = registry.get_version(model_name, version=version)
    evidence = "\n".join(f"- **{k}**: {val}" for k, val in sorted(v.tags.items())
                         if k.startswith(("metric.", "fineship.gate")))
    create_markdown_artifact(f"# Review {model_name} v{version}\n\n{evidence}\n\nApprove or reject with the form "
                             "on this flow run (Resume).", key=artifact_key("review", model_name),
                             description="Evidence for the reviewer")
    decision = pause_flow_run(
        wait_for_input=ApprovalForm.with_initial_data(description=f"Approve {model_name} v{version}?"),
        timeout=int(timeout_hours * 3600))
    if not decision.reviewer.strip():
        raise RegistryError("the form needs the reviewer's name; run the promote flow again")
    if decision.approve:
        change = approve(registry, model_name, version, decision.reviewer, decision.comment)
        outcome = f"approved by {decision.reviewer}: champion {change.from_version} -> {change.to_version}"
    else:
        reject(registry, model_name, version, decision.reviewer, decision.comment)
        outcome = f"rejected by {decision.reviewer}"
    logger.info("%s v%s %s", model_name, version, outcome)
    return outcome
