"""moto server plugin: `InvokeEndpoint` answers with the deployed model's real predictions.

moto 5.2.5 answers `sagemaker-runtime` `InvokeEndpoint` with canned results (a queue set through
`/moto-api/static/sagemaker/endpoint-results`). Canned answers cannot show that an endpoint serves
what was registered: the test would compare the registry's predictions with whatever it queued.
This plugin instead runs the artifact the endpoint actually points at:

    endpoint -> its serving EndpointConfig -> the variant's Model -> PrimaryContainer.ModelDataUrl
    -> the model.tar.gz bytes in moto's own S3 -> a "container" process

The container is `tests/support/moto_sagemaker_container.py`, which unpacks the archive and runs
its `code/inference.py` (`model_fn`/`input_fn`/`predict_fn`/`output_fn`) like the SageMaker PyTorch
inference container does, on a free loopback port. `InvokeEndpoint` forwards the body,
`Content-Type` and `Accept` to its `/invocations` and returns the answer with
`x-Amzn-Invoked-Production-Variant`; a 4xx/5xx from the container becomes SageMaker's `ModelError`
(HTTP 424, `OriginalStatusCode`, `OriginalMessage`). Containers are keyed by archive content,
container environment and fault, so equal artifacts share one process.

Fleets: an endpoint keeps one container per endpoint configuration it was deployed with, started
when `CreateEndpoint`/`UpdateEndpoint` is called (see `moto_sagemaker_update`, which also uses the
container's `/ping` as the health check that decides between `InService` and a failed deployment).
Requests go to the fleet of the configuration the endpoint serves, so during an update the old
fleet answers, and deleting a Model does not stop an endpoint that already runs it, as on AWS.

Endpoints whose model has no `ModelDataUrl`, or whose archive has no `code/inference.py` (a custom
image with its own server), keep moto's canned behaviour.

Loaded into the server process through `MOTO_SERVER_PLUGINS` in `tests/integration/conftest.py`;
import `moto_sagemaker_update` too (it imports this module). Container processes exit with the
server (SIGTERM handler, plus each container watches its parent).
"""

from __future__ import annotations

import atexit
import hashlib
import io
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tarfile
import tempfile
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path
from typing import Any

from moto.s3.models import s3_backends
from moto.sagemaker.models import SageMakerModelBackend
from moto.sagemakerruntime.responses import SageMakerRuntimeResponse
from moto.utilities.utils import get_partition

