"""Data capture in SageMaker's layout: one JSON line per sampled request, written and read back.

A record is what SageMaker's `DataCaptureConfig` writes::

    {"captureData": {"endpointInput": {"observedContentType": ..., "mode": "INPUT", "data": ..., "encoding": ...},
                     "endpointOutput": {... "mode": "OUTPUT" ...}},
     "eventMetadata": {"eventId": ..., "inferenceTime": "2026-01-02T03:04:05.678Z"}, "eventVersion": "0"}

The local server writes them under `<capture dir>/yyyy/mm/dd/hh/<mm-ss-fff>-<id>.jsonl`, rotating files by size
and deleting the oldest files past a total size; a SageMaker endpoint writes the same records to S3
(`<DestinationS3Uri>/<endpoint>/<variant>/yyyy/mm/dd/hh/...jsonl`). `read_capture` reads either.
"""

from __future__ import annotations

import base64
import json
import logging
import os
import queue
import random
import re
import threading
import time
import uuid
from collections import deque
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from components.errors import MonitoringError
from components.serving.handler import CSV, JSON, JSONLINES, RequestError, parse_request

log = logging.getLogger(__name__)

_HOUR_PATH = re.compile(r"(?:^|/)(\d{4})/(\d{2})/(\d{2})/(\d{2})/[^/]+\.jsonl$")


def local_capture_dir(state_dir: str | Path, endpoint_name: str) -> Path:
    """Where a local endpoint's capture goes: `<endpoints state dir>/capture/<endpoint>/`."""
    return Path(state_dir) / "capture" / endpoint_name


def resolve_capture_source(capture: str | None, home: Path, endpoints_dir: Path, endpoint_name: str,
                           sagemaker_uri: str | None = None) -> str:
    """Where a monitor reads capture: `s3://...`; 'sagemaker' (the SageMaker endpoint's DataCaptureConfig
    destination, `sagemaker_uri`); a local directory inside the fineship home; or, when None, the local
    endpoint's own capture directory.

    The capture location is a run parameter (untrusted): a local path outside `home` is refused, so a
    Prefect form cannot point the monitor at other files of the worker's machine.
    """
    if capture is None or not capture.strip():
        return str(local_capture_dir(endpoints_dir, endpoint_name))
    capture = capture.strip()
    if capture == "sagemaker":
        if not sagemaker_uri:
            raise MonitoringError("--capture sagemaker needs FINESHIP_ARTIFACT_BUCKET (the infra/aws stack's "
                                  "ArtifactBucketName output), or pass --capture s3://bucket/prefix")
        return sagemaker_uri
    if capture.startswith("s3://"):
        if not re.fullmatch(r"s3://[a-z0-9][a-z0-9.-]{1,61}[a-z0-9](/[^\x00-\x1f]*)?", capture):
            raise MonitoringError(f"{capture[:200]!r} is not an s3://bucket/prefix URI")
        return capture
    if "://" in capture:
        raise MonitoringError(f"capture {capture[:200]!r}: use a local directory or s3://bucket/prefix")
    path, root = Path(capture).expanduser().resolve(), home.resolve()
    if path != root and root not in path.parents:
        raise MonitoringError(f"capture directory {path} is outside the fineship home {root}: the monitor reads "
                              "local capture only there (copy it under the home, or upload it to S3)")
    return str(path)


class CaptureOptions(BaseModel):
    """Where and how much the inference server captures."""

    model_config = ConfigDict(frozen=True)

    directory: str = Field(description="Root of the capture files (yyyy/mm/dd/hh/ below it).")
    percent: float = Field(100.0, ge=0, le=100, description="Share of requests captured, in percent.")
    max_file_bytes: int = Field(8 * 1024 * 1024, ge=1024, description="A file is closed and a new one started "
                                "before it grows past this size.")
    max_total_bytes: int = Field(100 * 1024 * 1024, ge=1024, description="The oldest files are deleted once all "
                                 "capture files together pass this size.")
    max_queue: int = Field(1000, ge=1, description="Records waiting for the writer thread; more are dropped "
                           "(capture never slows or fails a request).")
    max_queue_bytes: int = Field(64 * 1024 * 1024, ge=1024, description="Bytes of requests and answers waiting "
                                 "for the writer thread; more are dropped.")


