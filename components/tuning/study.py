"""The Optuna study: where it lives, how it is opened and resumed, and what it found.

The study is kept in an RDB storage (SQLite in the fineship home by default, PostgreSQL for a team),
so trials run by several processes or machines share it and a killed search continues where it
stopped: finished trials stay, and a trial left RUNNING by a dead process is marked FAIL when the
search restarts (at once when its owner ran on this host, after a missed heartbeat otherwise).
"""

from __future__ import annotations

import hashlib
import json
import logging
import socket
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

from components.config import PipelineConfig, TuningConfig
from components.errors import TuningError
from components.tuning.result import TrialRecord

log = logging.getLogger(__name__)

DEFAULT_DB = "optuna.db"
OWNER_ATTR = "fineship.owner"
MLFLOW_RUN_ATTR = "fineship.mlflow_run_id"
PARENT_RUN_ATTR = "fineship.mlflow_parent_run_id"
FINISHED = ("COMPLETE", "PRUNED")


def tuning_dir(home: Path) -> Path:
    """Where local studies, trial data and presets live: `<home>/tuning`."""
    return Path(home).resolve() / "tuning"


def resolve_storage(storage: str | None, home: Path) -> str:
    """The storage URL of `tuning.storage`: SQLite under `<home>/tuning` when unset.

    An SQLite file elsewhere is refused: the URL is a run setting (a Prefect form can set it), and
    Optuna creating its tables in any database the worker can write (the MLflow store, say) would
    damage it. Server URLs (PostgreSQL, MySQL) are taken as they are, without a password.
    """
    root = tuning_dir(home)
    if storage is None:
        root.mkdir(parents=True, exist_ok=True)
        return f"sqlite:///{root / DEFAULT_DB}"
    from sqlalchemy.engine import make_url

    try:
        url = make_url(storage)
    except Exception as err:  # noqa: BLE001 - sqlalchemy raises ArgumentError and ValueError subclasses
        raise TuningError(f"tuning.storage {storage!r} is not an SQLAlchemy URL: {err}") from None
    if url.get_backend_name() == "sqlite":
        if not url.database or url.database == ":memory:":
            raise TuningError("tuning.storage must name an SQLite file (an in-memory study cannot be resumed)")
        path = Path(url.database).resolve()
        if root != path.parent and root not in path.parents:
            raise TuningError(f"tuning.storage {storage!r} is outside {root}: keep SQLite studies there (or unset "
                              f"tuning.storage), or use a PostgreSQL URL for a shared study")
        path.parent.mkdir(parents=True, exist_ok=True)
    return storage


def redact(url: str) -> str:
    """`url` as it may be shown: any password hidden."""
    from sqlalchemy.engine import make_url

    try:
        return make_url(url).render_as_string(hide_password=True)
    except Exception:  # noqa: BLE001 - never let a display helper fail the run
        return "<unparseable storage URL>"


def default_study_name(config: PipelineConfig, data_fingerprint: str) -> str:
    """`<model name>-<hash>` of the data and of everything in the config that shapes a trial's result.

    The same command on the same data names the same study (so it resumes); another search space,
    objective, base training config or dataset starts a new one.
    """
    shaping = config.model_dump(mode="json", include={"data", "split", "training", "tuning"})
    for volatile in ("storage", "study_name", "heartbeat_seconds", "max_failed_trials"):
        shaping["tuning"].pop(volatile, None)
    digest = hashlib.sha256(json.dumps([shaping, data_fingerprint], sort_keys=True).encode()).hexdigest()
    return f"{config.registry.model_name}-{digest[:10]}"


def _storage(url: str, tuning: TuningConfig, on_abandoned: Callable[[Any], None] | None) -> Any:
    from optuna.storages import RDBStorage

    engine_kwargs: dict[str, Any] = {}
    if url.startswith("sqlite"):
        engine_kwargs["connect_args"] = {"timeout": 60}  # parallel trials write (reports, heartbeats) to one file
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # heartbeat_interval is flagged experimental; the behaviour is what we use
        return RDBStorage(url, engine_kwargs=engine_kwargs, heartbeat_interval=tuning.heartbeat_seconds,
                          heartbeat_stale_trial_callback=(lambda study, trial: on_abandoned(trial))
                          if on_abandoned else None)


def pruner(tuning: TuningConfig) -> Any:
    """Optuna's median rule as `tuning.pruner` sets it, or no pruning."""
    import optuna

    if tuning.pruner.kind == "median":
        return optuna.pruners.MedianPruner(n_startup_trials=tuning.pruner.startup_trials,
                                           n_warmup_steps=tuning.pruner.warmup_steps)
    return optuna.pruners.NopPruner()