CONTAINER_SCRIPT = Path(__file__).with_name("moto_sagemaker_container.py")
START_TIMEOUT = float(os.environ.get("MOTO_SAGEMAKER_CONTAINER_TIMEOUT", "180"))
INVOKE_TIMEOUT = 60.0  # SageMaker's real-time invocation limit


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Container:
    """One emulated inference container: starts in a background thread; `ready` is set when it answered
    `/ping` or gave up (then `error` says why)."""

    def __init__(self, archive: bytes, environment: dict[str, str], fault: str | None) -> None:
        self.ready = threading.Event()
        self.error: str | None = None
        self.url: str | None = None
        self.proc: subprocess.Popen | None = None
        self.dir = Path(tempfile.mkdtemp(prefix="moto-sagemaker-container-"))
        threading.Thread(target=self._start, args=(archive, environment, fault), daemon=True).start()

    def _log_tail(self, chars: int = 600) -> str:
        try:
            return (self.dir / "container.log").read_text(errors="replace")[-chars:].strip()
        except OSError:
            return ""

    def _start(self, archive: bytes, environment: dict[str, str], fault: str | None) -> None:
        try:
            (self.dir / "model.tar.gz").write_bytes(archive)
            port = _free_port()
            env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
            env.update(environment)
            cmd = [sys.executable, "-I", str(CONTAINER_SCRIPT), "--archive", str(self.dir / "model.tar.gz"),
                   "--workdir", str(self.dir), "--port", str(port)] + (["--fault", fault] if fault else [])
            with open(self.dir / "container.log", "wb") as log:
                self.proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                             cwd=self.dir, env=env)
            url = f"http://127.0.0.1:{port}"
            deadline = time.monotonic() + START_TIMEOUT
            while time.monotonic() < deadline:
                if self.proc.poll() is not None:
                    self.error = f"the container exited with code {self.proc.returncode}: {self._log_tail()}"
                    return
                try:
                    with urllib.request.urlopen(f"{url}/ping", timeout=1) as r:
                        if r.status == 200:
                            self.url = url
                            return
                except (urllib.error.URLError, ConnectionError, TimeoutError):
                    pass
                time.sleep(0.1)
            self.error = f"the container did not answer /ping within {START_TIMEOUT:.0f} s: {self._log_tail()}"
        except Exception as err:  # noqa: BLE001 - becomes the endpoint's FailureReason
            self.error = f"the container could not start: {err}"
        finally:
            self.ready.set()

    @property
    def alive(self) -> bool:
        return not self.ready.is_set() or (self.error is None and self.proc is not None and self.proc.poll() is None)

    def invoke(self, body: bytes, content_type: str | None, accept: str | None) -> tuple[int, str, bytes]:
        headers = {"Content-Type": content_type or "application/octet-stream"}
        if accept:
            headers["Accept"] = accept
        request = urllib.request.Request(f"{self.url}/invocations", data=body, headers=headers, method="POST")
        try:
            with urllib.request.urlopen(request, timeout=INVOKE_TIMEOUT) as r:
                return r.status, r.headers.get("Content-Type", ""), r.read()
        except urllib.error.HTTPError as err:
            return err.code, err.headers.get("Content-Type", ""), err.read()

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
        shutil.rmtree(self.dir, ignore_errors=True)


class ContainerPool:
    """Containers by (archive, environment, fault); a dead one is replaced on the next request."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._containers: dict[str, Container] = {}

    def get(self, archive: bytes, environment: dict[str, str], fault: str | None) -> Container:
        key = hashlib.sha256(archive + json.dumps([environment, fault], sort_keys=True).encode()).hexdigest()
        with self._lock:
            container = self._containers.get(key)
            if container is None or not container.alive:
                container = self._containers[key] = Container(archive, environment, fault)
            return container

    def stop_all(self) -> None:
        with self._lock:
            containers, self._containers = list(self._containers.values()), {}
        for c in containers:
            c.stop()


POOL = ContainerPool()


def _shutdown(signum: int, frame: Any) -> None:
    POOL.stop_all()
    signal.signal(signum, signal.SIG_DFL)
    os.kill(os.getpid(), signum)


atexit.register(POOL.stop_all)
if threading.current_thread() is threading.main_thread():
    signal.signal(signal.SIGTERM, _shutdown)


# -- which container serves an endpoint configuration --------------------------------------------

def _fleets(backend: SageMakerModelBackend) -> dict[tuple[str, str], Container | None]:
    """(endpoint, config) -> container; kept on the backend so `/moto-api/reset` clears it."""
    return backend.__dict__.setdefault("_fineship_fleets", {})


def model_artifact(backend: SageMakerModelBackend, model_name: str) -> tuple[bytes | None, dict[str, str]]:
    """The model's archive bytes from moto's S3 (None without ModelDataUrl) and its container environment."""
    model = backend._models.get(model_name)
    if model is None:
        raise LookupError(f"model {model_name} does not exist")
    container = model.primary_container or (model.containers[0] if model.containers else {})
    environment = {k: str(v) for k, v in (container.get("Environment") or {}).items()}
    url = container.get("ModelDataUrl")
    if not url:
        return None, environment
    bucket, _, key = url.removeprefix("s3://").partition("/")
    s3 = s3_backends[backend.account_id][get_partition(backend.region_name)]
    obj = s3.get_object(bucket, key)
    if obj is None:
        raise LookupError(f"model data {url} does not exist")
    return obj.value, environment


def _has_handler(archive: bytes) -> bool:
    try:
        with tarfile.open(fileobj=io.BytesIO(archive), mode="r:gz") as tar:
            return any(m.name.lstrip("./") == "code/inference.py" for m in tar.getmembers())
    except (tarfile.TarError, OSError, EOFError):
        return False


def start_fleet(backend: SageMakerModelBackend, endpoint_name: str, config_name: str,
                fault: str | None = None) -> Container | None:
    """Start (or reuse) the container for a configuration's first variant; None when it cannot be emulated."""
    config = backend.endpoint_configs[config_name]
    archive, environment = model_artifact(backend, config.production_variants[0]["ModelName"])
    container = POOL.get(archive, environment, fault) if archive and _has_handler(archive) else None
    _fleets(backend)[(endpoint_name, config_name)] = container
    return container


