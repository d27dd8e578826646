"""The `fineship` command line."""

from __future__ import annotations

import json
import logging
import os
import sys
from pathlib import Path
from typing import Optional

import typer

from components.errors import FineshipError

app = typer.Typer(help="fineship: labelled text in, a validated, gated, registered classifier on an endpoint out.",
                  no_args_is_help=True, add_completion=False, pretty_exceptions_enable=False)
endpoint_app = typer.Typer(help="Inspect and stop local endpoints.", no_args_is_help=True)
app.add_typer(endpoint_app, name="endpoint")

CONFIG_DIR = Path(__file__).with_name("configs")


def _prepare_env() -> None:
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
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    logging.getLogger("great_expectations").setLevel(logging.WARNING)


def _fail(err: Exception, code: int = 1) -> None:
    typer.secho(f"error: {err}", fg=typer.colors.RED, err=True)
    raise typer.Exit(code)


def _resolve_config(config: Optional[str]) -> Optional[Path]:
    if config is None:
        return None
    p = Path(config)
    if not p.exists() and (CONFIG_DIR / config).exists():
        return CONFIG_DIR / config
    if not p.exists() and (CONFIG_DIR / f"{config}.yaml").exists():
        return CONFIG_DIR / f"{config}.yaml"
    return p


def _load(config: Optional[str], overrides: list[str], data: Optional[str], text_column: Optional[str],
          label_column: Optional[str], model: Optional[str] = None, labels: Optional[str] = None):
    from components.config import load_config

    extra = list(overrides)
    for key, value in (("data.path", data), ("data.text_column", text_column), ("data.label_column", label_column),
                       ("training.model", model)):
        if value is not None:
            extra.append(f"{key}={json.dumps(value)}")
    if labels is not None:
        extra.append(f"data.labels={json.dumps([s.strip() for s in labels.split(',') if s.strip()])}")
    return load_config(_resolve_config(config), extra)


ConfigOpt = typer.Option(None, "--config", "-c", help="YAML preset: a path or a name in flows/configs (demo, ci).")
SetOpt = typer.Option([], "--set", "-s", help="Override a field: section.field=value (repeatable).")
DataOpt = typer.Option(None, "--data", "-d", help="Dataset path or s3:// URI (overrides data.path).")
TextOpt = typer.Option(None, "--text-column", help="Text column (overrides data.text_column).")
LabelOpt = typer.Option(None, "--label-column", help="Label column (overrides data.label_column).")


@app.command()
def run(
    config: Optional[str] = ConfigOpt,
    set_: list[str] = SetOpt,
    data: Optional[str] = DataOpt,
    text_column: Optional[str] = TextOpt,
    label_column: Optional[str] = LabelOpt,
    model: Optional[str] = typer.Option(None, "--model", help="Hugging Face id or local path (overrides training.model)."),
    deploy: bool = typer.Option(True, "--deploy/--no-deploy", help="Run the deployment flow after a passed gate."),
) -> None:
    """Run the training flow, then the deployment flow for the registered version."""
    _prepare_env()
    try:
        cfg = _load(config, set_, data, text_column, label_column, model)
    except FineshipError as err:
        _fail(err, 2)
    from flows.deployment import DeployRequest, deployment_flow
    from flows.settings import Settings
    from flows.training import training_flow

    settings = Settings()
    try:
        outcome = training_flow(cfg)
    except FineshipError as err:
        _fail(err, 3)
    reg = outcome.registered
    typer.echo("")
    typer.secho("fineship run complete", bold=True)
    typer.echo(f"  MLflow run:        {outcome.run_id}  (tracking: {settings.mlflow_tracking_uri})")
    typer.echo(f"  test accuracy:     {outcome.candidate.accuracy:.4f}   macro-F1: {outcome.candidate.macro_f1:.4f}"
               f"   (n={outcome.candidate.n})")
    typer.echo(f"  gate:              {outcome.decision.summary()}")
    typer.echo(f"  registered model:  {reg.name} version {reg.version} (aliases: {', '.join(reg.aliases)})")
    if not deploy or cfg.deploy.target == "none":
        return
    if "champion" not in reg.aliases:
        typer.echo(f"  not deployed:      v{reg.version} awaits review; approve it with\n"
                   f"                     fineship approve {reg.name} {reg.version} --by YOUR_NAME\n"
                   f"                     then: fineship deploy --model {reg.name} --version {reg.version}")
        return
    try:
        record = deployment_flow(DeployRequest(model_name=reg.name, version=reg.version, target=cfg.deploy.target,
                                               endpoint_name=cfg.deploy.endpoint_name, host=cfg.deploy.host,
                                               port=cfg.deploy.port, smoke_texts=cfg.deploy.smoke_texts))
    except FineshipError as err:
        _fail(err, 4)
    from components.deploy.local import invoke

    sample = outcome.smoke_texts[0]
    pred = invoke(record.url, [sample])[0]
    typer.echo(f"  endpoint:          {record.url}/invocations  (pid {record.pid})")
    typer.echo(f"  sample prediction: {sample[:70]!r}")
    typer.echo(f"                     -> {pred['label']} (score {pred['score']:.3f}) over HTTP")
    typer.echo(f"  stop the endpoint: fineship endpoint stop {record.endpoint_name}")


