"""The training flow: load -> validate -> split -> train -> evaluate -> gate -> register."""

from __future__ import annotations

from prefect import flow, get_run_logger
from prefect.runtime import flow_run
from pydantic import BaseModel, ConfigDict

from components.config import PipelineConfig
from components.data.io import DatasetRef
from components.data.profile import DataProfile
from components.data.validation import ValidationPolicy, ValidationReport
from components.errors import GateRejected
from components.evaluation.gate import GateDecision
from components.evaluation.metrics import EvaluationReport
from components.provenance import config_hash, git_commit
from components.registry.mlflow_registry import MlflowRegistry, RegisteredVersion
from components.registry.review import auto_promote
from flows.hooks import notify_failure
from flows.settings import Settings
from tasks.data import load_dataset, split_data, validate_data
from tasks.locks import model_lock
from tasks.evaluation import confusion_markdown, evaluate_model, gate
from tasks.registry import download_package, register_model, verify_package_task
from tasks.training import fine_tune


PROFILE_ARTIFACT = "data/profile.json"


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


def _model_card(config: PipelineConfig, ref: DatasetRef, report: EvaluationReport, decision: GateDecision,
                champion: EvaluationReport | None) -> str:
    per_class = "\n".join(f"| {k} | {m.precision:.3f} | {m.recall:.3f} | {m.f1:.3f} | {m.support} |"
                          for k, m in report.per_class.items())
    comparison = ""
    if champion is not None:
        comparison = ("\n\n## Against the champion (same test split)\n\n| metric | candidate | champion |\n|---|---|---|\n"
                      + "\n".join(f"| {k} | {getattr(report, k):.4f} | {getattr(champion, k):.4f} |"
                                  for k in ("accuracy", "macro_f1", "mcc")))
    return (f"# {config.registry.model_name}\n\nText classifier fine-tuned from `{config.training.model}` on "
            f"`{ref.uri}` ({ref.rows} rows, sha256 {ref.fingerprint[:12]}).\n\n"
            f"**Intended use:** classify short English texts into {', '.join(report.labels)}. Texts are truncated at "
            f"{config.training.max_length} tokens.\n\n## Test metrics ({report.n} rows)\n\n"
            f"| metric | value | 95% bootstrap interval |\n|---|---|---|\n"
            f"| accuracy | {report.accuracy:.4f} | [{report.accuracy_ci[0]:.4f}, {report.accuracy_ci[1]:.4f}] |\n"
            f"| macro-F1 | {report.macro_f1:.4f} | [{report.macro_f1_ci[0]:.4f}, {report.macro_f1_ci[1]:.4f}] |\n"
            f"| MCC | {report.mcc:.4f} | |\n"
            f"| expected calibration error | {report.ece if report.ece is not None else float('nan'):.4f} | |\n\n"
            f"| class | precision | recall | F1 | support |\n|---|---|---|---|---|\n{per_class}"
            f"\n\n## Confusion matrix (rows: true, columns: predicted)\n\n{confusion_markdown(report)}"
            f"{comparison}\n\n## Gate\n\n" + "\n".join(f"- {r}" for r in decision.reasons)
            + "\n\n## Limits\n\nOnly the labels above can be predicted; texts unlike the training data get low-confidence"
              " scores. Check the data-validation report of the run before trusting a new dataset.")


def _link_runs(registry: MlflowRegistry, run_id: str, mlflow_ui_url: str | None) -> None:
    """Tag the MLflow run with the Prefect flow run (id and URL) and link the MLflow run from Prefect."""
    from prefect.artifacts import create_link_artifact

    ui = flow_run.ui_url
    if ui:
        registry.set_tags(run_id, {"fineship.prefect_flow_run_url": ui})
    run_url = registry.run_url(run_id, mlflow_ui_url)
    if run_url:
        create_link_artifact(run_url, link_text=f"MLflow run {run_id[:8]}", key="mlflow-run")


