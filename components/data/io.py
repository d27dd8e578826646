"""Dataset readers: CSV, TSV, Parquet, JSON Lines from a local path or s3://bucket/key.

Every failure is a `DataLoadError` naming the file (and the row where one is known) and what
to do, never a parser stack trace. Real exports are often not what their name says: the first
bytes decide what a file is, so a gzip, Parquet or UTF-16 file, a JSON array or a semicolon- or
tab-separated table is read as what it is (with a warning saying how to name it), and a workbook,
an archive, a PDF or an HTML page saved in place of the data is refused with how to get the data.
"""

from __future__ import annotations

import csv
import gzip
import hashlib
import io
import json
import logging
import os
import re
import tempfile
import zlib
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
    ".json": "jsonl",  # the JSON Lines reader also reads one JSON array of objects
}
MAX_FILE_BYTES = 2 * 1024**3
_BOMS = ((b"\xff\xfe\x00\x00", "utf-32-le"), (b"\x00\x00\xfe\xff", "utf-32-be"), (b"\xff\xfe", "utf-16-le"),
         (b"\xfe\xff", "utf-16-be"))
_NAME_JUNK = re.compile("^(?:\ufeff|\u00ef\u00bb\u00bf|\u200b)+")  # a BOM (also one decoded twice), zero-width space
_SEPARATORS = {",": "comma", "\t": "tab", ";": "semicolon", "|": "pipe"}
_CONVERT = "open it in Excel (or LibreOffice) and save it as 'CSV UTF-8', or convert it with pandas: " \
    "pd.read_excel(path).to_csv('data.csv', index=False); then point data.path at the CSV"
_NOT_DATA = {
    "xlsx": f"is an Excel workbook (.xlsx), not {{kind}}; {_CONVERT}",
    "xls": f"is an Excel 97-2003 workbook (.xls), not {{kind}}; {_CONVERT}",
    "zip": "is a ZIP archive, not {kind}; unzip it and point data.path at the data file inside",
    "pdf": "is a PDF document, not {kind}; export the table from its source as CSV",
    "html": "is an HTML page, not {kind} (a login, error or preview page saved in place of the data); download the "
            "file again, checking the link and that you are signed in (for a shared spreadsheet, use its CSV "
            "export link)",
}


class DatasetRef(BaseModel):
    """Where a dataset came from and what exactly it held."""

    model_config = ConfigDict(frozen=True)

    uri: str
    format: str  # what the file holds (a Parquet file named .csv is "parquet")
    fingerprint: str  # sha256 of the raw bytes (decompressed, for a gzip file)
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
        f"{uri}: unknown file extension; use .csv, .tsv, .parquet, .jsonl or .json, "
        "or set data.format explicitly (csv, tsv, parquet, jsonl)"
    )


def sniff(raw: bytes) -> str | None:
    """What the first bytes say a file is: gzip, parquet, xlsx, xls, zip, pdf, html, utf-16-le/-be, utf-32-le/-be;
    None for anything else (plain text, or binary the text decoder refuses)."""
    if raw.startswith(b"\x1f\x8b"):
        return "gzip"
    if raw.startswith(b"PAR1"):
        return "parquet"
    if raw.startswith((b"PK\x03\x04", b"PK\x05\x06")):
        return "xlsx" if b"xl/" in raw[: 1 << 20] or b"xl/" in raw[-(1 << 16):] else "zip"
    if raw.startswith(b"\xd0\xcf\x11\xe0\xa1\xb1\x1a\xe1"):
        return "xls"
    if raw.startswith(b"%PDF"):
        return "pdf"
    for bom, codec in _BOMS:
        if raw.startswith(bom):
            return codec
    head = raw[:4096].lstrip(b"\xef\xbb\xbf \t\r\n").lower()
    if head.startswith((b"<!doctype html", b"<html", b"<head", b"<body")) or (
            head.startswith(b"<?xml") and b"<html" in head):
        return "html"
    even, odd = raw[:4096:2], raw[1:4096:2]
    if len(odd) >= 2:
        if odd.count(0) > 0.7 * len(odd) and even.count(0) < 0.1 * len(even):
            return "utf-16-le"
        if even.count(0) > 0.7 * len(even) and odd.count(0) < 0.1 * len(odd):
            return "utf-16-be"
    return None


def _gunzip(uri: str, raw: bytes) -> bytes:
    try:
        return gzip.decompress(raw)
    except (OSError, EOFError, zlib.error) as err:
        raise DataLoadError(f"{uri}: is a damaged gzip file ({err}); download or compress it again") from None


