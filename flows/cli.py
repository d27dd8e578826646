"""The `fineship` command line."""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import Optional

import typer

from components.config import LOCAL_ENDPOINT
from components.errors import FineshipError
from flows.cli_common import fail, open_registry, prepare_env

app = typer.Typer(help="fineship: labelled text in, a validated, gated, registered classifier on an endpoint out.",
                  no_args_is_help=True, add_completion=False, pretty_exceptions_enable=False)
endpoint_app = typer.Typer(help="Inspect, stop and delete local and SageMaker endpoints.", no_args_is_help=True)
app.add_typer(endpoint_app, name="endpoint")
reviewer_app = typer.Typer(help="Reviewer keys: approvals are signatures.", no_args_is_help=True)
app.add_typer(reviewer_app, name="reviewer")


def _add_stack_commands() -> None:
    from flows.cli_models import models_app
    from flows.cli_monitor import monitor_command
    from flows.cli_predict import predict
    from flows.cli_tune import tune
    from flows.stack import stack_app

    app.command("tune")(tune)
    app.add_typer(stack_app, name="stack")
    app.add_typer(models_app, name="models")
    app.command("monitor")(monitor_command)
    app.command("predict")(predict)


_add_stack_commands()

CONFIG_DIR = Path(__file__).with_name("configs")
_prepare_env, _fail, _registry = prepare_env, fail, open_registry


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


VerboseOpt = typer.Option(False, "--verbose", "-v", help="Show every library and Prefect log line on the terminal "
                          "instead of the log file.")
JsonOpt = typer.Option(False, "--json", help="Print a machine-readable summary (JSON) on stdout; stage lines go to "
                       "stderr.")


@app.command()
def run(
    config: Optional[str] = ConfigOpt,
    set_: list[str] = SetOpt,
    data: Optional[str] = DataOpt,
    text_column: Optional[str] = TextOpt,
    label_column: Optional[str] = LabelOpt,
    model: Optional[str] = typer.Option(None, "--model", help="Hugging Face id or local path (overrides training.model)."),
    deploy: bool = typer.Option(True, "--deploy/--no-deploy", help="Run the deployment flow after a passed gate."),
    verbose: bool = VerboseOpt,
    as_json: bool = JsonOpt,
) -> None:
    """Run the training flow, then the deployment flow for the registered version.

    One line per stage as it finishes, then a summary; the libraries' output goes to the log file it names."""
    _prepare_env()
    from flows.console import command_console

    with command_console("run", verbose=verbose, json_mode=as_json) as console:
        try:
            cfg = _load(config, set_, data, text_column, label_column, model)
        except FineshipError as err:
            console.fail(err, 2, "configuration")
        _run(cfg, deploy, console)


def _run(cfg, deploy: bool, console) -> None:
    from flows.deployment import DeployRequest, deployment_flow
    from flows.settings import Settings
    from flows.training import training_flow

    settings = Settings()
    try:
        outcome = training_flow(cfg)
    except FineshipError as err:
        console.fail(err, 3)
    reg, cand = outcome.registered, outcome.candidate
    summary: dict = {"ok": True, "command": "run", "mlflow_run_id": outcome.run_id,
                     "tracking_uri": settings.mlflow_tracking_uri,
                     "test": {"accuracy": cand.accuracy, "macro_f1": cand.macro_f1, "n": cand.n,
                              "accuracy_ci": list(cand.accuracy_ci)},
                     "gate": {"passed": outcome.decision.passed, "reasons": outcome.decision.reasons},
                     "registered": {"name": reg.name, "version": reg.version, "aliases": list(reg.aliases)},
                     "links": {}, "endpoint": None}
    if settings.mlflow_ui_url:
        ui = settings.mlflow_ui_url.rstrip("/")
        summary["links"]["mlflow_version"] = f"{ui}/#/models/{reg.name}/versions/{reg.version}"
    if os.environ.get("PREFECT_UI_URL"):
        summary["links"]["prefect_runs"] = f"{os.environ['PREFECT_UI_URL']}/runs"
    if deploy and cfg.deploy.target != "none" and "champion" in reg.aliases:
        try:
            record = deployment_flow(DeployRequest(model_name=reg.name, version=reg.version,
                                                   **cfg.deploy.model_dump()))
        except FineshipError as err:
            console.fail(err, 4, f"deploying {reg.name} v{reg.version} (registered; any endpoint already running keeps serving)")
        summary["endpoint"] = _endpoint_summary(record, outcome.smoke_texts[0])
    elif deploy and cfg.deploy.target != "none":
        summary["awaits_review"] = True
    if console.json_mode:
        console.emit_json(summary)
    else:
        _print_run_summary(console, summary, outcome.decision.summary())


