"""`fineship monitor`: compare captured live traffic with the served version's profile; exit 1 on drift."""

from __future__ import annotations

from datetime import datetime
from typing import Optional

import typer

from components.config import DEFAULT_MODEL_NAME, LOCAL_ENDPOINT
from components.errors import FineshipError
from flows.cli_common import fail, prepare_env

EXIT_DRIFT, EXIT_USAGE, EXIT_ERROR = 1, 2, 4


def _since(value: Optional[str]) -> Optional[datetime]:
    if value is None:
        return None
    try:
        return datetime.fromisoformat(value)
    except ValueError:
        fail(FineshipError(f"--since {value!r} is not an ISO date or time, e.g. 2026-01-31 or 2026-01-31T08:00Z"),
             EXIT_USAGE)


def _thresholds(items: list[str]):
    from pydantic import ValidationError

    from components.config import MonitorConfig, parse_override

    try:
        return MonitorConfig.model_validate(dict(parse_override(i) for i in items))
    except (FineshipError, ValidationError) as err:
        fail(FineshipError(f"--set: {err}; the fields are those of components.config.MonitorConfig"), EXIT_USAGE)


def monitor_command(
    model: str = typer.Option(DEFAULT_MODEL_NAME, "--model", help="Registered model name."),
    alias: Optional[str] = typer.Option(None, "--alias", help="Alias of the served version (default champion)."),
    version: Optional[str] = typer.Option(None, "--version", help="Version number instead of an alias."),
    capture: Optional[str] = typer.Option(
        None, "--capture", help="Captured traffic: a directory inside FINESHIP_HOME, s3://bucket/prefix, or "
        "'sagemaker' (the SageMaker endpoint's data capture). Default: the local endpoint's capture."),
    endpoint_name: str = typer.Option(LOCAL_ENDPOINT, "--endpoint-name", help="Endpoint whose capture is read."),
    since: Optional[str] = typer.Option(None, "--since", help="Only traffic at or after this ISO time (UTC when no "
                                        "offset), e.g. 2026-01-31T08:00."),
    set_: list[str] = typer.Option([], "--set", "-s", help="A threshold as field=value (repeatable), e.g. "
                                   "max_label_psi=0.3; the fields of components.config.MonitorConfig."),
    as_json: bool = typer.Option(False, "--json", help="Print the report as JSON on stdout."),
    verbose: bool = typer.Option(False, "--verbose", "-v", help="Library and Prefect logs on the terminal."),
) -> None:
    """Compare the captured traffic with the profile stored with the served version: text length (KS), unknown
    words, predicted labels (PSI) and confidence (KS). Exit 0: no drift; 1: drift (the measures are named);
    2: bad arguments; 4: could not monitor."""
    prepare_env()
    from pydantic import ValidationError

    from flows.console import command_console
    from flows.monitor import MonitorRequest, monitor_flow

    try:
        request = MonitorRequest(model_name=model, version=version, alias=alias, capture=capture,
                                 endpoint_name=endpoint_name, since=_since(since), thresholds=_thresholds(set_))
    except ValidationError as err:
        fail(FineshipError("; ".join(f"{'.'.join(map(str, e['loc'])) or 'request'}: {e['msg']}"
                                     for e in err.errors())), EXIT_USAGE)
    with command_console("monitor", verbose=verbose, json_mode=as_json) as console:
        try:
            report = monitor_flow(request)
        except FineshipError as err:
            console.fail(err, EXIT_ERROR)
        if as_json:
            console.emit_json({"ok": True, "command": "monitor", "report": report.model_dump(mode="json")})
        else:
            console.out.print(report.summary(), markup=False)
            for m in report.measures:
                console.out.print(f"  {m.name:<17} {m.statistic} {m.value:.3f} (limit {m.threshold:g})"
                                  f"{'  DRIFT' if m.drifted else ''}: {m.current}; served version: {m.reference}",
                                  markup=False)
    if report.drifted:
        raise typer.Exit(EXIT_DRIFT)
