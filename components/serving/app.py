"""The inference server: SageMaker container contract (`GET /ping`, `POST /invocations`) as an ASGI app."""

from __future__ import annotations

import asyncio
import logging
import os
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict
from starlette.applications import Starlette
from starlette.requests import ClientDisconnect, Request
from starlette.responses import HTMLResponse, JSONResponse, Response
from starlette.routing import Route

from components.monitoring.capture import CaptureOptions, CaptureWriter
from components.package import TextClassifier, preprocess
from components.serving.backends import load_backend
from components.serving.batcher import MicroBatcher, PredictionFailed, QueueFull, plan_batches
from components.serving.handler import JSON, RequestError, format_response, negotiate, parse_request

log = logging.getLogger(__name__)

TRY_IT_PAGE = Path(__file__).with_name("try_it.html")
# The page loads nothing from anywhere: inline script and style only; it may call an endpoint URL the
# person types in (connect-src), nothing else.
_PAGE_CSP = ("default-src 'none'; script-src 'unsafe-inline'; style-src 'unsafe-inline'; img-src data:; "
             "connect-src 'self' http: https:; base-uri 'none'; form-action 'none'; frame-ancestors 'none'")


class ServerOptions(BaseModel):
    """Tunables of the inference server."""

    model_config = ConfigDict(frozen=True)

    max_body_bytes: int = 6 * 1024 * 1024  # SageMaker's real-time payload limit
    max_batch: int = 32
    max_wait_ms: float = 5.0
    max_queue: int = 256
    top_k: int | None = None
    torch_threads: int | None = None
    backend: str = "eager"  # or "torchscript" / "onnx": the package's checked export (see `load_backend`)
    # A micro-batch is cut into forward passes of similar token length (see `plan_batches`): one pass
    # costs about this many token positions of fixed overhead. 0 turns the cut off (one padded pass).
    pass_overhead_tokens: float = 16.0
    max_batch_tokens: int | None = None  # at most this many padded token positions per pass (None: no limit)
    head_timeout: float = 30.0  # seconds for a request's headers to arrive (uvicorn has no such limit)
    body_timeout: float = 30.0  # seconds for a request's body to arrive once its headers have (answers 408)
    capture: CaptureOptions | None = None  # data capture for `fineship monitor` (components/monitoring/capture.py)


def _error(status: int, message: str, close: bool = False) -> JSONResponse:
    # `close` ends the connection after the answer: the client may still be sending a body we will not read.
    headers = {"connection": "close"} if close else None
    return JSONResponse({"error": message, "status": status}, status_code=status, headers=headers)


async def _read_body(request: Request, limit: int, timeout: float) -> bytes:
    """The request body, or `RequestError` 413 when over `limit` bytes and 408 when slower than `timeout` s.

    uvicorn puts no deadline on a body (a client can send its headers and then one byte a minute),
    so the whole read runs under `timeout`.
    """
    declared = request.headers.get("content-length")
    if declared and declared.isdigit() and int(declared) > limit:
        raise RequestError(413, f"body of {int(declared)} bytes is over the {limit}-byte limit; send fewer texts")

    async def read() -> bytes:
        chunks, size = [], 0
        async for chunk in request.stream():
            size += len(chunk)
            if size > limit:
                raise RequestError(413, f"body is over the {limit}-byte limit; send fewer texts")
            chunks.append(chunk)
        return b"".join(chunks)

    try:
        return await asyncio.wait_for(read(), timeout)
    except TimeoutError:
        log.info("request body did not arrive within %g s; answering 408", timeout)
        raise RequestError(408, f"the request body did not arrive within {timeout:g} s; send it faster") from None
    except ClientDisconnect:
        raise RequestError(400, "the client disconnected before sending the whole body") from None