def _print_run_summary(console, summary: dict, gate: str) -> None:
    reg, test = summary["registered"], summary["test"]
    console.out.print("")
    console.out.print("[bold]fineship run complete[/]")
    console.row("MLflow run", f"{summary['mlflow_run_id']}  (tracking: {summary['tracking_uri']})")
    console.row("test accuracy", f"{test['accuracy']:.4f}   macro-F1: {test['macro_f1']:.4f}   (n={test['n']})")
    console.row("gate", gate)
    console.row("registered model", f"{reg['name']} version {reg['version']} (aliases: {', '.join(reg['aliases'])})")
    if "mlflow_version" in summary["links"]:
        console.row("MLflow UI", summary["links"]["mlflow_version"])
    if "prefect_runs" in summary["links"]:
        console.row("Prefect UI", summary["links"]["prefect_runs"])
    if summary.get("awaits_review"):
        console.row("not deployed", f"v{reg['version']} awaits review; approve it with")
        console.row("", f"fineship approve {reg['name']} {reg['version']}   (signs it with your reviewer key)")
        console.row("", f"then: fineship deploy --model {reg['name']} --version {reg['version']}")
    if summary["endpoint"]:
        ep = summary["endpoint"]
        console.row("endpoint", f"{ep['url']}/invocations  (pid {ep['pid']})")
        console.row("sample prediction", f"{ep['sample'][:70]!r}")
        console.row("", f"-> {ep['label']} (score {ep['score']:.3f}) over HTTP")
        console.row("stop the endpoint", f"fineship endpoint stop {ep['name']}")
        if os.environ.get("PREFECT_UI_URL"):
            console.row("the stack", "Prefect, MLflow and the endpoint keep running; stop everything with: make down")
    console.row("full log", console.where_logged())


def _endpoint_summary(record, sample: str) -> dict:
    """The endpoint and one prediction asked of it over HTTP, as `run` reports them."""
    from components.deploy.local import invoke

    pred = invoke(record.url, [sample])[0]
    return {"name": record.endpoint_name, "url": record.url, "pid": record.pid, "sample": sample,
            "label": pred["label"], "score": pred["score"]}


