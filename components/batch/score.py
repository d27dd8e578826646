"""Score a file with a model package, chunk by chunk, resumable after a kill.

    input (local or s3://) -> chunks of rows -> the model's probabilities (length-sorted batches)
    -> part files + a progress manifest (atomic renames) -> the output file (local or s3://)

Each finished chunk is a part file, recorded in a small JSON manifest in a state directory keyed by the
output location. The manifest holds a key made of the input's fingerprint (SHA-256 of its bytes), the model
name, version and run, and the options that change the output: a rerun with the same key skips the chunks
already written and scores the rest; a rerun whose input, model or options changed starts over and says so.
The output is assembled from the parts at the end and renamed into place (or uploaded), so it is either
absent, or complete; the state directory is removed once it is.

The output holds the input's columns plus the predicted label, its score and, optionally, every class's
probability (`prob_<label>`); a name the input already uses is prefixed (`predicted_label`). Rows whose text
is missing get empty predictions.
"""

from __future__ import annotations

import hashlib
import json
import logging
import shutil
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Literal, Protocol

import numpy as np
import pandas as pd
from pydantic import BaseModel, ConfigDict, Field

from components.batch.files import (
    assemble,
    atomic_write_bytes,
    file_format,
    fingerprint,
    read_chunks,
    split_s3,
    write_part,
)
from components.data.io import Format, detect_format
from components.errors import BatchPredictionError, DataLoadError
from components.progress import bar_stream

log = logging.getLogger(__name__)

MANIFEST = "manifest.json"
LOCK = ".lock"
MANIFEST_VERSION = 1
MAX_INPUT_BYTES = 50 * 1024**3  # default limit on one input file; the operator's FINESHIP_BATCH_MAX_INPUT_BYTES
MAX_TEXT_CHARS = 100_000  # as the inference server: longer texts are cut before tokenising (the model truncates)
PREFIX = "predicted_"
_PART_SUFFIX = {"csv": "csv", "tsv": "tsv", "jsonl": "jsonl", "parquet": "parquet"}


