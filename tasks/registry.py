"""Registry tasks: every MLflow write of a run is one of these visible, retried steps."""

from __future__ import annotations


from prefect import get_run_logger, task
from prefect.artifacts import create_link_artifact, create_markdown_artifact
from prefect.utilities.urls import url_for
from prefect.cache_policies import NO_CACHE
from prefect.runtime import flow_run
from pydantic import BaseModel, ConfigDict

from components.config import GateConfig, PipelineConfig
from components.data.io import DatasetRef
from components.data.profile import DataProfile
from components.evaluation.gate_floor import weaker_than
from components.monitoring.reference import record_reference
from components.package import load_package
from components.provenance import pinned_requirements
from components.registry.metric_buffer import OutageSettings, is_transient, with_retries
from components.registry.mlflow_registry import (
    DownloadedVersion,
    MlflowRegistry,
    RegisteredVersion,
    clear_run_marker,
    mark_run_end,
    mark_run_open,
    reconcile_runs,
)
from components.registry.model_card import CARD_ARTIFACT, PROFILE_ARTIFACT, run_tags
from components.registry.package_check import verify_package
from components.registry.review import (
    CHAMPION,
    MAX_TAG,
    AliasChange,
    ReviewPolicy,
    auto_promote,
    auto_promotion_blockers,
    record_approval,
    reject,
    verify_deployable,
)
from components.registry.signing import SignatureBundle, VerifiedApproval
from tasks.common import RETRIED_IO, artifact_key, report_stage, retry_transient

# What the registered pyfunc model needs at load time, pinned to the versions installed here.
PYFUNC_PACKAGES = ("torch", "transformers", "tokenizers", "safetensors", "pandas", "numpy", "pydantic", "mlflow")



class Champion(BaseModel):
    """The current champion (if any) and the data profile it was trained on."""

    model_config = ConfigDict(frozen=True)

    version: RegisteredVersion | None = None
    profile: DataProfile | None = None


@task(name="start-run", timeout_seconds=120, **RETRIED_IO)
def start_training_run(registry: MlflowRegistry, config: PipelineConfig, dataset: DatasetRef,
                       mlflow_ui_url: str | None = None) -> str:
    """Open the MLflow run of this flow run, log the configuration and link the two UIs both ways."""
    run_id = registry.start_run(config.registry.experiment, run_name=f"train-{config.registry.model_name}",
                                tags=run_tags(config, dataset, str(flow_run.get_id() or "")))
    registry.log_dict(run_id, config.model_dump(mode="json"), "config.json")
    # url_for, not flow_run.ui_url: the latter formats PREFECT_UI_URL even when unset ("None/flow-runs/...")
    # and uses a route the Prefect UI does not have; url_for derives the UI from the API URL.
    ui_url = url_for("flow-run", obj_id=flow_run.get_id()) if flow_run.get_id() else None
    if ui_url:
        registry.set_tags(run_id, {"fineship.prefect_flow_run_url": ui_url})
    run_url = registry.run_url(run_id, mlflow_ui_url)
    if run_url:
        create_link_artifact(run_url, link_text=f"MLflow run {run_id[:8]}", key="mlflow-run")
    return run_id


# No Prefect retries or timeout: the body retries for a bounded time itself, then falls back to a local record.
@task(name="end-run", cache_policy=NO_CACHE)
def end_training_run(registry: MlflowRegistry, run_id: str, status: str, pending_dir: str | None = None,
                     wait_seconds: float | None = None) -> bool:
    """Close the MLflow run as FINISHED or FAILED; False when MLflow stayed unreachable and the end was deferred.

    Retries an unreachable MLflow for `wait_seconds` (default `FINESHIP_MLFLOW_OUTAGE_WAIT_SECONDS`). If it
    is still down, the end is recorded in `pending_dir` and the next flow run's `reconcile-runs` applies it,
    so no run stays RUNNING; this step then succeeds, and the flow reports its own outcome. It also runs
    with the Prefect API gone (prefect 3 orchestrates task runs client-side), so a flow failing for that
    reason still closes its MLflow run (tests/e2e/test_outage.py).
    """
    wait = OutageSettings().wait_seconds if wait_seconds is None else wait_seconds
    try:
        with_retries(lambda: registry.end_run(run_id, status), wait, f"ending MLflow run {run_id} as {status}")
    except Exception as err:
        if pending_dir is None or not is_transient(err):
            raise
        path = mark_run_end(pending_dir, run_id, registry.tracking_uri, status, f"MLflow was unreachable: {err}")
        get_run_logger().error("MLflow stayed unreachable for %.0fs: run %s could not be ended %s; recorded in %s, "
                               "the next flow run ends it", wait, run_id, status, path)
        return False
    if pending_dir is not None:
        clear_run_marker(pending_dir, run_id)
    return True


