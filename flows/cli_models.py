"""`fineship models list|show`: ask the registry what is there, without opening the MLflow UI."""

from __future__ import annotations

from typing import Optional

import typer

from components.errors import FineshipError
from flows.cli_common import fail, open_registry, prepare_env

models_app = typer.Typer(help="What the model registry holds: versions, review state, evidence, lineage.",
                         no_args_is_help=True)
JsonOpt = typer.Option(False, "--json", help="Print JSON for scripts.")


def _trust_store():
    """The operator's trust store, or None when none is configured here."""
    from flows.settings import Settings

    policy = Settings().review_policy()
    return policy.trust_store() if policy.trusted_reviewers else None


def _deployments(name: str, version: str) -> list:
    from components.deploy.local import list_records
    from components.registry.inventory import local_deployments
    from flows.settings import Settings

    return local_deployments(list_records(Settings().endpoints_dir), name, version)


@models_app.command("list")
def models_list(as_json: bool = JsonOpt) -> None:
    """Every registered model with its champion and challenger versions and their review state."""
    prepare_env()
    from rich.console import Console
    from rich.table import Table

    from components.registry.inventory import list_models, to_json

    try:
        models = list_models(open_registry())
    except FineshipError as err:
        fail(err, 1)
    if as_json:
        typer.echo(to_json(models))
        return
    if not models:
        typer.echo("no registered models yet: `fineship run` trains and registers one")
        return
    table = Table("model", "versions", "champion", "challenger", "newest", box=None, header_style="bold")

    def cell(s) -> str:
        return f"v{s.version} ({s.review}, gate {s.gate})" if s else "-"

    for m in models:
        table.add_row(m.name, str(m.versions), cell(m.champion), cell(m.challenger), cell(m.latest))
    Console(width=160).print(table)


@models_app.command("show")
def models_show(name: str = typer.Argument(..., help="Registered model name."),
                version: Optional[str] = typer.Argument(None, help="Version (default: the champion, else the newest)."),
                as_json: bool = JsonOpt) -> None:
    """One version: metrics with intervals, gate verdict and reasons, review and signature, lineage, deployments."""
    prepare_env()
    from components.registry.inventory import describe_version, to_json
    from flows.settings import Settings

    try:
        detail = describe_version(open_registry(), name, version, _trust_store(), _deployments,
                                  Settings().mlflow_ui_url)
    except FineshipError as err:
        fail(err, 1)
    if as_json:
        typer.echo(to_json(detail))
        return
    d, s = detail, detail.signature
    ci = {k.removesuffix("_ci95"): v for k, v in d.metrics.items() if k.endswith("_ci95")}
    metrics = ", ".join(f"{k} {v}" + (f" (95% CI {ci[k]})" if k in ci else "")
                        for k, v in d.metrics.items() if not k.endswith("_ci95"))
    if not s.present:
        sig = "none (not approved)"
    elif s.problem:
        sig = f"INVALID: {s.problem}"
    else:
        trust = {True: "trusted here", False: "NOT in this trust store", None: "no trust store configured here"}
        sig = (f"{s.purpose} by {s.signer} (key {s.key_id}, {trust[s.signer_trusted]}) at {s.signed_at}, "
               f"over {s.files} files (hashed again at every deployment)")
    lines = [f"{d.name} v{d.version}" + (f"  [{', '.join(d.aliases)}]" if d.aliases else ""),
             f"  metrics:       {metrics or '-'}",
             f"  gate:          {d.gate}"] + [f"                 - {r}" for r in d.gate_reasons] + [
             f"  review:        {d.review}" + (f" by {d.reviewed_by}" if d.reviewed_by else "")
             + (f": {d.comment}" if d.comment else ""),
             f"  signature:     {sig}",
             f"  data:          sha256 {d.data_fingerprint or '-'}; split {d.split_digest or '-'}",
             f"  code:          git {d.git_commit or '-'}; base model {d.base_model or '-'}",
             f"  MLflow run:    {d.mlflow_run_url or d.mlflow_run_id or '-'}"]
    if d.mlflow_version_url:
        lines.append(f"  MLflow:        {d.mlflow_version_url}")
    lines.append(f"  Prefect run:   {d.prefect_flow_run_url or '-'}")
    lines += [f"  deployed:      {x.target} {x.endpoint} {x.url or ''} ({'running' if x.running else 'stopped'})"
              for x in d.deployed] or ["  deployed:      nowhere (local endpoints of this machine)"]
    typer.echo("\n".join(lines))
