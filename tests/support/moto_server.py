"""A real moto server in a child process, for tests that talk to "AWS" over HTTP.

Nothing here touches the environment of the test process: `moto_server()` starts and stops a
server and yields its URL; `boto3_env()` and `aws_env_to_unset()` say which variables a caller
should set and remove so that boto3 talks only to that server; `reset_moto()` wipes its state.
The pytest fixtures built on these live in `tests/integration/conftest.py`.

Why a child process rather than `moto.server.ThreadedMotoServer`: the server's state then
cannot be touched or wiped by an in-process `mock_aws` in another test, and a hung request
cannot hang the test process. Code that must patch moto (e.g. to add an API moto lacks) is
imported *into the server process* with `plugins=`.

Example::

    with moto_server() as url:
        s3 = boto3.client("s3", endpoint_url=url, region_name="us-east-1",
                          aws_access_key_id="testing", aws_secret_access_key="testing")
        s3.create_bucket(Bucket="b")
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
DEFAULT_REGION = "us-east-1"
TEST_ACCESS_KEY = "testing"

# Runs in the child: import the plugins (which may patch moto), then serve. argv: host port plugins...
_BOOTSTRAP = """
import importlib, sys
host, port, *plugins = sys.argv[1:]
for name in plugins:
    importlib.import_module(name)
from moto.server import main
main(["--host", host, "--port", port])
"""


class MotoServerError(RuntimeError):
    """The moto server did not start, or did not answer a control request."""


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port that was free on `host` a moment ago (the OS picks it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return sock.getsockname()[1]


def _ready(url: str) -> bool:
    try:
        with urllib.request.urlopen(f"{url}/moto-api/data.json", timeout=1) as response:
            return response.status == 200
    except (urllib.error.URLError, ConnectionError, TimeoutError):
        return False


def _tail(path: Path, lines: int = 30) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "<no log>"


@contextlib.contextmanager
def moto_server(
    *,
    host: str = "127.0.0.1",
    port: int | None = None,
    plugins: Sequence[str] = (),
    startup_timeout: float = 30.0,
    attempts: int = 3,
) -> Iterator[str]:
    """Run `moto.server` in a child process bound to `host` and yield its URL, e.g. `http://127.0.0.1:40123`.

    `port=None` picks a free port (and retries with another if it was taken in between).
    `plugins` are module names imported in the server process before it serves; the repository
    root is on its `PYTHONPATH`, so `tests.support.<module>` works. The server's output goes to a
    temporary log file whose tail is put in the error if it fails to start. On exit the process
    is terminated (then killed) and the log removed.
    """
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(REPO), *filter(None, [env.get("PYTHONPATH")])])
    last_error = ""
    for _ in range(attempts if port is None else 1):
        chosen = port if port is not None else free_port(host)
        url = f"http://{host}:{chosen}"
        log = Path(tempfile.mkstemp(prefix="moto-server-", suffix=".log")[1])
        with log.open("wb") as log_file:
            proc = subprocess.Popen(
                [sys.executable, "-c", _BOOTSTRAP, host, str(chosen), *plugins],
                stdout=log_file, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, cwd=REPO, env=env,
            )
        try:
            deadline = time.monotonic() + startup_timeout
            while proc.poll() is None and time.monotonic() < deadline and not _ready(url):
                time.sleep(0.1)
            if proc.poll() is not None:
                last_error = f"moto server exited with code {proc.returncode}:\n{_tail(log)}"
                continue
            if not _ready(url):
                raise MotoServerError(
                    f"moto server at {url} did not answer within {startup_timeout:.0f} s; "
                    f"raise startup_timeout on a slow machine. Log tail:\n{_tail(log)}"
                )
            yield url
            return
        finally:
            if proc.poll() is None:
                proc.terminate()
                try:
                    proc.wait(timeout=10)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait(timeout=10)
            log.unlink(missing_ok=True)
    raise MotoServerError(f"could not start a moto server on {host}: {last_error}")


def boto3_env(endpoint_url: str, region: str = DEFAULT_REGION) -> dict[str, str]:
    """Environment variables that point every boto3 client at `endpoint_url` with dummy credentials.

    Besides `AWS_ENDPOINT_URL`, the test keys and the region, the shared config and credentials
    files are pointed at the null device, so a developer's `~/.aws` (profiles, SSO, per-service
    endpoints) cannot leak into a test. Apply together with `aws_env_to_unset()`.
    """
    return {
        "AWS_ENDPOINT_URL": endpoint_url,
        "AWS_ACCESS_KEY_ID": TEST_ACCESS_KEY,
        "AWS_SECRET_ACCESS_KEY": TEST_ACCESS_KEY,
        "AWS_DEFAULT_REGION": region,
        "AWS_REGION": region,
        "AWS_CONFIG_FILE": os.devnull,
        "AWS_SHARED_CREDENTIALS_FILE": os.devnull,
    }


_UNSET_EXACT = frozenset({
    "AWS_PROFILE", "AWS_DEFAULT_PROFILE", "AWS_SESSION_TOKEN", "AWS_SECURITY_TOKEN",
    "AWS_ROLE_ARN", "AWS_WEB_IDENTITY_TOKEN_FILE", "AWS_IGNORE_CONFIGURED_ENDPOINT_URLS",
})


def aws_env_to_unset(environ: Mapping[str, str]) -> list[str]:
    """Names in `environ` that would send boto3 elsewhere or with other credentials than `boto3_env()`.

    That is per-service endpoint overrides (`AWS_ENDPOINT_URL_S3`, ...), which beat
    `AWS_ENDPOINT_URL`; `AWS_IGNORE_CONFIGURED_ENDPOINT_URLS`, which disables it; and profile,
    session-token and web-identity variables.
    """
    return sorted(k for k in environ if k in _UNSET_EXACT or k.startswith("AWS_ENDPOINT_URL_"))


def reset_moto(endpoint_url: str, timeout: float = 10.0) -> None:
    """Delete every resource in every service and region of the moto server (`POST /moto-api/reset`)."""
    request = urllib.request.Request(f"{endpoint_url}/moto-api/reset", data=b"", method="POST")
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            body = json.loads(response.read() or b"{}")
    except (urllib.error.URLError, ConnectionError, TimeoutError) as exc:
        raise MotoServerError(f"could not reset the moto server at {endpoint_url}: {exc}") from exc
    if body.get("status") != "ok":
        raise MotoServerError(f"moto server at {endpoint_url} refused the reset: {body}")