@app.command()
def validate(
    data: str = typer.Option(..., "--data", "-d", help="Dataset path or s3:// URI."),
    text_column: Optional[str] = TextOpt,
    label_column: Optional[str] = LabelOpt,
    labels: Optional[str] = typer.Option(None, "--labels", help="Comma-separated allowed labels."),
    config: Optional[str] = ConfigOpt,
    set_: list[str] = SetOpt,
    as_json: bool = typer.Option(False, "--json", help="Print the report as JSON."),
) -> None:
    """Validate a dataset only: exit 0 when valid, 1 with a report when not (2 for unreadable input)."""
    _prepare_env()
    from components.data.io import read_dataset
    from components.data.validation import ValidationPolicy, validate_frame
    from flows.settings import Settings

    try:
        cfg = _load(config, set_, data, text_column, label_column, labels=labels)
        s3 = Settings().s3_client() if data.startswith("s3://") else None
        df, ref = read_dataset(cfg.data.path, cfg.data.format, s3_client=s3)
    except FineshipError as err:
        _fail(err, 2)
    d = cfg.data
    report = validate_frame(df, ValidationPolicy(text_column=d.text_column, label_column=d.label_column,
                                                 labels=d.labels, min_examples_per_class=d.min_examples_per_class),
                            ref.uri)
    typer.echo(report.model_dump_json(indent=2) if as_json else report.summary())
    raise typer.Exit(0 if report.passed else 1)


@app.command()
def serve(
    model_dir: Path = typer.Option(..., "--model-dir", help="Model package (or Hugging Face classifier) directory."),
    port: int = typer.Option(8080, "--port", "-p"),
    host: str = typer.Option("127.0.0.1", "--host", help="Bind address; loopback unless you mean otherwise."),
    max_batch: int = typer.Option(32, help="Largest micro-batch."),
    max_wait_ms: float = typer.Option(5.0, help="Longest wait to fill a micro-batch."),
) -> None:
    """Serve a model package with the SageMaker contract (GET /ping, POST /invocations)."""
    from components.package import check_package
    from components.serving.app import ServerOptions
    from components.serving.app import serve as run_server

    missing = check_package(model_dir)
    if missing:
        _fail(FineshipError(f"{model_dir} is not a servable model package: missing {', '.join(missing)}"), 2)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    run_server(model_dir, host, port, ServerOptions(max_batch=max_batch, max_wait_ms=max_wait_ms))


