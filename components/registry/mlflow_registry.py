"""MLflow tracking and model registry behind a small interface.

Stateless: every call names the run or model version it works on, so tasks running in
threads never depend on a process-wide "active run".
"""

from __future__ import annotations

import json
import logging
import shutil
import tempfile
from pathlib import Path
from collections.abc import Mapping, Sequence
from typing import Any

import yaml
from pydantic import BaseModel, ConfigDict, Field

from components.errors import RegistryError

log = logging.getLogger(__name__)

PYFUNC_CODE = Path(__file__).with_name("pyfunc_model.py")
COMPONENTS_DIR = Path(__file__).resolve().parents[1]
MODEL_ARTIFACT = "model"
IDEMPOTENCY_TAG = "fineship.idempotency_key"


class RegisteredVersion(BaseModel):
    """A model version in the registry."""

    model_config = ConfigDict(frozen=True)

    name: str
    version: str
    run_id: str | None
    aliases: list[str] = Field(default_factory=list)
    tags: dict[str, str] = Field(default_factory=dict)
    source: str = ""


class DownloadedVersion(BaseModel):
    """A registered version downloaded to this machine."""

    model_config = ConfigDict(frozen=True)

    name: str
    version: str
    package_dir: str = Field(description="The model package directory (fineship.json, weights, tokenizer).")
    input_example: list[str] = Field(default_factory=list, description="Texts registered as the input example.")


def local_tracking_uri(path: str | Path) -> str:
    """An absolute `sqlite:///` URI for a SQLite file (the directory is created)."""
    p = Path(path).resolve()
    p.parent.mkdir(parents=True, exist_ok=True)
    return f"sqlite:///{p}"


