"""Training task: fine-tune (here, under torchrun, or as a SageMaker job), log to MLflow, publish the curve and health."""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path
from typing import Any

from prefect import get_run_logger, task
from prefect.artifacts import create_markdown_artifact
from prefect.cache_policies import NO_CACHE

from components.aws import AwsSettings
from components.config import TrainingConfig
from components.data.split import Splits
from components.evaluation.plots import plot_training_curves
from components.registry.metric_buffer import MetricBuffer, OutageSettings
from components.registry.mlflow_registry import MlflowRegistry
from components.registry.review import MAX_TAG
from components.training.checkpoint import prune_run_dirs, run_checkpoint_dir
from components.training.recipe import RECIPE_FIELDS, Choice, resolve_recipe
from components.training.replay import replayed_metrics
from components.training.trainer import TrainedModel, train
from tasks.common import artifact_key, md_table, report_stage
from tasks.plots import publish_plot

# Run directories kept per model under the flow's checkpoint root (the current run's included): checkpoints of
# other configurations or data are only useful to a re-run of exactly those, so few are kept.
KEEP_RUN_CHECKPOINTS = 2


def _params(cfg: TrainingConfig) -> dict[str, Any]:
    """The run's `training.*` parameters; unset recipe settings are left out (logged once chosen: MLflow
    parameters cannot change)."""
    flat: dict[str, Any] = {}
    for key, value in cfg.model_dump(mode="json").items():
        if isinstance(value, dict):
            flat.update({f"training.{key}.{k}": v for k, v in value.items()})
        elif not (key in RECIPE_FIELDS and value is None):
            flat[f"training.{key}"] = value
    return flat


def _record_recipe(registry: MlflowRegistry, run_id: str, lines: list[str]) -> None:
    """The recipe's stage line and the run's `fineship.recipe` tag (nothing when the configuration set it all)."""
    if lines:
        report_stage("recipe", "%s", "; ".join(lines))
        registry.set_tags(run_id, {"fineship.recipe": "; ".join(lines)[:MAX_TAG]})


def _log_history(buffer: MetricBuffer, trained: TrainedModel) -> None:
    """Per-step and per-evaluation metrics of a run that trained out of this process (torchrun, SageMaker)."""
    for s in trained.steps_log:
        buffer.add({("train_loss" if k == "loss" else k): float(s[k]) for k in ("loss", "learning_rate", "grad_norm")
                    if k in s}, int(s["step"]))
    for h in trained.history:
        buffer.add({k: float(v) for k, v in h.items() if k not in ("epoch", "step")}, int(h["step"]))


def _log_health(buffer: MetricBuffer, trained: TrainedModel) -> None:
    tags = {"fineship.health": ", ".join(w.rule for w in trained.health) or "ok"}
    tags.update({f"fineship.health.{w.rule}": w.message for w in trained.health})
    buffer.set_tags(tags)
    buffer.add({"health_warnings": float(len(trained.health)),
                **{f"health.{w.rule}.step": float(w.step) for w in trained.health}})


def _with_default_checkpoints(cfg: TrainingConfig, checkpoint_root: str | None, labels: list[str], splits: Splits,
                              text_col: str, label_col: str) -> TrainingConfig:
    """With no `training.checkpoint_dir`, local training checkpoints to its own directory under `checkpoint_root`."""
    if cfg.checkpoint_dir or not checkpoint_root or cfg.backend != "local":
        return cfg
    ckpt = run_checkpoint_dir(checkpoint_root, cfg, labels, splits.train[text_col].tolist(),
                              splits.train[label_col].astype(str).tolist(), splits.validation[text_col].tolist(),
                              splits.validation[label_col].astype(str).tolist())
    prune_run_dirs(checkpoint_root, KEEP_RUN_CHECKPOINTS, current=ckpt)
    return cfg.model_copy(update={"checkpoint_dir": str(ckpt)})