def _encode(body: bytes, content_type: str) -> tuple[str, str]:
    """(data, encoding) as SageMaker stores a payload: JSON and CSV as text, anything else as base64."""
    media = content_type.split(";")[0].strip().lower()
    if media in (JSON, CSV):
        try:
            return body.decode("utf-8"), "JSON" if media == JSON else "CSV"
        except UnicodeDecodeError:
            pass
    return base64.b64encode(body).decode("ascii"), "BASE64"


def capture_record(input_body: bytes, input_type: str, output_body: bytes, output_type: str,
                   when: float | None = None, event_id: str | None = None) -> dict[str, Any]:
    """One request and its response as a SageMaker data-capture record."""
    stamp = datetime.fromtimestamp(time.time() if when is None else when, UTC)
    sides = {}
    for key, mode, body, ctype in (("endpointInput", "INPUT", input_body, input_type),
                                   ("endpointOutput", "OUTPUT", output_body, output_type)):
        data, encoding = _encode(body, ctype)
        sides[key] = {"observedContentType": ctype, "mode": mode, "data": data, "encoding": encoding}
    return {"captureData": sides,
            "eventMetadata": {"eventId": event_id or str(uuid.uuid4()),
                              "inferenceTime": stamp.strftime("%Y-%m-%dT%H:%M:%S.") + f"{stamp.microsecond // 1000:03d}Z"},
            "eventVersion": "0"}


