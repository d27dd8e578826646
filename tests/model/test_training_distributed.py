"""Data-parallel training: 2 CPU processes under torchrun (gloo) through the training entry point.

Two processes with batch 8 each run, step for step, the same optimisation as one process with
batch 8 and 2 accumulated micro-batches: process r takes global batch r of each pair, and DDP
averages the gradients as accumulation does. With dropout off (the only randomness that differs
per process) the runs must agree. Tolerance: per-step losses and gradient norms within 1e-5
(relative), validation loss within 1e-5, validation accuracy and macro-F1 equal — i.e. the same
quality; the small float differences come from summing gradients in another order.
"""

from __future__ import annotations

import json
import logging
import shutil

import pytest

from components.config import load_config
from components.training import cli
from components.training.launch import torchrun_command, train_with_torchrun


@pytest.fixture(scope="module")
def job(tmp_path_factory, tiny_bert, sample_df):
    root = tmp_path_factory.mktemp("ddp")
    model = root / "bert-no-dropout"
    shutil.copytree(tiny_bert, model)
    config = json.loads((model / "config.json").read_text())
    config.update(hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)
    (model / "config.json").write_text(json.dumps(config))
    sample_df.iloc[:192].to_csv(root / "train.csv", index=False)  # 24 batches of 8: an even number
    sample_df.iloc[192:252].to_csv(root / "val.csv", index=False)
    overrides = [f"training.model={model}", "training.max_length=48", "training.batch_size=8",
                 "training.learning_rate=0.005", "training.epochs=2", "training.precision=fp32",
                 "training.early_stopping_patience=5"]
    return root, overrides


def _args(root, overrides, name, extra=()):
    sets = [*overrides, *extra, f"training.checkpoint_dir={root / name / 'checkpoints'}"]
    return ["--train", str(root / "train.csv"), "--validation", str(root / "val.csv"), "--output-dir",
            str(root / name / "package"), "--result-json", str(root / name / "result.json"), "--no-progress",
            *[a for s in sets for a in ("--set", s)]]


def test_two_processes_train_like_one_process_accumulating_two_batches(job, caplog):
    import pandas as pd

    root, overrides = job
    assert cli.main(_args(root, overrides, "single", ["training.gradient_accumulation_steps=2",
                                                      "training.num_threads=1"])) == 0
    single = json.loads((root / "single" / "result.json").read_text())

    # `training.processes: 2` runs the same entry point under torchrun (the test command of issue 4:
    # python -m torch.distributed.run --nproc_per_node 2 --master_addr 127.0.0.1 --master_port <free> ...).
    cfg = load_config(None, [*overrides, "training.processes=2",
                             f"training.checkpoint_dir={root / 'ddp' / 'checkpoints'}"]).training
    cmd = torchrun_command(2, [])
    assert cmd[1:4] == ["-m", "torch.distributed.run", "--nnodes"] and "--master_addr" in cmd
    train_df, val_df = pd.read_csv(root / "train.csv"), pd.read_csv(root / "val.csv")
    with caplog.at_level(logging.INFO, logger="components.training.launch"):
        ddp = train_with_torchrun(train_df, val_df, "text", "label", sorted(train_df.label.unique()), cfg,
                                  root / "ddp" / "package").model_dump()
    out = caplog.text

    assert ddp["world_size"] == 2 and single["world_size"] == 1
    assert ddp["effective_batch_size"] == single["effective_batch_size"] == 16
    assert ddp["steps"] == single["steps"] == 2 * 192 // 16
    for a, b in zip(ddp["steps_log"], single["steps_log"], strict=True):
        assert a["loss"] == pytest.approx(b["loss"], rel=1e-5)
        assert a["grad_norm"] == pytest.approx(b["grad_norm"], rel=1e-5)
    for a, b in zip(ddp["history"], single["history"], strict=True):
        assert a["val_loss"] == pytest.approx(b["val_loss"], rel=1e-5)
        assert (a["val_accuracy"], a["val_macro_f1"]) == (b["val_accuracy"], b["val_macro_f1"])
    # Training did something: the loss fell.
    assert ddp["history"][-1]["train_loss"] < ddp["history"][0]["train_loss"]

    # Only rank 0 evaluates aloud, checkpoints and writes the package; both processes trained.
    assert "[rank 1]" in out
    rank1 = [line for line in out.splitlines() if "[rank 1]" in line]
    assert not any("checkpoint saved" in line or "evaluation at step" in line for line in rank1)
    assert any("[rank 0]" in line and "checkpoint saved" in line for line in out.splitlines())
    assert (root / "ddp" / "package" / "model.safetensors").is_file()
