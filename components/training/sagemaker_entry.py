"""SageMaker training-job entry point: the bring-your-own-container contract, then the training entry point.

    python -m components.training.sagemaker_entry        # what docker/train runs inside the job

What SageMaker provides (all under /opt/ml; set FINESHIP_OPT_ML to use another root, e.g. a test's
temporary tree):

- `input/config/hyperparameters.json`: string values. Keys with a dot are config overrides
  (`training.epochs`, `data.text_column`, ...); `processes_per_host` and `master_port` steer the
  launch; keys starting with `sagemaker_` (added by the SageMaker SDK) are ignored.
- `input/data/<channel>/`: the channel's files (CSV, TSV, Parquet, JSON Lines); `train` is required,
  `validation` optional (without it a validation share is split off `train`). `SM_CHANNEL_<NAME>`
  overrides a channel's directory, as in SageMaker's framework containers.
- `input/config/resourceconfig.json`: the hosts of the job; more than one host, or more than one
  process per host (default: one per GPU, one on CPU instances), re-launches this module under
  `torchrun` (NCCL on GPUs, gloo on CPUs), node rank = this host's place in the list.
- `model/` (`SM_MODEL_DIR`): rank 0 writes the model package here; SageMaker uploads it as
  `model.tar.gz`.
- `output/data/` (`SM_OUTPUT_DATA_DIR`): `result.json`, the `TrainedModel` (history, health warnings);
  uploaded as `output.tar.gz`.
- `checkpoints/`: resumable checkpoints, synced to the job's checkpoint S3 URI, so a spot
  interruption resumes where it stopped. SIGTERM (what SageMaker sends) checkpoints and exits.
- `output/failure`: on failure, the reason (SageMaker shows it as the job's FailureReason).
"""

from __future__ import annotations

import json
import logging
import os
import sys
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from components.config import load_config
from components.errors import FineshipError

log = logging.getLogger(__name__)

ROOT_ENV = "FINESHIP_OPT_ML"
_LAUNCH_KEYS = {"processes_per_host", "master_port"}
_TRAIN_CHANNELS = ("train", "training")
_VALIDATION_CHANNELS = ("validation", "val", "eval")


@dataclass(frozen=True)
class SageMakerEnv:
    """Where this training job's inputs and outputs are, read from the container's environment."""

    root: Path
    hyperparameters: dict[str, str]
    channels: dict[str, Path]
    model_dir: Path
    output_data_dir: Path
    checkpoint_dir: Path
    hosts: list[str] = field(default_factory=lambda: ["algo-1"])
    current_host: str = "algo-1"

    @property
    def failure_file(self) -> Path:
        return self.root / "output" / "failure"

    @classmethod
    def from_environment(cls, environ: Mapping[str, str] | None = None) -> SageMakerEnv:
        env = os.environ if environ is None else environ
        root = Path(env.get(ROOT_ENV, "/opt/ml"))
        config_dir = root / "input" / "config"
        hp_file = config_dir / "hyperparameters.json"
        hyperparameters = json.loads(hp_file.read_text(encoding="utf-8")) if hp_file.is_file() else {}
        channels: dict[str, Path] = {}
        data_dir = root / "input" / "data"
        if data_dir.is_dir():
            channels.update({p.name: p for p in data_dir.iterdir() if p.is_dir()})
        channels.update({k[len("SM_CHANNEL_"):].lower(): Path(v) for k, v in env.items() if k.startswith("SM_CHANNEL_")})
        resources_file = config_dir / "resourceconfig.json"
        resources = json.loads(resources_file.read_text(encoding="utf-8")) if resources_file.is_file() else {}
        hosts = list(resources.get("hosts") or [env.get("SM_CURRENT_HOST", "algo-1")])
        return cls(root=root, hyperparameters={str(k): str(v) for k, v in hyperparameters.items()}, channels=channels,
                   model_dir=Path(env.get("SM_MODEL_DIR", root / "model")),
                   output_data_dir=Path(env.get("SM_OUTPUT_DATA_DIR", root / "output" / "data")),
                   checkpoint_dir=root / "checkpoints", hosts=sorted(hosts),
                   current_host=str(resources.get("current_host") or env.get("SM_CURRENT_HOST", hosts[0])))

    def channel(self, names: tuple[str, ...], required: bool) -> Path | None:
        for name in names:
            if name in self.channels:
                return self.channels[name]
        if required:
            raise FineshipError(f"the training job has no '{names[0]}' input channel (found: "
                                f"{sorted(self.channels) or 'none'}); add one to InputDataConfig")
        return None


