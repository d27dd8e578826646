"""Evaluation tasks: score models on the frozen test split, decide at the gate."""

from __future__ import annotations

import tempfile
from pathlib import Path

from prefect import get_run_logger, task
from prefect.artifacts import create_markdown_artifact
from prefect.cache_policies import NO_CACHE

from components.config import GateConfig
from components.data.split import Splits
from components.evaluation.gate import GateDecision, decide
from components.evaluation.metrics import EvaluationReport, evaluate_classifier
from components.evaluation.plots import plot_confusion_matrix, plot_reliability
from components.package import load_package
from components.registry.mlflow_registry import MlflowRegistry
from tasks.common import artifact_key, md_table


def confusion_markdown(report: EvaluationReport) -> str:
    """The confusion matrix as a markdown table (rows: true label)."""
    return md_table(["true \\ predicted", *report.labels],
                    [[lab, *row] for lab, row in zip(report.labels, report.confusion_matrix)])


@task(name="evaluate", timeout_seconds=3600, cache_policy=NO_CACHE)
def evaluate_model(package_dir: str, splits: Splits, text_col: str, label_col: str, role: str,
                   tracking_uri: str, run_id: str) -> EvaluationReport:
    """Score a model package on the test split; log metrics (prefixed by `role`) and plots to MLflow."""
    clf = load_package(package_dir)
    test = splits.test
    report = evaluate_classifier(clf, test[text_col].tolist(), test[label_col].astype(str).tolist(),
                                 model=package_dir, split_digest=splits.manifest.digest)
    registry = MlflowRegistry(tracking_uri)
    registry.log_metrics(run_id, {f"{role}_test_{k}": v for k, v in report.headline().items()}
                         | {f"{role}_latency_ms_per_example": report.latency_ms_per_example})
    registry.log_dict(run_id, report.model_dump(), f"evaluation/{role}_report.json")
    with tempfile.TemporaryDirectory() as tmp:
        registry.log_artifact(run_id, plot_confusion_matrix(report, Path(tmp) / f"{role}_confusion_matrix.png"),
                              "plots")
        registry.log_artifact(run_id, plot_reliability(report, Path(tmp) / f"{role}_reliability.png"), "plots")
    rows = [[lab, f"{m.precision:.3f}", f"{m.recall:.3f}", f"{m.f1:.3f}", m.support] for lab, m in report.per_class.items()]
    cm = confusion_markdown(report)
    create_markdown_artifact(
        f"# Evaluation of the {role} on the test split ({report.n} rows)\n\n"
        f"accuracy **{report.accuracy:.4f}** (95% CI {report.accuracy_ci[0]:.4f}-{report.accuracy_ci[1]:.4f}), "
        f"macro-F1 **{report.macro_f1:.4f}** (95% CI {report.macro_f1_ci[0]:.4f}-{report.macro_f1_ci[1]:.4f}), "
        f"MCC {report.mcc:.4f}, ECE {report.ece or 0:.4f}, "
        f"{report.latency_ms_per_example:.2f} ms per example\n\n"
        + md_table(["class", "precision", "recall", "F1", "support"], rows) + "\n\n## Confusion matrix\n\n" + cm,
        key=artifact_key("evaluation", role), description=f"Evaluation of the {role}")
    get_run_logger().info("%s: accuracy %.4f, macro-F1 %.4f", role, report.accuracy, report.macro_f1)
    return report


@task(name="gate", timeout_seconds=60, cache_policy=NO_CACHE)
def gate(candidate: EvaluationReport, champion: EvaluationReport | None, policy: GateConfig,
         champion_version: str | None, tracking_uri: str, run_id: str) -> GateDecision:
    """Apply the gate policy and record the verdict on the run and as an artifact."""
    decision = decide(candidate, champion, policy, champion_version)
    MlflowRegistry(tracking_uri).set_tags(run_id, {"fineship.gate": "passed" if decision.passed else "rejected",
                                                   "fineship.gate_reasons": "; ".join(decision.reasons)})
    verdict = "PASSED" if decision.passed else "REJECTED"
    create_markdown_artifact(f"# Gate {verdict}\n\n" + "\n".join(f"- {r}" for r in decision.reasons),
                             key=artifact_key("gate"), description=f"Gate {verdict}")
    get_run_logger().info(decision.summary())
    return decision