@app.command()
def validate(
    data: str = typer.Option(..., "--data", "-d", help="Dataset path or s3:// URI."),
    text_column: Optional[str] = TextOpt,
    label_column: Optional[str] = LabelOpt,
    labels: Optional[str] = typer.Option(None, "--labels", help="Comma-separated allowed labels."),
    config: Optional[str] = ConfigOpt,
    set_: list[str] = SetOpt,
    as_json: bool = typer.Option(False, "--json", help="Print the report as JSON."),
    write_clean: Optional[Path] = typer.Option(
        None, "--write-clean", help="Write the data after the data.rules drop / repair policies to this local path "
        "(format by its extension, else the input's); refused while an error rule fails, never the input file."),
) -> None:
    """Validate a dataset only: exit 0 when valid, 1 with a report when not (2 for unreadable input)."""
    _prepare_env()
    from components.data.cleaning import clean_frame
    from components.data.io import detect_format, read_dataset, write_dataset
    from components.data.policy import rule_tokenizer, validation_policy
    from components.data.validation import validate_frame
    from flows.settings import Settings

    try:
        cfg = _load(config, set_, data, text_column, label_column, labels=labels)
        if write_clean is not None and not data.startswith("s3://") and \
                write_clean.resolve() == Path(cfg.data.path).resolve():
            raise FineshipError(f"--write-clean {write_clean} is the input file; write the cleaned data elsewhere")
        s3 = Settings().s3_client() if data.startswith("s3://") else None
        df, ref = read_dataset(cfg.data.path, cfg.data.format, s3_client=s3)
    except FineshipError as err:
        _fail(err, 2)
    # The same policy, cleaning, tokenizer (truncation rule) and suite as the training flow's validation step.
    policy = validation_policy(cfg)
    cleaned = clean_frame(df, policy)
    report = validate_frame(cleaned.frame, policy, ref.uri, rule_tokenizer(cfg.training.model),
                            cleaning=cleaned.report)
    typer.echo(report.model_dump_json(indent=2) if as_json else report.summary())
    if write_clean is not None:
        if not report.passed:
            _fail(FineshipError(f"{write_clean} not written: an error rule still fails on the cleaned data"), 1)
        try:
            fmt = detect_format(str(write_clean))
        except FineshipError:
            fmt = ref.format  # no known extension: the input's format
        try:
            write_dataset(cleaned.frame, write_clean, fmt)
        except OSError as err:
            _fail(FineshipError(f"{write_clean} not written: {err.strerror or err}; check the directory exists"), 2)
        typer.echo(f"wrote {len(cleaned.frame)} rows ({fmt}) to {write_clean}", err=as_json)
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
    target: str = typer.Option("local", "--target", help="local (a process on this machine) or sagemaker."),
    endpoint_name: Optional[str] = typer.Option(
        None, "--endpoint-name", help="Default: fineship-local; for sagemaker FINESHIP_SAGEMAKER_ENDPOINT_NAME, else "
        "<FINESHIP_AWS_PROJECT>-<FINESHIP_AWS_ENVIRONMENT>."),
    port: int = typer.Option(8080, "--port", help="Port of a local endpoint (0 picks a free one)."),
    torchscript: bool = typer.Option(False, "--torchscript", help="sagemaker: ship the version's TorchScript export "
                                     "(same as --set sagemaker.torchscript=true)."),
    dry_run: bool = typer.Option(False, "--dry-run", help="sagemaker: print every AWS call the deployment would make "
                                 "and change nothing."),
    backend: str = typer.Option("auto", "--backend", help="What serves: auto (the fastest variant that passed its "
                                "gate on the version's test split), eager, torchscript, onnx, onnx-int8 or bf16."),
    set_: list[str] = typer.Option([], "--set", "-s", help="An option as deploy.field=value (as `fineship run "
                                   "--set`: the local endpoint's, e.g. deploy.capture_percent=10, "
                                   "deploy.variants=[eager]) or sagemaker.field=value (e.g. "
                                   "sagemaker.instance_type=ml.c5.xlarge, sagemaker.strategy=canary; the fields of "
                                   "components.deploy.sagemaker.SageMakerOptions); repeatable."),
    verbose: bool = VerboseOpt,
) -> None:
    """Deploy a registered model version (by number or alias) to a local endpoint or to SageMaker."""
    _prepare_env()
    from pydantic import ValidationError

    from components.deploy.sagemaker import parse_options
    from flows.deployment import DeployRequest, deployment_flow

    from components.config import endpoint_overrides

    sagemaker_sets = [s for s in set_ if s.strip().startswith("sagemaker.")]
    try:
        options = parse_options([*sagemaker_sets, *(["sagemaker.torchscript=true"] if torchscript else [])])
        endpoint = {"port": port, "backend": backend} | endpoint_overrides(
            [s for s in set_ if s not in sagemaker_sets])
    except FineshipError as err:
        _fail(err, 2)
    try:
        request = DeployRequest(model_name=model, version=version, alias=alias, target=target,
                                endpoint_name=endpoint_name, dry_run=dry_run, sagemaker=options, **endpoint)
    except ValidationError as err:
        _fail(FineshipError("; ".join(f"{'.'.join(map(str, e['loc'])) or 'request'}: {e['msg']}"
                                      for e in err.errors())), 2)
    from flows.console import command_console

    with command_console("deploy", verbose=verbose) as console:
        try:
            result = deployment_flow(request)
        except FineshipError as err:
            console.fail(err, 4)
        _print_deployment(result, console.out)


