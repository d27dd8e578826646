"""The recipe's choices reach the MLflow run whichever backend trains: chosen here before local training, chosen in
the container for a SageMaker job and logged when it comes back (MLflow parameters cannot change afterwards)."""

from __future__ import annotations

import pytest

from tests.support.tiny import LABELS

pytestmark = pytest.mark.e2e


def test_a_sagemaker_jobs_recipe_is_logged_when_the_job_returns(prefect_harness, fineship_home, tiny_bert,
                                                                 sample_df, monkeypatch):
    from prefect import flow

    import components.training.sagemaker_job as job
    from components.config import TrainingConfig
    from components.data.split import split_frame
    from components.registry.mlflow_registry import MlflowRegistry
    from components.training.trainer import train
    from flows.settings import Settings
    from tasks.training import fine_tune

    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    sent = {}

    def the_container(sagemaker, s3, cfg, train_df, val_df, text_col, label_col, labels, out_dir, **_):
        # What the job's entry point does with the configuration it is sent (test_sagemaker_training.py runs the
        # real entry point against moto): the trainer, which chooses what is unset.
        sent["cfg"] = cfg
        return train(train_df[text_col].tolist(), train_df[label_col].tolist(), val_df[text_col].tolist(),
                     val_df[label_col].tolist(), labels, cfg, out_dir, progress=False)

    monkeypatch.setattr(job, "run_training_job", the_container)
    registry = MlflowRegistry(Settings().mlflow_tracking_uri)
    run_id = registry.start_run("recipe", run_name="sagemaker-recipe")
    splits = split_frame(sample_df, "text", "label", 0.8, 0.1, 0.1, 42)
    cfg = TrainingConfig(model=str(tiny_bert), max_length=48, learning_rate=3e-3, epochs=1, max_steps=4,
                         num_threads=1, backend="sagemaker", sagemaker={
                             "image_uri": "123456789012.dkr.ecr.us-east-1.amazonaws.com/fineship-training:test",
                             "role_arn": "arn:aws:iam::123456789012:role/r", "s3_prefix": "s3://b/p"})

    @flow(name="recipe-sagemaker")
    def run():
        return fine_tune(splits, "text", "label", LABELS, cfg, str(fineship_home / "package"), registry, run_id)

    trained = run()
    assert sent["cfg"].batch_size is None and sent["cfg"].warmup_ratio is None  # left to the container
    params = registry.client.get_run(run_id).data.params
    assert params["training.batch_size"] == "16" and params["training.batch_tokens"] == str(16 * 48)
    assert params["training.warmup_ratio"] == str(trained.training.warmup_ratio)
    assert params["training.max_length"] == "48" and params["training.learning_rate"] == "0.003"  # given: as given
    tag = registry.client.get_run(run_id).data.tags["fineship.recipe"]
    assert tag.startswith("batch_tokens=768 (") and "warmup_ratio=0.25 (1 of about 4 optimizer steps)" in tag
