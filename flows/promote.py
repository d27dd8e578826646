"""The promote flow: a reviewer approves or rejects a version through a typed form in the Prefect UI.

The reviewer's identity comes from their key, never from a form field: to approve, the reviewer
pastes the signature printed by `fineship approve MODEL VERSION --sign-only` (made with their
private key on their own machine); the flow checks it against the operator's trust store and the
version's exact files, then records it and promotes. A rejection authorises nothing and needs no key.
"""

from __future__ import annotations

import tempfile

from prefect import flow, get_run_logger, pause_flow_run
from prefect.artifacts import create_markdown_artifact
from prefect.input import RunInput
from pydantic import Field

from components.config import DEFAULT_MODEL_NAME
from components.errors import RegistryError
from components.registry.mlflow_registry import MlflowRegistry
from components.registry.review import record_approval, reject
from components.registry.signing import SignatureBundle
from flows.settings import Settings
from tasks.common import artifact_key


FORM_POLL_SECONDS = 2  # how soon the paused flow sees the reviewer's Resume (Prefect's default: 10 s); one API read each


class ApprovalForm(RunInput):
    """What the reviewer fills in (rendered as a form by the Prefect UI)."""

    approve: bool = Field(False, description="Approve this version and promote it to champion.")
    signature: str = Field("", description="To approve: paste the output of `fineship approve MODEL VERSION "
                           "--sign-only` (your signature over the version's files; it names you).")
    comment: str = Field("", description="To reject: why (recorded on the model version).")


@flow(name="promote")
def promote_flow(model_name: str = DEFAULT_MODEL_NAME, version: str = "1", timeout_hours: float = 72) -> str:
    """Show the version's evidence, wait for a reviewer's decision, and record it in the registry."""
    logger = get_run_logger()
    settings = Settings()
    registry = MlflowRegistry(settings.mlflow_tracking_uri, settings.mlflow_artifact_root)
    v = registry.get_version(model_name, version=version)
    evidence = "\n".join(f"- **{k}**: {val}" for k, val in sorted(v.tags.items())
                         if k.startswith(("metric.", "fineship.gate")))
    create_markdown_artifact(f"# Review {model_name} v{version}\n\n{evidence}\n\nTo approve, sign the version with "
                             f"`fineship approve {model_name} {version} --sign-only` and paste the output into the "
                             "form on this flow run (Resume); to reject, leave it empty and say why.",
                             key=artifact_key("review", model_name), description="Evidence for the reviewer")
    decision = pause_flow_run(
        wait_for_input=ApprovalForm.with_initial_data(description=f"Approve {model_name} v{version}?"),
        timeout=int(timeout_hours * 3600), poll_interval=FORM_POLL_SECONDS)
    if decision.approve:
        if not decision.signature.strip():
            raise RegistryError("an approval needs your signature: run `fineship approve "
                                f"{model_name} {version} --sign-only` and paste its output; run the promote flow again")
        bundle = SignatureBundle.from_json(decision.signature.strip(), "the signature in the form")
        with tempfile.TemporaryDirectory(prefix="fineship-promote-") as tmp:
            package = registry.download_version(model_name, version, tmp).package_dir
            change = record_approval(registry, model_name, version, bundle, package, settings.review_policy())
        outcome = f"approved by {change.by}: champion {change.from_version} -> {change.to_version}"
    else:
        reject(registry, model_name, version, "the promote form (unsigned)", decision.comment)
        outcome = "rejected through the promote form"
    logger.info("%s v%s %s", model_name, version, outcome)
    return outcome
