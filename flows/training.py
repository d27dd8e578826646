"""The training flow: load -> validate -> split -> check labels -> train -> evaluate -> gate -> register.

The flow only composes: every step, every registry write included, is a task (visible in the
Prefect UI, retried where a retry is safe); what to write is decided by components.
"""

from __future__ import annotations

from prefect import flow, get_run_logger
from prefect.runtime import flow_run
from pydantic import BaseModel, ConfigDict

from components.config import PipelineConfig
from components.data.io import DatasetRef
from components.data.policy import validation_policy
from components.data.validation import ValidationReport
from components.errors import GateRejected
from components.evaluation.gate import GateDecision
from components.evaluation.metrics import EvaluationReport
from components.registry.mlflow_registry import MlflowRegistry, RegisteredVersion
from components.registry.model_card import model_card, version_tags
from flows.hooks import notify_failure
from flows.settings import Settings
from tasks.data import load_inputs, record_split, split_data, validate_inputs
from tasks.evaluation import check_label_consistency, evaluate_model, gate_candidate, gather_gate_evidence
from tasks.locks import model_lock
from tasks.registry import (
    end_training_run,
    find_champion,
    promote_by_policy,
    reconcile_open_runs,
    register_model,
    start_training_run,
    verify_package_task,
)
from tasks.training import discard_checkpoints, fine_tune


class TrainingOutcome(BaseModel):
    """What one training run produced and decided."""

    model_config = ConfigDict(frozen=True)

    run_id: str
    dataset: DatasetRef
    validation: ValidationReport
    split_digest: str
    package_dir: str
    candidate: EvaluationReport
    champion: EvaluationReport | None = None
    decision: GateDecision
    registered: RegisteredVersion | None = None
    smoke_texts: list[str]


@flow(name="training", log_prints=True, on_failure=[notify_failure])
def training_flow(config: PipelineConfig = PipelineConfig()) -> TrainingOutcome:
    """Validate the data, train a candidate, evaluate it against the champion, gate it and register it."""
    settings = Settings()
    registry = MlflowRegistry(settings.mlflow_tracking_uri, settings.mlflow_artifact_root)  # one per flow run
    d, name = config.data, config.registry.model_name
    inputs = load_inputs(d, settings.s3_client)
    run_id = start_training_run(registry, config, inputs.main.ref, settings.mlflow_ui_url)
    work = settings.runs_dir / run_id
    # MLflow or the Prefect API gone mid-run loses nothing: tests/e2e/test_outage.py says what happens and why.
    pending, checkpoints = str(settings.home_dir / "pending"), str(settings.home_dir / "checkpoints" / name)
    try:
        reconcile_open_runs(registry, pending, run_id)  # ends runs earlier processes left RUNNING
        with model_lock(name):  # runs for one model never race
            champion = find_champion(registry, name)
            check = validate_inputs(inputs, config, validation_policy(config), settings.home_dir / "cache" / "data_docs",
                                    champion.profile, registry, run_id)
            labels = list(d.labels) if d.labels else sorted(check.report.class_counts)
            splits = split_data(inputs, config)
            record_split(registry, run_id, config, inputs.main.ref, splits)
            evidence = gather_gate_evidence(registry, champion.version, config.gate, labels, str(work / "champion"))
            check_label_consistency(evidence, splits.train, d.text_column, d.label_column, config.gate, registry, run_id)
            trained = fine_tune(splits, d.text_column, d.label_column, labels, config.training, str(work / "package"),
                                registry, run_id, settings.aws, checkpoints,  # a re-run resumes from its checkpoint
                                settings.mlflow_ui_url)
            candidate = evaluate_model(trained.package_dir, splits, d.text_column, d.label_column, "candidate",
                                       registry, run_id, settings.mlflow_ui_url, baseline=True)
            gated = gate_candidate(trained.package_dir, candidate, evidence, splits, d.text_column, d.label_column,
                                   config.gate, registry, run_id,  # new test split + champion's reference set
                                   settings.mlflow_ui_url)
            decision, champion_report = gated.decision, gated.champion
            smoke_texts = splits.test[d.text_column].head(5).tolist()
            if not decision.passed:
                end_training_run(registry, run_id, "FINISHED", pending)
                raise GateRejected(decision.summary() + "; nothing was registered", decision)
            verify_package_task(trained.package_dir, smoke_texts)
            registered = register_model(
                registry, trained.package_dir, name, run_id, smoke_texts,
                version_tags(config, inputs.main.ref, splits.manifest, labels, candidate, decision, run_id),
                model_card(config, inputs.main.ref, candidate, decision, champion_report, trained), settings.mlflow_ui_url,
                idempotency_key=f"prefect-flow-run:{flow_run.root_flow_run_id or flow_run.id}")
            if settings.auto_promote:  # operator policy (FINESHIP_AUTO_PROMOTE), never a run parameter
                registered = promote_by_policy(registry, registered, trained.package_dir, settings.review_policy(),
                                               config.gate, settings.auto_promote_gate, champion.version,
                                               evidence.champion and evidence.champion.package_dir)
            end_training_run(registry, run_id, "FINISHED", pending)
            discard_checkpoints(trained.checkpoint_dir, checkpoints)
    except GateRejected:
        raise
    except BaseException:
        end_training_run(registry, run_id, "FAILED", pending)  # MLflow down: recorded, ended by the next run
        raise
    get_run_logger().info("run %s registered %s v%s", run_id, registered.name, registered.version)
    return TrainingOutcome(run_id=run_id, dataset=inputs.main.ref, validation=check.report,
                           split_digest=splits.manifest.digest, package_dir=trained.package_dir, candidate=candidate,
                           champion=champion_report, decision=decision, registered=registered,
                           smoke_texts=smoke_texts)
