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
import os
import shutil
import subprocess
import sys

import pytest

from components.config import load_config
from components.training import cli
from components.procs import free_port
from components.training.launch import torchrun_command, train_with_torchrun
from tests.conftest import REPO


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


@pytest.fixture(scope="module")
def single(job):
    """One process, batch 8, two accumulated micro-batches: what every data-parallel run here must equal."""
    root, overrides = job
    assert cli.main(_args(root, overrides, "single", ["training.gradient_accumulation_steps=2",
                                                      "training.num_threads=1"])) == 0
    return json.loads((root / "single" / "result.json").read_text())


def _assert_same_run(ddp: dict, single: dict) -> None:
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


def _launch_nodes(commands: list[tuple[list[str], dict[str, str]]], timeout: float = 400) -> list[str]:
    """Start every node's launcher at once (separate process trees, as on separate machines); their outputs."""
    procs = [subprocess.Popen(cmd, cwd=REPO, env={**os.environ, **env}, stdout=subprocess.PIPE,
                              stderr=subprocess.STDOUT, text=True) for cmd, env in commands]
    outputs = []
    try:
        for proc in procs:
            out, _ = proc.communicate(timeout=timeout)
            outputs.append(out)
            assert proc.returncode == 0, out[-3000:]
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
    return outputs


def test_two_nodes_meet_at_a_rendezvous_and_train_like_one_process(job, single):
    """Two `torchrun --nnodes 2` launchers, one process each, meet at a rendezvous on 127.0.0.1 (the scale-out
    a team runs on two machines), and train step for step as one process accumulating two batches."""
    root, overrides = job
    port = free_port()
    args = _args(root, overrides, "two-nodes", ["training.num_threads=1"])
    outputs = _launch_nodes([(torchrun_command(1, args, nnodes=2, node_rank=rank, master_port=port), {})
                             for rank in (0, 1)])
    _assert_same_run(json.loads((root / "two-nodes" / "result.json").read_text()), single)
    assert "[rank 1]" in outputs[1] and "[rank 0]" in outputs[0]  # each launcher ran one of the two ranks


@pytest.mark.slow  # two entry points, two torchrun launchers (~15 s): run by .ci/run (RUN_SLOW=1)
def test_the_sagemaker_entry_point_trains_across_two_hosts(job, single, tmp_path):
    """Each host of a two-host SageMaker job runs the entry point with its own /opt/ml tree and resourceconfig.json
    (the hosts are loopback addresses here, where SageMaker has algo-1 and algo-2); the first host in the list is
    the rendezvous, and the hosts' processes train together as one process accumulating two batches."""
    root, overrides = job
    hosts = ["127.0.0.1", "127.0.0.2"]
    hp = {**dict(o.split("=", 1) for o in overrides), "training.num_threads": "1", "processes_per_host": "1",
          "master_port": str(free_port())}
    trees = []
    for host in hosts:
        opt_ml = tmp_path / host
        (opt_ml / "input" / "config").mkdir(parents=True)
        (opt_ml / "input" / "config" / "hyperparameters.json").write_text(json.dumps(hp))
        (opt_ml / "input" / "config" / "resourceconfig.json").write_text(
            json.dumps({"current_host": host, "hosts": hosts}))
        for channel, name in (("train", "train.csv"), ("validation", "val.csv")):
            (opt_ml / "input" / "data" / channel).mkdir(parents=True)
            shutil.copy(root / name, opt_ml / "input" / "data" / channel / name)
        trees.append(opt_ml)
    cmd = [sys.executable, "-m", "components.training.sagemaker_entry"]
    outputs = _launch_nodes([(cmd, {"FINESHIP_OPT_ML": str(t)}) for t in trees])
    assert "launching 1 process(es) on each of 2 host(s)" in outputs[0]
    _assert_same_run(json.loads((trees[0] / "output" / "data" / "result.json").read_text()), single)
    assert (trees[0] / "model" / "model.safetensors").is_file()
    assert not (trees[1] / "model" / "model.safetensors").exists()  # only rank 0 writes the model


def test_two_processes_train_like_one_process_accumulating_two_batches(job, single, caplog):
    import pandas as pd

    root, overrides = job

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

    _assert_same_run(ddp, single)

    # Only rank 0 evaluates aloud, checkpoints and writes the package; both processes trained.
    assert "[rank 1]" in out
    rank1 = [line for line in out.splitlines() if "[rank 1]" in line]
    assert not any("checkpoint saved" in line or "evaluation at step" in line for line in rank1)
    assert any("[rank 0]" in line and "checkpoint saved" in line for line in out.splitlines())
    assert (root / "ddp" / "package" / "model.safetensors").is_file()