class MlflowRegistry:
    """Runs, metrics, artifacts and model versions in one MLflow tracking server or store."""

    def __init__(self, tracking_uri: str, artifact_root: str | Path | None = None) -> None:
        from mlflow import MlflowClient

        self.tracking_uri = tracking_uri
        self.artifact_root = Path(artifact_root).resolve() if artifact_root else None
        # sagemaker 3 installs a request-header plugin that logs a warning on every REST call.
        logging.getLogger("mlflow.tracking.request_header.registry").setLevel(logging.ERROR)
        self.client = MlflowClient(tracking_uri=tracking_uri, registry_uri=tracking_uri)

    # -- runs -----------------------------------------------------------------------------
    def experiment_id(self, name: str) -> str:
        exp = self.client.get_experiment_by_name(name)
        if exp is not None:
            return exp.experiment_id
        location = None
        if self.artifact_root is not None:
            location = (self.artifact_root / name).as_uri()
        return self.client.create_experiment(name, artifact_location=location)

    def start_run(self, experiment: str, run_name: str, tags: dict[str, str] | None = None) -> str:
        run = self.client.create_run(self.experiment_id(experiment), run_name=run_name, tags=tags or {})
        return run.info.run_id

    def end_run(self, run_id: str, status: str = "FINISHED") -> None:
        self.client.set_terminated(run_id, status=status)

    def run_user(self, run_id: str) -> str | None:
        """The user who created the run (MLflow's `user_id`), or None when it is not recorded."""
        return self.client.get_run(run_id).info.user_id or None

    def run_url(self, run_id: str, ui_base: str | None) -> str | None:
        if not ui_base:
            return None
        run = self.client.get_run(run_id)
        return f"{ui_base.rstrip('/')}/#/experiments/{run.info.experiment_id}/runs/{run_id}"

    def log_params(self, run_id: str, params: dict[str, Any]) -> None:
        from mlflow.entities import Param

        items = [Param(k, str(v)[:6000]) for k, v in params.items()]
        for i in range(0, len(items), 100):
            self.client.log_batch(run_id, params=items[i:i + 100])

    def log_metrics(self, run_id: str, metrics: dict[str, float], step: int | None = None) -> None:
        import time

        from mlflow.entities import Metric

        ts = int(time.time() * 1000)
        self.client.log_batch(run_id, metrics=[Metric(k, float(v), ts, step or 0) for k, v in metrics.items()])

    def set_tags(self, run_id: str, tags: dict[str, str]) -> None:
        from mlflow.entities import RunTag

        self.client.log_batch(run_id, tags=[RunTag(k, str(v)[:5000]) for k, v in tags.items()])

    def log_metric_batch(self, run_id: str, metrics: Sequence[tuple[str, float, int, int]] = (),
                         tags: Mapping[str, str] | None = None) -> None:
        """Metrics as (key, value, timestamp_ms, step) and tags in one `log_batch` call (MLflow: 1000 entities)."""
        from mlflow.entities import Metric, RunTag

        self.client.log_batch(run_id, metrics=[Metric(k, float(v), int(ts), int(step)) for k, v, ts, step in metrics],
                              tags=[RunTag(k, str(v)[:5000]) for k, v in (tags or {}).items()])

    def log_artifact(self, run_id: str, path: str | Path, artifact_path: str | None = None) -> None:
        self.client.log_artifact(run_id, str(path), artifact_path)

    def log_dict(self, run_id: str, data: Any, name: str) -> None:
        self.client.log_dict(run_id, data, name)

    def log_text(self, run_id: str, text: str, name: str) -> None:
        self.client.log_text(run_id, text, name)

    def log_dataset_inputs(self, run_id: str, frames: dict[str, Any], source: str, digests: dict[str, str],
                           target: str) -> None:
        """Record each split as an MLflow dataset input of the run (context = split name)."""
        import warnings

        import mlflow.data
        from mlflow.entities import DatasetInput, InputTag

        inputs = []
        for name, frame in frames.items():
            with warnings.catch_warnings():  # MLflow warns that a local path could be several source kinds
                warnings.simplefilter("ignore")
                ds = mlflow.data.from_pandas(frame, source=source, targets=target, name=name,
                                             digest=digests.get(name))
            inputs.append(DatasetInput(dataset=ds._to_mlflow_entity(),
                                       tags=[InputTag(key="mlflow.data.context", value=name)]))
        self.client.log_inputs(run_id, datasets=inputs)

    def load_run_json(self, run_id: str, path: str) -> Any | None:
        """A JSON artifact of a run, or None when the run has no such artifact."""
        from mlflow.exceptions import MlflowException

        with tempfile.TemporaryDirectory() as tmp:
            try:
                local = self.client.download_artifacts(run_id, path, tmp)
            except (MlflowException, OSError):
                return None
            return json.loads(Path(local).read_text())

    def log_dir(self, run_id: str, path: str | Path, artifact_path: str) -> None:
        self.client.log_artifacts(run_id, str(path), artifact_path)

    # -- models ---------------------------------------------------------------------------
    def find_by_tag(self, name: str, key: str, value: str) -> RegisteredVersion | None:
        """The newest version of `name` whose tag `key` equals `value`, if any."""
        if not self._registered_model_exists(name):
            return None
        return next((v for v in self.list_versions(name) if v.tags.get(key) == value), None)

    def log_and_register(self, run_id: str, package_dir: str | Path, name: str, input_example: list[str],
                         pip_requirements: list[str], tags: dict[str, str], description: str = "",
                         aliases: tuple[str, ...] = (), idempotency_key: str | None = None) -> RegisteredVersion:
        """Log the package as a pyfunc model of the run and register it as a new version of `name`.

        With an `idempotency_key`, a version already registered under that key is returned instead of
        registering a second one (a flow run retried after a crash registers once).
        """
        if idempotency_key:
            existing = self.find_by_tag(name, IDEMPOTENCY_TAG, idempotency_key)
            if existing is not None:
                log.info("%s v%s already registered for key %s", name, existing.version, idempotency_key)
                return existing
            tags = {**tags, IDEMPOTENCY_TAG: idempotency_key}
        import mlflow
        import pandas as pd
        from mlflow.models import ModelSignature
        from mlflow.types import ColSpec, Schema

        signature = ModelSignature(inputs=Schema([ColSpec("string", "text")]),
                                   outputs=Schema([ColSpec("string", "label"), ColSpec("double", "score")]))
        with tempfile.TemporaryDirectory() as tmp:
            # Stage the package under a fixed name so the artifact layout never depends on our paths.
            staged = Path(tmp) / "package"
            shutil.copytree(package_dir, staged)
            mlflow.set_tracking_uri(self.tracking_uri)
            mlflow.set_registry_uri(self.tracking_uri)
            with mlflow.start_run(run_id=run_id):
                info = mlflow.pyfunc.log_model(
                    name=MODEL_ARTIFACT, python_model=str(PYFUNC_CODE), artifacts={"package": str(staged)},
                    code_paths=[str(COMPONENTS_DIR)], signature=signature,
                    input_example=pd.DataFrame({"text": input_example}), pip_requirements=pip_requirements,
                )
        if not self._registered_model_exists(name):
            self.client.create_registered_model(name, description="fineship text classifier")
        mv = self.client.create_model_version(name, info.model_uri, run_id=run_id, tags=tags,
                                              description=description or None, model_id=info.model_id)
        for alias in aliases:
            self.client.set_registered_model_alias(name, alias, mv.version)
        log.info("registered %s version %s", name, mv.version)
        return self.get_version(name, version=str(mv.version))

    def _registered_model_exists(self, name: str) -> bool:
        from mlflow.exceptions import MlflowException

        try:
            self.client.get_registered_model(name)
            return True
        except MlflowException:
            return False

    def get_version(self, name: str, version: str | None = None, alias: str | None = None) -> RegisteredVersion:
        """Resolve a version by number or alias; a clear error when it does not exist."""
        from mlflow.exceptions import MlflowException

        if (version is None) == (alias is None):
            raise RegistryError("give exactly one of a version number or an alias")
        try:
            mv = (self.client.get_model_version(name, version) if version is not None
                  else self.client.get_model_version_by_alias(name, alias))
        except MlflowException as err:
            if getattr(err, "error_code", "") not in ("RESOURCE_DOES_NOT_EXIST", "NOT_FOUND", "INVALID_PARAMETER_VALUE"):
                raise RegistryError(f"MLflow at {self.tracking_uri} refused to read {name}: {err.message} (check "
                                    "the server and the MLFLOW_TRACKING_USERNAME/PASSWORD credentials)") from None
            what = f"version {version}" if version is not None else f"alias '{alias}'"
            raise RegistryError(
                f"registered model '{name}' has no {what}; list versions in the MLflow UI or run `fineship run` first"
            ) from None
        return RegisteredVersion(name=name, version=str(mv.version), run_id=mv.run_id,
                                 aliases=list(getattr(mv, "aliases", []) or []), tags=dict(mv.tags or {}),
                                 source=mv.source)

    def find_version(self, name: str, alias: str) -> RegisteredVersion | None:
        """The version behind `alias`, or None when the model or alias does not exist."""
        try:
            return self.get_version(name, alias=alias)
        except RegistryError:
            return None

    def model_names(self) -> list[str]:
        """Every registered model's name, sorted."""
        return sorted(m.name for m in self.client.search_registered_models())

    def list_versions(self, name: str) -> list[RegisteredVersion]:
        """Every version of `name` (newest first)."""
        out = []
        for mv in self.client.search_model_versions(f"name='{name}'"):
            out.append(self.get_version(name, version=str(mv.version)))
        return sorted(out, key=lambda v: -int(v.version))

    def set_version_tags(self, name: str, version: str, tags: dict[str, str]) -> None:
        for k, v in tags.items():
            self.client.set_model_version_tag(name, version, k, str(v)[:5000])

    def set_alias(self, name: str, alias: str, version: str) -> None:
        self.client.set_registered_model_alias(name, alias, version)

    def download_package(self, name: str, version: str, dst: str | Path) -> Path:
        """Download a version's model package directory into `dst` and return its path."""
        return Path(self.download_version(name, version, dst).package_dir)

    def download_version(self, name: str, version: str, dst: str | Path) -> DownloadedVersion:
        """Download a version into `dst`: its model package and the input example registered with it."""
        import mlflow

        dst = Path(dst)
        if dst.exists():
            shutil.rmtree(dst)
        dst.mkdir(parents=True)
        mlflow.set_tracking_uri(self.tracking_uri)
        mlflow.set_registry_uri(self.tracking_uri)
        root = Path(mlflow.artifacts.download_artifacts(artifact_uri=f"models:/{name}/{version}", dst_path=str(dst)))
        mlmodel = yaml.safe_load((root / "MLmodel").read_text())
        rel = mlmodel["flavors"]["python_function"]["artifacts"]["package"]["path"]
        pkg = root / rel
        if not (pkg / "config.json").is_file():
            raise RegistryError(f"{name} version {version} holds no model package at {rel}")
        return DownloadedVersion(name=name, version=version, package_dir=str(pkg),
                                 input_example=_input_example(root / mlmodel.get("saved_input_example_info", {}).get(
                                     "artifact_path", "input_example.json")))


