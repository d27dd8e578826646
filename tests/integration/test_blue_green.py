"""Local redeployments are blue/green: the old version answers until the new one has passed, and keeps answering
when the new one fails to load, disagrees, or is killed mid-deployment."""

from __future__ import annotations

import shutil
import threading
import time

import httpx
import psutil
import pytest

from components.deploy.local import SMOKE, START, LocalTarget, deploy_local, invoke, read_record, stop_endpoint
from components.errors import DeploymentStepError
from components.package import load_package

TEXTS = ["The striker scored twice in the final.", "Shares fell after the profit warning."]


@pytest.fixture
def endpoint(tmp_path, tiny_package):
    """v1 of a tiny model serving on a local endpoint; stopped afterwards."""
    state = tmp_path / "endpoints"
    target = LocalTarget(endpoint_name="bg", state_dir=str(state))
    expected = [p.label for p in load_package(tiny_package).predict(TEXTS)]
    record, _ = deploy_local(target, _copy(tiny_package, state / "bg" / "v1"), "bg-news", "1", TEXTS, expected)
    yield target, record, expected
    stop_endpoint(state, "bg")


def _copy(package, dst):
    shutil.copytree(package, dst)
    return dst


class _Traffic:
    """Requests to the endpoint's public URL from a background thread while a deployment runs."""

    def __init__(self, url: str) -> None:
        self.url, self.codes, self.errors = url, [], []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        with httpx.Client(timeout=10) as client:
            while not self._stop.is_set():
                try:
                    self.codes.append(client.post(f"{self.url}/invocations", json={"inputs": TEXTS[:1]},
                                                  headers={"Connection": "close"}).status_code)
                except httpx.HTTPError as err:
                    self.errors.append(repr(err))
                time.sleep(0.02)

    def __enter__(self) -> _Traffic:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join(timeout=30)


def test_redeploy_takes_over_the_port_without_dropping_a_request(endpoint, tiny_package, tmp_path):
    target, v1, expected = endpoint
    with _Traffic(v1.url) as traffic:
        v2, smoke = deploy_local(target, _copy(tiny_package, tmp_path / "endpoints" / "bg" / "v2"), "bg-news", "2",
                                 TEXTS, expected)
    assert v2.url == v1.url and v2.port == v1.port and v2.pid != v1.pid and smoke.agreed == len(TEXTS)
    assert not psutil.pid_exists(v1.pid) or psutil.Process(v1.pid).status() == psutil.STATUS_ZOMBIE
    assert traffic.errors == [] and len(traffic.codes) > 10 and set(traffic.codes) == {200}
    assert read_record(target.state_dir, "bg").model_version == "2"
    assert [p["label"] for p in invoke(v1.url, TEXTS)] == expected


def test_a_redeploy_to_another_port_stops_the_old_process(endpoint, tiny_package, tmp_path):
    from components.procs import free_port, pid_alive

    target, v1, expected = endpoint
    moved = target.model_copy(update={"port": free_port()})
    v2, _ = deploy_local(moved, _copy(tiny_package, tmp_path / "endpoints" / "bg" / "v2"), "bg-news", "2", TEXTS,
                         expected)
    assert v2.port == moved.port != v1.port and not pid_alive(v1.pid)  # no process left running without a record
    assert [p["label"] for p in invoke(v2.url, TEXTS)] == expected


def test_a_version_that_fails_to_load_leaves_the_old_one_serving(endpoint, tiny_package, tmp_path):
    target, v1, expected = endpoint
    broken = _copy(tiny_package, tmp_path / "endpoints" / "bg" / "broken")
    next(broken.glob("*.safetensors")).write_bytes(b"not weights")
    with _Traffic(v1.url) as traffic, pytest.raises(DeploymentStepError) as err:
        deploy_local(target, broken, "bg-news", "2", TEXTS, expected)
    assert err.value.step == START and "bg-news v1 still serves" in str(err.value)
    _still_v1(target, v1, expected, traffic)


def test_a_version_that_disagrees_leaves_the_old_one_serving(endpoint, tiny_package, tmp_path):
    target, v1, expected = endpoint
    wrong = ["tech" if e != "tech" else "sport" for e in expected]
    with _Traffic(v1.url) as traffic, pytest.raises(DeploymentStepError) as err:
        deploy_local(target, _copy(tiny_package, tmp_path / "endpoints" / "bg" / "v2"), "bg-news", "2", TEXTS, wrong)
    assert err.value.step == SMOKE
    _still_v1(target, v1, expected, traffic)


def test_killing_the_new_endpoint_mid_deployment_leaves_the_old_one_serving(endpoint, tiny_package, tmp_path):
    target, v1, expected = endpoint
    killed: list[int] = []

    def kill_the_new_server() -> None:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and not killed:
            for p in psutil.process_iter(["pid", "cmdline"]):
                if "--standby-port" in (p.info["cmdline"] or []):
                    p.kill()
                    killed.append(p.info["pid"])
                    return
            time.sleep(0.05)

    killer = threading.Thread(target=kill_the_new_server)
    killer.start()
    with _Traffic(v1.url) as traffic, pytest.raises(DeploymentStepError):
        deploy_local(target, _copy(tiny_package, tmp_path / "endpoints" / "bg" / "v2"), "bg-news", "2", TEXTS,
                     expected)
    killer.join()
    assert killed
    _still_v1(target, v1, expected, traffic)


def _still_v1(target, v1, expected, traffic) -> None:
    record = read_record(target.state_dir, "bg")
    assert (record.model_version, record.pid, record.port) == ("1", v1.pid, v1.port)
    assert traffic.errors == [] and set(traffic.codes) == {200}  # the old version never stopped answering
    assert [p["label"] for p in invoke(v1.url, TEXTS)] == expected
    assert (tmp_path_of(v1) / "config.json").is_file()  # its files are intact


def tmp_path_of(record):
    from pathlib import Path

    return Path(record.package_dir)
