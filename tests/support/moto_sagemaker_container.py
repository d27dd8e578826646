"""A stand-in for the SageMaker PyTorch inference container, run as a script by the moto plugin.

    python tests/support/moto_sagemaker_container.py --archive model.tar.gz --workdir DIR --port N [--fault F]

What it does is what the container does with a `model.tar.gz` whose `code/inference.py` defines
`model_fn`/`input_fn`/`predict_fn`/`output_fn` (the sagemaker-inference toolkit's contract):

1. unpack the archive into `DIR/model` (the container's `/opt/ml/model`);
2. check `code/requirements.txt`: the container would `pip install` it; offline we can only check
   that this interpreter already has exactly those versions, and refuse to start otherwise;
3. put `code/` first on `sys.path` and import `inference` (`SAGEMAKER_PROGRAM`). Every `components`
   module it loads must come from the archive's `code/` (checked), so a module missing from the
   archive fails here instead of being found in the developer's checkout;
4. load the model and answer `GET /ping` and `POST /invocations` through the SageMaker inference
   toolkit's own `sagemaker_inference.transformer.Transformer` (what the container's model server
   calls), given a minimal model-server request context. Without the toolkit installed, an
   equivalent of its transform path is used: JSON and CSV bodies decoded to `str` before
   `input_fn`, `output_fn` may return `(body, content_type)`, an exception with a 4xx
   `status_code` answers that status, anything else 500.

`--fault label-order-reversed` reverses the loaded model's label list: the classic packaging bug a
smoke test exists to catch (right weights, wrong label names). The process exits when its parent
(the moto server) goes away. It imports nothing from the repository but its sibling
`sagemaker_context.py` (the fake model-server request context).
"""

from __future__ import annotations

import argparse
import importlib
import importlib.metadata
import importlib.util
import json
import os
import sys
import tarfile
import threading
import time
import traceback
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from types import ModuleType

UTF8_TYPES = ("application/json", "text/csv")


