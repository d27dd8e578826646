"""Streamed files for batch prediction: read a CSV, TSV, Parquet or JSON Lines file in chunks of rows, write each
scored chunk as a part file, and assemble the parts into the output file.

Memory stays flat in the file's size: at most one chunk of rows is held at a time, whatever the file's length.
What a file is comes from its first bytes where they say it (a Parquet file named .csv is read as Parquet, a gzip
file is decompressed), else from its extension, as `components/data/io.py` decides for whole-file reads.
Parts are written in the output's own format (CSV and TSV without a header, JSON Lines, Parquet), so the
final file is the header plus the parts' bytes (Parquet: one writer, row group by row group).
"""

from __future__ import annotations

import csv
import gzip
import hashlib
import io
import json
import logging
import os
import secrets
import shutil
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import IO, Any

import pandas as pd

from components.data.io import Format, clean_column_name, detect_format, sniff
from components.errors import BatchPredictionError, DataLoadError

log = logging.getLogger(__name__)

MAX_LINE_BYTES = 16 * 1024 * 1024  # one JSON Lines record; a longer "line" is a damaged or wrong file
_READ_BLOCK = 1 << 20


def split_s3(uri: str) -> tuple[str, str]:
    """('bucket', 'key') of an `s3://bucket/key` URI, or `BatchPredictionError`."""
    bucket, _, key = uri[5:].partition("/") if uri.startswith("s3://") else ("", "", "")
    if not bucket or not key or key.endswith("/"):
        raise BatchPredictionError(f"{uri}: an S3 location must look like s3://bucket/key (a file, not a prefix)")
    return bucket, key


def file_format(uri: str, path: Path, fmt: Format = "auto") -> tuple[str, bool]:
    """(format, gzip-compressed) of the file at `path` (named `uri`): the first bytes decide gzip and Parquet."""
    kind = detect_format(uri, fmt)
    with open(path, "rb") as f:
        head = f.read(4096)
    gz = sniff(head) == "gzip"
    if gz:
        with gzip.open(path, "rb") as f:
            head = f.read(4096)
    what = sniff(head)
    if what == "parquet" and kind != "parquet":
        log.warning("%s: is a Parquet file, not %s; read it as Parquet (rename it .parquet)", uri, kind.upper())
        kind = "parquet"
    if what not in (None, "parquet", "gzip"):
        raise DataLoadError(f"{uri}: the file is {what}, not {kind.upper()}; batch prediction reads UTF-8 CSV, TSV, "
                            "JSON Lines or Parquet (re-save it as one of those)")
    if kind == "parquet" and gz:
        raise DataLoadError(f"{uri}: a gzip-compressed Parquet file; decompress it first (Parquet compresses itself)")
    return kind, gz