@task(name="reconcile-runs", timeout_seconds=300, cache_policy=NO_CACHE)
def reconcile_open_runs(registry: MlflowRegistry, pending_dir: str, run_id: str | None = None) -> list[str]:
    """End the MLflow runs earlier flow runs left RUNNING (recorded in `pending_dir`), then record `run_id` as
    open, owned by this process, until `end-run` closes it. Returns the run ids ended."""
    settled = reconcile_runs(registry, pending_dir)
    for marker in settled:
        get_run_logger().warning("ended MLflow run %s left RUNNING by an earlier flow run as %s: %s", marker.run_id,
                                 marker.status, marker.reason)
    if run_id is not None:
        mark_run_open(pending_dir, run_id, registry.tracking_uri)
    return [m.run_id for m in settled]


@task(name="find-champion", timeout_seconds=120, **RETRIED_IO)
def find_champion(registry: MlflowRegistry, model_name: str) -> Champion:
    """The champion version and its stored data profile (for drift checks)."""
    version = registry.find_version(model_name, CHAMPION)
    profile = None
    if version is not None and version.run_id:
        stored = registry.load_run_json(version.run_id, PROFILE_ARTIFACT)
        profile = DataProfile.model_validate(stored) if stored else None
    return Champion(version=version, profile=profile)


@task(name="register-model", retries=2, retry_delay_seconds=[5, 20], retry_condition_fn=retry_transient,
      timeout_seconds=900, cache_policy=NO_CACHE)
def register_model(registry: MlflowRegistry, package_dir: str, name: str, run_id: str, input_example: list[str],
                   tags: dict[str, str], card: str, mlflow_ui_url: str | None = None,
                   idempotency_key: str | None = None) -> RegisteredVersion:
    """Log the model card, the monitoring profile and the package to the run and register it with alias
    `challenger` (once per key)."""
    registry.log_text(run_id, card, CARD_ARTIFACT)
    record_reference(registry, run_id, package_dir)  # the profile `fineship monitor` compares live traffic with
    version = registry.log_and_register(run_id, package_dir, name, input_example, pinned_requirements(PYFUNC_PACKAGES),
                                        tags, card, aliases=("challenger",), idempotency_key=idempotency_key)
    create_markdown_artifact(
        f"# Registered `{name}` version {version.version}\n\nAliases: {', '.join(version.aliases) or 'none'}; "
        f"MLflow run `{run_id}`.", key=artifact_key("registered-version"), description="Registered model version")
    if mlflow_ui_url:
        create_link_artifact(f"{mlflow_ui_url.rstrip('/')}/#/models/{name}/versions/{version.version}",
                             link_text=f"{name} v{version.version} in MLflow", key=artifact_key("mlflow-version"))
    report_stage("register", "%s version %s", name, version.version)
    return version


