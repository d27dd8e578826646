"""Evaluation tasks: check the new labels against the champion, score models on the frozen test split and on the
champion's frozen reference set, run the behavioural checks, decide at the gate."""

from __future__ import annotations

import tempfile
from pathlib import Path

import pandas as pd
from prefect import task
from prefect.artifacts import create_markdown_artifact
from prefect.cache_policies import NO_CACHE
from pydantic import BaseModel, ConfigDict

from components.config import GateConfig
from components.data.split import Splits
from components.errors import LabelConsistencyError
from components.evaluation import behaviour, consistency
from components.evaluation.baseline import compare_to_baseline, fit_baseline, margin_metrics
from components.evaluation.behaviour import BehaviourReport, BehaviourSuite, load_behaviour_suite
from components.evaluation.consistency import ConsistencyReport
from components.evaluation.gate import GateDecision, decide
from components.evaluation.metrics import EvaluationReport, evaluate_classifier, predicted_labels
from components.evaluation.plots import plot_confusion_matrix, plot_reliability
from components.evaluation.reference import (REFERENCE_ARTIFACT, ReferenceScores, ReferenceSet, leave_out_seen,
                                             read_reference_set, write_reference_set)
from components.evaluation.render import baseline_markdown, behaviour_markdown, consistency_markdown, gate_markdown
from components.package import load_package, preprocess
from components.registry.mlflow_registry import MlflowRegistry, RegisteredVersion
from components.registry.model_card import confusion_markdown
from tasks.common import RETRIED_IO, artifact_key, md_table, report_stage
from tasks.plots import publish_plot
from tasks.registry import download_version

RECORDED_REPORT = "evaluation/candidate_report.json"
"""The report a run's candidate got on its own test split (written by `evaluate_model` with role 'candidate')."""



class ChampionRecord(BaseModel):
    """What the champion's training run stored: its test report and its frozen reference set (or why it has none)."""

    model_config = ConfigDict(frozen=True)

    recorded: EvaluationReport | None = None
    reference: ReferenceSet | None = None
    reference_missing: str | None = None


class ChampionEvidence(ChampionRecord):
    """What is known of the champion before training: its package, its recorded test report, its reference set."""

    version: str
    package_dir: str

    @property
    def name(self) -> str:
        return f"champion v{self.version}"


class GateEvidence(BaseModel):
    """Everything the gate needs besides the candidate, gathered before training so a problem costs no compute."""

    model_config = ConfigDict(frozen=True)

    champion: ChampionEvidence | None = None
    behaviour: BehaviourSuite | None = None


class GateOutcome(BaseModel):
    """The gate's decision and the champion's scores it was based on."""

    model_config = ConfigDict(frozen=True)

    decision: GateDecision
    champion: EvaluationReport | None = None
    reference: ReferenceScores | None = None