def _unwrap(uri: str, raw: bytes, kind: str) -> tuple[bytes, str]:
    """Decompress gzip whatever the name; read Parquet as Parquet whatever the name; refuse non-data files."""
    what = sniff(raw)
    if what == "gzip":
        if not uri.endswith(".gz"):
            log.warning("%s: is gzip-compressed; read it decompressed (name it %s.gz to say so)", uri, uri)
        raw = _gunzip(uri, raw)
        what = sniff(raw)
    elif uri.endswith(".gz"):
        log.warning("%s: is named .gz but is not gzip-compressed; read it as it is", uri)
    if what == "parquet" and kind != "parquet":
        log.warning("%s: is a Parquet file, not %s; read it as Parquet (rename it .parquet)", uri, kind.upper())
        kind = "parquet"
    if what in _NOT_DATA:
        raise DataLoadError(f"{uri}: " + _NOT_DATA[what].format(kind=kind.upper()))
    return raw, kind


def _read_bytes(uri: str, s3_client: Any | None) -> bytes:
    if uri.startswith("s3://"):
        bucket, _, key = uri[5:].partition("/")
        if not bucket or not key:
            raise DataLoadError(f"{uri}: an S3 location must look like s3://bucket/key")
        if s3_client is None:  # built only when an s3:// path is actually read, with the shared retry policy
            from components.aws import AwsSettings

            s3_client = AwsSettings().client("s3")
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
    what = sniff(raw)
    if what is not None and what.startswith("utf-"):
        log.warning("%s: is %s-encoded (an Excel 'Unicode Text' export?); read it as such (re-save it as UTF-8 to "
                    "silence this)", uri, what.upper())
        bom = next((b for b, codec in _BOMS if codec == what and raw.startswith(b)), b"")
        try:
            return raw[len(bom):].decode(what)
        except UnicodeDecodeError:
            raise DataLoadError(f"{uri}: looks {what.upper()}-encoded but does not decode as such; re-save the file "
                                "as UTF-8") from None
    sample = raw[:8192]
    controls = sum(1 for b in sample if b < 32 and b not in (9, 10, 11, 12, 13))
    if sample and controls > 0.05 * len(sample):
        raise DataLoadError(f"{uri}: looks like a binary file (NUL and control bytes), not text; check the file and "
                            "its extension")
    if b"\x00" in raw:
        body = raw.rstrip(b"\x00")
        if b"\x00" in body:
            line = raw[: raw.index(b"\x00")].count(b"\n") + 1
            raise DataLoadError(
                f"{uri}: holds {raw.count(0)} NUL byte(s), the first on line {line}; a text export has none, so the file "
                "was damaged in a copy or written by a crashed program: export it again, or remove them "
                "(tr -d '\\000' < in.csv > out.csv) and check the rows around that line")
        log.warning("%s: ends in %d NUL bytes (padding left by an interrupted copy); read without them", uri,
                    len(raw) - len(body))
        raw = body
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


def clean_column_name(name: object) -> str:
    """A column name without surrounding whitespace, byte-order marks or zero-width spaces."""
    return _NAME_JUNK.sub("", str(name).strip()).strip().strip("\u200b\ufeff").strip()


def _check_names(uri: str, names: list[str]) -> None:
    seen: dict[str, list[int]] = {}
    for i, n in enumerate(names, start=1):
        seen.setdefault(n, []).append(i)
    dups = {n: at for n, at in seen.items() if len(at) > 1}
    if dups:
        what = "; ".join(f"'{n}' at columns {', '.join(map(str, at))}" for n, at in dups.items())
        raise DataLoadError(f"{uri}: the header names a column more than once ({what}); rename or remove the extra "
                            "column so every name is unique")


def _separator(uri: str, text: str, sep: str) -> str:
    """`sep`, or the one the header uses when it holds no `sep` but another separator (a ';' export from Excel)."""
    header = text[: text.find("\n")] if "\n" in text else text
    if sep in header:
        return sep
    for alt, name in _SEPARATORS.items():
        if alt != sep and alt in header:
            fix = {"\t": "name it .tsv or set data.format=tsv", ",": "name it .csv or set data.format=csv"}.get(
                alt, "re-export it comma-separated")
            log.warning("%s: the header holds no %s but %ss; read it as %s-separated (%s to say so)", uri,
                        _SEPARATORS[sep], name, name, fix)
            return alt
    return sep


def _parse(uri: str, text: str, sep: str, quoting: int = csv.QUOTE_MINIMAL) -> pd.DataFrame:
    try:
        return pd.read_csv(io.StringIO(text), sep=sep, dtype=str, keep_default_na=False, na_values=[""],
                           on_bad_lines="error", engine="c", quoting=quoting)
    except pd.errors.ParserError as err:
        msg = str(err).strip()
        raise DataLoadError(
            f"{uri}: malformed rows: {msg}; every row needs the same number of fields as the header "
            "(quote texts that contain the delimiter)"
        ) from None
    except pd.errors.EmptyDataError:
        raise DataLoadError(f"{uri}: the file has no columns; it needs a header row and data rows") from None


_LINE = re.compile(r"\r\n|\r|\n")