@flow(name="training", log_prints=True, on_failure=[notify_failure])
def training_flow(config: PipelineConfig = PipelineConfig()) -> TrainingOutcome:
    """Validate the data, train a candidate, evaluate it against the champion, gate it and register it."""
    logger = get_run_logger()
    settings = Settings()
    uri = settings.mlflow_tracking_uri
    registry = MlflowRegistry(uri, settings.mlflow_artifact_root)
    d = config.data
    s3 = settings.s3_client() if any(p and p.startswith("s3://") for p in (d.path, d.validation_path, d.test_path)) else None

    df, ref = load_dataset(d.path, d.format, s3)
    extra_refs: dict[str, DatasetRef] = {}
    validation_df = test_df = None
    if d.validation_path:
        validation_df, extra_refs["validation"] = load_dataset(d.validation_path, d.format, s3)
    if d.test_path:
        test_df, extra_refs["test"] = load_dataset(d.test_path, d.format, s3)
    docs_root = settings.home_dir / "cache" / "data_docs"

    run_id = registry.start_run(config.registry.experiment, run_name=f"train-{config.registry.model_name}",
                                tags={"fineship.prefect_flow_run_id": str(flow_run.get_id() or ""),
                                      "fineship.git_commit": git_commit(), "fineship.config_hash": config_hash(config),
                                      "fineship.data_fingerprint": ref.fingerprint})
    registry.log_dict(run_id, config.model_dump(mode="json"), "config.json")
    _link_runs(registry, run_id, settings.mlflow_ui_url)
    try:
        with model_lock(config.registry.model_name):  # runs for one model never race
            policy = ValidationPolicy(
                text_column=d.text_column, label_column=d.label_column, labels=d.labels,
                min_examples_per_class=d.min_examples_per_class, max_chars=d.max_chars,
                max_duplicate_rate=d.max_duplicate_rate, max_imbalance_ratio=d.max_imbalance_ratio,
                max_length=config.training.max_length, max_truncated_share=d.max_truncated_share)
            champion_version = registry.find_version(config.registry.model_name, "champion")
            reference = None
            if champion_version is not None and champion_version.run_id:
                stored = registry.load_run_json(champion_version.run_id, PROFILE_ARTIFACT)
                reference = DataProfile.model_validate(stored) if stored else None
            report, profile = validate_data(df, ref.fingerprint, policy, ref.uri, docs_root, config.training.model,
                                                reference, d.drift, uri, run_id)
            for name, extra in (("validation", validation_df), ("test", test_df)):
                if extra is not None:
                    validate_data(extra, extra_refs[name].fingerprint, policy.model_copy(update={"min_examples_per_class": 1}),
                                      f"{name} file", docs_root)
            registry.log_dict(run_id, profile.model_dump(), PROFILE_ARTIFACT)
            labels = list(d.labels) if d.labels else sorted(report.class_counts)

            sp = config.split
            splits = split_data(df, ":".join(r.fingerprint for r in (ref, *extra_refs.values())), d.text_column,
                                d.label_column, sp.train, sp.validation, sp.test, sp.seed,
                                validation_df, test_df, sp.near_duplicate_threshold)
            m = splits.manifest
            registry.log_dict(run_id, m.model_dump(), "data/split_manifest.json")
            registry.log_dataset_inputs(run_id, {k: splits.frame(k) for k in ("train", "validation", "test")}, ref.uri,
                                        {k: f"{m.digest}-{k}" for k in ("train", "validation", "test")}, d.label_column)
            registry.set_tags(run_id, {"fineship.split_digest": m.digest})
            registry.log_params(run_id, {"data.uri": ref.uri, "data.rows": ref.rows, "split.seed": sp.seed,
                                         "split.near_duplicate_threshold": sp.near_duplicate_threshold,
                                         **{f"split.{k}_rows": v for k, v in m.sizes.items()}})

            package_dir = str(settings.runs_dir / run_id / "package")
            trained = fine_tune(splits, d.text_column, d.label_column, labels, config.training, package_dir, uri, run_id,
                                settings.aws_region, settings.aws_endpoint_url)
            candidate = evaluate_model(trained.package_dir, splits, d.text_column, d.label_column, "candidate", uri, run_id)

            champion = None
            if champion_version is not None:
                champ_dir = download_package(config.registry.model_name, champion_version.version,
                                             str(settings.runs_dir / run_id / "champion"), uri)
                champion = evaluate_model(champ_dir, splits, d.text_column, d.label_column, "champion", uri, run_id)
            decision = gate(candidate, champion, config.gate, champion_version.version if champion_version else None,
                            uri, run_id)
            smoke_texts = splits.test[d.text_column].head(5).tolist()
            if not decision.passed:
                registry.end_run(run_id, "FINISHED")
                raise GateRejected(decision.summary() + "; nothing was registered", decision)

            verify_package_task(trained.package_dir, smoke_texts)
            tags = {
                "fineship.data_fingerprint": ref.fingerprint, "fineship.split_digest": splits.manifest.digest,
                "fineship.git_commit": git_commit(), "fineship.config_hash": config_hash(config),
                "fineship.gate": "passed", "fineship.gate_reasons": "; ".join(decision.reasons),
                "fineship.labels": ",".join(labels), "fineship.base_model": config.training.model,
                **{f"metric.{k}": f"{v:.4f}" for k, v in candidate.headline().items()},
                "metric.accuracy_ci95": "[{:.4f}, {:.4f}]".format(*candidate.accuracy_ci),
                "metric.macro_f1_ci95": "[{:.4f}, {:.4f}]".format(*candidate.macro_f1_ci),
                "fineship.auto_promote": str(config.registry.auto_promote).lower(),
                "fineship.profile": f"runs:/{run_id}/{PROFILE_ARTIFACT}",
            }
            card = _model_card(config, ref, candidate, decision, champion)
            registry.log_text(run_id, card, "model_card.md")
            registered = register_model(trained.package_dir, config.registry.model_name, run_id, smoke_texts, tags,
                                        card, uri, settings.mlflow_ui_url,
                                    idempotency_key=f"prefect-flow-run:{flow_run.root_flow_run_id or flow_run.id}")
            if config.registry.auto_promote:
                auto_promote(registry, registered.name, registered.version)
                registered = registry.get_version(registered.name, version=registered.version)
            registry.end_run(run_id, "FINISHED")
    except GateRejected:
        raise
    except BaseException:
        registry.end_run(run_id, "FAILED")
        raise
    logger.info("run %s registered %s v%s", run_id, registered.name, registered.version)
    return TrainingOutcome(run_id=run_id, dataset=ref, validation=report, split_digest=splits.manifest.digest,
                           package_dir=trained.package_dir, candidate=candidate, champion=champion,
                           decision=decision, registered=registered, smoke_texts=smoke_texts)

