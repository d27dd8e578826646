"""SageMaker training: the job launcher against the session's moto server over HTTP, with the container's
entry point run against a temporary /opt/ml tree.

moto's CreateTrainingJob records the job and reports it Completed at once; it runs nothing. So
this test plays the training container itself, the way SageMaker would: when the launcher
reports the job created, the test reads the job back from moto (DescribeTrainingJob), lays out
an /opt/ml tree from it (hyperparameters.json, the input channels downloaded from S3,
resourceconfig.json for one host), runs `python -m components.training.sagemaker_entry` on it
(FINESHIP_OPT_ML points at the tree), and uploads /opt/ml/model as model.tar.gz and
/opt/ml/output/data as output.tar.gz where SageMaker would. The launcher then waits,
downloads and unpacks them. What is real: the request the launcher sends, the S3 round trips,
the entry point and trainer; what is simulated: SageMaker's scheduling and the copying it does.
"""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
import tarfile
from pathlib import Path

import boto3
import pytest

from components.config import TrainingConfig, load_config
from components.errors import TrainingError
from components.package import check_package, load_package
from components.training import sagemaker_entry
from components.training.sagemaker_entry import SageMakerEnv, config_overrides
from components.training.sagemaker_job import (
    hyperparameters,
    run_training_job,
    split_s3_uri,
    training_job_request,
    wait_for_training_job,
)
from tests.conftest import REPO
from tests.support.tiny import LABELS

BUCKET = "fineship-training-test"
IMAGE = "123456789012.dkr.ecr.us-east-1.amazonaws.com/fineship-training:test"


def _hp(tiny_bert) -> dict[str, str]:
    return {"training.model": str(tiny_bert), "training.max_length": "48", "training.learning_rate": "0.003",
            "training.max_steps": "12", "training.epochs": "2", "training.num_threads": "1",
            "training.checkpoint_every_steps": "5", "data.labels": json.dumps(LABELS),
            "sagemaker_program": "ignored.py"}


def _opt_ml(root: Path, hp: dict[str, str], channels: dict[str, object]) -> Path:
    config = root / "input" / "config"
    config.mkdir(parents=True)
    (config / "hyperparameters.json").write_text(json.dumps(hp))
    (config / "resourceconfig.json").write_text(json.dumps({"current_host": "algo-1", "hosts": ["algo-1"]}))
    (config / "inputdataconfig.json").write_text(json.dumps({name: {"TrainingInputMode": "File"} for name in channels}))
    for name, df in channels.items():
        (root / "input" / "data" / name).mkdir(parents=True)
        df.to_csv(root / "input" / "data" / name / f"{name}.csv", index=False)
    return root


def _run_entry(root: Path, **env: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "components.training.sagemaker_entry"], cwd=REPO, text=True,
                          capture_output=True, timeout=300, check=False, env={**os.environ, "FINESHIP_OPT_ML": str(root), **env})


def test_sm_environment_variables_override_the_tree(tmp_path):
    root = tmp_path / "opt-ml"
    (root / "input" / "data" / "train").mkdir(parents=True)
    env = SageMakerEnv.from_environment({
        "FINESHIP_OPT_ML": str(root), "SM_CHANNEL_VALIDATION": "/data/val", "SM_MODEL_DIR": "/models/out",
        "SM_OUTPUT_DATA_DIR": "/outputs"})
    assert env.channels == {"train": root / "input" / "data" / "train", "validation": Path("/data/val")}
    assert (env.model_dir, env.output_data_dir) == (Path("/models/out"), Path("/outputs"))
    assert env.checkpoint_dir == root / "checkpoints" and env.hosts == ["algo-1"]
    defaults = SageMakerEnv.from_environment({})
    assert defaults.root == Path("/opt/ml") and defaults.model_dir == Path("/opt/ml/model")
    assert defaults.output_data_dir == Path("/opt/ml/output/data")


def test_a_bad_hyperparameter_fails_the_job_with_a_reason(tmp_path, tiny_bert, sample_df):
    root = _opt_ml(tmp_path / "opt-ml", {**_hp(tiny_bert), "training.epochs": "many"}, {"train": sample_df.iloc[:40]})
    assert sagemaker_entry.main({"FINESHIP_OPT_ML": str(root)}) == 1
    assert "training.epochs" in (root / "output" / "failure").read_text()


def test_a_job_without_a_train_channel_says_so(tmp_path, tiny_bert, sample_df):
    root = _opt_ml(tmp_path / "opt-ml", _hp(tiny_bert), {"evaluation": sample_df.iloc[:40]})
    assert sagemaker_entry.main({"FINESHIP_OPT_ML": str(root)}) == 1
    assert "no 'train' input channel" in (root / "output" / "failure").read_text()


