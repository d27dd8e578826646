"""Start an inference server as a real process on a free loopback port, and stop it."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import httpx

REPO = Path(__file__).resolve().parents[2]
HOST = "127.0.0.1"


def free_port(host: str = HOST) -> int:
    """A port that was free a moment ago (the kernel's pick for port 0)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def server_env(extra: dict[str, str] | None = None) -> dict[str, str]:
    """The test environment plus the repo on PYTHONPATH, offline and CPU-only."""
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "CUDA_VISIBLE_DEVICES": "",
           "TOKENIZERS_PARALLELISM": "false", "PYTHONUNBUFFERED": "1",
           "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))}
    env.update(extra or {})
    return env


@dataclass
class ServerProcess:
    """A running server: its process, base URL and log file."""

    proc: subprocess.Popen
    port: int
    log_file: Path
    host: str = HOST
    pings: list[int] = field(default_factory=list)

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    @property
    def pid(self) -> int:
        return self.proc.pid

    def log(self) -> str:
        return self.log_file.read_text(encoding="utf-8", errors="replace")

    def alive(self) -> bool:
        return self.proc.poll() is None

    def wait_until(self, status: int = 200, timeout: float = 90) -> None:
        """Poll GET /ping until it answers `status`; record every status seen in `pings`."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if not self.alive():
                raise RuntimeError(f"server exited with {self.proc.returncode}:\n{self.log()[-4000:]}")
            try:
                code = httpx.get(f"{self.url}/ping", timeout=2).status_code
            except httpx.TransportError:
                time.sleep(0.05)
                continue
            self.pings.append(code)
            if code == status:
                return
            time.sleep(0.05)
        raise TimeoutError(f"/ping did not answer {status} within {timeout:g} s (saw {self.pings}):\n"
                           f"{self.log()[-4000:]}")

    def stop(self, grace: float = 10) -> None:
        """SIGTERM, then SIGKILL after `grace` seconds."""
        if self.alive():
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(grace)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)


def start_server(cmd: Sequence[str], log_file: Path, port: int, env: dict[str, str] | None = None,
                 wait_status: int | None = 200, timeout: float = 90) -> ServerProcess:
    """Run `cmd` (which must listen on `port`), logging to `log_file`; wait for /ping to answer `wait_status`."""
    with open(log_file, "wb") as out:  # the child keeps its own copy of the descriptor
        proc = subprocess.Popen(list(cmd), stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                env=env or server_env(), cwd=REPO)
    server = ServerProcess(proc, port, log_file)
    if wait_status is not None:
        try:
            server.wait_until(wait_status, timeout)
        except BaseException:
            server.stop()
            raise
    return server


def serving_cmd(model_dir: str | Path, port: int, *extra: str) -> list[str]:
    """`python -m components.serving` for `model_dir` on loopback `port`."""
    return [sys.executable, "-m", "components.serving", "--model-dir", str(model_dir), "--host", HOST,
            "--port", str(port), *extra]


@contextmanager
def running_server(model_dir: str | Path, log_file: Path, *extra: str, wait_status: int | None = 200,
                   ) -> Iterator[ServerProcess]:
    """`python -m components.serving` on a free loopback port for the duration of the block."""
    port = free_port()
    server = start_server(serving_cmd(model_dir, port, *extra), log_file, port, wait_status=wait_status)
    try:
        yield server
    finally:
        server.stop()
