"""Deployment tasks: serving variants (build, gate, choose, record); the local endpoint (start, smoke test, roll
back); SageMaker pre-flight, plan and execution."""

from __future__ import annotations

import tempfile
from pathlib import Path

from prefect import task
from prefect.artifacts import create_link_artifact, create_markdown_artifact
from prefect.cache_policies import NO_CACHE

from components.aws import AwsSettings
from components.deploy.local import DeploymentRecord, LocalTarget, deploy_local
from components.deploy.sagemaker import (
    AwsClients,
    PreflightResult,
    PreparedDeployment,
    SageMakerDeploymentRecord,
    SageMakerTarget,
    execute_plan,
    prepare_deployment,
    record_failure,
    require_preflight,
)
from components.errors import DeploymentStepError, ExportError
from components.evaluation.reference import REFERENCE_ARTIFACT, ReferenceSet, read_reference_set
from components.export.choice import VARIANTS, VariantReport, choose_backend, describe, write_report
from components.registry.mlflow_registry import MlflowRegistry, RegisteredVersion
from components.serving.backends import load_backend
from tasks.common import RETRIED_IO, artifact_key, md_table, report_stage, retry_transient

VARIANTS_STEP = "serving-variants"
VARIANTS_ARTIFACT = "deploy/serving_variants.json"


@task(name="expected-predictions", timeout_seconds=600, cache_policy=NO_CACHE)
def expected_predictions(package_dir: str, texts: list[str], backend: str = "eager") -> list[str]:
    """What the registered model, run as `backend` (after its gate), predicts locally for the smoke-test texts."""
    if not texts:
        return []
    return [p.label for p in load_backend(package_dir, backend).predict(texts)]


@task(name="load-test-split", timeout_seconds=300, **RETRIED_IO)
def load_test_split(registry: MlflowRegistry, version: RegisteredVersion) -> ReferenceSet | None:
    """The test split the version was evaluated on (its run's frozen reference set), or None when not stored."""
    if not version.run_id:
        return None
    stored = {f.path for f in registry.client.list_artifacts(version.run_id, str(Path(REFERENCE_ARTIFACT).parent))}
    if REFERENCE_ARTIFACT not in stored:
        return None
    with tempfile.TemporaryDirectory() as tmp:
        return read_reference_set(registry.client.download_artifacts(version.run_id, REFERENCE_ARTIFACT, tmp),
                                  source=f"{version.name} v{version.version}, run {version.run_id}")


def variants_markdown(report: VariantReport) -> str:
    rows = [[v.name, "yes" if v.built else "no", "passed" if v.passed else "refused",
             "" if v.agreement is None else f"{v.agreement:.2%}",
             "" if v.accuracy_drop is None else f"{100 * v.accuracy_drop:+.2f}",
             "" if v.rows_per_s is None else f"{v.rows_per_s:.1f}", (v.reason or "")[:200]] for v in report.variants]
    p = report.policy
    return "\n".join([
        f"# Serving variants: `{report.chosen}` serves (requested `{report.requested}`)", "",
        f"Gate on {report.n_texts} test texts: agreement with eager >= {p.min_agreement:.2%}, accuracy drop <= "
        f"{100 * p.max_accuracy_drop:.2f} points; timed on {report.machine}.", "",
        md_table(["variant", "built", "gate", "agreement", "accuracy drop (pts)", "rows/s", "why"], rows)])


@task(name="build-serving-variants", timeout_seconds=3600, cache_policy=NO_CACHE)
def build_serving_variants(package_dir: str, test_split: ReferenceSet | None, requested: str,
                           variants: list[str]) -> VariantReport:
    """Build and gate the package's serving variants on the test split, time them here, choose the backend and
    record the choice in the package (`export/variants.json`). A forced backend that is refused stops the
    deployment (`DeploymentStepError`) before any server starts.

    With `auto`, every one of `variants` is built; a forced backend builds only itself (and eager).
    """
    from components.export.variants import build_variants

    wanted = list(variants) if requested == "auto" else [requested]
    report = build_variants(package_dir, test_split.texts if test_split else [], test_split.labels if test_split else [],
                            variants=[v for v in wanted if v in VARIANTS])
    try:
        chosen = choose_backend(report, requested)
    except ExportError as err:
        report = report.model_copy(update={"requested": requested})
        write_report(package_dir, report)
        create_markdown_artifact(variants_markdown(report), key=artifact_key("serving-variants"),
                                 description="Serving variants (forced backend refused)")
        raise DeploymentStepError(f"refused: {err}", VARIANTS_STEP) from err
    report = report.model_copy(update={"requested": requested, "chosen": chosen})
    write_report(package_dir, report)
    create_markdown_artifact(variants_markdown(report), key=artifact_key("serving-variants"),
                             description="Serving variants: gate and speed")
    best = report.get(chosen)
    report_stage("variants", "%s serves (%s); passed: %s", chosen,
                 f"{best.rows_per_s:.1f} rows/s" if best and best.rows_per_s else "no timing",
                 ", ".join(v.name for v in report.passed()))
    return report