def _health_markdown(trained: TrainedModel) -> str:
    if not trained.health:
        return ("## Training health\n\nNo warnings: the loss decreased, validation loss did not rise while training "
                "loss fell, and gradient norms stayed finite and in range.")
    rows = [[w.rule.replace("_", " "), w.step, w.message] for w in trained.health]
    return "## Training health\n\n" + md_table(["warning", "from step", "what was seen"], rows)


@task(name="fine-tune", timeout_seconds=6 * 3600, cache_policy=NO_CACHE)  # training is never retried
def fine_tune(splits: Splits, text_col: str, label_col: str, labels: list[str], cfg: TrainingConfig,
              out_dir: str, registry: MlflowRegistry, run_id: str,
              aws: AwsSettings | None = None, checkpoint_root: str | None = None,
              mlflow_ui_url: str | None = None) -> TrainedModel:
    """Train on the train split, early-stop on validation, and write the model package to `out_dir`.

    `training.backend` picks where: this process (`processes: 1`), local torchrun processes, or a
    SageMaker training job (clients built by `aws`; None: boto3's default region and endpoints).
    Local training without a `training.checkpoint_dir` checkpoints under `checkpoint_root`, in a
    directory keyed on the training configuration and data: a re-run of a killed run resumes.
    Metrics reach MLflow through a buffer that rides out MLflow outages; if MLflow is still
    unreachable `FINESHIP_MLFLOW_OUTAGE_WAIT_SECONDS` after training, the task fails with
    `MetricsUndelivered`, the package and the final checkpoint written, so a re-run only resumes.
    The training curve is shown on the Prefect run page (an image artifact from the MLflow server at
    `mlflow_ui_url`, if any, and embedded in the training report).
    """
    logger = get_run_logger()
    choices: list[Choice] = []
    if cfg.backend != "sagemaker":  # a SageMaker job chooses in its container, where the model is
        cfg, choices = resolve_recipe(cfg, splits.train[text_col].tolist(),
                                      splits.train[label_col].astype(str).tolist(), cfg.processes)
        _record_recipe(registry, run_id, [c.line() for c in choices])
    cfg = _with_default_checkpoints(cfg, checkpoint_root, labels, splits, text_col, label_col)
    registry.log_params(run_id, _params(cfg))
    cols = [text_col, label_col]
    wait = OutageSettings().wait_seconds
    buffer = MetricBuffer(registry, run_id).start()
    try:
        if cfg.backend == "sagemaker":
            from components.training.sagemaker_job import run_training_job

            aws = aws or AwsSettings()
            session = aws.session()
            trained = run_training_job(
                aws.client("sagemaker", session), aws.client("s3", session),
                cfg, splits.train[cols], splits.validation[cols], text_col, label_col, labels, out_dir,
                on_started=lambda job: buffer.set_tags({"fineship.sagemaker_training_job": job}),
                tags={"fineship:mlflow_run_id": run_id})
            _log_history(buffer, trained)
            if trained.training is not None:  # what the job's recipe chose: parameters unset until now
                registry.log_params(run_id, {f"training.{k}": getattr(trained.training, k) for k in RECIPE_FIELDS
                                             if getattr(cfg, k) is None})
                _record_recipe(registry, run_id, trained.recipe)
        elif cfg.processes > 1:
            from components.training.launch import train_with_torchrun

            trained = train_with_torchrun(splits.train[cols], splits.validation[cols], text_col, label_col, labels,
                                          cfg, out_dir)
            _log_history(buffer, trained)
        else:
            trained = train(
                splits.train[text_col].tolist(), splits.train[label_col].astype(str).tolist(),
                splits.validation[text_col].tolist(), splits.validation[label_col].astype(str).tolist(),
                labels, cfg, out_dir, on_metrics=buffer,
            )
            for metrics, step in replayed_metrics(trained, trained.resumed_from_step or 0):
                buffer.add(metrics, step)  # the part of the curve the checkpoint carried
        buffer.add({"train_seconds": trained.train_seconds, "train_samples_per_second": trained.samples_per_second})
        _log_health(buffer, trained)
        if trained.checkpoint_dir:
            buffer.set_tags({"fineship.checkpoint_dir": trained.checkpoint_dir})
        if trained.resumed_from_step is not None:
            buffer.set_tags({"fineship.resumed_from_step": str(trained.resumed_from_step)})
            logger.info("resumed from step %d (checkpoint in %s)", trained.resumed_from_step, trained.checkpoint_dir)
        report = buffer.close(wait)
    finally:
        buffer.close(min(wait, 10.0))  # after an error: deliver what can be delivered quickly (no-op once closed)
    if choices:  # chosen here, before training: the trainer had nothing left to choose
        trained = trained.model_copy(update={"training": cfg, "recipe": [c.line() for c in choices]})
    report.raise_if_pending(
        f"Training itself finished: the model package is at {trained.package_dir}"
        + (f" and the final checkpoint in {trained.checkpoint_dir}; once MLflow is back, run the same flow again: it "
           f"resumes from step {trained.steps} instead of training again." if trained.checkpoint_dir else ".")
        + " This MLflow run is ended FAILED (recorded locally while MLflow is down, applied by the next run).")
    if report.failed_attempts:
        logger.warning("MLflow was unreachable during training (%d failed attempts); every metric was delivered "
                       "late", report.failed_attempts)
        registry.set_tags(run_id, {"fineship.mlflow_outage": f"metrics delivered late after {report.failed_attempts} "
                                   f"failed attempts; last error: {report.last_error}"})
    for warning in trained.health:
        logger.warning("training health: %s", warning.message)
    curve = "No training curve: no evaluation was recorded during training."
    if trained.history:
        with tempfile.TemporaryDirectory() as tmp:
            png = plot_training_curves(trained.history, Path(tmp) / "training_curves.png")
            curve = publish_plot(registry, run_id, png, "Training curve", artifact_key("training-curves"),
                                 mlflow_ui_url)
    rows = [[f"{h['epoch']:.2f}", int(h["step"]), f"{h['train_loss']:.4f}", f"{h.get('val_loss', float('nan')):.4f}",
             f"{h.get('val_accuracy', float('nan')):.4f}", f"{h.get('val_macro_f1', float('nan')):.4f}"]
            for h in trained.history]
    where = f"{trained.device}, {trained.world_size} process(es), {trained.precision}"
    create_markdown_artifact(
        f"# Training on {where}\n\n{trained.steps} steps in {trained.train_seconds:.1f}s "
        f"({trained.samples_per_second:.1f} samples/s, effective batch {trained.effective_batch_size}); best "
        f"checkpoint at step {trained.best_step}"
        + (f" (recipe from the data: {'; '.join(trained.recipe)})" if trained.recipe else "")
        + (f"; resumed from step {trained.resumed_from_step}" if trained.resumed_from_step is not None else "")
        + ("; stopped early" if trained.early_stopped else "") + ".\n\n"
        + md_table(["epoch", "step", "train loss", "val loss", "val accuracy", "val macro-F1"], rows)
        + "\n\n## Training curve\n\n" + curve
        + "\n\n" + _health_markdown(trained)
        + "\n\nHealth warnings are also the MLflow run's `fineship.health.*` tags.",
        key=artifact_key("training"), description="Training curve and health")
    report_stage("train", "%d steps, %.1f samples/s on %s%s", trained.steps, trained.samples_per_second, where,
                 f", resumed from step {trained.resumed_from_step}" if trained.resumed_from_step is not None else "",
                 outcome="warning" if trained.health else "ok")
    return trained


@task(name="discard-checkpoints", timeout_seconds=300, cache_policy=NO_CACHE)
def discard_checkpoints(checkpoint_dir: str | None, checkpoint_root: str) -> bool:
    """Delete a finished run's checkpoints, if they are in a directory the flow chose under `checkpoint_root`.

    A `training.checkpoint_dir` set in the configuration is the user's and is left alone.
    """
    if not checkpoint_dir or Path(checkpoint_dir).resolve().parent != Path(checkpoint_root).resolve():
        return False
    shutil.rmtree(checkpoint_dir, ignore_errors=True)
    get_run_logger().info("removed the run's checkpoints %s", checkpoint_dir)
    return True