class BatchOptions(BaseModel):
    """How to score a file: which column holds the texts, what to add, how much to read at a time."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    text_column: str = Field("text", min_length=1, description="Column (or JSON key) holding the texts.")
    probabilities: bool = Field(False, description="Add every class's probability as prob_<label>.")
    chunk_rows: int = Field(10_000, ge=1, le=100_000, description="Rows read, scored and written at a time: "
                            "memory grows with it, and a rerun after a kill resumes at a chunk boundary.")
    batch_size: int = Field(64, ge=1, le=1024, description="Texts per forward pass (length-sorted within a chunk).")
    input_format: Format = Field("auto", description="csv, tsv, parquet or jsonl; auto: from the name and bytes.")
    output_format: Format = Field("auto", description="csv, tsv, parquet or jsonl; auto: from the output's name.")


class ModelRef(BaseModel):
    """Which registered model version scores the file (part of the resume key)."""

    model_config = ConfigDict(frozen=True)

    name: str
    version: str
    run_id: str | None = None


class BatchResult(BaseModel):
    """What a batch prediction did: rows written, where, how fast, and what it resumed."""

    model_config = ConfigDict(frozen=True)

    rows: int
    output_uri: str
    rows_per_second: float = Field(description="Rows scored in this run (resumed chunks excluded) per second of "
                                   "the whole run: reading, scoring, writing and assembling.")
    seconds: float
    chunks: int
    resumed_chunks: int = Field(0, description="Chunks a previous, interrupted run had finished (not scored again).")
    backend: Literal["local", "sagemaker"] = "local"
    model_name: str
    model_version: str
    added_columns: list[str] = Field(default_factory=list)
    missing_texts: int = Field(0, description="Rows without a text (left without a prediction).")
    restarted: str | None = Field(None, description="Why an unfinished earlier run's state was discarded, if it was.")
    transform_job: str | None = None


class ChunkDone(BaseModel):
    """A finished chunk: its part file and row count."""

    model_config = ConfigDict(frozen=True)

    index: int
    rows: int
    part: str
    missing_texts: int = 0


class BatchManifest(BaseModel):
    """The resume state of one output: what is being written, with what, and which chunks are done."""

    format_version: int = MANIFEST_VERSION
    key: str
    input_uri: str
    output_uri: str
    fingerprint: str
    model: ModelRef
    columns: list[str] = Field(default_factory=list)
    chunks: list[ChunkDone] = Field(default_factory=list)
    extra: dict[str, str] = Field(default_factory=dict, description="Backend state (e.g. a transform job's name).")


class ChunkProgress(BaseModel):
    """Reported after each chunk is written (or found written by an earlier run)."""

    model_config = ConfigDict(frozen=True)

    index: int
    rows: int
    rows_done: int
    resumed: bool
    rows_per_second: float


class Scorer(Protocol):
    """What scores texts: `components.package.TextClassifier` fits; so does a reader of Batch Transform output."""

    labels: list[str]

    def predict_proba(self, texts: Sequence[str], batch_size: int = 32) -> np.ndarray: ...


def output_columns(input_columns: Sequence[str], labels: Sequence[str], probabilities: bool) -> dict[str, Any]:
    """Names of the added columns: `label`, `score` and `prob_<label>`, each prefixed with `predicted_` (again,
    if need be) where the input already has a column of that name."""
    taken = set(input_columns)

    def free(name: str) -> str:
        while name in taken:
            name = PREFIX + name
        taken.add(name)
        return name

    label, score = free("label"), free("score")
    probs = {lab: free(f"prob_{lab}") for lab in labels} if probabilities else {}
    return {"label": label, "score": score, "probs": probs}


def resume_key(fp: str, model: ModelRef, options: BatchOptions, output_kind: str, labels: Sequence[str]) -> str:
    """The manifest key: what must be equal for an earlier run's parts to be reused (not the batch size)."""
    payload = {"fingerprint": fp, "model": model.model_dump(), "labels": list(labels), "output": output_kind,
               "options": options.model_dump(mode="json", exclude={"batch_size"})}
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()


def state_dir_for(work_root: str | Path, output_uri: str) -> Path:
    """The state directory of an output location (the same output resumes from the same directory)."""
    where = output_uri if output_uri.startswith("s3://") else str(Path(output_uri).resolve())
    return Path(work_root) / hashlib.sha256(where.encode()).hexdigest()[:20]


def _texts(chunk: pd.DataFrame, column: str, uri: str) -> tuple[list[str], np.ndarray]:
    if column not in chunk.columns:
        raise DataLoadError(f"{uri}: has no column '{column}' (columns: {', '.join(map(str, chunk.columns[:20]))}); "
                            "name the text column with --text-column")
    values = chunk[column]
    present = values.notna().to_numpy() & (values.astype(str).str.strip() != "").to_numpy()
    texts = [str(v)[:MAX_TEXT_CHARS] for v in values[present]]
    return texts, present


def score_chunk(chunk: pd.DataFrame, scorer: Scorer, options: BatchOptions, names: dict[str, Any],
                uri: str) -> tuple[pd.DataFrame, int]:
    """The chunk with the added columns, and how many of its rows had no text."""
    texts, present = _texts(chunk, options.text_column, uri)
    probs = scorer.predict_proba(texts, options.batch_size) if texts else np.zeros((0, len(scorer.labels)))
    out = chunk.copy()
    labels = np.array(scorer.labels, dtype=object)
    label_col = np.full(len(chunk), None, dtype=object)
    score_col = np.full(len(chunk), np.nan)
    if len(texts):
        best = probs.argmax(axis=1)
        label_col[present] = labels[best]
        score_col[present] = probs[np.arange(len(texts)), best]
    out[names["label"]] = label_col
    out[names["score"]] = score_col
    for i, lab in enumerate(scorer.labels):
        if lab in names["probs"]:
            col = np.full(len(chunk), np.nan)
            col[present] = probs[:, i]
            out[names["probs"][lab]] = col
    return out, int((~present).sum())


