"""Training task: fine-tune (here, under torchrun, or as a SageMaker job), log to MLflow, publish the curve and health."""

from __future__ import annotations

import tempfile
import time
from pathlib import Path
from typing import Any

from prefect import get_run_logger, task
from prefect.artifacts import create_markdown_artifact
from prefect.cache_policies import NO_CACHE

from components.config import TrainingConfig
from components.data.split import Splits
from components.evaluation.plots import plot_training_curves
from components.registry.mlflow_registry import MlflowRegistry
from components.training.trainer import TrainedModel, train
from tasks.common import artifact_key, md_table


def _params(cfg: TrainingConfig) -> dict[str, Any]:
    flat: dict[str, Any] = {}
    for key, value in cfg.model_dump(mode="json").items():
        if isinstance(value, dict):
            flat.update({f"training.{key}.{k}": v for k, v in value.items()})
        else:
            flat[f"training.{key}"] = value
    return flat


def _log_history(registry: MlflowRegistry, run_id: str, trained: TrainedModel) -> None:
    """Per-step and per-evaluation metrics of a run that trained out of this process (torchrun, SageMaker)."""
    from mlflow.entities import Metric

    ts = int(time.time() * 1000)
    metrics = [Metric(k, float(s[k]), ts, int(s["step"])) for s in trained.steps_log
               for k in ("loss", "learning_rate", "grad_norm") if k in s]
    metrics = [Metric("train_loss" if m.key == "loss" else m.key, m.value, m.timestamp, m.step) for m in metrics]
    metrics += [Metric(k, float(v), ts, int(h["step"])) for h in trained.history for k, v in h.items()
                if k not in ("epoch", "step")]
    for i in range(0, len(metrics), 1000):  # MLflow takes at most 1000 metrics per batch
        registry.client.log_batch(run_id, metrics=metrics[i:i + 1000])


def _log_health(registry: MlflowRegistry, run_id: str, trained: TrainedModel) -> None:
    tags = {"fineship.health": ", ".join(w.rule for w in trained.health) or "ok"}
    tags.update({f"fineship.health.{w.rule}": w.message for w in trained.health})
    registry.set_tags(run_id, tags)
    registry.log_metrics(run_id, {"health_warnings": float(len(trained.health)),
                                  **{f"health.{w.rule}.step": float(w.step) for w in trained.health}})


def _health_markdown(trained: TrainedModel) -> str:
    if not trained.health:
        return ("## Training health\n\nNo warnings: the loss decreased, validation loss did not rise while training "
                "loss fell, and gradient norms stayed finite and in range.")
    rows = [[w.rule.replace("_", " "), w.step, w.message] for w in trained.health]
    return "## Training health\n\n" + md_table(["warning", "from step", "what was seen"], rows)


@task(name="fine-tune", timeout_seconds=6 * 3600, cache_policy=NO_CACHE)  # training is never retried
def fine_tune(splits: Splits, text_col: str, label_col: str, labels: list[str], cfg: TrainingConfig,
              out_dir: str, tracking_uri: str, run_id: str, aws_region: str | None = None,
              aws_endpoint_url: str | None = None) -> TrainedModel:
    """Train on the train split, early-stop on validation, and write the model package to `out_dir`.

    `training.backend` picks where: this process (`processes: 1`), local torchrun processes, or a
    SageMaker training job (clients for `aws_region` / `aws_endpoint_url`).
    """
    logger = get_run_logger()
    registry = MlflowRegistry(tracking_uri)
    registry.log_params(run_id, _params(cfg))
    cols = [text_col, label_col]
    if cfg.backend == "sagemaker":
        import boto3

        from components.training.sagemaker_job import run_training_job

        session = boto3.session.Session(region_name=aws_region)
        trained = run_training_job(
            session.client("sagemaker", endpoint_url=aws_endpoint_url), session.client("s3", endpoint_url=aws_endpoint_url),
            cfg, splits.train[cols], splits.validation[cols], text_col, label_col, labels, out_dir,
            on_started=lambda job: registry.set_tags(run_id, {"fineship.sagemaker_training_job": job}),
            tags={"fineship:mlflow_run_id": run_id})
        _log_history(registry, run_id, trained)
    elif cfg.processes > 1:
        from components.training.launch import train_with_torchrun

        trained = train_with_torchrun(splits.train[cols], splits.validation[cols], text_col, label_col, labels, cfg,
                                      out_dir)
        _log_history(registry, run_id, trained)
    else:
        trained = train(
            splits.train[text_col].tolist(), splits.train[label_col].astype(str).tolist(),
            splits.validation[text_col].tolist(), splits.validation[label_col].astype(str).tolist(),
            labels, cfg, out_dir, on_metrics=lambda m, step: registry.log_metrics(run_id, m, step),
        )
    registry.log_metrics(run_id, {"train_seconds": trained.train_seconds,
                                  "train_samples_per_second": trained.samples_per_second})
    _log_health(registry, run_id, trained)
    for warning in trained.health:
        logger.warning("training health: %s", warning.message)
    if trained.history:
        with tempfile.TemporaryDirectory() as tmp:
            png = plot_training_curves(trained.history, Path(tmp) / "training_curves.png")
            registry.log_artifact(run_id, png, "plots")
    rows = [[f"{h['epoch']:.2f}", int(h["step"]), f"{h['train_loss']:.4f}", f"{h.get('val_loss', float('nan')):.4f}",
             f"{h.get('val_accuracy', float('nan')):.4f}", f"{h.get('val_macro_f1', float('nan')):.4f}"]
            for h in trained.history]
    where = f"{trained.device}, {trained.world_size} process(es), {trained.precision}"
    create_markdown_artifact(
        f"# Training on {where}\n\n{trained.steps} steps in {trained.train_seconds:.1f}s "
        f"({trained.samples_per_second:.1f} samples/s, effective batch {trained.effective_batch_size}); best "
        f"checkpoint at step {trained.best_step}"
        + (f"; resumed from step {trained.resumed_from_step}" if trained.resumed_from_step is not None else "")
        + ("; stopped early" if trained.early_stopped else "") + ".\n\n"
        + md_table(["epoch", "step", "train loss", "val loss", "val accuracy", "val macro-F1"], rows)
        + "\n\n" + _health_markdown(trained)
        + "\n\nThe training-curve PNG is in the MLflow run under `plots/`; health warnings are its "
          "`fineship.health.*` tags.",
        key=artifact_key("training"), description="Training curve and health")
    logger.info("trained %d steps on %s in %.1fs", trained.steps, where, trained.train_seconds)
    return trained
