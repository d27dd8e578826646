"""`fineship predict`: score a file with an approved registered version (here, or on SageMaker Batch Transform)."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Optional

import typer

from components.errors import FineshipError
from flows.cli_common import fail, prepare_env

ROOTS_ENV = "FINESHIP_BATCH_ROOTS"


def _trust_terminal_paths(*uris: str) -> None:
    """The person at the terminal is the operator of this process: the locations they name (a local path's folder,
    an S3 object's prefix) join the batch locations (FINESHIP_BATCH_ROOTS) of this command only. A Prefect run
    gets the worker's setting."""
    from flows.batch import BatchSettings

    roots = list(BatchSettings().roots)
    for uri in uris:
        roots.append(uri.rsplit("/", 1)[0] + "/" if uri.startswith("s3://") else str(Path(uri).resolve().parent))
    os.environ[ROOTS_ENV] = json.dumps(sorted(set(roots)))


def predict(
    model: str = typer.Option(..., "--model", help="Registered model name."),
    version: Optional[str] = typer.Option(None, "--version", help="Version number."),
    alias: Optional[str] = typer.Option(None, "--alias", help="Alias, e.g. champion."),
    input_uri: str = typer.Option(..., "--input", "-i", help="CSV, TSV, Parquet or JSON Lines file, or "
                                  "s3://bucket/key (format from the name and the first bytes; .gz is read)."),
    output_uri: str = typer.Option(..., "--output", "-o", help="Output file or s3://bucket/key; its name gives the "
                                   "format (.csv, .tsv, .parquet, .jsonl; .gz compresses)."),
    text_column: str = typer.Option("text", "--text-column", help="Column (or JSON key) holding the texts."),
    probabilities: bool = typer.Option(False, "--probabilities", help="Add every class's probability "
                                       "(prob_<label> columns)."),
    chunk_rows: int = typer.Option(10_000, "--chunk-rows", help="Rows read, scored and written at a time; a rerun "
                                   "after a kill resumes at the first unfinished chunk."),
    batch_size: int = typer.Option(64, "--batch-size", help="Texts per forward pass (length-sorted)."),
    backend: str = typer.Option("local", "--backend", help="local (this machine) or sagemaker (a Batch Transform "
                                "job with the serving image; FINESHIP_SAGEMAKER_ROLE_ARN, FINESHIP_ARTIFACT_BUCKET)."),
    instance_type: Optional[str] = typer.Option(None, "--instance-type", help="sagemaker: transform instance type "
                                                "(default ml.m5.large)."),
    instance_count: Optional[int] = typer.Option(None, "--instance-count", help="sagemaker: instances (default 1)."),
    verbose: bool = typer.Option(False, "--verbose", "-v", help="Show every library and Prefect log line on the "
                                 "terminal instead of the log file."),
) -> None:
    """Score a file with an approved model version: the input's columns plus label, score (and probabilities)."""
    prepare_env()
    from pydantic import ValidationError

    from components.batch import BatchOptions, TransformOptions
    from flows.batch import BatchRequest, batch_predict_flow

    shape = {k: v for k, v in (("instance_type", instance_type), ("instance_count", instance_count)) if v is not None}
    try:
        request = BatchRequest(model_name=model, version=version, alias=alias, input_uri=input_uri,
                               output_uri=output_uri, backend=backend,
                               options=BatchOptions(text_column=text_column, probabilities=probabilities,
                                                    chunk_rows=chunk_rows, batch_size=batch_size),
                               sagemaker=TransformOptions(**shape))
    except ValidationError as err:
        fail(FineshipError("; ".join(f"{'.'.join(map(str, e['loc'])) or 'request'}: {e['msg']}"
                                     for e in err.errors())), 2)
    _trust_terminal_paths(input_uri, output_uri)
    from flows.console import command_console

    with command_console("predict", verbose=verbose) as console:
        try:
            result = batch_predict_flow(request)
        except FineshipError as err:
            console.fail(err, 4)
        console.out.print(f"{result.rows:,} rows scored with {result.model_name} v{result.model_version} -> "
                          f"{result.output_uri}", markup=False)
        console.row("speed", f"{result.rows_per_second:,.0f} rows/s ({result.seconds:,.1f} s)")
        if result.resumed_chunks:
            console.row("resumed", f"{result.resumed_chunks} of {result.chunks} chunks were already done")
        if result.restarted:
            console.row("started over", result.restarted)
        console.row("added columns", ", ".join(result.added_columns))
        if result.missing_texts:
            console.row("no text", f"{result.missing_texts:,} rows (left without a prediction)")
        if result.transform_job:
            console.row("transform job", result.transform_job)