def _load_manifest(state: Path, key: str) -> tuple[BatchManifest | None, str | None]:
    """The manifest of an earlier run with this key, or (None, why the state was discarded)."""
    path = state / MANIFEST
    if not path.is_file():
        return None, None
    try:
        manifest = BatchManifest.model_validate_json(path.read_text(encoding="utf-8"))
    except ValueError:
        return None, "its progress manifest was unreadable"
    if manifest.key != key:
        what = "the input file" if manifest.fingerprint else "the input"
        return None, (f"{what}, the model or the options changed since the unfinished run for this output (it used "
                      f"{manifest.model.name} v{manifest.model.version}, input sha256 {manifest.fingerprint[:12]})")
    return manifest, None


def save_manifest(state: Path, manifest: BatchManifest) -> None:
    """Write the manifest atomically (a kill leaves the previous one)."""
    atomic_write_bytes(state / MANIFEST, manifest.model_dump_json(indent=1).encode("utf-8"))


def fetch_input(uri: str, state: Path, s3: Any | None, max_bytes: int) -> Path:
    """A local path for the input: itself, or the S3 object downloaded (streamed) into the state directory."""
    if not uri.startswith("s3://"):
        path = Path(uri)
        if not path.is_file():
            raise DataLoadError(f"{uri}: file does not exist (relative paths start at {Path.cwd()})")
        if path.stat().st_size > max_bytes:
            raise DataLoadError(f"{uri}: {path.stat().st_size / 1e9:.1f} GB is over the limit of "
                                f"{max_bytes / 1e9:.1f} GB (FINESHIP_BATCH_MAX_INPUT_BYTES)")
        return path
    bucket, key = split_s3(uri)
    if s3 is None:
        raise BatchPredictionError(f"{uri}: an S3 input needs an S3 client (FINESHIP_AWS_REGION and credentials)")
    try:
        size = int(s3.head_object(Bucket=bucket, Key=key)["ContentLength"])
        if size > max_bytes:
            raise DataLoadError(f"{uri}: {size / 1e9:.1f} GB is over the limit of {max_bytes / 1e9:.1f} GB")
        local = state / ("input-" + Path(key).name)
        s3.download_file(bucket, key, str(local))
    except DataLoadError:
        raise
    except Exception as err:  # botocore ClientError, EndpointConnectionError, ...
        code = getattr(err, "response", {}).get("Error", {}).get("Code", type(err).__name__)
        raise DataLoadError(f"{uri}: could not read from S3 ({code}); check the bucket and key exist and that your "
                            "credentials may read them") from None
    return local


def deliver(local: Path, output_uri: str, s3: Any | None) -> None:
    """Upload the assembled output to S3 (multipart, streamed) when the output is an s3:// URI."""
    bucket, key = split_s3(output_uri)
    if s3 is None:
        raise BatchPredictionError(f"{output_uri}: an S3 output needs an S3 client (FINESHIP_AWS_REGION)")
    try:
        s3.upload_file(str(local), bucket, key)
    except Exception as err:
        code = getattr(err, "response", {}).get("Error", {}).get("Code", type(err).__name__)
        raise BatchPredictionError(f"{output_uri}: could not write to S3 ({code}); the scored file is kept at "
                                   f"{local}; check the bucket exists and that your credentials may write it") \
            from None


class _Bar:
    """A rows/s progress bar on the terminal a person watches (nothing elsewhere), plus a log line per chunk."""

    def __init__(self, total: int | None, label: str) -> None:
        stream = bar_stream()
        self.bar = None
        if stream is not None:
            from tqdm.auto import tqdm

            self.bar = tqdm(total=total, desc=label, unit=" rows", unit_scale=True, dynamic_ncols=True, file=stream)

    def update(self, p: ChunkProgress) -> None:
        if self.bar is not None:
            self.bar.update(p.rows)
        log.info("chunk %d: %d rows%s (%d done, %.0f rows/s)", p.index, p.rows, " (resumed)" if p.resumed else "",
                 p.rows_done, p.rows_per_second)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


