"""The promote flow: a reviewer approves or rejects a version through a typed form in the Prefect UI.

The reviewer's identity comes from their key, never from a form field: to approve, the reviewer
pastes the signature printed by `fineship approve MODEL VERSION --sign-only` (made with their
private key on their own machine); the flow checks it against the operator's trust store and the
version's exact files, then records it and promotes. A rejection authorises nothing and needs no key.
"""

from __future__ import annotations

import tempfile

from prefect import flow, pause_flow_run
from prefect.artifacts import create_markdown_artifact
from prefect.input import RunInput
from pydantic import BaseModel, ConfigDict, Field

from components.config import DEFAULT_MODEL_NAME
from components.errors import RegistryError
from components.registry.mlflow_registry import MlflowRegistry
from components.registry.review import AliasChange
from components.registry.signing import SignatureBundle
from flows.settings import Settings
from tasks.common import artifact_key
from tasks.registry import download_version, record_approval_task, reject_version, resolve_version


FORM_POLL_SECONDS = 2  # how soon the paused flow sees the reviewer's Resume (Prefect's default: 10 s); one API read each


class ApprovalForm(RunInput):
    """What the reviewer fills in (rendered as a form by the Prefect UI)."""

    approve: bool = Field(False, description="Approve this version and promote it to champion.")
    signature: str = Field("", description="To approve: paste the output of `fineship approve MODEL VERSION "
                           "--sign-only` (your signature over the version's files; it names you).")
    comment: str = Field("", description="To reject: why (recorded on the model version).")


class PromoteOutcome(BaseModel):
    """What the reviewer decided; `change` is the champion alias move of an approval."""

    model_config = ConfigDict(frozen=True)

    model_name: str
    version: str
    approved: bool
    change: AliasChange | None = None

    def summary(self) -> str:
        if self.change is None:
            return "rejected through the promote form"
        return f"approved by {self.change.by}: champion {self.change.from_version} -> {self.change.to_version}"


@flow(name="promote")
def promote_flow(model_name: str = DEFAULT_MODEL_NAME, version: str = "1", timeout_hours: float = 72) -> PromoteOutcome:
    """Show the version's evidence, wait for a reviewer's decision, and record it in the registry."""
    settings = Settings()
    registry = MlflowRegistry(settings.mlflow_tracking_uri, settings.mlflow_artifact_root)  # one per flow run
    v = resolve_version(registry, model_name, version, None)
    evidence = "\n".join(f"- **{k}**: {val}" for k, val in sorted(v.tags.items())
                         if k.startswith(("metric.", "fineship.gate")))
    create_markdown_artifact(f"# Review {model_name} v{version}\n\n{evidence}\n\nTo approve, sign the version with "
                             f"`fineship approve {model_name} {version} --sign-only` and paste the output into the "
                             "form on this flow run (Resume); to reject, leave it empty and say why.",
                             key=artifact_key("review", model_name), description="Evidence for the reviewer")
    decision = pause_flow_run(
        wait_for_input=ApprovalForm.with_initial_data(description=f"Approve {model_name} v{version}?"),
        timeout=int(timeout_hours * 3600), poll_interval=FORM_POLL_SECONDS)
    if not decision.approve:
        reject_version(registry, model_name, version, "the promote form (unsigned)", decision.comment)
        return PromoteOutcome(model_name=model_name, version=version, approved=False)
    if not decision.signature.strip():
        raise RegistryError("an approval needs your signature: run `fineship approve "
                            f"{model_name} {version} --sign-only` and paste its output; run the promote flow again")
    bundle = SignatureBundle.from_json(decision.signature.strip(), "the signature in the form")
    with tempfile.TemporaryDirectory(prefix="fineship-promote-") as tmp:
        package = download_version(registry, model_name, version, tmp).package_dir
        change = record_approval_task(registry, model_name, version, bundle, package, settings.review_policy())
    return PromoteOutcome(model_name=model_name, version=version, approved=True, change=change)