def _print_deployment(result, out) -> None:
    from components.deploy.sagemaker import DeploymentPlan, SageMakerDeploymentRecord

    if isinstance(result, DeploymentPlan):
        out.print(result.render(dry_run=True), markup=False)
        out.print(f"dry run: {len(result.mutating_calls)} changing calls planned, none made", markup=False)
    elif isinstance(result, SageMakerDeploymentRecord):
        lines = [f"{result.model_name} v{result.model_version} serving on SageMaker endpoint {result.endpoint_name} "
                 f"({result.region})",
                 f"  endpoint config: {result.endpoint_config}"
                 + (f" (previous {result.previous_config}, kept for rollback)" if result.previous_config else ""),
                 f"  smoke test:      {result.smoke.agreed}/{result.smoke.n} predictions equal the registered model's",
                 f"  status:          fineship endpoint status {result.endpoint_name}"]
        out.print("\n".join(lines), markup=False)
    else:
        out.print(f"{result.model_name} v{result.model_version} serving at {result.url} (pid {result.pid})",
                  markup=False)


ByOpt = typer.Option(..., "--by", help="Reviewer name recorded on the version.")
CommentOpt = typer.Option("", "--comment", help="Optional comment recorded with the decision.")
KeyOpt = typer.Option(None, "--key", help="Your reviewer key (NAME of `fineship reviewer init NAME`); default: the "
                      "only key in the reviewer key directory.")


def _signer(name: Optional[str]):
    """The reviewer's signer: `--key NAME`, or the only key in the reviewer key directory."""
    from components.registry.keys import default_reviewer_dir, load_reviewer, reviewer_passphrase
    from flows.settings import Settings

    key_dir = Settings().reviewer_keys or default_reviewer_dir()
    if name is None:
        keys = sorted(p.stem for p in key_dir.glob("*.key")) if key_dir.is_dir() else []
        if len(keys) != 1:
            raise FineshipError(f"{'no reviewer key' if not keys else 'several reviewer keys'} in {key_dir}: "
                                + ("make one with `fineship reviewer init NAME`" if not keys
                                   else f"choose one with --key ({', '.join(keys)})"))
        name = keys[0]
    return load_reviewer(name, key_dir, reviewer_passphrase())


@app.command()
def approve(model: str = typer.Argument(..., help="Registered model name."),
            version: str = typer.Argument(..., help="Version number."), key: Optional[str] = KeyOpt,
            override: Optional[str] = typer.Option(
                None, "--override", help="Approve a version whose gate did not pass or that was rejected: the reason "
                "(signed and recorded on the version)."),
            comment: str = CommentOpt,
            sign_only: bool = typer.Option(False, "--sign-only", help="Print the signature (JSON) for the promote "
                                           "flow's form instead of recording it.")) -> None:
    """Sign the version's files with your reviewer key, record the approval and promote it to champion."""
    _prepare_env()
    import tempfile

    from components.registry.review import record_approval, sign_approval
    from flows.settings import Settings

    try:
        registry, policy, signer = _registry(), Settings().review_policy(), _signer(key)
        registry.get_version(model, version=version)  # a clear error for an unknown model or version
        with tempfile.TemporaryDirectory(prefix="fineship-approve-") as tmp:
            package = registry.download_version(model, version, tmp).package_dir
            bundle = sign_approval(registry, model, version, signer, package, policy, override, comment)
            if sign_only:
                typer.echo(bundle.model_dump_json())
                return
            change = record_approval(registry, model, version, bundle, package, policy)
    except FineshipError as err:
        _fail(err, 1)
    typer.echo(f"{model} v{version} approved by {signer.name} (key {signer.key_id}, {len(bundle.manifest.files)} files "
               f"signed); champion {change.from_version or '(none)'} -> {change.to_version}")


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