def _input_example(path: Path) -> list[str]:
    """The texts of a registered input example (MLflow's pandas 'split' layout), [] when there is none."""
    if not path.is_file():
        return []
    data = json.loads(path.read_text())
    cols, rows = data.get("columns", []), data.get("data", [])
    return [r[cols.index("text")] for r in rows] if "text" in cols else []


def dumps(obj: Any) -> str:
    return json.dumps(obj, indent=2, sort_keys=True, default=str)


# -- runs left open ---------------------------------------------------------------------------
# A run is "open" from the start of training until the end-run step closes it. Each open run has a
# marker file `<pending_dir>/<run_id>.json`: while the process that owns it lives, nothing happens;
# when MLflow was unreachable at the end, the marker holds the status the run should end with;
# when the owner died without closing the run (SIGKILL, a crashed worker), the run ended FAILED.
# `reconcile_runs`, at the start of the next flow run, applies both.

END_REASON_TAG = "fineship.end_reason"


class RunMarker(BaseModel):
    """An MLflow run this machine opened and has not seen closed."""

    model_config = ConfigDict(frozen=True)

    run_id: str
    tracking_uri: str
    host: str
    pid: int
    pid_started: float | None = Field(None, description="The owner's start time: a reused PID is not the owner.")
    status: str | None = Field(None, description="The end status MLflow could not be told; None: still open.")
    reason: str = ""
    recorded_at: float