def test_hyperparameters_carry_the_training_config_into_the_container():
    cfg = TrainingConfig(model="distilbert-base-uncased", epochs=4, learning_rate=2e-5, gradient_accumulation_steps=2,
                         checkpoint_dir="/somewhere/local", backend="sagemaker", processes=3,
                         sagemaker={"image_uri": IMAGE, "role_arn": "arn:aws:iam::123456789012:role/r",
                                    "s3_prefix": "s3://b/p", "processes_per_host": 4})
    hp = hyperparameters(cfg, "body", "topic", ["a", "b"])
    assert all(isinstance(v, str) for v in hp.values())
    assert hp["processes_per_host"] == "4"
    assert not any(k.startswith(("training.sagemaker", "training.backend", "training.checkpoint_dir",
                                 "training.processes")) for k in hp)
    inside = load_config(None, config_overrides(hp))
    assert inside.data.text_column == "body" and inside.data.labels == ["a", "b"]
    assert inside.training.model_dump(exclude={"sagemaker", "backend", "processes", "checkpoint_dir"}) == \
        cfg.model_dump(exclude={"sagemaker", "backend", "processes", "checkpoint_dir"})


def test_the_request_asks_for_instances_spot_checkpoints_and_channels():
    cfg = TrainingConfig(backend="sagemaker", sagemaker={
        "image_uri": IMAGE, "role_arn": "arn:aws:iam::123456789012:role/r", "s3_prefix": "s3://b/p/",
        "instance_type": "ml.g5.12xlarge", "instance_count": 2, "processes_per_host": 4, "use_spot": True,
        "max_run_seconds": 3600})
    req = training_job_request("job-1", cfg, {"train": "s3://b/p/job-1/input/train/"}, "text", "label", ["x", "y"])
    assert req["ResourceConfig"] == {"InstanceType": "ml.g5.12xlarge", "InstanceCount": 2, "VolumeSizeInGB": 30}
    assert req["EnableManagedSpotTraining"] is True
    assert req["StoppingCondition"] == {"MaxRuntimeInSeconds": 3600, "MaxWaitTimeInSeconds": 7200}
    assert req["CheckpointConfig"] == {"S3Uri": "s3://b/p/checkpoints/job-1", "LocalPath": "/opt/ml/checkpoints"}
    assert req["OutputDataConfig"] == {"S3OutputPath": "s3://b/p/output"}
    assert req["HyperParameters"]["processes_per_host"] == "4"  # 2 hosts x 4 torchrun processes


class _FailingSageMaker:
    def __init__(self):
        self.statuses = iter(["InProgress", "InProgress", "Failed"])

    def describe_training_job(self, TrainingJobName):
        status = next(self.statuses)
        return {"TrainingJobStatus": status, "SecondaryStatus": "Training",
                "FailureReason": "AlgorithmError: CUDA out of memory" if status == "Failed" else None}


def test_a_failed_job_raises_with_its_failure_reason():
    naps = []
    with pytest.raises(TrainingError, match="CUDA out of memory"):
        wait_for_training_job(_FailingSageMaker(), "job-1", poll_seconds=5, sleep=naps.append)
    assert naps == [5, 5]


def _download_prefix(s3, uri: str, dest: Path) -> None:
    bucket, prefix = split_s3_uri(uri)
    dest.mkdir(parents=True, exist_ok=True)
    for obj in s3.list_objects_v2(Bucket=bucket, Prefix=prefix).get("Contents", []):
        s3.download_file(bucket, obj["Key"], str(dest / Path(obj["Key"]).name))


def _tar_gz(directory: Path) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tar:
        for path in sorted(directory.iterdir()):
            tar.add(path, arcname=path.name)
    return buf.getvalue()


