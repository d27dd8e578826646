"""Export task: TorchScript / ONNX export of a package behind the parity gate, recorded in MLflow and Prefect."""

from __future__ import annotations

from pathlib import Path

from prefect import get_run_logger, task
from prefect.artifacts import create_markdown_artifact
from prefect.cache_policies import NO_CACHE

from components.errors import ExportError
from components.export import ExportResult, export_package
from components.export.spec import SPEC_FILE
from components.registry.mlflow_registry import MlflowRegistry
from tasks.common import artifact_key, md_table, report_stage

MAX_PARITY_TEXTS = 512  # the check runs every text at three batch sizes in a fresh process; bound its time


def _markdown(result: ExportResult) -> str:
    p = result.parity
    verdict = "passed" if p.passed else "FAILED: the export is refused"
    rows = [[b.batch_size, b.n_batches, f"{b.min_length}-{b.max_length}", f"{b.padded_share:.0%}",
             f"{b.argmax_agreement:.2%}", f"{b.max_abs_diff:.2e}"] for b in p.per_batch_size]
    out = [f"# {result.kind} export: parity {verdict}", "",
           (f"{p.n_texts} texts; argmax agreement {p.argmax_agreement:.2%}, "
            f"max |logit diff| {p.max_abs_diff:.2e} (tolerance {p.tolerance:.0e})."), "",
           md_table(["batch size", "batches", "tokens", "padding", "argmax agreement", "max abs diff"], rows)]
    if not p.passed:
        out += ["", "## Why", ""] + [f"- {r}" for r in p.reasons()]
    if result.latency:
        out += ["", "## Latency per batch (median ms)", "",
                md_table(["batch size", "mean tokens", "eager ms", f"{result.kind} ms", "speedup"],
                         [[r.batch_size, f"{r.mean_length:.0f}", f"{r.eager_ms:.1f}", f"{r.export_ms:.1f}",
                           f"{r.speedup:.2f}x"] for r in result.latency])]
    return "\n".join(out)


def _record(result: ExportResult, registry: MlflowRegistry, run_id: str) -> None:
    kind, p = result.kind, result.parity
    registry.log_dict(run_id, p.model_dump(mode="json"), f"export/{kind}/parity_report.json")
    registry.log_dict(run_id, [r.model_dump(mode="json") for r in result.latency], f"export/{kind}/latency.json")
    spec_file = Path(result.path).with_name(SPEC_FILE)
    if spec_file.is_file():
        registry.log_artifact(run_id, spec_file, f"export/{kind}")
    metrics = {f"export_{kind}_argmax_agreement": p.argmax_agreement, f"export_{kind}_passed": float(p.passed)}
    if p.max_abs_diff == p.max_abs_diff and abs(p.max_abs_diff) != float("inf"):  # MLflow rejects NaN/inf
        metrics[f"export_{kind}_max_abs_diff"] = p.max_abs_diff
    for r in result.latency:
        metrics[f"export_{kind}_speedup_bs{r.batch_size}"] = r.speedup
    registry.log_metrics(run_id, metrics)
    registry.set_tags(run_id, {f"fineship.export.{kind}": "passed" if p.passed else "refused"})


@task(name="export-model", timeout_seconds=3600, cache_policy=NO_CACHE)
def export_model(package_dir: str, kind: str, texts: list[str], registry: MlflowRegistry | None,
                 run_id: str | None) -> ExportResult:
    """Export the package (`torchscript` or `onnx`), check parity in a fresh process, record the verdict.

    The parity report and latency table go to the MLflow run and to a Prefect artifact whether the
    check passed or not (MLflow only when the version has a `run_id`); a failed check then raises
    `ExportError`, which stops the deployment.
    """
    logger = get_run_logger()
    texts = list(texts)[:MAX_PARITY_TEXTS]
    try:
        result = export_package(package_dir, kind, texts)
    except ExportError as err:
        if isinstance(err.result, ExportResult):
            if registry is not None and run_id:
                _record(err.result, registry, run_id)
            create_markdown_artifact(_markdown(err.result), key=artifact_key(f"export-{kind}"),
                                     description=f"{kind} export parity (refused)")
        logger.error("%s export refused: %s", kind, err)
        raise
    if registry is not None and run_id:
        _record(result, registry, run_id)
    create_markdown_artifact(_markdown(result), key=artifact_key(f"export-{kind}"),
                             description=f"{kind} export parity and latency")
    report_stage(f"export {kind}", "parity on %d texts (max |diff| %.2e) -> %s", result.parity.n_texts,
                 result.parity.max_abs_diff, result.path)
    return result

