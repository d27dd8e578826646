"""One trial in a process of its own: train with the drawn values, report each evaluation, stop when pruned.

Trials run in a pool of child processes (`TrialPool`, one per parallel trial) so that trials
running at once never share torch's global random generators (a trial's score is then exactly
what `fineship run` with its preset gets) or its thread pool. The child opens the study itself to
report each validation evaluation (`trial.report`) and ask the pruner (`trial.should_prune`), and
returns a `TrialOutcome`; the parent records heartbeats while it waits and finishes the trial in
the study (`study.tell`).
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures import TimeoutError as FutureTimeout
from concurrent.futures.process import BrokenProcessPool
from multiprocessing import get_context
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from components.config import TrainingConfig, TuningConfig
from components.tuning.study import pruner

log = logging.getLogger(__name__)

PRUNED_MESSAGE = "pruned by the median rule"


class TrialRequest(BaseModel):
    """Everything the trial process needs: where the study is, which trial, what to train on."""

    model_config = ConfigDict(frozen=True)

    storage: str
    study_name: str
    trial_id: int
    trial_number: int
    tuning: TuningConfig
    training: TrainingConfig
    labels: list[str]
    train_path: str = Field(description="Parquet file with the columns text and label (strings).")
    validation_path: str
    work_dir: str


class TrialOutcome(BaseModel):
    """How a trial ended, as the trial process reports it."""

    model_config = ConfigDict(frozen=True)

    state: Literal["COMPLETE", "PRUNED", "FAIL"]
    value: float | None = None
    best_step: int | None = None
    steps: int | None = None
    history: list[dict[str, float]] = Field(default_factory=list, description="One record per evaluation.")
    train_seconds: float | None = None
    error: str | None = None
    training: dict[str, Any] | None = Field(None, description="The training configuration as trained (the "
                                            "recipe's choices filled in), as JSON.")


def objective_value(history: Sequence[dict[str, float]], best_step: int, objective: str) -> float | None:
    """The objective at the evaluation whose weights training kept (`best_step`)."""
    for record in history:
        if int(record["step"]) == best_step and objective in record:
            return float(record[objective])
    return None


def _watch_parent(parent: int) -> None:
    while True:
        if os.getppid() != parent:
            os._exit(137)  # the search that started us is gone: stop training at once
        time.sleep(0.5)


def run_in_this_process(request: TrialRequest) -> TrialOutcome:
    """Train the trial, reporting evaluations to the study; what the trial process does."""
    import optuna
    import pandas as pd

    from components.training.trainer import train

    history: list[dict[str, float]] = []
    objective = request.tuning.objective
    study = optuna.load_study(study_name=request.study_name, storage=request.storage,
                              pruner=pruner(request.tuning))
    trial = optuna.Trial(study, request.trial_id)

    def report(metrics: dict[str, float], step: int) -> None:
        if objective not in metrics:
            return  # a training-loss record between evaluations
        history.append({"step": float(step), **{k: float(v) for k, v in metrics.items()}})
        trial.report(float(metrics[objective]), step)
        if trial.should_prune():
            raise optuna.TrialPruned(f"{PRUNED_MESSAGE} at step {step}: {objective} {metrics[objective]:.4f}")

    train_df, val_df = pd.read_parquet(request.train_path), pd.read_parquet(request.validation_path)
    out = Path(request.work_dir) / "package"
    try:
        trained = train(train_df["text"].tolist(), train_df["label"].tolist(), val_df["text"].tolist(),
                        val_df["label"].tolist(), request.labels, request.training, out, on_metrics=report,
                        progress=False, stop_signals=())
    except optuna.TrialPruned as pruned:
        return TrialOutcome(state="PRUNED", value=history[-1][objective] if history else None,
                            best_step=int(history[-1]["step"]) if history else None, history=history,
                            error=str(pruned))
    value = objective_value(trained.history, trained.best_step, objective)
    if value is None:
        return TrialOutcome(state="FAIL", history=history, steps=trained.steps,
                            error=f"training recorded no {objective} (is the validation split empty?)")
    return TrialOutcome(state="COMPLETE", value=value, best_step=trained.best_step, steps=trained.steps,
                        history=history, train_seconds=trained.train_seconds,
                        training=trained.training.model_dump(mode="json") if trained.training else None)


def _init_worker(parent: int, log_dir: str) -> None:
    """In each trial process: stop when the search dies, and write output to a log file, not the terminal."""
    threading.Thread(target=_watch_parent, args=(parent,), daemon=True).start()
    Path(log_dir).mkdir(parents=True, exist_ok=True)
    fd = os.open(Path(log_dir) / f"worker-{os.getpid()}.log", os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
    os.dup2(fd, 1)
    os.dup2(fd, 2)
    os.close(fd)
    os.environ["TOKENIZERS_PARALLELISM"] = "false"
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(levelname)s %(name)s: %(message)s")


def _run_request(request_json: str) -> str:
    """Run one trial in a pool process; the outcome as JSON (a failure is an outcome, never an exception)."""
    request = TrialRequest.model_validate_json(request_json)
    try:
        outcome = run_in_this_process(request)
    except Exception as err:  # noqa: BLE001 - any failure of a trial is reported as its outcome, never lost
        log.exception("trial %d failed", request.trial_number)
        outcome = TrialOutcome(state="FAIL", error=f"{type(err).__name__}: {err}"[:2000])
    return outcome.model_dump_json()


class TrialPool:
    """`size` long-lived trial processes (spawned, so no thread or lock of this process is copied).

    Each pays the torch/transformers import once, not once per trial. A process that dies (killed,
    out of memory) fails its trial and the pool is rebuilt for the next ones; every process stops
    within a second of this one's death, so a killed search leaves no training behind.
    """

    def __init__(self, size: int, log_dir: str | Path) -> None:
        self.size, self.log_dir = size, str(log_dir)
        self._lock = threading.Lock()
        self._executor: ProcessPoolExecutor | None = None

    def _pool(self) -> ProcessPoolExecutor:
        with self._lock:
            if self._executor is None:
                self._executor = ProcessPoolExecutor(max_workers=self.size, mp_context=get_context("spawn"),
                                                     initializer=_init_worker, initargs=(os.getpid(), self.log_dir))
            return self._executor

    def run(self, request: TrialRequest, heartbeat: Callable[[], None] | None = None,
            heartbeat_seconds: float = 30.0) -> TrialOutcome:
        """Run the trial in a pool process and return its outcome; `heartbeat()` is called while it runs."""
        pool = self._pool()
        future = pool.submit(_run_request, request.model_dump_json())
        while True:
            if heartbeat:
                heartbeat()
            try:
                return TrialOutcome.model_validate_json(future.result(timeout=heartbeat_seconds))
            except FutureTimeout:
                continue
            except BrokenProcessPool as err:
                with self._lock:
                    if self._executor is pool:
                        self._executor = None
                return TrialOutcome(state="FAIL", error=f"the trial process died ({err}); see the worker logs in "
                                    f"{self.log_dir}")

    def close(self, force: bool = False) -> None:
        """Stop the trial processes; `force`: end running trials too (the search failed or was interrupted)."""
        with self._lock:
            pool, self._executor = self._executor, None
        if pool is None:
            return
        if not force:
            pool.shutdown(wait=True, cancel_futures=True)
            return
        processes = list((getattr(pool, "_processes", None) or {}).values())  # no public handle on the workers
        for proc in processes:
            if proc.is_alive():
                proc.terminate()
        pool.shutdown(wait=True, cancel_futures=True)