@reviewer_app.command("init")
def reviewer_init(name: str = typer.Argument(..., help="Your reviewer name (the operator trusts NAME.pub)."),
                  force: bool = typer.Option(False, "--force", help="Replace an existing key pair.")) -> None:
    """Make your reviewer key pair; give the public key (NAME.pub) to the operator to trust."""
    from components.registry.keys import default_reviewer_dir, init_reviewer, reviewer_passphrase
    from flows.settings import Settings

    try:
        made = init_reviewer(name, Settings().reviewer_keys or default_reviewer_dir(), reviewer_passphrase(), force)
    except FineshipError as err:
        _fail(err, 1)
    typer.echo(f"reviewer key {made.name} (id {made.key_id}{', passphrase-protected' if made.encrypted else ''}):\n"
               f"  private: {made.private_key_path} (keep it; mode 0600)\n"
               f"  public:  {made.public_key_path} -> the operator copies it into FINESHIP_TRUSTED_REVIEWERS")


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


def _sagemaker_clients(required: bool):
    """SageMaker clients from the environment, or None when no region is configured (and none is required)."""
    from components.deploy.sagemaker import AwsClients
    from flows.settings import Settings

    settings = Settings()
    if not settings.aws_region:
        if required:
            _fail(FineshipError("no AWS region: set FINESHIP_AWS_REGION to reach SageMaker endpoints"), 2)
        return None
    return AwsClients.create(settings.aws)


TargetOpt = typer.Option("all", "--target", help="local, sagemaker or all.")


@endpoint_app.command("list")
def endpoint_list(target: str = TargetOpt) -> None:
    """List local endpoints (running or not) and, with FINESHIP_AWS_REGION set, SageMaker endpoints."""
    from components.deploy.local import is_running, list_records

    if target not in ("all", "local", "sagemaker"):
        _fail(FineshipError(f"--target must be local, sagemaker or all, not {target}"), 2)
    lines = []
    if target in ("all", "local"):
        for r in list_records(_state_dir()):
            state = "running" if is_running(r) else "stopped"
            lines.append(f"{r.endpoint_name:20s} {state:10s} {r.url:30s} {r.model_name} v{r.model_version}")
    if target in ("all", "sagemaker"):
        clients = _sagemaker_clients(required=target == "sagemaker")
        if clients is not None:
            from components.deploy.sagemaker import list_endpoints

            try:
                for e in list_endpoints(clients):
                    where = f"sagemaker:{clients.sagemaker.meta.region_name}"
                    model = f"{e.model_name} v{e.model_version}" if e.model_name else "(not deployed by fineship)"
                    lines.append(f"{e.name:20s} {e.status:10s} {where:30s} {model}")
            except Exception as err:  # noqa: BLE001 - AWS unreachable: still show the local endpoints
                if target == "sagemaker":
                    _fail(FineshipError(f"listing SageMaker endpoints failed: {err}"), 1)
                typer.secho(f"warning: SageMaker endpoints not listed: {err}", fg=typer.colors.YELLOW, err=True)
    typer.echo("\n".join(lines) if lines else "no endpoints")