@contextmanager
def exclusive(state: Path, output_uri: str) -> Iterator[None]:
    """Hold the state directory's lock: one run per output at a time (the OS releases it when a process dies)."""
    import fcntl

    with open(state / LOCK, "a+b") as f:
        try:
            fcntl.flock(f.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise BatchPredictionError(f"{output_uri}: another run is writing this output right now; wait for it "
                                       "or write elsewhere") from None
        yield


def _total_rows(path: Path, kind: str) -> int | None:
    if kind != "parquet":
        return None
    import pyarrow.parquet as pq

    return pq.ParquetFile(path).metadata.num_rows


def score_file(scorer: Scorer, input_uri: str, output_uri: str, options: BatchOptions, *, model: ModelRef,
               work_root: str | Path, s3: Any | None = None,
               on_chunk: Callable[[ChunkProgress], None] | None = None,
               extra_key: str = "", backend: Literal["local", "sagemaker"] = "local",
               skip: Callable[[int], None] | None = None, max_input_bytes: int = MAX_INPUT_BYTES) -> BatchResult:
    """Score `input_uri` into `output_uri` (local paths or s3:// URIs) and return what was done.

    Resumable: an earlier run for the same output with the same input bytes, model and options is continued
    at its first unfinished chunk. `on_chunk` is called after each chunk is committed (a test may raise there
    to simulate a kill). `skip(n)` is told about each resumed chunk's texts (a scorer that reads predictions
    from a file advances past them). `extra_key` joins the resume key (a backend's own state). An input over
    `max_input_bytes` is refused before it is read.
    """
    state = state_dir_for(work_root, output_uri)
    state.mkdir(parents=True, exist_ok=True)
    with exclusive(state, output_uri):
        return _score_locked(scorer, input_uri, output_uri, options, model=model, work_root=work_root, s3=s3,
                             on_chunk=on_chunk, extra_key=extra_key, backend=backend, skip=skip,
                             max_input_bytes=max_input_bytes)


def _score_locked(scorer: Scorer, input_uri: str, output_uri: str, options: BatchOptions, *, model: ModelRef,
                  work_root: str | Path, s3: Any | None, on_chunk: Callable[[ChunkProgress], None] | None,
                  extra_key: str, backend: Literal["local", "sagemaker"],
                  skip: Callable[[int], None] | None, max_input_bytes: int) -> BatchResult:
    """The body of `score_file`, under the state directory's lock."""
    started = time.monotonic()
    out_kind = detect_format(output_uri, options.output_format)
    if not input_uri.startswith("s3://") and not output_uri.startswith("s3://") and \
            Path(input_uri).resolve() == Path(output_uri).resolve():
        raise BatchPredictionError(f"{output_uri}: the output would replace the input; write it elsewhere")
    state = state_dir_for(work_root, output_uri)
    state.mkdir(parents=True, exist_ok=True)
    local_in = fetch_input(input_uri, state, s3, max_input_bytes)
    kind, gz = file_format(input_uri, local_in, options.input_format)
    fp = fingerprint(local_in)
    key = resume_key(fp + extra_key, model, options, out_kind, scorer.labels)
    manifest, restarted = _load_manifest(state, key)
    if restarted:
        log.warning("%s: %s; starting over", output_uri, restarted)
        for old in state.glob("part-*"):
            old.unlink()
    if manifest is None:
        manifest = BatchManifest(key=key, input_uri=input_uri, output_uri=output_uri, fingerprint=fp, model=model)
    done = {c.index: c for c in manifest.chunks if (state / c.part).is_file()}
    resumed = len(done)
    if resumed:
        log.info("%s: resuming after %d finished chunk(s) (%d rows)", output_uri, resumed,
                 sum(c.rows for c in done.values()))
    bar = _Bar(_total_rows(local_in, kind), f"predict {Path(input_uri).name}")
    rows_done = scored_rows = missing = 0
    scoring_seconds = 0.0
    names: dict[str, Any] | None = None
    parts: list[Path] = []
    try:
        for index, chunk in enumerate(read_chunks(input_uri, local_in, kind, gz, options.chunk_rows)):
            if names is None:
                names = output_columns(list(chunk.columns), scorer.labels, options.probabilities)
                columns = [*map(str, chunk.columns), names["label"], names["score"], *names["probs"].values()]
                if manifest.columns and manifest.columns != columns:
                    raise BatchPredictionError(f"{output_uri}: the resume state names other columns; delete {state} "
                                               "and run again")
                manifest = manifest.model_copy(update={"columns": columns})
            if index in done:
                record = done[index]
                if record.rows != len(chunk):
                    raise BatchPredictionError(f"{output_uri}: chunk {index} of the resume state has {record.rows} "
                                               f"rows, the input {len(chunk)}; delete {state} and run again")
                if skip is not None:
                    skip(len(chunk) - record.missing_texts)
                missing += record.missing_texts
                rows_done += record.rows
                parts.append(state / record.part)
                progress = ChunkProgress(index=index, rows=record.rows, rows_done=rows_done, resumed=True,
                                         rows_per_second=0.0)
            else:
                t0 = time.monotonic()
                scored, chunk_missing = score_chunk(chunk, scorer, options, names, input_uri)
                part = state / f"part-{index:06d}.{_PART_SUFFIX[out_kind]}"
                write_part(scored, part, out_kind)
                scoring_seconds += time.monotonic() - t0
                record = ChunkDone(index=index, rows=len(chunk), part=part.name, missing_texts=chunk_missing)
                manifest = manifest.model_copy(update={"chunks": [*manifest.chunks, record]})
                save_manifest(state, manifest)
                missing += chunk_missing
                rows_done += len(chunk)
                scored_rows += len(chunk)
                parts.append(part)
                progress = ChunkProgress(index=index, rows=len(chunk), rows_done=rows_done, resumed=False,
                                         rows_per_second=scored_rows / max(scoring_seconds, 1e-9))
            bar.update(progress)
            if on_chunk is not None:
                on_chunk(progress)
    finally:
        bar.close()
    if names is None:
        raise BatchPredictionError(f"{input_uri}: holds no rows to score")
    if output_uri.startswith("s3://"):
        local_out = state / f"output.{_PART_SUFFIX[out_kind]}"
        assemble(parts, manifest.columns, out_kind, local_out)
        deliver(local_out, output_uri, s3)
    else:
        assemble(parts, manifest.columns, out_kind, Path(output_uri))
    shutil.rmtree(state, ignore_errors=True)
    seconds = time.monotonic() - started
    added = [names["label"], names["score"], *names["probs"].values()]
    if missing:
        log.warning("%s: %d row(s) have no text in column '%s'; they have no prediction", input_uri, missing,
                    options.text_column)
    return BatchResult(rows=rows_done, output_uri=output_uri, seconds=seconds,
                       rows_per_second=scored_rows / seconds if seconds > 0 else 0.0,
                       chunks=len(parts), resumed_chunks=resumed, backend=backend, model_name=model.name,
                       model_version=model.version, added_columns=added, missing_texts=missing, restarted=restarted)


def iter_present_texts(input_uri: str, local: Path, options: BatchOptions) -> Iterator[list[str]]:
    """The texts of each chunk that has them (what a remote backend must score), chunk by chunk."""
    kind, gz = file_format(input_uri, local, options.input_format)
    for chunk in read_chunks(input_uri, local, kind, gz, options.chunk_rows):
        yield _texts(chunk, options.text_column, input_uri)[0]