@task(name="record-serving-variants", timeout_seconds=120, **RETRIED_IO)
def record_serving_variants(registry: MlflowRegistry, version: RegisteredVersion, report: VariantReport) -> None:
    """Mirror the variant report on the model version (tags, for people) and log it to its run (JSON)."""
    registry.set_version_tags(version.name, version.version, describe(report))
    if version.run_id:
        registry.log_dict(version.run_id, report.model_dump(mode="json"), VARIANTS_ARTIFACT)


@task(name="deploy-local-endpoint", timeout_seconds=900, cache_policy=NO_CACHE)
def deploy_local_endpoint(target: LocalTarget, package_dir: str, model_name: str, version: str, texts: list[str],
                          expected: list[str], backend: str = "auto") -> DeploymentRecord:
    """Start the version on the local endpoint (serving `backend`) and smoke-test it over HTTP; on failure the
    previous version serves."""
    record, result = deploy_local(target, package_dir, model_name, version, texts, expected, backend)
    create_link_artifact(f"{record.url}/ping", link_text=f"endpoint {target.endpoint_name}",
                         key=artifact_key("endpoint"))
    rows = "\n".join(f"- `{t[:80]}` -> **{p['label']}** ({p['score']:.3f})" for t, p in zip(texts, result.predictions))
    create_markdown_artifact(f"# Smoke test passed: {result.agreed}/{result.n} agree\n\n{rows}",
                             key=artifact_key("smoke-test"), description="Smoke test over HTTP")
    report_stage("deploy", "%s v%s serving at %s; smoke test %d/%d agree", model_name, version, record.url,
                 result.agreed, result.n)
    return record


@task(name="record-deployment-failure", timeout_seconds=120, **RETRIED_IO)
def record_deployment_failure(registry: MlflowRegistry, model_name: str, version: str, step: str, message: str,
                              endpoint_name: str) -> None:
    """Tag the version with the step a SageMaker deployment failed at."""
    record_failure(registry, model_name, version, step, message, endpoint_name)


# -- SageMaker ------------------------------------------------------------------------------------

# Its own task, without retries: the checks are deterministic, run once per deployment, and run before
# any client exists (a missing region is a pre-flight issue, not a botocore error).
@task(name="sagemaker-preflight", timeout_seconds=300, cache_policy=NO_CACHE)
def sagemaker_preflight(target: SageMakerTarget, package_dir: str) -> PreflightResult:
    """Every check that needs no AWS call; raises `PreflightError` listing every issue."""
    checked = require_preflight(target, package_dir)
    report_stage("pre-flight", "passed for endpoint %s; image %s", target.endpoint_name, checked.image_uri)
    return checked


@task(name="prepare-sagemaker-deployment", retries=2, retry_delay_seconds=[5, 20], retry_condition_fn=retry_transient,
      timeout_seconds=900, cache_policy=NO_CACHE)
def prepare_sagemaker_deployment(checked: PreflightResult, model_name: str, version: str, smoke_texts: list[str],
                                 work_dir: str, git_commit: str, training_commit: str | None,
                                 aws: AwsSettings, expected_files: dict[str, str] | None = None) -> PreparedDeployment:
    """model.tar.gz, the endpoint's current state (read-only) and the plan, for a target that passed pre-flight.

    With `expected_files` (the approval's signed digests), every package file written into the archive is hashed
    from the bytes written and must match."""
    prepared = prepare_deployment(checked, AwsClients.create(aws), model_name=model_name, version=version,
                                  smoke_texts=smoke_texts, work_dir=work_dir, git_commit=git_commit,
                                  training_commit=training_commit, expected_files=expected_files)
    plan = prepared.plan
    create_markdown_artifact(f"# SageMaker deployment plan `{plan.deploy_id}`\n\n```\n{plan.render(dry_run=False)}\n```",
                             key=artifact_key("sagemaker-plan"), description="Every AWS call of the deployment")
    report_stage("plan", "%s: %s %s v%s -> %s, %d mutating calls", plan.deploy_id, plan.mode, model_name,
                 version, plan.endpoint_name, len(plan.mutating_calls))
    return prepared


# No task-level retries: the deployment is one transaction that rolls itself back on failure; transient
# errors of single calls are retried by botocore (standard mode) inside it.
@task(name="execute-sagemaker-deployment", cache_policy=NO_CACHE)
def execute_sagemaker_deployment(prepared: PreparedDeployment, expected: list[str], registry: MlflowRegistry,
                                 aws: AwsSettings) -> SageMakerDeploymentRecord:
    """Upload, create, update, wait, smoke test and record; roll back and record the failure on any error."""
    record = execute_plan(prepared, AwsClients.create(aws), expected, registry)
    create_markdown_artifact(
        f"# {record.model_name} v{record.model_version} serving on SageMaker\n\n"
        f"Endpoint `{record.endpoint_name}` ({record.region}) on config `{record.endpoint_config}` "
        f"({record.mode}{', previous ' + record.previous_config if record.previous_config else ''}); smoke test "
        f"{record.smoke.agreed}/{record.smoke.n} agree.", key=artifact_key("sagemaker-endpoint"),
        description="SageMaker deployment")
    report_stage("deploy", "%s v%s serving on SageMaker endpoint %s (config %s); smoke test %d/%d agree",
                 record.model_name, record.model_version, record.endpoint_name, record.endpoint_config,
                 record.smoke.agreed, record.smoke.n)
    return record