@endpoint_app.command("status")
def endpoint_status(name: str = typer.Argument(LOCAL_ENDPOINT),
                    target: str = typer.Option("auto", "--target", help="local, sagemaker, or auto (a local "
                                               "endpoint of that name first).")) -> None:
    """Show one endpoint: a local endpoint's record and health, or a SageMaker endpoint's description."""
    import httpx

    from components.deploy.local import is_running, read_record

    r = read_record(_state_dir(), name) if target in ("auto", "local") else None
    if r is None:
        if target == "local" or _sagemaker_clients(required=target == "sagemaker") is None:
            _fail(FineshipError(f"no endpoint named {name}; see `fineship endpoint list`"), 1)
        from components.deploy.sagemaker import endpoint_status as describe_sagemaker

        try:
            info = describe_sagemaker(_sagemaker_clients(required=True), name)
        except FineshipError as err:
            _fail(err, 1)
        typer.echo(json.dumps(info, indent=2))
        typer.echo(f"status: {info['EndpointStatus']}" + (f" ({info['FailureReason']})" if info.get("FailureReason")
                                                          else ""))
        return
    health = "down"
    if is_running(r):
        try:
            health = f"ping HTTP {httpx.get(r.url + '/ping', timeout=2).status_code}"
        except httpx.HTTPError as err:
            health = f"not answering ({type(err).__name__})"
    typer.echo(r.model_dump_json(indent=2))
    typer.echo(f"health: {health}")


@endpoint_app.command("stop")
def endpoint_stop(name: str = typer.Argument(LOCAL_ENDPOINT)) -> None:
    """Stop a local endpoint."""
    from components.deploy.local import LOCK_TIMEOUT_S, endpoint_lock, stop_endpoint

    with endpoint_lock(_state_dir(), name, timeout=LOCK_TIMEOUT_S):  # never in the middle of a deployment's handover
        stopped = stop_endpoint(_state_dir(), name)
    typer.echo(f"stopped {name}" if stopped else f"{name} was not running")


@endpoint_app.command("delete")
def endpoint_delete(name: str = typer.Argument(..., help="Endpoint name."),
                    target: str = typer.Option("auto", "--target", help="local, sagemaker, or auto (a local "
                                               "endpoint of that name first)."),
                    yes: bool = typer.Option(False, "--yes", "-y", help="Do not ask for confirmation.")) -> None:
    """Delete an endpoint: stop and forget a local one; delete a SageMaker endpoint with the configs and models
    fineship made for it (model artifacts in S3 are kept)."""
    from components.deploy.local import LOCK_TIMEOUT_S, endpoint_lock, read_record, stop_endpoint

    if target in ("auto", "local") and read_record(_state_dir(), name) is not None:
        with endpoint_lock(_state_dir(), name, timeout=LOCK_TIMEOUT_S):
            stop_endpoint(_state_dir(), name)
        typer.echo(f"deleted local endpoint {name}")
        return
    if target == "local":
        _fail(FineshipError(f"no local endpoint named {name}"), 1)
    clients = _sagemaker_clients(required=True)
    if not yes and not typer.confirm(f"Delete SageMaker endpoint {name} and its fineship configs and models?"):
        raise typer.Exit(1)
    from components.deploy.sagemaker import delete_endpoint

    try:
        deleted = delete_endpoint(clients, name)
    except Exception as err:  # noqa: BLE001 - botocore errors carry the reason
        _fail(FineshipError(f"deleting SageMaker endpoint {name} failed: {err}"), 1)
    if not deleted:
        _fail(FineshipError(f"no SageMaker endpoint named {name}; see `fineship endpoint list`"), 1)
    typer.echo("deleted " + ", ".join(deleted))


def main() -> None:  # pragma: no cover - console entry
    prepare_env()  # before anything imports Prefect, which reads its settings (API URL, home) once, at import
    from flows.console import own_process

    own_process()
    app()


if __name__ == "__main__":  # pragma: no cover
    main()
