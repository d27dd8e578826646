"""The inference server: SageMaker container contract (`GET /ping`, `POST /invocations`) as an ASGI app."""

from __future__ import annotations

import asyncio
import logging
import os
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any, AsyncIterator

from pydantic import BaseModel, ConfigDict
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from components.package import TextClassifier, load_package
from components.serving.batcher import MicroBatcher, QueueFull
from components.serving.handler import RequestError, format_response, negotiate, parse_request

log = logging.getLogger(__name__)


class ServerOptions(BaseModel):
    """Tunables of the inference server."""

    model_config = ConfigDict(frozen=True)

    max_body_bytes: int = 6 * 1024 * 1024  # SageMaker's real-time payload limit
    max_batch: int = 32
    max_wait_ms: float = 5.0
    max_queue: int = 256
    top_k: int | None = None
    torch_threads: int | None = None


def _error(status: int, message: str) -> JSONResponse:
    return JSONResponse({"error": message, "status": status}, status_code=status)


async def _read_body(request: Request, limit: int) -> bytes:
    declared = request.headers.get("content-length")
    if declared and declared.isdigit() and int(declared) > limit:
        raise RequestError(413, f"body of {int(declared)} bytes is over the {limit}-byte limit; send fewer texts")
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise RequestError(413, f"body is over the {limit}-byte limit; send fewer texts")
        chunks.append(chunk)
    return b"".join(chunks)


def create_app(model_dir: str | Path | None = None, options: ServerOptions = ServerOptions(),
               classifier: TextClassifier | None = None) -> Starlette:
    """Build the app; the model loads in the background and `/ping` answers 200 once it is ready."""
    state: dict[str, Any] = {"clf": classifier, "batcher": None, "error": None}

    def _load() -> None:
        if options.torch_threads:
            import torch

            torch.set_num_threads(options.torch_threads)
        state["clf"] = load_package(model_dir)

    def _predict(texts: list[str]) -> list:
        return state["clf"].predict(texts, top_k=options.top_k, batch_size=options.max_batch)

    @asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        batcher = MicroBatcher(_predict, options.max_batch, options.max_wait_ms, options.max_queue)
        batcher.start()
        state["batcher"] = batcher
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

    async def ping(request: Request) -> Response:
        if state["clf"] is not None:
            return JSONResponse({"status": "ok", "labels": state["clf"].labels})
        if state["error"]:
            return _error(500, f"model failed to load: {state['error']}")
        return _error(503, "model is loading")

    async def invocations(request: Request) -> Response:
        if state["clf"] is None:
            return _error(503, "model is not loaded yet; poll GET /ping until it answers 200")
        try:
            accept = negotiate(request.headers.get("accept"))
            body = await _read_body(request, options.max_body_bytes)
            texts = parse_request(body, request.headers.get("content-type"))
            preds = await state["batcher"].submit(texts)
        except RequestError as err:
            return _error(err.status, err.message)
        except QueueFull:
            return _error(503, "server is at capacity; retry with backoff")
        return Response(format_response(preds, accept), media_type=accept)

    async def not_found(request: Request, exc: Exception) -> Response:
        return _error(404, f"no route {request.url.path}; use GET /ping or POST /invocations")

    async def bad_method(request: Request, exc: Exception) -> Response:
        return _error(405, f"{request.method} is not allowed on {request.url.path}")

    async def crashed(request: Request, exc: Exception) -> Response:
        log.exception("unhandled error on %s", request.url.path)
        return _error(500, "internal error; the server log has the details")

    return Starlette(
        routes=[Route("/ping", ping, methods=["GET"]), Route("/invocations", invocations, methods=["POST"])],
        lifespan=lifespan,
        exception_handlers={404: not_found, 405: bad_method, 500: crashed},
    )


def serve(model_dir: str | Path, host: str = "127.0.0.1", port: int = 8080,
          options: ServerOptions = ServerOptions()) -> None:
    """Run the server in the foreground (blocking) until SIGINT/SIGTERM."""
    import uvicorn

    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    uvicorn.run(create_app(model_dir, options), host=host, port=port, log_level="info",
                timeout_keep_alive=5, limit_concurrency=1024, access_log=False)
