"""Dataset readers: CSV, TSV, Parquet, JSON Lines from a local path or s3://bucket/key.

Every failure is a `DataLoadError` naming the file (and the row where one is known) and what
to do, never a parser stack trace.
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
from pathlib import Path
from typing import Any, Literal

import pandas as pd
from pydantic import BaseModel, ConfigDict

from components.errors import DataLoadError

log = logging.getLogger(__name__)

Format = Literal["auto", "csv", "tsv", "parquet", "jsonl"]
_EXTENSIONS: dict[str, str] = {
    ".csv": "csv",
    ".tsv": "tsv",
    ".tab": "tsv",
    ".parquet": "parquet",
    ".pq": "parquet",
    ".jsonl": "jsonl",
    ".ndjson": "jsonl",
}
MAX_FILE_BYTES = 2 * 1024**3


class DatasetRef(BaseModel):
    """Where a dataset came from and what exactly it held."""

    model_config = ConfigDict(frozen=True)

    uri: str
    format: str
    fingerprint: str  # sha256 of the raw bytes
    rows: int
    columns: list[str]


def detect_format(uri: str, fmt: Format = "auto") -> str:
    """Return the concrete format of `uri`, from `fmt` or the file extension."""
    if fmt != "auto":
        return fmt
    name = uri.rsplit("/", 1)[-1].lower()
    for ext, kind in _EXTENSIONS.items():
        if name.endswith(ext) or name.endswith(ext + ".gz"):
            return kind
    raise DataLoadError(
        f"{uri}: unknown file extension; use .csv, .tsv, .parquet or .jsonl, "
        "or set data.format explicitly (csv, tsv, parquet, jsonl)"
    )


def _read_bytes(uri: str, s3_client: Any | None) -> bytes:
    if uri.startswith("s3://"):
        bucket, _, key = uri[5:].partition("/")
        if not bucket or not key:
            raise DataLoadError(f"{uri}: an S3 location must look like s3://bucket/key")
        if s3_client is None:
            import boto3  # built only when an s3:// path is actually read

            s3_client = boto3.client("s3")
        try:
            return s3_client.get_object(Bucket=bucket, Key=key)["Body"].read()
        except Exception as err:  # botocore raises ClientError / NoSuchKey / EndpointConnectionError
            code = getattr(err, "response", {}).get("Error", {}).get("Code", type(err).__name__)
            raise DataLoadError(
                f"{uri}: could not read from S3 ({code}); check the bucket and key exist and that "
                "your credentials may read them"
            ) from None
    path = Path(uri)
    if not path.exists():
        raise DataLoadError(f"{uri}: file does not exist; check the path (relative paths start at {Path.cwd()})")
    if path.is_dir():
        raise DataLoadError(f"{uri}: is a directory; point data.path at a file")
    size = path.stat().st_size
    if size > MAX_FILE_BYTES:
        raise DataLoadError(f"{uri}: {size / 1e9:.1f} GB is over the 2 GB limit of one file; split it")
    try:
        return path.read_bytes()
    except OSError as err:
        raise DataLoadError(f"{uri}: cannot be read ({err.strerror}); check its permissions") from None


def _decode_text(uri: str, raw: bytes) -> str:
    if b"\x00" in raw[:8192]:
        raise DataLoadError(f"{uri}: looks like a binary file (NUL bytes), not text; check the file and its extension")
    if raw.startswith(b"\xef\xbb\xbf"):
        raw = raw[3:]
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as err:
        line = raw[: err.start].count(b"\n") + 1
        raise DataLoadError(
            f"{uri}: row {line} (line {line} of the file) is not valid UTF-8 (byte 0x{raw[err.start]:02x}); "
            "re-save the file as UTF-8"
        ) from None


def _read_delimited(uri: str, text: str, sep: str) -> pd.DataFrame:
    if not text.strip():
        raise DataLoadError(f"{uri}: the file is empty; it needs a header row and data rows")
    try:
        return pd.read_csv(io.StringIO(text), sep=sep, dtype=str, keep_default_na=False, na_values=[""],
                           on_bad_lines="error", engine="c")
    except pd.errors.ParserError as err:
        msg = str(err).strip()
        raise DataLoadError(
            f"{uri}: malformed rows: {msg}; every row needs the same number of fields as the header "
            "(quote texts that contain the delimiter)"
        ) from None
    except pd.errors.EmptyDataError:
        raise DataLoadError(f"{uri}: the file has no columns; it needs a header row and data rows") from None


def _read_jsonl(uri: str, text: str) -> pd.DataFrame:
    rows = []
    for n, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as err:
            raise DataLoadError(f"{uri}: line {n} is not valid JSON ({err.msg}); one JSON object per line") from None
        if not isinstance(obj, dict):
            raise DataLoadError(f"{uri}: line {n} is a {type(obj).__name__}, not a JSON object")
        rows.append(obj)
    if not rows:
        raise DataLoadError(f"{uri}: the file is empty; it needs one JSON object per line")
    return pd.DataFrame(rows)


def _read_parquet(uri: str, raw: bytes) -> pd.DataFrame:
    try:
        return pd.read_parquet(io.BytesIO(raw))
    except Exception as err:  # pyarrow raises ArrowInvalid and friends for corrupt files
        raise DataLoadError(f"{uri}: not a readable Parquet file ({type(err).__name__}); check the file") from None


def read_dataset(uri: str, fmt: Format = "auto", s3_client: Any | None = None) -> tuple[pd.DataFrame, DatasetRef]:
    """Read a dataset into a DataFrame and describe it with a `DatasetRef`."""
    kind = detect_format(uri, fmt)
    raw = _read_bytes(uri, s3_client)
    if uri.endswith(".gz"):
        import gzip

        raw = gzip.decompress(raw)
    if kind == "parquet":
        df = _read_parquet(uri, raw)
    else:
        text = _decode_text(uri, raw)
        df = _read_jsonl(uri, text) if kind == "jsonl" else _read_delimited(uri, text, "," if kind == "csv" else "\t")
    df.columns = [str(c).strip() for c in df.columns]
    ref = DatasetRef(uri=uri, format=kind, fingerprint=hashlib.sha256(raw).hexdigest(), rows=len(df),
                     columns=list(df.columns))
    log.info("read %s: %d rows, columns %s", uri, len(df), ref.columns)
    return df, ref