@task(name="evaluate", timeout_seconds=3600, cache_policy=NO_CACHE)
def evaluate_model(package_dir: str, splits: Splits, text_col: str, label_col: str, role: str,
                   registry: MlflowRegistry, run_id: str, mlflow_ui_url: str | None = None,
                   baseline: bool = False) -> EvaluationReport:
    """Score a model package on the test split; log metrics (prefixed by `role`) and plots to MLflow; show the
    plots on the Prefect run page (image artifacts from the MLflow server at `mlflow_ui_url`, if any). With
    `baseline`, also fit TF-IDF + LinearSVC on the training split and report the model's margin over it."""
    clf = load_package(package_dir)
    test = splits.test
    report = evaluate_classifier(clf, test[text_col].tolist(), test[label_col].astype(str).tolist(),
                                 model=package_dir, split_digest=splits.manifest.digest)
    if baseline:  # both models see the texts cleaned as the package cleans them
        fitted = fit_baseline(preprocess(splits.train[text_col].astype(str).tolist(), clf.meta),
                              splits.train[label_col].astype(str).tolist(),
                              preprocess(test[text_col].astype(str).tolist(), clf.meta), report.y_true)
        report = report.model_copy(update={"baseline": compare_to_baseline(report.y_true, report.predictions, fitted)})
        registry.log_metrics(run_id, margin_metrics(report.baseline, role))
    registry.log_metrics(run_id, {f"{role}_test_{k}": v for k, v in report.headline().items()}
                         | {f"{role}_latency_ms_per_example": report.latency_ms_per_example})
    registry.log_dict(run_id, report.model_dump(), f"evaluation/{role}_report.json")
    with tempfile.TemporaryDirectory() as tmp:
        confusion = plot_confusion_matrix(report, Path(tmp) / f"{role}_confusion_matrix.png")
        reliability = plot_reliability(report, Path(tmp) / f"{role}_reliability.png")
        plots = [publish_plot(registry, run_id, confusion, f"Confusion matrix of the {role}",
                              artifact_key("evaluation", role, "confusion-matrix"), mlflow_ui_url),
                 publish_plot(registry, run_id, reliability, f"Reliability of the {role}",
                              artifact_key("evaluation", role, "reliability"), mlflow_ui_url)]
    rows = [[lab, f"{m.precision:.3f}", f"{m.recall:.3f}", f"{m.f1:.3f}", m.support] for lab, m in report.per_class.items()]
    cm = confusion_markdown(report)
    create_markdown_artifact(
        f"# Evaluation of the {role} on the test split ({report.n} rows)\n\n"
        f"accuracy **{report.accuracy:.4f}** (95% CI {report.accuracy_ci[0]:.4f}-{report.accuracy_ci[1]:.4f}), "
        f"macro-F1 **{report.macro_f1:.4f}** (95% CI {report.macro_f1_ci[0]:.4f}-{report.macro_f1_ci[1]:.4f}), "
        f"MCC {report.mcc:.4f}, ECE {report.ece or 0:.4f}, "
        f"{report.latency_ms_per_example:.2f} ms per example\n\n"
        + (baseline_markdown(report.baseline) + "\n\n" if report.baseline else "")
        + md_table(["class", "precision", "recall", "F1", "support"], rows) + "\n\n## Confusion matrix\n\n" + cm
        + "\n\n## Plots\n\n" + "\n\n".join(plots),
        key=artifact_key("evaluation", role), description=f"Evaluation of the {role}")
    report_stage(f"evaluate {role}", "accuracy %.4f, macro-F1 %.4f (n=%d)", report.accuracy, report.macro_f1, report.n)
    if report.baseline is not None:
        report_stage("baseline", report.baseline.summary())
    return report


@task(name="load-champion-record", timeout_seconds=300, **RETRIED_IO)
def load_champion_record(registry: MlflowRegistry, version: RegisteredVersion) -> ChampionRecord:
    """The champion's report on its own test split and its frozen reference set (with why, when it has none)."""
    name = f"champion v{version.version}"
    if not version.run_id:
        return ChampionRecord(reference_missing=f"{name} has no training run, so no frozen reference set")
    stored = registry.load_run_json(version.run_id, RECORDED_REPORT)
    recorded = EvaluationReport.model_validate(stored) if stored else None
    # Listing first: a missing file is an answer, whatever the artifact store (a missing S3 key raises its own error).
    stored_files = {f.path for f in registry.client.list_artifacts(version.run_id, str(Path(REFERENCE_ARTIFACT).parent))}
    if REFERENCE_ARTIFACT not in stored_files:
        return ChampionRecord(recorded=recorded, reference_missing=(
            f"{name} has no frozen reference set (registered before reference sets were stored)"))
    with tempfile.TemporaryDirectory() as tmp:
        reference = read_reference_set(registry.client.download_artifacts(version.run_id, REFERENCE_ARTIFACT, tmp),
                                       source=f"{name}, MLflow run {version.run_id}: {REFERENCE_ARTIFACT}")
    report_stage("champion", "%s: recorded report %s, reference set of %d rows", name,
                 "found" if recorded else "missing", reference.rows)
    return ChampionRecord(recorded=recorded, reference=reference)


