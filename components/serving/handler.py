"""Request parsing and response formatting shared by the HTTP server and `inference.py`.

Speaks the SageMaker inference contract: JSON (`{"inputs": "text"}`, `{"inputs": [...]}`, a
bare list), CSV (one text per row) and JSON Lines in; JSON or JSON Lines out. Every malformed
body becomes a `RequestError` with a 4xx status, never another exception: one client's bad
request must not turn into a 500 or reach the model.
"""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Sequence
from typing import Any

from components.package import Prediction

JSON = "application/json"
JSONLINES = "application/jsonlines"
CSV = "text/csv"
SUPPORTED_INPUT = (JSON, JSONLINES, CSV)
SUPPORTED_OUTPUT = (JSON, JSONLINES)
MAX_TEXTS = 1024
MAX_TEXT_CHARS = 100_000  # longer texts are cut here before tokenising (the model truncates anyway)


class RequestError(Exception):
    """A client error: HTTP status plus a message saying what to send instead."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


def _media_type(header: str | None) -> str:
    return (header or "").split(";")[0].strip().lower()


def _texts_from(obj: Any) -> list[str]:
    if isinstance(obj, dict):
        if "inputs" in obj:
            obj = obj["inputs"]
        elif "instances" in obj:
            obj = obj["instances"]
        elif "text" in obj:
            obj = obj["text"]
        else:
            raise RequestError(400, 'JSON body needs an "inputs" field: {"inputs": "text"} or {"inputs": ["a", "b"]}')
    if isinstance(obj, str):
        obj = [obj]
    if not isinstance(obj, list):
        raise RequestError(400, f'"inputs" must be a string or a list of strings, not {_json_kind(obj)}')
    if not obj:
        raise RequestError(400, '"inputs" is an empty list; send at least one text')
    texts = []
    for i, item in enumerate(obj):
        if isinstance(item, dict) and isinstance(item.get("text", item.get("inputs")), str):
            item = item.get("text", item.get("inputs"))
        if not isinstance(item, str):
            raise RequestError(400, f"item {i} of inputs is {_json_kind(item)}, not a string")
        texts.append(item)
    return texts


def _json_kind(value: Any) -> str:
    kinds = {dict: "an object", list: "a list", str: "a string", bool: "a boolean", int: "a number",
             float: "a number", type(None): "null"}
    return kinds.get(type(value), type(value).__name__)


def _loads(text: str, where: str) -> Any:
    try:
        return json.loads(text)
    except json.JSONDecodeError as err:
        raise RequestError(400, f"{where}invalid JSON at line {err.lineno} column {err.colno}: {err.msg}") from None
    except RecursionError:  # "[[[[..." nested deeper than the interpreter's stack
        raise RequestError(400, f"{where}JSON is nested too deeply; send a flat list of texts") from None
    except ValueError:  # an integer literal over Python's 4300-digit conversion limit
        raise RequestError(400, f"{where}JSON holds a number with too many digits; send texts as strings") from None


def _csv_texts(text: str) -> list[str]:
    texts = []
    reader = csv.reader(io.StringIO(text, newline=""))
    try:
        for row in reader:
            if not row or not any(field.strip() for field in row):
                continue
            if len(row) > 1:
                # Taking the first field would silently cut "Hello, world" to "Hello".
                raise RequestError(400, f"CSV line {reader.line_num} has {len(row)} fields; send one text per row "
                                        'and quote texts that contain commas ("Hello, world")')
            texts.append(row[0])
    except csv.Error as err:  # unclosed quote at the end, a field over csv.field_size_limit(), ...
        raise RequestError(400, f"the CSV body could not be read ({err}); send long texts as JSON") from None
    return texts


def parse_request(body: bytes | bytearray | str, content_type: str | None) -> list[str]:
    """Turn a request body into a list of texts, or raise `RequestError`.

    `body` may already be decoded: the SageMaker inference toolkit hands JSON and CSV bodies to
    `input_fn` as `str`.
    """
    media = _media_type(content_type) or JSON
    if media not in SUPPORTED_INPUT:
        raise RequestError(415, f"content type '{media}' is not supported; use one of {', '.join(SUPPORTED_INPUT)}")
    if isinstance(body, str):
        text = body
    else:
        try:
            text = bytes(body).decode("utf-8")
        except UnicodeDecodeError as err:
            raise RequestError(400, f"the body is not valid UTF-8 (byte {err.start}); encode texts as UTF-8") from None
    if not text.strip():
        raise RequestError(400, "the body is empty; send at least one text")
    if media == JSON:
        texts = _texts_from(_loads(text, ""))
    elif media == JSONLINES:
        texts = []
        # Split on newlines only: str.splitlines() also splits on U+2028 and friends, which JSON allows
        # unescaped inside strings.
        for n, line in enumerate(text.split("\n"), start=1):
            if line.strip():
                texts.extend(_texts_from(_loads(line, f"line {n}: ")))
        if not texts:
            raise RequestError(400, "the JSON Lines body holds no texts")
    else:
        texts = _csv_texts(text)
        if not texts:
            raise RequestError(400, "the CSV body holds no texts; send one text per row")
    if len(texts) > MAX_TEXTS:
        raise RequestError(413, f"{len(texts)} texts in one request; send at most {MAX_TEXTS}")
    out = []
    for i, t in enumerate(texts):
        t = t[:MAX_TEXT_CHARS]
        try:
            t.encode("utf-8")
        except UnicodeEncodeError:  # a lone surrogate from a "\ud800" escape: the tokenizer rejects it
            raise RequestError(400, f"text {i} holds an unpaired UTF-16 surrogate escape; send valid Unicode") from None
        out.append(t)
    return out


def negotiate(accept: str | None) -> str:
    """Pick the response type from an Accept header (JSON by default)."""
    if not accept or not accept.strip():
        return JSON
    for part in accept.split(","):
        media = _media_type(part)
        if media in SUPPORTED_OUTPUT:
            return media
        if media in ("*/*", "application/*"):
            return JSON
    raise RequestError(406, f"cannot answer in '{accept[:200]}'; accept one of {', '.join(SUPPORTED_OUTPUT)}")


def format_response(preds: Sequence[Prediction], accept: str) -> bytes:
    """Serialise predictions as JSON (`{"predictions": [...]}`) or JSON Lines."""
    rows = [p.model_dump() for p in preds]
    if accept == JSONLINES:
        return ("\n".join(json.dumps(r) for r in rows) + "\n").encode()
    return json.dumps({"predictions": rows}).encode()