def fingerprint(path: str | Path) -> str:
    """SHA-256 of a file's bytes, read in 1 MiB blocks."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(_READ_BLOCK):
            digest.update(block)
    return digest.hexdigest()


def _open_text(path: Path, gz: bool) -> IO[str]:
    raw: IO[bytes] = gzip.open(path, "rb") if gz else open(path, "rb")  # noqa: SIM115 - closed by the wrapper
    return io.TextIOWrapper(raw, encoding="utf-8-sig", newline="")


def _delimited(uri: str, path: Path, gz: bool, sep: str, chunk_rows: int) -> Iterator[pd.DataFrame]:
    with _open_text(path, gz) as text:
        try:
            reader = pd.read_csv(text, sep=sep, dtype=str, keep_default_na=False, na_values=[""], engine="c",
                                 on_bad_lines="error", chunksize=chunk_rows)
            for chunk in reader:
                yield chunk
        except pd.errors.ParserError as err:
            raise DataLoadError(f"{uri}: malformed rows: {str(err).strip()}; every row needs the same number of "
                                "fields as the header (quote texts that contain the delimiter)") from None
        except pd.errors.EmptyDataError:
            raise DataLoadError(f"{uri}: the file is empty; it needs a header row and data rows") from None
        except UnicodeDecodeError as err:
            raise DataLoadError(f"{uri}: is not valid UTF-8 (byte 0x{err.object[err.start]:02x}); re-save the file "
                                "as UTF-8") from None


def _jsonl(uri: str, path: Path, gz: bool, chunk_rows: int) -> Iterator[pd.DataFrame]:
    rows: list[dict[str, Any]] = []
    with _open_text(path, gz) as text:
        n = 0
        try:
            while line := text.readline(MAX_LINE_BYTES + 1):
                n += 1
                if len(line) > MAX_LINE_BYTES:
                    raise DataLoadError(f"{uri}: line {n} is over {MAX_LINE_BYTES // 2**20} MiB; one JSON object per "
                                        "line, each a record")
                if not line.strip():
                    continue
                if n == 1 and line.lstrip().startswith("["):
                    raise DataLoadError(f"{uri}: is one JSON array, which cannot be streamed; write one JSON object "
                                        "per line (JSON Lines), e.g. with jq -c '.[]'")
                try:
                    obj = json.loads(line)
                except json.JSONDecodeError as err:
                    raise DataLoadError(f"{uri}: line {n} is not valid JSON ({err.msg}); one JSON object per line") \
                        from None
                if not isinstance(obj, dict):
                    raise DataLoadError(f"{uri}: line {n} is a {type(obj).__name__}, not a JSON object")
                rows.append(obj)
                if len(rows) >= chunk_rows:
                    yield pd.DataFrame.from_records(rows)
                    rows = []
        except UnicodeDecodeError:
            raise DataLoadError(f"{uri}: line {n + 1} is not valid UTF-8; re-save the file as UTF-8") from None
    if rows:
        yield pd.DataFrame.from_records(rows)


def _parquet(uri: str, path: Path, chunk_rows: int) -> Iterator[pd.DataFrame]:
    import pyarrow.parquet as pq

    try:
        source = pq.ParquetFile(path)
    except Exception as err:  # pyarrow raises ArrowInvalid and friends for damaged files
        raise DataLoadError(f"{uri}: not a readable Parquet file ({type(err).__name__}: {err})") from None
    for batch in source.iter_batches(batch_size=chunk_rows):
        yield batch.to_pandas()


def read_chunks(uri: str, path: str | Path, kind: str, gz: bool, chunk_rows: int) -> Iterator[pd.DataFrame]:
    """The rows of the local file `path` (named `uri` in messages) as DataFrames of at most `chunk_rows` rows.

    Column names are cleaned as the whole-file reader cleans them; a name given twice is refused. JSON Lines
    records may differ in their keys: every chunk is given the first chunk's columns (a key the first chunk
    lacks is dropped, with a warning), so that every part has the same columns.
    """
    p = Path(path)
    if kind == "parquet":
        chunks = _parquet(uri, p, chunk_rows)
    elif kind == "jsonl":
        chunks = _jsonl(uri, p, gz, chunk_rows)
    else:
        chunks = _delimited(uri, p, gz, "," if kind == "csv" else "\t", chunk_rows)
    columns: list[str] | None = None
    for chunk in chunks:
        chunk.columns = [clean_column_name(c) for c in chunk.columns]
        if columns is None:
            columns = list(chunk.columns)
            dups = sorted({c for c in columns if columns.count(c) > 1})
            if dups:
                raise DataLoadError(f"{uri}: the header names {', '.join(map(repr, dups))} more than once; rename "
                                    "the extra columns so every name is unique")
        elif list(chunk.columns) != columns:
            extra = [c for c in chunk.columns if c not in columns]
            if extra:
                log.warning("%s: records after the first chunk hold keys the first chunk lacks (%s); they are not "
                            "in the output", uri, ", ".join(map(str, extra[:10])))
            chunk = chunk.reindex(columns=columns)
        yield chunk.reset_index(drop=True)


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write `data` to `path` through a temporary file and a rename: readers see the old file or the new one."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_bytes(data)
    os.replace(tmp, path)


def write_part(df: pd.DataFrame, path: Path, kind: str) -> None:
    """Write one scored chunk in the output format (CSV/TSV without a header), atomically."""
    tmp = path.with_name(f".{path.name}.tmp")
    if kind == "parquet":
        df.to_parquet(tmp, index=False)
    elif kind == "jsonl":
        text = df.to_json(orient="records", lines=True, force_ascii=False) if len(df) else ""
        tmp.write_text(text if not text or text.endswith("\n") else text + "\n", encoding="utf-8")
    else:
        df.to_csv(tmp, sep="," if kind == "csv" else "\t", header=False, index=False, lineterminator="\n")
    os.replace(tmp, path)


def csv_header(columns: Sequence[str], kind: str) -> str:
    """The header line of a CSV or TSV output, quoted as the rows are."""
    buf = io.StringIO()
    csv.writer(buf, delimiter="," if kind == "csv" else "\t", lineterminator="\n").writerow(columns)
    return buf.getvalue()


def assemble(parts: Sequence[Path], columns: Sequence[str], kind: str, out: Path) -> None:
    """Write the output file from the parts, in order, through a temporary file renamed into place at the end
    (gzip-compressed when `out` ends in .gz, for CSV, TSV and JSON Lines)."""
    out.parent.mkdir(parents=True, exist_ok=True)
    # Not mkstemp: its 0600 mode would stick to the output; a unique name, created with the umask's mode.
    tmp = out.with_name(f".{out.name}.{os.getpid()}.{secrets.token_hex(4)}.tmp")
    try:
        if kind == "parquet":
            _assemble_parquet(parts, tmp)
        else:
            with (gzip.open(tmp, "xb") if out.name.endswith(".gz") else open(tmp, "xb")) as sink:
                if kind in ("csv", "tsv"):
                    sink.write(csv_header(columns, kind).encode("utf-8"))
                for part in parts:
                    with open(part, "rb") as f:
                        shutil.copyfileobj(f, sink, _READ_BLOCK)
        os.replace(tmp, out)
    finally:
        tmp.unlink(missing_ok=True)


def _assemble_parquet(parts: Sequence[Path], tmp: Path) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    writer = None
    try:
        for part in parts:
            table = pq.read_table(part)
            if writer is None:
                writer = pq.ParquetWriter(tmp, table.schema)
            elif not table.schema.equals(writer.schema):
                try:
                    table = table.cast(writer.schema)
                except (pa.ArrowInvalid, pa.ArrowNotImplementedError, ValueError) as err:
                    raise BatchPredictionError(
                        f"the chunks of the input disagree on a column's type ({err}); write the output as CSV or "
                        "JSON Lines, or make the input's column types consistent") from None
            writer.write_table(table)
    finally:
        if writer is not None:
            writer.close()
    if writer is None:
        raise BatchPredictionError("no rows were scored, so there is no Parquet schema to write")