def config_overrides(hyperparameters: Mapping[str, str]) -> list[str]:
    """`section.field=value` overrides from the hyperparameters (their string values are read as YAML)."""
    return [f"{k}={v}" for k, v in sorted(hyperparameters.items()) if "." in k and not k.startswith("sagemaker_")]


def _processes_per_host(hyperparameters: Mapping[str, str]) -> int:
    if "processes_per_host" in hyperparameters:
        return int(hyperparameters["processes_per_host"])
    try:
        import torch

        return max(1, torch.cuda.device_count())
    except ImportError:
        return 1


def print_objective_metrics(result_json: Path) -> None:
    """Print `fineship-metric <name>=<value>` for each validation metric at the kept evaluation: the last value a
    SageMaker tuning job's metric definitions parse, so its objective is the model this job keeps."""
    from components.training.trainer import TrainedModel
    from components.tuning.sagemaker_tuning import METRICS, metric_line
    from components.tuning.trial import objective_value

    trained = TrainedModel.model_validate_json(result_json.read_text(encoding="utf-8"))
    for name in METRICS:
        value = objective_value(trained.history, trained.best_step, name)
        if value is not None:
            print(metric_line(name, value), flush=True)


def checkpoint_dir(env: SageMakerEnv, environ: Mapping[str, str] | None = None) -> Path:
    """Where this job checkpoints. The training jobs of one tuning job share its CheckpointConfig (one S3 prefix),
    so each of them (SageMaker passes `_tuning_objective_metric` to tuning jobs' trainings) keeps its checkpoints
    in a folder named after the job, which a spot restart of that same job finds again; a plain job uses the root,
    so a new job on the same checkpoint URI resumes as SageMaker documents."""
    job = (os.environ if environ is None else environ).get("TRAINING_JOB_NAME", "")
    if "_tuning_objective_metric" in env.hyperparameters and job:
        return env.checkpoint_dir / job
    return env.checkpoint_dir


def main(environ: Mapping[str, str] | None = None) -> int:
    """Train as a SageMaker job would; an exit code (0 done, 1 failed, 143 stopped by SIGTERM)."""
    from components.training.cli import run
    from components.training.launch import torchrun_command

    rank = os.environ.get("RANK", "0")
    logging.basicConfig(level=logging.INFO, format=f"%(asctime)s %(levelname)s [rank {rank}] %(name)s: %(message)s")
    try:
        env = SageMakerEnv.from_environment(environ)
    except (OSError, ValueError) as err:
        log.error("cannot read the SageMaker job configuration: %s", err)
        return 1
    try:
        nproc = _processes_per_host(env.hyperparameters)
        if (len(env.hosts) > 1 or nproc > 1) and "RANK" not in os.environ:
            cmd = torchrun_command(nproc, [], nnodes=len(env.hosts), node_rank=env.hosts.index(env.current_host),
                                   master_addr=env.hosts[0] if len(env.hosts) > 1 else "127.0.0.1",
                                   master_port=int(env.hyperparameters.get("master_port", 29500)),
                                   module="components.training.sagemaker_entry")
            log.info("launching %d process(es) on each of %d host(s): %s", nproc, len(env.hosts), " ".join(cmd))
            sys.stdout.flush()
            sys.stderr.flush()
            os.execv(cmd[0], cmd)  # torchrun takes this process's place, and so receives SageMaker's SIGTERM
        overrides = config_overrides(env.hyperparameters) + [
            "training.backend=local", "training.processes=1", f"training.checkpoint_dir={checkpoint_dir(env)}"]
        config = load_config(None, overrides)
        train_dir = env.channel(_TRAIN_CHANNELS, required=True)
        val_dir = env.channel(_VALIDATION_CHANNELS, required=False)
        log.info("channels: train %s, validation %s; model to %s", train_dir, val_dir, env.model_dir)
        code = run(config, train_dir, val_dir, env.model_dir, env.output_data_dir / "result.json", progress=False)
        if code == 0 and rank == "0":
            print_objective_metrics(env.output_data_dir / "result.json")
        return code
    except (FineshipError, ValueError) as err:
        log.error("%s", err)
        if rank == "0":
            env.failure_file.parent.mkdir(parents=True, exist_ok=True)
            env.failure_file.write_text(str(err)[:1000], encoding="utf-8")
        return 1


if __name__ == "__main__":
    sys.exit(main())
