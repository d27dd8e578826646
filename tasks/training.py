"""Training task: fine-tune, stream metrics to MLflow, publish the training curve."""

from __future__ import annotations

import tempfile
from pathlib import Path

from prefect import get_run_logger, task
from prefect.artifacts import create_markdown_artifact
from prefect.cache_policies import NO_CACHE

from components.config import TrainingConfig
from components.data.split import Splits
from components.evaluation.plots import plot_training_curves
from components.registry.mlflow_registry import MlflowRegistry
from components.training.trainer import TrainedModel, train
from tasks.common import artifact_key, md_table


@task(name="fine-tune", timeout_seconds=6 * 3600, cache_policy=NO_CACHE)  # training is never retried
def fine_tune(splits: Splits, text_col: str, label_col: str, labels: list[str], cfg: TrainingConfig,
              out_dir: str, tracking_uri: str, run_id: str) -> TrainedModel:
    """Train on the train split, early-stop on validation, and write the model package to `out_dir`."""
    logger = get_run_logger()
    registry = MlflowRegistry(tracking_uri)
    registry.log_params(run_id, {f"training.{k}": v for k, v in cfg.model_dump().items()})
    trained = train(
        splits.train[text_col].tolist(), splits.train[label_col].astype(str).tolist(),
        splits.validation[text_col].tolist(), splits.validation[label_col].astype(str).tolist(),
        labels, cfg, out_dir, on_metrics=lambda m, step: registry.log_metrics(run_id, m, step),
    )
    registry.log_metrics(run_id, {"train_seconds": trained.train_seconds,
                                  "train_samples_per_second": trained.samples_per_second})
    with tempfile.TemporaryDirectory() as tmp:
        png = plot_training_curves(trained.history, Path(tmp) / "training_curves.png")
        registry.log_artifact(run_id, png, "plots")
    rows = [[int(h["epoch"]), int(h["step"]), f"{h['train_loss']:.4f}", f"{h.get('val_loss', float('nan')):.4f}",
             f"{h.get('val_accuracy', float('nan')):.4f}", f"{h.get('val_macro_f1', float('nan')):.4f}"]
            for h in trained.history]
    create_markdown_artifact(
        f"# Training on {trained.device}\n\n{trained.steps} steps in {trained.train_seconds:.1f}s "
        f"({trained.samples_per_second:.1f} samples/s); best checkpoint at step {trained.best_step}.\n\n"
        + md_table(["epoch", "step", "train loss", "val loss", "val accuracy", "val macro-F1"], rows)
        + "\n\nThe training-curve PNG is in the MLflow run under `plots/`.",
        key=artifact_key("training"), description="Training curve")
    logger.info("trained %d steps on %s in %.1fs", trained.steps, trained.device, trained.train_seconds)
    return trained
