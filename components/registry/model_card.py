"""What a training run writes about itself: run tags and parameters, version tags, the model card.

Pure functions of the run's inputs and results; the registry tasks write what they return.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from components.config import PipelineConfig
from components.data.io import DatasetRef
from components.data.split import SplitManifest
from components.evaluation.gate import GateDecision
from components.evaluation.metrics import EvaluationReport
from components.evaluation.reference import REFERENCE_ARTIFACT
from components.evaluation.render import baseline_markdown, behaviour_markdown, comparisons_markdown
from components.markdown import md_table
from components.provenance import config_hash, git_commit
from components.training.recipe import with_recipe

if TYPE_CHECKING:
    from components.training.trainer import TrainedModel

PROFILE_ARTIFACT = "data/profile.json"
MANIFEST_ARTIFACT = "data/split_manifest.json"
CARD_ARTIFACT = "model_card.md"


def confusion_markdown(report: EvaluationReport) -> str:
    """The confusion matrix as a markdown table (rows: true label)."""
    return md_table(["true \\ predicted", *report.labels],
                     [[lab, *row] for lab, row in zip(report.labels, report.confusion_matrix)])


def run_tags(config: PipelineConfig, dataset: DatasetRef, flow_run_id: str | None) -> dict[str, str]:
    """Tags of a new training run: where it came from."""
    return {"fineship.prefect_flow_run_id": flow_run_id or "", "fineship.git_commit": git_commit(),
            "fineship.config_hash": config_hash(config), "fineship.data_fingerprint": dataset.fingerprint}


def split_params(config: PipelineConfig, dataset: DatasetRef, manifest: SplitManifest) -> dict[str, Any]:
    """Run parameters describing the data and its split."""
    sp = config.split
    return {"data.uri": dataset.uri, "data.rows": dataset.rows, "split.seed": sp.seed,
            "split.near_duplicate_threshold": sp.near_duplicate_threshold,
            **{f"split.{k}_rows": v for k, v in manifest.sizes.items()}}


def version_tags(config: PipelineConfig, dataset: DatasetRef, manifest: SplitManifest, labels: list[str],
                 candidate: EvaluationReport, decision: GateDecision, run_id: str) -> dict[str, str]:
    """Tags of a registered version: provenance, gate verdict and headline metrics with intervals."""
    return {
        "fineship.data_fingerprint": dataset.fingerprint, "fineship.split_digest": manifest.digest,
        "fineship.git_commit": git_commit(), "fineship.config_hash": config_hash(config),
        "fineship.gate": "passed" if decision.passed else "rejected",
        "fineship.gate_reasons": "; ".join(decision.reasons),
        "fineship.labels": ",".join(labels), "fineship.base_model": config.training.model,
        **{f"metric.{k}": f"{v:.4f}" for k, v in candidate.headline().items()},
        "metric.accuracy_ci95": "[{:.4f}, {:.4f}]".format(*candidate.accuracy_ci),
        "metric.macro_f1_ci95": "[{:.4f}, {:.4f}]".format(*candidate.macro_f1_ci),
        "fineship.profile": f"runs:/{run_id}/{PROFILE_ARTIFACT}",
        **baseline_tags(candidate),
    }


def baseline_tags(candidate: EvaluationReport) -> dict[str, str]:
    """Version tags of the candidate's margin over the classic baseline (none when it was not compared)."""
    b = candidate.baseline
    if b is None:
        return {}
    return {"fineship.baseline_model": b.baseline.model, "metric.baseline_accuracy": f"{b.baseline.accuracy:.4f}",
            "metric.margin_over_baseline": f"{b.margin:+.4f}",
            "metric.margin_over_baseline_ci95": "[{:+.4f}, {:+.4f}]".format(*b.margin_ci)}


def model_card(config: PipelineConfig, dataset: DatasetRef, report: EvaluationReport, decision: GateDecision,
               champion: EvaluationReport | None, trained: TrainedModel | None = None) -> str:
    """The markdown model card registered as the version's description; `trained` adds what training chose (the
    recipe's settings, where the configuration left them unset)."""
    training = with_recipe(config.training, trained.training if trained else None)
    per_class = md_table(["class", "precision", "recall", "F1", "support"],
                          [[k, f"{m.precision:.3f}", f"{m.recall:.3f}", f"{m.f1:.3f}", m.support]
                           for k, m in report.per_class.items()])
    comparison = ""
    if champion is not None:
        comparison = "\n\n## Against the champion (same test split)\n\n" + md_table(
            ["metric", "candidate", "champion"],
            [[k, f"{getattr(report, k):.4f}", f"{getattr(champion, k):.4f}"] for k in ("accuracy", "macro_f1", "mcc")])
    if decision.comparisons:
        comparison += ("\n\n## Non-inferiority, on the new test split and on the champion's frozen reference set\n\n"
                       + comparisons_markdown(decision))
    if report.baseline is not None:
        comparison += "\n\n## Against the classic baseline (same splits)\n\n" + baseline_markdown(report.baseline)
    if decision.behaviour is not None:
        comparison += "\n\n## Behavioural checks\n\n" + behaviour_markdown(decision.behaviour)
    ece = report.ece if report.ece is not None else float("nan")
    metrics = md_table(["metric", "value", "95% bootstrap interval"], [
        ["accuracy", f"{report.accuracy:.4f}", "[{:.4f}, {:.4f}]".format(*report.accuracy_ci)],
        ["macro-F1", f"{report.macro_f1:.4f}", "[{:.4f}, {:.4f}]".format(*report.macro_f1_ci)],
        ["MCC", f"{report.mcc:.4f}", ""], ["expected calibration error", f"{ece:.4f}", ""]])
    gate = "\n".join(f"- {r}" for r in decision.reasons)
    return (f"# {config.registry.model_name}\n\nText classifier fine-tuned from `{config.training.model}` on "
            f"`{dataset.uri}` ({dataset.rows} rows, sha256 {dataset.fingerprint[:12]}).\n\n"
            f"**Intended use:** classify short English texts into {', '.join(report.labels)}. The model reads "
            f"{training.max_length} tokens per input; a longer text is read by `{training.long_text}` "
            f"(components/long_text.py).{_recipe_markdown(trained)}\n\n## Test metrics ({report.n} rows)\n\n{metrics}\n\n{per_class}"
            f"\n\nThe test split is stored with this version as its frozen reference set (`{REFERENCE_ARTIFACT}` of "
            "the run): while it is champion, every candidate is scored on it as well as on its own test split."
            f"\n\n## Confusion matrix (rows: true, columns: predicted)\n\n{confusion_markdown(report)}"
            f"{comparison}\n\n## Gate\n\n{gate}\n\n## Limits\n\nOnly the labels above can be predicted; texts unlike "
            "the training data get low-confidence scores. Check the data-validation report of the run before "
            "trusting a new dataset.")


def _recipe_markdown(trained: TrainedModel | None) -> str:
    """The settings training chose from the data (components/training/recipe.py), if any."""
    if trained is None or not trained.recipe:
        return ""
    return "\n\n**Chosen from the training data** (settings the configuration left unset):\n\n" + "\n".join(
        f"- {line}" for line in trained.recipe)
