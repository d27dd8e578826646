"""Local redeployments are blue/green: the old version answers until the new one has passed, and keeps answering
when the new one fails to load, disagrees, or is killed mid-deployment."""

from __future__ import annotations

import os
import shutil
import threading
import time
from pathlib import Path

import httpx
import psutil
import pytest

from components.deploy.local import (
    LOCK,
    SMOKE,
    START,
    LocalTarget,
    deploy_local,
    endpoint_lock,
    invoke,
    prune_packages,
    read_record,
    stop_endpoint,
)
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


def _servers_under(state: Path) -> list[int]:
    """Live server processes started for packages under `state` (zombies of stopped ones do not count)."""
    from components.procs import pid_alive

    root = str(state.resolve())
    pids = [p.info["pid"] for p in psutil.process_iter(["pid", "cmdline"])
            if "components.serving" in (p.info["cmdline"] or []) and root in " ".join(p.info["cmdline"] or [])]
    return [pid for pid in pids if pid_alive(pid)]


def test_two_deployments_of_one_endpoint_at_once_end_with_one_serving(tiny_package, tmp_path):
    """G6: two deployments of one endpoint started together are serialised by the endpoint's lock: the second
    waits, then takes over from the first blue/green; one process serves, the record names it, its files exist."""
    from components.procs import terminate_group

    state = tmp_path / "endpoints"
    target = LocalTarget(endpoint_name="race", state_dir=str(state))
    expected = [p.label for p in load_package(tiny_package).predict(TEXTS)]
    packages = {v: _copy(tiny_package, state / "race" / f"v{v}") for v in ("1", "2")}
    done, failed, start = {}, {}, threading.Barrier(2)

    def deploy(v: str) -> None:
        start.wait()
        try:
            done[v] = deploy_local(target, packages[v], "race-news", v, TEXTS, expected)[0]
        except DeploymentStepError as err:
            failed[v] = err

    threads = [threading.Thread(target=deploy, args=(v,)) for v in packages]
    try:
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout=120)
        assert all(e.step == LOCK and "race" in str(e) for e in failed.values()), failed  # only the lock may refuse
        assert done and len(done) + len(failed) == 2
        record = read_record(state, "race")
        last = max(done.values(), key=lambda r: r.deployed_at)
        assert (record.pid, record.model_version, record.port) == (last.pid, last.model_version, last.port)
        assert _servers_under(state) == [record.pid]  # no second server left running without a record
        if len(done) == 2:  # the other waited, then was taken over on the same port
            first = next(r for r in done.values() if r is not last)
            assert first.port == record.port and first.deployed_at < record.deployed_at
        assert (Path(record.package_dir) / "config.json").is_file()  # what serves was not pruned
        assert [p["label"] for p in invoke(record.url, TEXTS)] == expected
    finally:
        stop_endpoint(state, "race")
        for pid in _servers_under(state):  # an unserialised run leaves an orphan: do not leak it
            terminate_group(pid)


def test_a_deployment_that_cannot_get_the_endpoint_lock_fails_naming_the_holder(tiny_package, tmp_path):
    state = tmp_path / "endpoints"
    target = LocalTarget(endpoint_name="held", state_dir=str(state), lock_timeout=0.3)
    package = _copy(tiny_package, state / "held" / "v1")
    with endpoint_lock(state, "held", timeout=1):  # another deployment of "held" is running (here: this process)
        started = time.monotonic()
        with pytest.raises(DeploymentStepError, match=f"endpoint held is being deployed by another process "
                           f"\\(pid {os.getpid()}, since") as err:
            deploy_local(target, package, "held-news", "1", TEXTS, ["sport", "business"])
        assert err.value.step == LOCK and time.monotonic() - started < 5  # the wait is bounded
    assert read_record(state, "held") is None and _servers_under(state) == []  # nothing was started
    with endpoint_lock(state, "held", timeout=0):  # released by the holder: free again at once
        pass


def test_pruning_keeps_what_serves_and_what_another_deployment_is_about_to_start(tiny_package, tmp_path):
    from components.deploy.local import DeploymentRecord

    state = tmp_path / "endpoints"
    old, serving, previous, pending = (_copy(tiny_package, state / "p" / n) for n in ("old", "srv", "prev", "new"))
    (state / "p.json").write_text(DeploymentRecord(endpoint_name="p", url="http://127.0.0.1:1", port=1,
                                                   package_dir=str(serving.resolve())).model_dump_json())
    hour_ago = time.time() - 3 * 3600
    for d in (old, serving, previous):
        os.utime(d, (hour_ago, hour_ago))
    removed = prune_packages(state / "p", keep={str(previous.resolve())})
    assert removed == [old]  # the recorded server's, the kept and the freshly downloaded package stay
    assert serving.is_dir() and previous.is_dir() and pending.is_dir() and not old.exists()
