"""Run the training entry point under `torchrun` on this machine, for `training.processes > 1`.

The frames and the config go to a temporary directory, `torchrun` starts the processes on a free
local port, and rank 0's result comes back as a `TrainedModel`. The processes' output is relayed
line by line to this module's logger.
"""

from __future__ import annotations

import logging
import subprocess
import sys
import tempfile
from collections import deque
from pathlib import Path

import pandas as pd
import yaml

from components.config import TrainingConfig
from components.errors import TrainingError
from components.procs import free_port
from components.training.trainer import TrainedModel, TrainingInterrupted

log = logging.getLogger(__name__)

EXIT_INTERRUPTED = 143


def torchrun_command(nproc: int, module_args: list[str], python: str = sys.executable, nnodes: int = 1,
                     node_rank: int = 0, master_addr: str = "127.0.0.1", master_port: int | None = None,
                     module: str = "components.training.cli") -> list[str]:
    """The `torchrun` command line that starts `module` in `nproc` processes per node."""
    return [python, "-m", "torch.distributed.run", "--nnodes", str(nnodes), "--node_rank", str(node_rank),
            "--nproc_per_node", str(nproc), "--master_addr", master_addr,
            "--master_port", str(master_port or free_port()), "-m", module, *module_args]


def write_job_inputs(work: Path, train_df: pd.DataFrame, val_df: pd.DataFrame, text_col: str, label_col: str,
                     labels: list[str], cfg: TrainingConfig) -> dict[str, Path]:
    """Write the frames (Parquet) and a pipeline config YAML the entry point reads."""
    work.mkdir(parents=True, exist_ok=True)
    paths = {"train": work / "train.parquet", "validation": work / "validation.parquet", "config": work / "config.yaml"}
    for name, df in (("train", train_df), ("validation", val_df)):
        df[[text_col, label_col]].astype(str).reset_index(drop=True).to_parquet(paths[name], index=False)
    training = cfg.model_dump(mode="json", exclude={"sagemaker"})
    training.update(backend="local", processes=1)
    tree = {"data": {"text_column": text_col, "label_column": label_col, "labels": list(labels)}, "training": training}
    paths["config"].write_text(yaml.safe_dump(tree, sort_keys=False), encoding="utf-8")
    return paths


def train_with_torchrun(train_df: pd.DataFrame, val_df: pd.DataFrame, text_col: str, label_col: str,
                        labels: list[str], cfg: TrainingConfig, out_dir: str | Path,
                        python: str = sys.executable) -> TrainedModel:
    """Train with `cfg.processes` local data-parallel processes; the package lands in `out_dir`."""
    with tempfile.TemporaryDirectory(prefix="fineship-torchrun-") as tmp:
        work = Path(tmp)
        paths = write_job_inputs(work, train_df, val_df, text_col, label_col, labels, cfg)
        result = work / "result.json"
        cmd = torchrun_command(cfg.processes, ["--config", str(paths["config"]), "--train", str(paths["train"]),
                                               "--validation", str(paths["validation"]), "--output-dir", str(out_dir),
                                               "--result-json", str(result), "--no-progress"], python=python)
        log.info("starting %d training processes: %s", cfg.processes, " ".join(cmd))
        tail: deque[str] = deque(maxlen=40)
        with subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True) as proc:
            assert proc.stdout is not None
            for line in proc.stdout:
                tail.append(line.rstrip())
                log.info("%s", line.rstrip())
            rc = proc.wait()
        if rc == EXIT_INTERRUPTED:
            raise TrainingInterrupted("the training processes were stopped by a signal; with training.checkpoint_dir "
                                      "set, run again to resume", step=-1, checkpoint=cfg.checkpoint_dir)
        if rc != 0 or not result.is_file():
            raise TrainingError(f"torchrun training failed (exit code {rc}); last output:\n" + "\n".join(tail))
        return TrainedModel.model_validate_json(result.read_text(encoding="utf-8"))