def _write_marker(pending_dir: str | Path, marker: RunMarker) -> Path:
    import os

    d = Path(pending_dir)
    d.mkdir(parents=True, exist_ok=True)
    path = d / f"{marker.run_id}.json"
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(marker.model_dump_json(indent=2), encoding="utf-8")
    os.replace(tmp, path)  # atomic: a reader sees the old marker or the new one
    return path


def _this_process() -> tuple[str, int, float | None]:
    import os
    import socket

    import psutil

    try:
        started = psutil.Process().create_time()
    except psutil.Error:
        started = None
    return socket.gethostname(), os.getpid(), started


def mark_run_open(pending_dir: str | Path, run_id: str, tracking_uri: str) -> Path:
    """Record that this process owns the open run `run_id` (until `clear_run_marker` or `mark_run_end`)."""
    import time

    host, pid, started = _this_process()
    return _write_marker(pending_dir, RunMarker(run_id=run_id, tracking_uri=tracking_uri, host=host, pid=pid,
                                                pid_started=started, recorded_at=time.time()))


def mark_run_end(pending_dir: str | Path, run_id: str, tracking_uri: str, status: str, reason: str) -> Path:
    """Record the status `run_id` should end with, because MLflow could not be told now."""
    import time

    host, pid, started = _this_process()
    return _write_marker(pending_dir, RunMarker(run_id=run_id, tracking_uri=tracking_uri, host=host, pid=pid,
                                                pid_started=started, status=status, reason=reason[:1000],
                                                recorded_at=time.time()))


def clear_run_marker(pending_dir: str | Path, run_id: str) -> None:
    """The run is closed in MLflow: forget it."""
    (Path(pending_dir) / f"{run_id}.json").unlink(missing_ok=True)


def read_run_markers(pending_dir: str | Path) -> list[RunMarker]:
    """Every readable marker in `pending_dir`, oldest first (unreadable ones are skipped with a warning)."""
    d = Path(pending_dir)
    markers = []
    for path in sorted(d.glob("*.json")) if d.is_dir() else []:
        try:
            markers.append(RunMarker.model_validate_json(path.read_text(encoding="utf-8")))
        except (OSError, ValueError) as err:
            log.warning("ignoring unreadable run marker %s: %s", path, err)
    return sorted(markers, key=lambda m: m.recorded_at)


def owner_alive(marker: RunMarker) -> bool:
    """True while the process that opened the run still runs (or runs on another host, which we cannot check)."""
    import socket

    import psutil

    if marker.host != socket.gethostname():
        return True
    try:
        proc = psutil.Process(marker.pid)
        if proc.status() == psutil.STATUS_ZOMBIE:
            return False
        return marker.pid_started is None or abs(proc.create_time() - marker.pid_started) < 1.0
    except psutil.Error:
        return False


def reconcile_runs(registry: MlflowRegistry, pending_dir: str | Path) -> list[RunMarker]:
    """End the runs of this tracking server that earlier processes left open; return the markers settled.

    A marker with a status is applied as recorded; an open marker whose owner is gone ends FAILED. A run
    MLflow no longer has, or that is not RUNNING any more, just loses its marker. Stops at the first
    other MLflow error (the markers stay for the next attempt).
    """
    from mlflow.exceptions import MlflowException

    settled = []
    for marker in read_run_markers(pending_dir):
        if marker.tracking_uri != registry.tracking_uri or (marker.status is None and owner_alive(marker)):
            continue
        status = marker.status or "FAILED"
        reason = marker.reason if marker.status else (
            f"the process that ran it (pid {marker.pid} on {marker.host}) ended without closing the run")
        try:
            run = registry.client.get_run(marker.run_id)
            if run.info.status == "RUNNING":
                registry.set_tags(marker.run_id, {END_REASON_TAG: f"ended {status} by a later run: {reason}"})
                registry.end_run(marker.run_id, status)
                log.warning("MLflow run %s was left RUNNING; ended it as %s (%s)", marker.run_id, status, reason)
        except MlflowException as err:
            if err.get_http_status_code() != 404:
                log.warning("could not reconcile MLflow run %s yet: %s", marker.run_id, err)
                break
        clear_run_marker(pending_dir, marker.run_id)
        settled.append(marker.model_copy(update={"status": status, "reason": reason}))
    return settled