def gather_gate_evidence(registry: MlflowRegistry, champion: RegisteredVersion | None, policy: GateConfig,
                         labels: list[str], dst: str) -> GateEvidence:
    """Validate the behavioural-checks file and fetch the champion's package, report and reference set (before
    training: a bad file or an unreadable champion stops the run before compute is spent)."""
    suite = load_behaviour_suite(policy.behaviour_checks, labels) if policy.behaviour_checks else None
    if champion is None:
        return GateEvidence(behaviour=suite)
    package = download_version(registry, champion.name, champion.version, dst)
    record = load_champion_record(registry, champion)
    return GateEvidence(behaviour=suite, champion=ChampionEvidence(
        version=champion.version, package_dir=package.package_dir, **dict(record)))


@task(name="label-consistency", timeout_seconds=1800, cache_policy=NO_CACHE)
def check_label_consistency(evidence: GateEvidence, train: pd.DataFrame, text_col: str, label_col: str,
                            policy: GateConfig, registry: MlflowRegistry, run_id: str) -> ConsistencyReport:
    """Have the champion predict (a sample of) the new training split and compare its agreement with the new labels
    to its recorded recall per class; raise `LabelConsistencyError` (before training) when labels look swapped."""
    champion = evidence.champion
    sample = train if len(train) <= policy.label_agreement_max_rows else train.sample(
        n=policy.label_agreement_max_rows, random_state=policy.seed)
    predict = (lambda texts: predicted_labels(load_package(champion.package_dir), texts)) if champion else None
    recorded = ({label: (m.recall, m.support) for label, m in champion.recorded.per_class.items()}
                if champion and champion.recorded else None)
    report = consistency.assess_label_consistency(
        sample[text_col].astype(str).tolist(), sample[label_col].astype(str).tolist(), predict, recorded,
        policy.max_label_agreement_drop, policy.label_agreement_min_support, champion.version if champion else None)
    status = "not checked" if not report.checked else "passed" if report.passed else "failed"
    registry.log_dict(run_id, report.model_dump(mode="json"), "validation/label_consistency.json")
    registry.set_tags(run_id, {"fineship.label_consistency": status,
                               "fineship.label_consistency_findings": "; ".join(report.findings)})
    create_markdown_artifact(consistency_markdown(report), key=artifact_key("label-consistency"),
                             description=f"Label consistency: {status}")
    report_stage("labels", report.summary().removeprefix("label consistency "),
                 outcome="skipped" if not report.checked else "ok" if report.passed else "failed")
    if not report.passed:
        raise LabelConsistencyError(report.failure_message(), report.inconsistent, report.swaps)
    return report


@task(name="record-reference-set", timeout_seconds=300, **RETRIED_IO)
def record_reference_set(registry: MlflowRegistry, run_id: str, test: pd.DataFrame, text_col: str,
                         label_col: str) -> None:
    """Store this run's test split with the run: the frozen reference set of any version registered from it."""
    with tempfile.TemporaryDirectory() as tmp:
        path = write_reference_set(test, text_col, label_col, Path(tmp) / Path(REFERENCE_ARTIFACT).name)
        registry.log_artifact(run_id, path, str(Path(REFERENCE_ARTIFACT).parent))


@task(name="score-reference-set", timeout_seconds=3600, cache_policy=NO_CACHE)
def score_reference_set(package_dir: str, champion: ChampionEvidence, splits: Splits, text_col: str,
                        label_col: str, registry: MlflowRegistry, run_id: str) -> ReferenceScores:
    """Score candidate and champion on the champion's frozen reference set, leaving out the rows this run trained
    on with the same label."""
    if champion.reference is None:
        return ReferenceScores(source=champion.name, missing=champion.reference_missing)
    seen = pd.concat([splits.train, splits.validation])
    reference, left_out = leave_out_seen(champion.reference, seen[text_col].astype(str).tolist(),
                                         seen[label_col].astype(str).tolist())
    if reference.rows == 0:
        return ReferenceScores(source=champion.name, left_out=left_out, missing=(
            f"all {left_out} rows of the reference set are in this run's training data with the same labels"))
    reports = {}
    for role, package in (("candidate", package_dir), ("champion", champion.package_dir)):
        reports[role] = evaluate_classifier(load_package(package), reference.texts, reference.labels,
                                            model=package, split_digest=reference.digest)
        registry.log_metrics(run_id, {f"{role}_reference_{k}": v for k, v in reports[role].headline().items()})
        registry.log_dict(run_id, reports[role].model_dump(), f"evaluation/{role}_reference_report.json")
    cand, champ = reports["candidate"], reports["champion"]
    create_markdown_artifact(
        f"# Scores on {champion.name}'s frozen reference set ({reference.rows} rows, {left_out} left out as "
        "trained on)\n\n" + md_table(["metric", "candidate", "champion"],
                                     [[k, f"{v:.4f}", f"{champ.headline()[k]:.4f}"] for k, v in cand.headline().items()]),
        key=artifact_key("reference-set"), description=f"Candidate and champion on {champion.name}'s reference set")
    return ReferenceScores(source=champion.name, candidate=cand, champion=champ, left_out=left_out)


