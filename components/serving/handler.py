"""Request parsing and response formatting shared by the HTTP server and `inference.py`.

Speaks the SageMaker inference contract: JSON (`{"inputs": "text"}`, `{"inputs": [...]}`, a
bare list), CSV (one text per row) and JSON Lines in; JSON or JSON Lines out.
"""

from __future__ import annotations

import csv
import io
import json
from typing import Any, Sequence

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
        raise RequestError(400, '"inputs" must be a string or a list of strings')
    if not obj:
        raise RequestError(400, '"inputs" is an empty list; send at least one text')
    texts = []
    for i, item in enumerate(obj):
        if isinstance(item, dict) and isinstance(item.get("text", item.get("inputs")), str):
            item = item.get("text", item.get("inputs"))
        if not isinstance(item, str):
            raise RequestError(400, f"item {i} of inputs is a {type(item).__name__}, not a string")
        texts.append(item)
    return texts


def parse_request(body: bytes, content_type: str | None) -> list[str]:
    """Turn a request body into a list of texts, or raise `RequestError`."""
    media = _media_type(content_type) or JSON
    if media not in SUPPORTED_INPUT:
        raise RequestError(415, f"content type '{media}' is not supported; use one of {', '.join(SUPPORTED_INPUT)}")
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError:
        raise RequestError(400, "the body is not valid UTF-8; encode texts as UTF-8") from None
    if media == JSON:
        try:
            texts = _texts_from(json.loads(text))
        except json.JSONDecodeError as err:
            raise RequestError(400, f"invalid JSON at line {err.lineno} column {err.colno}: {err.msg}") from None
    elif media == JSONLINES:
        texts = []
        for n, line in enumerate(text.splitlines(), start=1):
            if line.strip():
                try:
                    texts.extend(_texts_from(json.loads(line)))
                except json.JSONDecodeError as err:
                    raise RequestError(400, f"line {n} is not valid JSON: {err.msg}") from None
        if not texts:
            raise RequestError(400, "the JSON Lines body holds no texts")
    else:
        texts = [row[0] for row in csv.reader(io.StringIO(text)) if row and row[0].strip()]
        if not texts:
            raise RequestError(400, "the CSV body holds no texts; send one text per row")
    if len(texts) > MAX_TEXTS:
        raise RequestError(413, f"{len(texts)} texts in one request; send at most {MAX_TEXTS}")
    return [t[:MAX_TEXT_CHARS] for t in texts]


def negotiate(accept: str | None) -> str:
    """Pick the response type from an Accept header (JSON by default)."""
    if not accept:
        return JSON
    for part in accept.split(","):
        media = _media_type(part)
        if media in SUPPORTED_OUTPUT:
            return media
        if media in ("*/*", "application/*"):
            return JSON
    raise RequestError(406, f"cannot answer in '{accept}'; accept one of {', '.join(SUPPORTED_OUTPUT)}")


def format_response(preds: Sequence[Prediction], accept: str) -> bytes:
    """Serialise predictions as JSON (`{"predictions": [...]}`) or JSON Lines."""
    rows = [p.model_dump() for p in preds]
    if accept == JSONLINES:
        return ("\n".join(json.dumps(r) for r in rows) + "\n").encode()
    return json.dumps({"predictions": rows}).encode()