@app.command()
def deploy(
    model: str = typer.Option(..., "--model", help="Registered model name."),
    version: Optional[str] = typer.Option(None, "--version", help="Version number."),
    alias: Optional[str] = typer.Option(None, "--alias", help="Alias, e.g. champion."),
    target: str = typer.Option("local", "--target", help="local"),
    endpoint_name: str = typer.Option("fineship-local", "--endpoint-name"),
    port: int = typer.Option(8080, "--port"),
) -> None:
    """Deploy a registered model version (by number or alias)."""
    _prepare_env()
    from pydantic import ValidationError

    from flows.deployment import DeployRequest, deployment_flow

    try:
        request = DeployRequest(model_name=model, version=version, alias=alias, target=target,
                                endpoint_name=endpoint_name, port=port)
    except ValidationError as err:
        _fail(FineshipError("; ".join(e["msg"] for e in err.errors())), 2)
    try:
        record = deployment_flow(request)
    except FineshipError as err:
        _fail(err, 4)
    typer.echo(f"{record.model_name} v{record.model_version} serving at {record.url} (pid {record.pid})")


def _registry():
    from components.registry.mlflow_registry import MlflowRegistry
    from flows.settings import Settings

    return MlflowRegistry(Settings().mlflow_tracking_uri)


ByOpt = typer.Option(..., "--by", help="Reviewer name recorded on the version.")
CommentOpt = typer.Option("", "--comment", help="Optional comment recorded with the decision.")


@app.command()
def approve(model: str = typer.Argument(..., help="Registered model name."),
            version: str = typer.Argument(..., help="Version number."), by: str = ByOpt,
            comment: str = CommentOpt) -> None:
    """Record an approval on a version and promote it to champion."""
    _prepare_env()
    from components.registry.review import approve as do_approve

    try:
        change = do_approve(_registry(), model, version, by, comment)
    except FineshipError as err:
        _fail(err, 1)
    typer.echo(f"{model} v{version} approved by {by}; champion {change.from_version or '(none)'} -> {change.to_version}")


@app.command()
def reject(model: str = typer.Argument(...), version: str = typer.Argument(...), by: str = ByOpt,
           comment: str = CommentOpt) -> None:
    """Record a rejection on a version; it will not be promoted or deployed."""
    _prepare_env()
    from components.registry.review import reject as do_reject

    try:
        do_reject(_registry(), model, version, by, comment)
    except FineshipError as err:
        _fail(err, 1)
    typer.echo(f"{model} v{version} rejected by {by}")


@app.command()
def rollback(model: str = typer.Argument(...), by: str = typer.Option("cli", "--by")) -> None:
    """Move champion back to the previous approved version."""
    _prepare_env()
    from components.registry.review import rollback as do_rollback

    try:
        change = do_rollback(_registry(), model, by)
    except FineshipError as err:
        _fail(err, 1)
    typer.echo(f"{model}: champion v{change.from_version} -> v{change.to_version}")


def _state_dir() -> Path:
    from flows.settings import Settings

    return Settings().endpoints_dir


@endpoint_app.command("list")
def endpoint_list() -> None:
    """List local endpoints and whether they are running."""
    from components.deploy.local import is_running, list_records

    records = list_records(_state_dir())
    if not records:
        typer.echo("no endpoints")
    for r in records:
        state = "running" if is_running(r) else "stopped"
        typer.echo(f"{r.endpoint_name:20s} {state:8s} {r.url:28s} {r.model_name} v{r.model_version}")


@endpoint_app.command("status")
def endpoint_status(name: str = typer.Argument("fineship-local")) -> None:
    """Show one endpoint's record and health."""
    import httpx

    from components.deploy.local import is_running, read_record

    r = read_record(_state_dir(), name)
    if r is None:
        _fail(FineshipError(f"no endpoint named {name}; see `fineship endpoint list`"), 1)
    health = "down"
    if is_running(r):
        try:
            health = f"ping HTTP {httpx.get(r.url + '/ping', timeout=2).status_code}"
        except httpx.HTTPError as err:
            health = f"not answering ({type(err).__name__})"
    typer.echo(r.model_dump_json(indent=2))
    typer.echo(f"health: {health}")


@endpoint_app.command("stop")
def endpoint_stop(name: str = typer.Argument("fineship-local")) -> None:
    """Stop a local endpoint."""
    from components.deploy.local import stop_endpoint

    typer.echo(f"stopped {name}" if stop_endpoint(_state_dir(), name) else f"{name} was not running")


def main() -> None:  # pragma: no cover - console entry
    app()


if __name__ == "__main__":  # pragma: no cover
    sys.exit(app())