def open_study(url: str, name: str, tuning: TuningConfig, on_abandoned: Callable[[Any], None] | None = None,
               parallel: int = 1) -> Any:
    """Create or load the study `name` in `url`, with TPE sampling and the configured pruner.

    The sampler's seed is `tuning.sampler_seed` plus the trials already in the study, so a resumed
    search draws new points instead of replaying the first run's. `on_abandoned(frozen_trial)` is
    called for every trial this process marks FAIL because its worker died.
    """
    import optuna

    try:
        study = optuna.create_study(storage=_storage(url, tuning, on_abandoned), study_name=name, pruner=pruner(tuning),
                                    direction=tuning.resolved_direction, load_if_exists=True)
    except Exception as err:  # noqa: BLE001 - sqlalchemy/driver errors differ by backend; all mean "cannot open"
        raise TuningError(f"cannot open the Optuna study {name!r} in {redact(url)}: {err}; check tuning.storage "
                          f"and that the database is reachable") from err
    if study.direction.name.lower() != tuning.resolved_direction:
        raise TuningError(f"the study {name!r} was created to {study.direction.name.lower()} and this config asks to "
                          f"{tuning.resolved_direction}; set another tuning.study_name")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # constant_liar is flagged experimental
        study.sampler = optuna.samplers.TPESampler(
            seed=tuning.sampler_seed + len(study.get_trials(deepcopy=False)), n_startup_trials=tuning.startup_trials,
            constant_liar=parallel > 1)
    return study


def this_process() -> dict[str, Any]:
    """Who runs a trial: host, PID and the PID's start time (a reused PID is not the owner)."""
    import os

    import psutil

    try:
        started = psutil.Process().create_time()
    except psutil.Error:
        started = None
    return {"host": socket.gethostname(), "pid": os.getpid(), "started": started}


def owner_dead(owner: dict[str, Any] | None) -> bool:
    """True when the owner ran on this host and is gone; a trial owned elsewhere is left to the heartbeat."""
    import psutil

    if not owner or owner.get("host") != socket.gethostname():
        return False
    try:
        proc = psutil.Process(int(owner["pid"]))
        if proc.status() == psutil.STATUS_ZOMBIE:
            return True
        return owner.get("started") is not None and abs(proc.create_time() - float(owner["started"])) >= 1.0
    except psutil.Error:
        return True


def fail_abandoned_trials(study: Any, on_abandoned: Callable[[Any], None] | None = None) -> list[int]:
    """Mark FAIL the RUNNING trials whose worker died (here: owner gone; elsewhere: heartbeat stale).

    Returns the numbers of the trials this call failed; `on_abandoned` gets each one's frozen trial.
    """
    import optuna
    from optuna.exceptions import UpdateFinishedTrialError
    from optuna.trial import TrialState

    failed = []
    for trial in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        if owner_dead(trial.user_attrs.get(OWNER_ATTR)):
            try:
                if study._storage.set_trial_state_values(trial._trial_id, state=TrialState.FAIL):
                    failed.append(trial.number)
                    if on_abandoned:
                        on_abandoned(study._storage.get_trial(trial._trial_id))
            except UpdateFinishedTrialError:  # another process settled it first
                pass
    before = {t.number for t in study.get_trials(deepcopy=False, states=(TrialState.FAIL,))}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        optuna.storages.fail_stale_trials(study)  # calls on_abandoned through the storage's callback
    failed += sorted({t.number for t in study.get_trials(deepcopy=False, states=(TrialState.FAIL,))} - before)
    if failed:
        log.warning("trials %s were left RUNNING by a worker that died; marked FAIL", failed)
    return failed


def finished_trials(study: Any) -> int:
    """Trials that count towards `--trials`: completed or pruned."""
    from optuna.trial import TrialState

    return len(study.get_trials(deepcopy=False, states=(TrialState.COMPLETE, TrialState.PRUNED)))


def trial_records(study: Any) -> list[TrialRecord]:
    """Every trial of the study, as records, by number."""
    records = []
    for t in study.get_trials(deepcopy=False):
        seconds = (t.datetime_complete - t.datetime_start).total_seconds() \
            if t.datetime_complete and t.datetime_start else None
        records.append(TrialRecord(number=t.number, state=t.state.name, value=t.value, params=dict(t.params),
                                   mlflow_run_id=t.user_attrs.get(MLFLOW_RUN_ATTR),
                                   best_step=t.user_attrs.get("fineship.best_step"), seconds=seconds,
                                   error=t.user_attrs.get("fineship.error")))
    return sorted(records, key=lambda r: r.number)


def best_record(study: Any) -> TrialRecord:
    """The best completed trial; `TuningError` when none completed."""
    from optuna.trial import TrialState

    if not study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)):
        raise TuningError(f"no trial of study {study.study_name!r} completed (all pruned or failed); widen "
                          f"tuning.search_space, relax tuning.pruner or look at the trials' errors in MLflow")
    number = study.best_trial.number
    return next(r for r in trial_records(study) if r.number == number)
