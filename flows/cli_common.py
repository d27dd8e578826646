"""What every `fineship` command shares: the environment set before Prefect or MLflow load, errors, the registry."""

from __future__ import annotations

import logging
import os

import typer


def prepare_env() -> None:
    """Environment defaults applied before Prefect or MLflow are imported."""
    from flows.settings import Settings

    settings = Settings()
    home = settings.home_dir
    home.mkdir(parents=True, exist_ok=True)
    defaults = {
        "PREFECT_HOME": str(home / "prefect"),
        "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
        "DO_NOT_TRACK": "1",
        "HF_HUB_OFFLINE": "1",
        "TOKENIZERS_PARALLELISM": "false",
        "MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR": "false",
        "PREFECT_LOGGING_LOGGERS_COMPONENTS_LEVEL": "INFO",
    }
    for k, v in defaults.items():
        os.environ.setdefault(k, v)
    if settings.prefect_api_url:
        os.environ["PREFECT_API_URL"] = settings.prefect_api_url
    else:
        from flows.stack import read_state, stack_env

        state = read_state()  # a running `make up` stack is used automatically
        if state is not None:
            for k, v in stack_env(state).items():
                os.environ.setdefault(k, v)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    logging.getLogger("great_expectations").setLevel(logging.WARNING)


def fail(err: Exception, code: int = 1) -> None:
    typer.secho(f"error: {err}", fg=typer.colors.RED, err=True)
    raise typer.Exit(code)


def open_registry():
    """The MLflow registry of this environment."""
    from components.registry.mlflow_registry import MlflowRegistry
    from flows.settings import Settings

    settings = Settings()
    return MlflowRegistry(settings.mlflow_tracking_uri, settings.mlflow_artifact_root)
