"""Kill a training process mid-epoch (SIGKILL, and SIGTERM), rerun the same command, get the same model.

The training command is the real entry point, `python -m components.training.cli`, in a child
process. The reference is the same entry point run uninterrupted. Tolerance: none. On the CPU
the resumed run's per-step losses, gradient norms, evaluation metrics and the package's weight
file are bit-identical to the uninterrupted run's.
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from components.config import load_config
from components.training import cli
from tests.conftest import REPO

STEPS_PER_EPOCH = 24  # 384 training rows / batch 16
KILL_AFTER = "step-00000030"  # a checkpoint mid-epoch 2 (steps 25-48)


@pytest.fixture(scope="module")
def job(tmp_path_factory, tiny_bert, sample_df):
    root = tmp_path_factory.mktemp("resume")
    sample_df.iloc[:384].to_csv(root / "train.csv", index=False)
    sample_df.iloc[384:424].to_csv(root / "val.csv", index=False)
    overrides = [f"training.model={tiny_bert}", "training.max_length=48", "training.batch_size=16",
                 "training.learning_rate=0.003", "training.epochs=2", "training.num_threads=1",
                 "training.checkpoint_every_steps=5", "training.early_stopping_patience=5"]
    return root, overrides


def _args(root: Path, overrides: list[str], name: str) -> list[str]:
    sets = overrides + [f"training.checkpoint_dir={root / name / 'checkpoints'}"]
    return ["--train", str(root / "train.csv"), "--validation", str(root / "val.csv"),
            "--output-dir", str(root / name / "package"), "--result-json", str(root / name / "result.json"),
            "--no-progress", *[a for s in sets for a in ("--set", s)]]


@pytest.fixture(scope="module")
def reference(job):
    """The uninterrupted run (the same entry point, in this process)."""
    root, overrides = job
    assert cli.main(_args(root, overrides, "reference")) == 0
    return json.loads((root / "reference" / "result.json").read_text())


def _start(args: list[str], log: Path) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "components.training.cli", *args], cwd=REPO,
                            stdout=log.open("w"), stderr=subprocess.STDOUT)


def _assert_same_run(result: dict, reference: dict, root: Path, name: str) -> None:
    assert result["steps"] == reference["steps"] == 2 * STEPS_PER_EPOCH
    assert result["steps_log"] == reference["steps_log"]
    assert result["history"] == reference["history"]
    assert result["best_step"] == reference["best_step"]
    weights = (root / name / "package" / "model.safetensors").read_bytes()
    assert weights == (root / "reference" / "package" / "model.safetensors").read_bytes()


def test_runs_killed_mid_epoch_by_sigkill_and_sigterm_resume_to_the_same_result(job, reference):
    root, overrides = job
    signals = {"sigkill": signal.SIGKILL, "sigterm": signal.SIGTERM}
    args = {name: _args(root, overrides, name) for name in signals}
    # Both interrupted runs at once: two single-threaded processes share the two cores.
    procs = {name: _start(args[name], root / f"{name}-1.log") for name in signals}
    pending, deadline = set(signals), time.monotonic() + 180
    while pending:
        for name in sorted(pending):
            if (root / name / "checkpoints" / KILL_AFTER).exists():
                procs[name].send_signal(signals[name])
                pending.discard(name)
            else:
                assert procs[name].poll() is None, f"{name}: training ended before {KILL_AFTER} was written"
        assert time.monotonic() < deadline, f"no {KILL_AFTER} from {sorted(pending)} within 180 s"
        time.sleep(0.005)
    rcs = {name: proc.wait(timeout=120) for name, proc in procs.items()}
    assert rcs["sigkill"] == -signal.SIGKILL
    log = (root / "sigterm-1.log").read_text()
    # A clean stop: checkpoint at the next step boundary, say so, no traceback, exit 143.
    assert rcs["sigterm"] == cli.EXIT_INTERRUPTED, log
    assert "stopped by a signal" in log and "run the same command again to resume" in log and "Traceback" not in log
    assert not any((root / name / "result.json").exists() for name in signals)

    reruns = {name: _start(args[name], root / f"{name}-2.log") for name in signals}
    for name, proc in reruns.items():
        assert proc.wait(timeout=300) == 0, (root / f"{name}-2.log").read_text()
        result = json.loads((root / name / "result.json").read_text())
        resumed = result["resumed_from_step"]
        assert resumed is not None and resumed >= 30
        assert resumed % STEPS_PER_EPOCH != 0, f"{name}: resumed from {resumed}, an epoch boundary"
        _assert_same_run(result, reference, root, name)


def test_the_reference_run_is_a_real_training_run(reference):
    losses = [s["loss"] for s in reference["steps_log"]]
    assert len(losses) == 2 * STEPS_PER_EPOCH and len(reference["history"]) == 2
    assert load_config(None).training.checkpoint_dir is None  # checkpoints are opt-in