def create_app(model_dir: str | Path | None = None, options: ServerOptions = ServerOptions(),
               classifier: TextClassifier | None = None) -> Starlette:
    """Build the app; the model loads in the background and `/ping` answers 200 once it is ready."""
    state: dict[str, Any] = {"clf": classifier, "batcher": None, "error": None, "capture": None}

    def _load() -> None:
        if options.torch_threads:
            import torch

            torch.set_num_threads(options.torch_threads)
        state["clf"] = load_backend(model_dir, options.backend)

    def _predict(texts: list[str]) -> list:
        clf = state["clf"]
        if len(texts) < 2 or options.pass_overhead_tokens <= 0:
            return clf.predict(texts, top_k=options.top_k, batch_size=options.max_batch)
        # Padding every text of a micro-batch to its longest wastes most of the pass on short texts
        # beside a long one; counting tokens first (a fraction of a forward pass) avoids that.
        lengths = [len(ids) for ids in clf.tokenizer(preprocess(texts, clf.meta), truncation=True,
                                                     max_length=clf.meta.max_length)["input_ids"]]
        preds: list = [None] * len(texts)
        for run in plan_batches(lengths, options.max_batch, options.pass_overhead_tokens, options.max_batch_tokens):
            for i, p in zip(run, clf.predict([texts[i] for i in run], top_k=options.top_k, batch_size=len(run))):
                preds[i] = p
        return preds

    @asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        batcher = MicroBatcher(_predict, options.max_batch, options.max_wait_ms, options.max_queue)
        batcher.start()
        state["batcher"] = batcher
        if options.capture is not None and options.capture.percent > 0:
            state["capture"] = CaptureWriter(options.capture)
            state["capture"].start()
        loader = None
        if state["clf"] is None:
            async def load() -> None:
                try:
                    await asyncio.to_thread(_load)
                    log.info("model loaded from %s", model_dir)
                except Exception as err:  # reported through /ping, never crash the server silently
                    state["error"] = f"{type(err).__name__}: {err}"
                    log.error("model failed to load: %s", state["error"])

            loader = asyncio.get_running_loop().create_task(load())
        yield
        if loader:
            loader.cancel()
        await batcher.stop()
        if state["capture"] is not None:
            await asyncio.to_thread(state["capture"].close)

    async def ping(request: Request) -> Response:
        if state["clf"] is not None:
            return JSONResponse({"status": "ok", "labels": state["clf"].labels,
                                 "backend": getattr(state["clf"], "backend", "eager")})
        if state["error"]:
            return _error(500, f"model failed to load: {state['error']}")
        return _error(503, "model is loading")

    async def invocations(request: Request) -> Response:
        try:
            # Read the body (within its size and time limits) before any other answer, so the
            # connection is left clean for the client's next request.
            body = await _read_body(request, options.max_body_bytes, options.body_timeout)
            if state["clf"] is None:
                return _error(503, "model is not loaded yet; poll GET /ping until it answers 200")
            accept = negotiate(request.headers.get("accept"))
            texts = parse_request(body, request.headers.get("content-type"))
            preds = await state["batcher"].submit(texts)
        except RequestError as err:
            return _error(err.status, err.message, close=err.status == 408)
        except QueueFull:
            return _error(503, "server is at capacity; retry with backoff")
        except PredictionFailed as err:
            return _error(500, f"{err}; the server log has the details")
        answer = format_response(preds, accept)
        capture = state["capture"]
        if capture is not None and capture.sampled():  # queued for a writer thread: never delays the answer
            capture.submit(body, request.headers.get("content-type") or JSON, answer, accept)
        return Response(answer, media_type=accept)

    page = TRY_IT_PAGE.read_bytes()

    async def try_it(request: Request) -> Response:
        return HTMLResponse(page, headers={"content-security-policy": _PAGE_CSP, "cache-control": "no-cache",
                                           "x-content-type-options": "nosniff"})

    # Handlers below read the path from the scope: `request.url` parses the Host header, which a
    # client can make unparseable (`Host: [`).
    async def not_found(request: Request, exc: Exception) -> Response:
        return _error(404, f"no route {request.scope['path'][:200]}; use GET /ping or POST /invocations "
                           "(GET / is a try-it page)")

    async def bad_method(request: Request, exc: Exception) -> Response:
        return _error(405, f"{request.method[:20]} is not allowed on {request.scope['path'][:200]}")

    async def crashed(request: Request, exc: Exception) -> Response:
        log.exception("unhandled error on %s", request.scope["path"][:200])
        return _error(500, "internal error; the server log has the details")

    return Starlette(
        routes=[Route("/ping", ping, methods=["GET"]), Route("/invocations", invocations, methods=["POST"]),
                Route("/", try_it, methods=["GET"])],
        lifespan=lifespan,
        exception_handlers={404: not_found, 405: bad_method, 500: crashed},
    )


def serve(model_dir: str | Path, host: str = "127.0.0.1", port: int = 8080,
          options: ServerOptions = ServerOptions(), standby_port: int | None = None) -> None:
    """Run the server in the foreground (blocking) until SIGINT/SIGTERM.

    With `standby_port`, listen on the private loopback `port` only and take over `host:standby_port`
    on SIGUSR1 (blue/green handover: components/serving/handover.py).
    """
    import uvicorn

    from components.serving.handover import HandoverServer, listener
    from components.serving.protocol import GuardedH11Protocol

    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    # Before torch loads (the model loads after the server starts): OpenMP threads that spin between
    # micro-batches cost about 4x the CPU of the forward passes themselves (measured on the tiny test model).
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    protocol = GuardedH11Protocol.with_timeouts(options.head_timeout, options.body_timeout)
    config = uvicorn.Config(create_app(model_dir, options), log_level="info", http=protocol, timeout_keep_alive=5,
                            limit_concurrency=1024, access_log=False)
    public = (host, standby_port) if standby_port is not None else None
    server = HandoverServer(config, public)
    server.run(sockets=[listener("127.0.0.1" if public else host, port, backlog=config.backlog)])