def test_the_launcher_runs_a_job_and_brings_back_the_package(moto_endpoint, tmp_path, tiny_bert, sample_df):
    s3, sm, iam = boto3.client("s3"), boto3.client("sagemaker"), boto3.client("iam")
    s3.create_bucket(Bucket=BUCKET)
    trust = {"Version": "2012-10-17", "Statement": [{"Effect": "Allow", "Action": "sts:AssumeRole",
                                                     "Principal": {"Service": "sagemaker.amazonaws.com"}}]}
    role = iam.create_role(RoleName="fineship-training-test", AssumeRolePolicyDocument=json.dumps(trust))["Role"]["Arn"]
    cfg = TrainingConfig(model=str(tiny_bert), max_length=48, learning_rate=3e-3, max_steps=12, epochs=2,
                         num_threads=1, backend="sagemaker",
                         sagemaker={"image_uri": IMAGE, "role_arn": role, "s3_prefix": f"s3://{BUCKET}/jobs",
                                    "use_spot": True, "max_run_seconds": 3600, "max_wait_seconds": 7200,
                                    "poll_seconds": 0.05})
    played = {}

    def play_the_container(job: str) -> None:
        desc = sm.describe_training_job(TrainingJobName=job)
        root = tmp_path / "opt-ml"
        channels = {c["ChannelName"]: c["DataSource"]["S3DataSource"]["S3Uri"] for c in desc["InputDataConfig"]}
        _opt_ml(root, desc["HyperParameters"], {})
        for name, uri in channels.items():
            _download_prefix(s3, uri, root / "input" / "data" / name)
        run = _run_entry(root)
        assert run.returncode == 0, run.stdout + run.stderr
        # The entry point kept the contract: package in model/, result in output/data, checkpoints, no failure.
        assert check_package(root / "model") == [] and not (root / "output" / "failure").exists()
        assert (root / "output" / "data" / "result.json").is_file()
        assert max(p.name for p in (root / "checkpoints").iterdir()) == "step-00000012"
        bucket, key = split_s3_uri(desc["ModelArtifacts"]["S3ModelArtifacts"])
        s3.put_object(Bucket=bucket, Key=key, Body=_tar_gz(root / "model"))
        out_bucket, out_key = split_s3_uri(f"{desc['OutputDataConfig']['S3OutputPath']}/{job}/output/output.tar.gz")
        s3.put_object(Bucket=out_bucket, Key=out_key, Body=_tar_gz(root / "output" / "data"))
        played.update(job=job, desc=desc, channels=channels)

    train_df, val_df = sample_df.iloc[:160], sample_df.iloc[160:200]
    trained = run_training_job(sm, s3, cfg, train_df, val_df, "text", "label", LABELS, tmp_path / "package",
                               on_started=play_the_container, tags={"fineship:mlflow_run_id": "run-1"})

    desc = played["desc"]
    assert desc["AlgorithmSpecification"]["TrainingImage"] == IMAGE and desc["RoleArn"] == role
    assert desc["ResourceConfig"]["InstanceType"] == "ml.m5.xlarge" and desc["ResourceConfig"]["InstanceCount"] == 1
    assert desc["EnableManagedSpotTraining"] is True
    assert desc["StoppingCondition"] == {"MaxRuntimeInSeconds": 3600, "MaxWaitTimeInSeconds": 7200}
    assert desc["CheckpointConfig"]["S3Uri"] == f"s3://{BUCKET}/jobs/checkpoints/{played['job']}"
    assert set(played["channels"]) == {"train", "validation"}
    assert desc["HyperParameters"]["training.max_steps"] == "12"
    assert trained.package_dir == str(tmp_path / "package") and check_package(trained.package_dir) == []
    assert trained.steps == 12 and trained.history and "ml.m5.xlarge" in trained.device
    # Settings left unset are not sent: the container chooses them from the data, and says what it chose.
    assert "training.batch_size" not in desc["HyperParameters"] and cfg.batch_size is None
    assert trained.training.batch_size == 16 and trained.training.batch_tokens == 16 * 48
    assert [line.split("=")[0] for line in trained.recipe] == ["batch_tokens", "batch_size", "warmup_ratio"]
    clf = load_package(trained.package_dir, device="cpu")
    assert {p.label for p in clf.predict(["The striker scored twice."])} <= set(LABELS)


def test_each_training_job_of_a_tuning_job_checkpoints_in_its_own_folder(tmp_path):
    from components.training.sagemaker_entry import checkpoint_dir

    plain = SageMakerEnv(root=tmp_path, hyperparameters={"training.epochs": "2"}, channels={}, model_dir=tmp_path,
                         output_data_dir=tmp_path, checkpoint_dir=tmp_path / "checkpoints")
    tuned = SageMakerEnv(root=tmp_path, hyperparameters={"_tuning_objective_metric": "val_macro_f1"}, channels={},
                         model_dir=tmp_path, output_data_dir=tmp_path, checkpoint_dir=tmp_path / "checkpoints")
    job = {"TRAINING_JOB_NAME": "tune-abc-003-1f2e"}
    # Jobs of one tuning job share its checkpoint URI: each resumes only its own checkpoints.
    assert checkpoint_dir(tuned, job) == tmp_path / "checkpoints" / "tune-abc-003-1f2e"
    # A plain job keeps the documented behaviour: a new job on the same URI resumes the previous one's checkpoints.
    assert checkpoint_dir(plain, job) == tmp_path / "checkpoints"
    assert checkpoint_dir(tuned, {}) == tmp_path / "checkpoints"