def _read_delimited(uri: str, text: str, sep: str) -> pd.DataFrame:
    if not text.strip():
        raise DataLoadError(f"{uri}: the file is empty; it needs a header row and data rows")
    sep = _separator(uri, text, sep)
    header = next(csv.reader(io.StringIO(text[: 1 << 16]), delimiter=sep), [])
    _check_names(uri, [clean_column_name(h) for h in header])
    df = _parse(uri, text, sep)
    lines_in_file = text.count("\n") + text.count("\r") - text.count("\r\n") + (not text.endswith(("\n", "\r")))
    if sep != "\t" or len(df) + 1 >= lines_in_file:  # cheap: the header and the rows account for every line
        return df
    lines = [line for line in _LINE.split(text) if line.strip()]
    if len(df) < len(lines) - 1 and all(line.count("\t") == len(header) - 1 for line in lines):
        # Every line is a whole row, yet rows went missing: a quote in a text opened a "quoted field" that
        # swallowed the lines after it. Tab-separated exports (SMS Spam, GLUE) often do not quote at all.
        log.warning("%s: quote characters in texts swallowed %d line(s) into other rows; every line holds a whole "
                    "row, so quotes are read as characters here (quote whole fields, doubling the quotes inside, "
                    "to use quoting)", uri, len(lines) - 1 - len(df))
        return _parse(uri, text, sep, csv.QUOTE_NONE)
    return df


def _read_json_array(uri: str, text: str) -> list[dict[str, Any]]:
    try:
        obj = json.loads(text)
    except json.JSONDecodeError as err:
        raise DataLoadError(f"{uri}: starts with '[' but is not one valid JSON array ({err.msg}, line {err.lineno}); "
                            "write one JSON object per line (JSON Lines)") from None
    if not isinstance(obj, list) or not all(isinstance(o, dict) for o in obj):
        raise DataLoadError(f"{uri}: is a JSON array of {type(obj[0]).__name__ if obj else 'nothing'}s, not of "
                            "objects; each record must be an object such as {\"text\": ..., \"label\": ...}")
    log.warning("%s: holds one JSON array of objects, not JSON Lines; read it as such (name it .json, or write one "
                "object per line)", uri)
    return obj


def _read_jsonl(uri: str, text: str) -> pd.DataFrame:
    if text.lstrip().startswith("["):
        rows = _read_json_array(uri, text)
        if not rows:
            raise DataLoadError(f"{uri}: the JSON array is empty; it needs one object per record")
        return pd.DataFrame(rows)
    rows = []
    for n, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as err:
            hint = ""
            if n == 1 and line.strip() == "{":
                hint = " (the file looks like one pretty-printed JSON object: put each record on its own line)"
            raise DataLoadError(f"{uri}: line {n} is not valid JSON ({err.msg}); one JSON object per line{hint}") \
                from None
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
        head = raw[:40].decode("utf-8", "replace")
        hint = (f" (it starts with text: {head!r}; if it is CSV or JSON Lines, give it that extension or set "
                "data.format)") if head.isprintable() and head.strip() else "; check the file"
        raise DataLoadError(f"{uri}: not a readable Parquet file ({type(err).__name__}){hint}") from None


def read_dataset(uri: str, fmt: Format = "auto", s3_client: Any | None = None) -> tuple[pd.DataFrame, DatasetRef]:
    """Read a dataset into a DataFrame and describe it with a `DatasetRef`."""
    kind = detect_format(uri, fmt)
    raw, kind = _unwrap(uri, _read_bytes(uri, s3_client), kind)
    if kind == "parquet":
        df = _read_parquet(uri, raw)
    else:
        text = _decode_text(uri, raw)
        df = _read_jsonl(uri, text) if kind == "jsonl" else _read_delimited(uri, text, "," if kind == "csv" else "\t")
    names = [clean_column_name(c) for c in df.columns]
    if any(str(c).strip().startswith("\u00ef\u00bb\u00bf") for c in df.columns):
        log.warning("%s: the first column name starts with 'ï»¿', a byte-order mark decoded twice; ignored", uri)
    _check_names(uri, names)
    df.columns = names
    ref = DatasetRef(uri=uri, format=kind, fingerprint=hashlib.sha256(raw).hexdigest(), rows=len(df),
                     columns=list(df.columns))
    log.info("read %s: %d rows, columns %s", uri, len(df), ref.columns)
    return df, ref


def write_dataset(df: pd.DataFrame, path: str | Path, fmt: Format = "auto") -> str:
    """Write `df` as CSV, TSV, Parquet or JSON Lines (by `fmt` or the extension; gzip for .gz), atomically."""
    target = Path(path)
    kind = detect_format(str(target), fmt)
    tmp = tempfile.NamedTemporaryFile(dir=target.parent, prefix=f".{target.name}.", delete=False)
    tmp.close()
    compression = "gzip" if target.name.endswith(".gz") else None
    try:
        if kind == "parquet":
            df.to_parquet(tmp.name, index=False)
        elif kind == "jsonl":
            df.to_json(tmp.name, orient="records", lines=True, force_ascii=False, compression=compression)
        else:
            df.to_csv(tmp.name, sep="," if kind == "csv" else "\t", index=False, compression=compression)
        os.replace(tmp.name, target)
    finally:
        Path(tmp.name).unlink(missing_ok=True)
    return kind