@task(name="auto-promote", timeout_seconds=600, **RETRIED_IO)
def promote_by_policy(registry: MlflowRegistry, version: RegisteredVersion, package_dir: str, policy: ReviewPolicy,
                      gate: GateConfig, floor: GateConfig, champion: RegisteredVersion | None,
                      champion_dir: str | None) -> RegisteredVersion:
    """Under the operator's FINESHIP_AUTO_PROMOTE policy: sign the version with the pipeline's key, make it champion.

    Not when the run's gate is weaker than the operator's floor (FINESHIP_AUTO_PROMOTE_GATE), nor when the champion
    it was judged against does not verify (or earlier versions exist but none is champion): then the version is
    registered, tagged with the reasons, and waits for a reviewer."""
    blockers = auto_promotion_blockers(registry, version, policy, weaker_than(gate, floor), champion, champion_dir)
    if blockers:
        registry.set_version_tags(version.name, version.version,
                                  {"fineship.auto_promotion": ("refused: " + "; ".join(blockers))[:MAX_TAG]})
        report_stage("promote", "%s v%s is NOT auto-promoted and awaits a reviewer (fineship approve %s %s): %s",
                     version.name, version.version, version.name, version.version, "; ".join(blockers))
        return registry.get_version(version.name, version=version.version)
    change: AliasChange = auto_promote(registry, version.name, version.version, package_dir, policy)
    report_stage("promote", "%s: champion %s -> %s (auto-promotion by operator policy, pipeline-signed)", version.name,
                 change.from_version, change.to_version)
    return registry.get_version(version.name, version=version.version)


@task(name="verify-package", timeout_seconds=600, cache_policy=NO_CACHE)
def verify_package_task(package_dir: str, texts: list[str]) -> float:
    """Load the package in a fresh process; it must predict `texts` as the trained model does in memory."""
    clf = load_package(package_dir)
    diff = verify_package(package_dir, texts, clf.predict_proba(texts))
    report_stage("package", "fresh-process scores within %.2e", diff)
    return diff


@task(name="verify-approval", timeout_seconds=600, cache_policy=NO_CACHE)
def verify_approval_task(version: RegisteredVersion, package_dir: str, policy: ReviewPolicy) -> VerifiedApproval:
    """The version's signature holds over exactly the files about to be deployed, by a signer the operator trusts."""
    verified = verify_deployable(version, package_dir, policy)
    who = "the pipeline (FINESHIP_AUTO_PROMOTE)" if verified.purpose == "auto-promotion" else verified.signer
    create_markdown_artifact(
        f"# Signature verified: {version.name} v{version.version}\n\n{verified.purpose} signed by **{who}** "
        f"(key `{verified.key_id}`) at {verified.signed_at:%Y-%m-%d %H:%M} UTC over {verified.files} files, each "
        f"hashed again here." + (f"\n\nComment: {verified.comment}" if verified.comment else ""),
        key=artifact_key("signature"), description="Approval signature check")
    report_stage("signature", "%s v%s: %s by %s verified over %d files", version.name, version.version,
                 verified.purpose, who, verified.files)
    return verified


@task(name="resolve-version", timeout_seconds=120, **RETRIED_IO)
def resolve_version(registry: MlflowRegistry, name: str, version: str | None, alias: str | None) -> RegisteredVersion:
    """Find the model version to deploy by number or alias."""
    return registry.get_version(name, version=version, alias=alias)


@task(name="download-package", timeout_seconds=900, **RETRIED_IO)
def download_version(registry: MlflowRegistry, name: str, version: str, dst: str) -> DownloadedVersion:
    """Download a registered version's model package and its registered input example."""
    return registry.download_version(name, version, dst)


@task(name="record-approval", timeout_seconds=300, **RETRIED_IO)
def record_approval_task(registry: MlflowRegistry, name: str, version: str, bundle: SignatureBundle, package_dir: str,
                         policy: ReviewPolicy) -> AliasChange:
    """Verify a reviewer's signature over the version's files, record it and make the version champion."""
    change = record_approval(registry, name, version, bundle, package_dir, policy)
    report_stage("promote", "%s: approved by %s, champion %s -> %s", name, change.by, change.from_version,
                 change.to_version)
    return change


@task(name="reject-version", timeout_seconds=120, **RETRIED_IO)
def reject_version(registry: MlflowRegistry, name: str, version: str, by: str, comment: str) -> None:
    """Record a rejection on the version (it authorises nothing, so it needs no key)."""
    reject(registry, name, version, by, comment)
    report_stage("promote", "%s v%s rejected by %s", name, version, by, outcome="rejected")