class CaptureWriter:
    """Samples requests and appends their records from a background thread; bounded in queue and on disk.

    `submit` never blocks and never raises: a full queue or a failing disk drops records (counted in
    `dropped`), it never slows or fails the request being answered.
    """

    def __init__(self, options: CaptureOptions, clock: Callable[[], float] = time.time,
                 rng: random.Random | None = None) -> None:
        self.options = options
        self.root = Path(options.directory)
        self._clock = clock
        self._rng = rng or random.Random()
        self._queue: queue.Queue = queue.Queue(maxsize=options.max_queue)
        self._thread: threading.Thread | None = None
        self._files: deque[list] = deque()  # [path, size] of every capture file, oldest first
        self._current: tuple[Path, str] | None = None  # the open file and its hour
        self._queued_bytes = 0
        self._lock = threading.Lock()
        self.written = 0
        self.dropped = 0

    def sampled(self) -> bool:
        """Whether this request is captured (a `percent` chance)."""
        return self.options.percent >= 100 or self._rng.random() * 100 < self.options.percent

    def submit(self, input_body: bytes, input_type: str, output_body: bytes, output_type: str) -> bool:
        """Queue one request for capture; False when it was dropped (queue full or writer stopped)."""
        size = len(input_body) + len(output_body)
        with self._lock:
            if self._queued_bytes + size > self.options.max_queue_bytes:
                self.dropped += 1
                return False
            try:
                self._queue.put_nowait((self._clock(), input_body, input_type, output_body, output_type))
            except queue.Full:
                self.dropped += 1
                return False
            self._queued_bytes += size
        return True

    def start(self) -> None:
        self.root.mkdir(parents=True, exist_ok=True, mode=0o700)
        # Paths sort in time order (yyyy/mm/dd/hh/mm-ss-fff-id.jsonl): the oldest go first when over budget.
        self._files = deque([p, p.stat().st_size] for p in sorted(self.root.rglob("*.jsonl"), key=Path.as_posix))
        self._thread = threading.Thread(target=self._run, name="capture-writer", daemon=True)
        self._thread.start()

    def close(self, timeout: float = 5.0) -> None:
        """Write what is queued (for up to `timeout` s) and stop the thread."""
        if self._thread is None:
            return
        try:
            self._queue.put(None, timeout=timeout)
        except queue.Full:
            pass
        self._thread.join(timeout)
        self._thread = None

    def _run(self) -> None:
        while True:
            item = self._queue.get()
            if item is None:
                return
            when, *payload = item
            with self._lock:
                self._queued_bytes -= len(payload[0]) + len(payload[2])
            try:
                self._write(json.dumps(capture_record(*payload, when=when)).encode() + b"\n", when)
            except Exception as err:  # a full or read-only disk...: lose the record, keep the thread and the server
                self.dropped += 1
                log.warning("data capture could not write a record: %s: %s", type(err).__name__, err)

    def _write(self, line: bytes, when: float) -> None:
        o = self.options
        file_limit = min(o.max_file_bytes, max(o.max_total_bytes // 4, 1024))  # rotation keeps the total bounded
        if len(line) > file_limit:
            self.dropped += 1
            return
        stamp = datetime.fromtimestamp(when, UTC)
        hour = stamp.strftime("%Y/%m/%d/%H")
        if self._current is None or self._current[1] != hour or self._files[-1][1] + len(line) > file_limit:
            folder = self.root / hour
            folder.mkdir(parents=True, exist_ok=True, mode=0o700)
            path = folder / f"{stamp:%M-%S}-{stamp.microsecond // 1000:03d}-{uuid.uuid4().hex[:12]}.jsonl"
            self._files.append([path, 0])
            self._current = (path, hour)
        # Owner-only (captured texts are private), also when another server process of this endpoint (blue/green)
        # deleted the file meanwhile; one whole line per write, so readers never see half a record.
        fd = os.open(self._current[0], os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
        try:
            view = memoryview(line)
            while view:
                view = view[os.write(fd, view):]
        finally:
            os.close(fd)
        self._files[-1][1] += len(line)
        self.written += 1
        self._enforce_total()

    def _enforce_total(self) -> None:
        total = sum(size for _, size in self._files)
        while total > self.options.max_total_bytes and len(self._files) > 1:
            path, size = self._files.popleft()
            path.unlink(missing_ok=True)
            total -= size
            _remove_empty_parents(path.parent, self.root)


def _remove_empty_parents(folder: Path, root: Path) -> None:
    while folder != root and root in folder.parents:
        try:
            folder.rmdir()
        except OSError:
            return
        folder = folder.parent


# -- reading ---------------------------------------------------------------------------------------

class CaptureLimits(BaseModel):
    """How much capture a monitor reads at most (the newest files first)."""

    model_config = ConfigDict(frozen=True)

    max_files: int = Field(5000, ge=1)
    max_file_bytes: int = Field(64 * 1024 * 1024, ge=1, description="Larger files are skipped.")
    max_total_bytes: int = Field(512 * 1024 * 1024, ge=1)
    max_texts: int = Field(50_000, ge=1)


class CapturedTraffic(BaseModel):
    """The texts of the captured requests and what the endpoint answered, newest files first."""

    model_config = ConfigDict(frozen=True)

    source: str
    texts: list[str] = Field(default_factory=list)
    labels: list[str] = Field(default_factory=list, description="Predicted label per text.")
    confidences: list[float] = Field(default_factory=list, description="Score of the predicted label per text.")
    requests: int = 0
    files: int = 0
    skipped: int = Field(0, description="Records that were malformed or whose request could not be parsed.")
    truncated: bool = Field(False, description="A read limit was reached: older capture was not read.")
    first: datetime | None = None
    last: datetime | None = None


def _decode(side: dict) -> bytes:
    data = side["data"]
    if side.get("encoding", "").upper() == "BASE64":
        return base64.b64decode(data, validate=True)
    return data.encode("utf-8")


def _predictions(body: bytes, content_type: str) -> list[dict]:
    media = content_type.split(";")[0].strip().lower()
    if media == JSONLINES:
        return [json.loads(line) for line in body.decode("utf-8").split("\n") if line.strip()]
    return json.loads(body)["predictions"]


def parse_record(line: bytes | str) -> tuple[datetime, list[str], list[str], list[float]]:
    """(inference time, texts, predicted labels, their scores) of one capture record; ValueError when malformed."""
    try:
        rec = json.loads(line)
        data = rec["captureData"]
        inp, out = data["endpointInput"], data["endpointOutput"]
        when = datetime.fromisoformat(rec["eventMetadata"]["inferenceTime"])
        texts = parse_request(_decode(inp), inp.get("observedContentType"))
        preds = _predictions(_decode(out), out.get("observedContentType") or JSON)
        labels = [str(p["label"]) for p in preds]
        scores = [float(p["score"]) for p in preds]
    except (KeyError, TypeError, ValueError, IndexError, RequestError) as err:
        raise ValueError(f"not a capture record of this server: {type(err).__name__}: {err}") from None
    if len(labels) != len(texts):
        raise ValueError(f"{len(texts)} texts but {len(labels)} predictions")
    return when if when.tzinfo else when.replace(tzinfo=UTC), texts, labels, scores


def _hour_of(key: str) -> datetime | None:
    m = _HOUR_PATH.search(key)
    return datetime(*map(int, m.groups()), tzinfo=UTC) if m else None


def _local_files(root: Path) -> Iterator[tuple[str, int, Callable[[], bytes]]]:
    if not root.is_dir():
        raise MonitoringError(f"no capture at {root}: turn capture on (deploy.capture_percent) and send traffic, "
                              "or pass --capture PATH|s3://bucket/prefix")
    for p in sorted(root.rglob("*.jsonl"), key=lambda q: q.relative_to(root).as_posix(), reverse=True):
        if p.is_file() and not p.is_symlink():
            yield p.relative_to(root).as_posix(), p.stat().st_size, p.read_bytes


def _s3_files(uri: str, s3: Any) -> Iterator[tuple[str, int, Callable[[], bytes]]]:
    bucket, _, prefix = uri.removeprefix("s3://").partition("/")
    objects = [o for page in s3.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix)
               for o in page.get("Contents", []) if o["Key"].endswith(".jsonl")]
    for o in sorted(objects, key=lambda o: o["Key"], reverse=True):
        key = o["Key"]
        yield key, int(o["Size"]), lambda key=key: s3.get_object(Bucket=bucket, Key=key)["Body"].read()


def read_capture(source: str | Path, since: datetime | None = None, s3_client: Any = None,
                 limits: CaptureLimits = CaptureLimits()) -> CapturedTraffic:
    """Read capture files (a local directory or `s3://bucket/prefix`), newest first, within `limits`.

    Records before `since` are left out (whole hour folders before its hour are not read). Malformed
    records are counted in `skipped`, never fatal: a file being written may end in half a line.
    """
    source = str(source)
    if source.startswith("s3://"):
        if s3_client is None:
            raise MonitoringError(f"reading {source} needs an S3 client (set FINESHIP_AWS_REGION and credentials)")
        files = _s3_files(source, s3_client)
    else:
        files = _local_files(Path(source))
    since = since.replace(tzinfo=UTC) if since is not None and since.tzinfo is None else since
    floor = since.replace(minute=0, second=0, microsecond=0) if since else None
    texts: list[str] = []
    labels: list[str] = []
    scores: list[float] = []
    seen = read = requests = skipped = 0
    truncated = False
    first = last = None
    for key, size, fetch in files:
        hour = _hour_of(key)
        if floor is not None and hour is not None and hour < floor:
            continue
        if size > limits.max_file_bytes:
            log.warning("skipping capture file %s: %d bytes is over the %d-byte limit", key, size,
                        limits.max_file_bytes)
            continue
        if seen >= limits.max_files or read + size > limits.max_total_bytes or len(texts) >= limits.max_texts:
            truncated = True
            break
        seen, read = seen + 1, read + size
        for line in fetch().split(b"\n"):
            if not line.strip():
                continue
            try:
                when, t, lab, sc = parse_record(line)
            except ValueError:
                skipped += 1
                continue
            if since is not None and when < since:
                continue
            requests += 1
            texts += t
            labels += lab
            scores += sc
            first = when if first is None or when < first else first
            last = when if last is None or when > last else last
    if len(texts) > limits.max_texts:
        truncated, texts, labels, scores = True, texts[:limits.max_texts], labels[:limits.max_texts], \
            scores[:limits.max_texts]
    return CapturedTraffic(source=source, texts=texts, labels=labels, confidences=scores, requests=requests,
                           files=seen, skipped=skipped, truncated=truncated, first=first, last=last)