def _load_sibling(name: str) -> ModuleType:
    """A module of this file's folder, loaded by its path: the container runs under `python -I`, which puts no
    folder of the repository on `sys.path`, so the archive's `code/` stays the only source of `components`."""
    path = Path(__file__).with_name(f"{name}.py")
    spec = importlib.util.spec_from_file_location(f"_container_{name}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


ModelServerContext = _load_sibling("sagemaker_context").ModelServerContext


def _watch_parent(parent: int) -> None:
    while True:
        if os.getppid() != parent:
            os._exit(0)
        time.sleep(0.5)


def _fail(message: str) -> None:
    print(f"container start failed: {message}", file=sys.stderr, flush=True)
    sys.exit(3)


def _check_requirements(path: Path) -> None:
    if not path.is_file():
        return
    for line in path.read_text().splitlines():
        line = line.split("#")[0].strip()
        if not line:
            continue
        if "==" not in line:
            _fail(f"code/requirements.txt line {line!r} is not pinned with ==")
        name, wanted = (s.strip() for s in line.split("==", 1))
        try:
            have = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            _fail(f"code/requirements.txt needs {name}=={wanted}, which is not installed here")
        if have != wanted:
            _fail(f"code/requirements.txt pins {name}=={wanted} but this environment has {have}")


class _Handler:
    """`transform(body, headers) -> (status, content_type, body)` over the archive's `inference` module."""

    def __init__(self, model_dir: Path, fault: str | None) -> None:
        code = model_dir / "code"
        program = os.environ.setdefault("SAGEMAKER_PROGRAM", "inference.py")
        if not (code / program).is_file():
            _fail(f"model.tar.gz has no code/{program}")
        _check_requirements(code / "requirements.txt")
        sys.path.insert(0, str(code))
        self.model_dir = model_dir
        self.default_accept = os.environ.get("SAGEMAKER_DEFAULT_INVOCATIONS_ACCEPT", "application/json")
        try:
            from sagemaker_inference.transformer import Transformer
        except ImportError:
            Transformer = None
        if Transformer is not None:
            self.toolkit = Transformer()
            self.toolkit.validate_and_initialize(model_dir=str(model_dir),
                                                 context=ModelServerContext(model_dir, {}))
            model = self.toolkit._model
        else:
            self.toolkit = None
            self.module = importlib.import_module(program.removesuffix(".py"))
            model = self.module.model_fn(str(model_dir))
        foreign = sorted(f"{name} ({m.__file__})" for name, m in list(sys.modules.items())
                         if (name == "components" or name.startswith("components.")) and getattr(m, "__file__", None)
                         and not Path(m.__file__).resolve().is_relative_to(code.resolve()))
        if foreign:
            _fail("modules imported from outside the archive's code/: " + ", ".join(foreign))
        if fault == "label-order-reversed":
            model.labels = list(reversed(model.labels))
        elif fault:
            _fail(f"unknown fault {fault!r}")
        self.model = model

    def transform(self, body: bytes, headers: dict[str, str]) -> tuple[int, str, bytes]:
        if self.toolkit is not None:
            ctx = ModelServerContext(self.model_dir, headers)
            [out] = self.toolkit.transform([{"body": bytearray(body)}], ctx)
            if ctx.status is not None:
                message = str(out).split("\n", 1)[0]
                return ctx.status[0], "application/json", json.dumps({"code": ctx.status[0], "message": message}).encode()
            return 200, ctx.content_type or self.default_accept, out if isinstance(out, bytes) else str(out).encode()
        content_type = (headers.get("Content-Type") or "application/json").split(";")[0].strip()
        accept = headers.get("Accept")
        if not accept or accept == "*/*":
            accept = self.default_accept
        try:
            data = body.decode("utf-8") if content_type in UTF8_TYPES else body
            result = self.module.output_fn(self.module.predict_fn(self.module.input_fn(data, content_type), self.model),
                                           accept)
            out, out_type = result if isinstance(result, tuple) else (result, accept)
            return 200, out_type, out if isinstance(out, bytes) else str(out).encode()
        except Exception as err:  # noqa: BLE001 - the toolkit turns every handler error into a response
            status = getattr(err, "status_code", None)
            if not isinstance(status, int) or not 400 <= status < 500:
                traceback.print_exc()
                status = 500
            message = str(err) or HTTPStatus(status).phrase
            return status, "application/json", json.dumps({"code": status, "message": message}).encode()


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--archive", required=True)
    parser.add_argument("--workdir", required=True)
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--fault", default=None)
    args = parser.parse_args()
    threading.Thread(target=_watch_parent, args=(os.getppid(),), daemon=True).start()

    model_dir = Path(args.workdir) / "model"
    model_dir.mkdir(parents=True, exist_ok=True)
    with tarfile.open(args.archive, "r:gz") as tar:
        tar.extractall(model_dir, filter="data")
    handler = _Handler(model_dir, args.fault)

    class Server(BaseHTTPRequestHandler):
        def log_message(self, fmt: str, *a) -> None:  # quiet: the moto log is shared
            pass

        def _send(self, status: int, body: bytes, content_type: str = "application/json") -> None:
            self.send_response(status)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def do_GET(self) -> None:
            if self.path == "/ping":
                self._send(200, b"")
            else:
                self._send(404, b'{"error": "not found"}')

        def do_POST(self) -> None:
            if self.path != "/invocations":
                self._send(404, b'{"error": "not found"}')
                return
            body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
            status, content_type, out = handler.transform(body, dict(self.headers.items()))
            self._send(status, out, content_type)

    server = ThreadingHTTPServer(("127.0.0.1", args.port), Server)
    print(f"container ready on 127.0.0.1:{args.port}", flush=True)
    server.serve_forever()


if __name__ == "__main__":
    main()
