"""`fineship tune`: a hyperparameter search that ends in a preset `fineship run --config` reproduces."""

from __future__ import annotations

import json
import os
import shutil
import sys
from pathlib import Path
from typing import Optional

import typer

from components.errors import FineshipError
from flows.cli_common import prepare_env

CONFIG_DIR = Path(__file__).with_name("configs")


def _config_path(config: Optional[str]) -> Optional[Path]:
    """A path, or a preset name in flows/configs (`ci`, `demo.yaml`)."""
    if config is None:
        return None
    p = Path(config)
    for candidate in (p, CONFIG_DIR / config, CONFIG_DIR / f"{config}.yaml"):
        if candidate.exists():
            return candidate
    return p


def tune(
    config: Optional[str] = typer.Option(None, "--config", "-c", help="YAML preset: a path or a name in flows/configs "
                                         "(demo, ci); its `tuning` section is the search."),
    trials: int = typer.Option(10, "--trials", "-n", min=1, max=10_000, help="Finished (completed or pruned) trials "
                               "the study should hold; a resumed search only runs the missing ones."),
    parallel: int = typer.Option(1, "--parallel", "-k", min=1, max=64, help="Trials at once; each gets cores / K "
                                 "torch threads. More workers (or machines) can run the same command on a shared "
                                 "tuning.storage."),
    timeout: Optional[float] = typer.Option(None, "--timeout", min=1, help="Start no new trial after this many "
                                            "seconds (running ones finish)."),
    preset: Optional[Path] = typer.Option(None, "--preset", help="Where to write the best trial's preset; default "
                                          "<home>/tuning/<study>/best.yaml."),
    set_: list[str] = typer.Option([], "--set", "-s", help="Override a field: section.field=value (repeatable), "
                                   "e.g. tuning.search_space.batch_size=[8,16]."),
    verbose: bool = typer.Option(False, "--verbose", "-v", help="Show every library and Prefect log line."),
    as_json: bool = typer.Option(False, "--json", help="Print the result as JSON on stdout."),
) -> None:
    """Search hyperparameters (Optuna TPE with pruning, or a SageMaker tuning job) and write the best preset.

    The study lives in tuning.storage (SQLite in the home by default): run the same command again to
    continue a search that was stopped."""
    prepare_env()
    if "prefect" in sys.modules:  # imported before the environment was prepared (the console entry's `main`)
        import prefect.context
        from prefect.settings import PREFECT_API_URL

        if os.environ.get("PREFECT_API_URL", PREFECT_API_URL.value()) != PREFECT_API_URL.value():
            prefect.context.refresh_global_settings_context()  # so the API URL (and the rest) set just now apply
    from components.config import load_config
    from flows.console import command_console
    from flows.tune import tune_flow

    with command_console("tune", verbose=verbose, json_mode=as_json) as console:
        try:
            cfg = load_config(_config_path(config), list(set_))
        except FineshipError as err:
            console.fail(err, 2, "configuration")
        try:
            result = tune_flow(cfg, trials=trials, parallel=parallel, timeout_seconds=timeout)
        except FineshipError as err:
            console.fail(err, 3)
        if preset is not None:  # the flow writes under the home only; this command's user picks another place
            preset.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(result.preset_path, preset)
            result = result.model_copy(update={"preset_path": str(preset)})
        if console.json_mode:
            console.emit_json({"ok": True, "command": "tune", **json.loads(result.model_dump_json())})
            return
        best = result.best
        console.out.print("")
        console.out.print("[bold]fineship tune complete[/]")
        console.row("study", f"{result.study_name}  ({result.storage})")
        console.row("trials", ", ".join(f"{n} {state.lower()}" for state, n in sorted(result.counts().items())))
        value = f"{best.value:.4f}" if best.value is not None else "not reported"
        console.row("best trial", f"{best.number}: {result.objective} {value} "
                    f"({', '.join(f'{k}={v}' for k, v in best.params.items())})")
        if result.parent_run_id:
            console.row("MLflow run", f"{result.parent_run_id} (trials nested under it)")
        console.row("preset", result.preset_path)
        console.row("reproduce", f"fineship run --config {result.preset_path}")
        console.row("full log", console.where_logged())