def serving_container(backend: SageMakerModelBackend, endpoint_name: str, config_name: str) -> Container | None:
    fleets = _fleets(backend)
    if (endpoint_name, config_name) not in fleets:  # e.g. made before this plugin was loaded
        try:
            start_fleet(backend, endpoint_name, config_name)
        except (KeyError, LookupError):
            fleets[(endpoint_name, config_name)] = None
    container = fleets[(endpoint_name, config_name)]
    if container is not None and container.ready.is_set() and not container.alive and container.error is None:
        container = start_fleet(backend, endpoint_name, config_name)  # its process died: restart
    return container


def forget_endpoint(backend: SageMakerModelBackend, endpoint_name: str) -> None:
    for key in [k for k in _fleets(backend) if k[0] == endpoint_name]:
        del _fleets(backend)[key]


# -- InvokeEndpoint ------------------------------------------------------------------------------

_original_invoke = SageMakerRuntimeResponse.invoke_endpoint
_SERVING = ("InService", "Updating", "SystemUpdating", "RollingBack", "UpdateRollbackFailed")


def _error(status: int, code: str, body: dict[str, Any]) -> tuple[int, dict[str, str], str]:
    # moto's dispatcher takes the status from the "status" header of a handler's answer
    return status, {"status": str(status), "x-amzn-ErrorType": code, "Content-Type": "application/json"}, \
        json.dumps(body)


def invoke_endpoint(self: SageMakerRuntimeResponse) -> Any:
    from moto.sagemaker.models import sagemaker_backends

    name = urllib.parse.unquote(self.path.split("/")[2])  # /endpoints/<name>/invocations
    backend = sagemaker_backends[self.current_account][self.region]
    endpoint = backend.endpoints.get(name)
    if endpoint is None:
        return _error(400, "ValidationError",
                      {"message": f"Endpoint {name} of account {self.current_account} not found."})
    if endpoint.endpoint_status not in _SERVING:
        return _error(400, "ValidationError", {"message": f"Endpoint {name} is {endpoint.endpoint_status}; it "
                                                          "does not serve requests."})
    container = serving_container(backend, name, endpoint.endpoint_config_name)
    if container is None:
        return _original_invoke(self)
    if not container.ready.wait(START_TIMEOUT) or container.error:
        return _error(400, "ModelNotReadyException",
                      {"message": f"Model for endpoint {name} is not ready: {container.error}"})
    variant = endpoint.production_variants[0]["VariantName"]
    status, content_type, body = container.invoke(self.body if isinstance(self.body, bytes)
                                                  else (self.body or "").encode(),
                                                  self.headers.get("Content-Type"), self.headers.get("Accept"))
    if status != 200:
        text = body.decode("utf-8", errors="replace")[:1000]
        log_stream = (f"arn:aws:logs:{self.region}:{self.current_account}:log-group:/aws/sagemaker/Endpoints/"
                      f"{name}")
        return _error(424, "ModelError", {
            "message": f"Received client error ({status}) from primary with message \"{text}\". See "
                       f"{log_stream} in account {self.current_account} for more information.",
            "OriginalStatusCode": status, "OriginalMessage": text, "LogStreamArn": log_stream})
    return 200, {"status": "200", "Content-Type": content_type, "x-Amzn-Invoked-Production-Variant": variant}, body


SageMakerRuntimeResponse.invoke_endpoint = invoke_endpoint