@task(name="behaviour-checks", timeout_seconds=900, cache_policy=NO_CACHE)
def run_behaviour_checks(package_dir: str, suite: BehaviourSuite, min_pass_rate: float, registry: MlflowRegistry,
                         run_id: str) -> BehaviourReport:
    """Run the behavioural cases on the candidate and record the results on the run."""
    clf = load_package(package_dir)
    report = behaviour.run_behaviour_checks(lambda texts: predicted_labels(clf, texts), suite, min_pass_rate)
    registry.log_dict(run_id, report.model_dump(), "evaluation/behaviour_checks.json")
    create_markdown_artifact(f"# Behavioural checks: {'passed' if report.passed else 'FAILED'}\n\n"
                             + behaviour_markdown(report), key=artifact_key("behaviour-checks"),
                             description="Behavioural checks of the candidate")
    report_stage("behaviour", "; ".join(report.reasons()), outcome="ok" if report.passed else "failed")
    return report


@task(name="gate", timeout_seconds=60, cache_policy=NO_CACHE)
def gate(candidate: EvaluationReport, champion: EvaluationReport | None, policy: GateConfig,
         champion_version: str | None, registry: MlflowRegistry, run_id: str,
         reference: ReferenceScores | None = None, behaviour_report: BehaviourReport | None = None) -> GateDecision:
    """Apply the gate policy and record the verdict on the run and as an artifact."""
    decision = decide(candidate, champion, policy, champion_version, reference=reference, behaviour=behaviour_report)
    registry.set_tags(run_id, {"fineship.gate": "passed" if decision.passed else "rejected",
                               "fineship.gate_reasons": "; ".join(decision.reasons)})
    registry.log_dict(run_id, decision.model_dump(mode="json"), "evaluation/gate_decision.json")
    verdict = "PASSED" if decision.passed else "REJECTED"
    create_markdown_artifact(gate_markdown(decision), key=artifact_key("gate"), description=f"Gate {verdict}")
    # Rejected: the reasons follow in the error that stops the run, so the stage line stays short.
    report_stage("gate", decision.summary() if decision.passed else "REJECTED (reasons below)",
                 outcome="ok" if decision.passed else "rejected")
    return decision


def gate_candidate(package_dir: str, candidate: EvaluationReport, evidence: GateEvidence, splits: Splits,
                   text_col: str, label_col: str, policy: GateConfig, registry: MlflowRegistry,
                   run_id: str, mlflow_ui_url: str | None = None) -> GateOutcome:
    """Store this run's test split as its reference set; re-score the champion on the new test split and score
    both on the champion's reference set; run the behavioural checks; decide."""
    record_reference_set(registry, run_id, splits.test, text_col, label_col)
    champ, champion_report, reference = evidence.champion, None, None
    if champ is not None:
        champion_report = evaluate_model(champ.package_dir, splits, text_col, label_col, "champion", registry, run_id,
                                         mlflow_ui_url)
        reference = score_reference_set(package_dir, champ, splits, text_col, label_col, registry, run_id)
    checks = (run_behaviour_checks(package_dir, evidence.behaviour, policy.behaviour_min_pass_rate, registry, run_id)
              if evidence.behaviour is not None else None)
    decision = gate(candidate, champion_report, policy, champ.version if champ else None, registry, run_id,
                    reference, checks)
    return GateOutcome(decision=decision, champion=champion_report, reference=reference)
