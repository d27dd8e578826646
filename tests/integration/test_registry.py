"""Registry operations against a SQLite store and against a real MLflow server on a loopback port."""

from __future__ import annotations

import base64
import json
import os
import subprocess
import sys
import time

import httpx
import pytest

from components.errors import RegistryError
from components.procs import free_port
from components.registry.mlflow_registry import MlflowRegistry, local_tracking_uri
from components.registry.review import (
    ALIAS_LOG,
    CHAMPION,
    auto_promote,
    is_approved,
    reject,
    rollback,
    verify_deployable,
)
from tests.support.reviewers import approve_as
from tests.support.tiny import seed_mlflow_db


@pytest.fixture(scope="module")
def mlflow_server(tmp_path_factory):
    """A real `mlflow server` (SQLite backend, local artifacts) on 127.0.0.1 and a free port."""
    root = tmp_path_factory.mktemp("mlflow-server")
    seed_mlflow_db(root / "mlflow.db")
    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "mlflow", "server", "--host", "127.0.0.1", "--port", str(port),
         "--backend-store-uri", f"sqlite:///{root / 'mlflow.db'}", "--artifacts-destination", str(root / "artifacts"),
         "--workers", "1"],
        stdout=open(root / "server.log", "wb"), stderr=subprocess.STDOUT, start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 90
    while time.monotonic() < deadline:
        try:
            if httpx.get(f"{url}/health", timeout=1).status_code == 200:
                break
        except httpx.HTTPError:
            pass
        if proc.poll() is not None:
            pytest.fail("mlflow server exited:\n" + (root / "server.log").read_text()[-3000:])
        time.sleep(0.5)
    else:
        proc.kill()
        pytest.fail("mlflow server did not answer /health in 90 s")
    yield url
    os.killpg(proc.pid, 15)
    proc.wait(timeout=30)


@pytest.fixture(params=["sqlite", "server"])
def registry(request, tmp_path):
    if request.param == "sqlite":
        return MlflowRegistry(local_tracking_uri(seed_mlflow_db(tmp_path / "mlflow.db")), tmp_path / "artifacts")
    return MlflowRegistry(request.getfixturevalue("mlflow_server"))


def _register(registry: MlflowRegistry, package, name: str, n: int) -> list[str]:
    versions = []
    for i in range(n):
        run_id = registry.start_run("reg-tests", f"r{i}")
        v = registry.log_and_register(run_id, package, name, ["a text about football"], ["torch==2.13.0"],
                                      {"fineship.test": str(i), "fineship.gate": "passed"}, description=f"card {i}",
                                      aliases=("challenger",))
        registry.end_run(run_id)
        versions.append(v.version)
    return versions


def test_register_download_and_review_paths(registry, tiny_package, tmp_path, reviewers):
    name = f"m-{tmp_path.name[-12:]}".replace("_", "-")
    v1, v2, v3 = _register(registry, tiny_package, name, 3)
    assert (v1, v2, v3) == ("1", "2", "3")
    got = registry.get_version(name, alias="challenger")
    assert got.version == "3" and got.tags["fineship.test"] == "2"

    pkg = registry.download_package(name, "2", tmp_path / "dl")
    assert (pkg / "fineship.json").is_file() and any(pkg.glob("*.safetensors"))
    policy, ana = reviewers.policy(tmp_path / "home"), reviewers.signer("ana")

    # unapproved: refused with the command that fixes it
    with pytest.raises(RegistryError, match=f"fineship approve {name} 1"):
        verify_deployable(registry.get_version(name, version="1"), pkg, policy)

    change = approve_as(registry, name, "1", ana, policy, comment="looks good")
    assert (change.from_version, change.to_version) == (None, "1")
    v = registry.get_version(name, version="1")
    assert CHAMPION in v.aliases and v.tags["approved_by"] == "ana" and v.tags["approval_comment"] == "looks good"
    assert is_approved(v)
    verified = verify_deployable(v, registry.download_package(name, "1", tmp_path / "dl1"), policy)
    assert verified.signer == "ana" and verified.files >= 4

    reject(registry, name, "2", by="bo", comment="recall of tech fell")
    with pytest.raises(RegistryError, match="rejected by bo"):
        verify_deployable(registry.get_version(name, version="2"), pkg, policy)

    approve_as(registry, name, "3", ana, policy)
    assert registry.get_version(name, alias=CHAMPION).version == "3"
    log3 = json.loads(registry.get_version(name, version="3").tags[ALIAS_LOG])
    assert log3[-1] == {**log3[-1], "alias": "champion", "from_version": "1", "to_version": "3", "by": "ana"}
    log1 = json.loads(registry.get_version(name, version="1").tags[ALIAS_LOG])
    assert [e["to_version"] for e in log1] == ["1", "3"]  # the old champion records that it was replaced

    back = rollback(registry, name, by="cy")
    assert (back.from_version, back.to_version) == ("3", "1")  # v2 was rejected, so it is skipped
    assert registry.get_version(name, alias=CHAMPION).version == "1"
    with pytest.raises(RegistryError, match="no approved version older"):
        rollback(registry, name, by="cy")
    with pytest.raises(RegistryError, match="is the champion"):
        reject(registry, name, "1", by="bo")


def test_auto_promotion_is_pipeline_signed_and_needs_the_policy(registry, tiny_package, tmp_path, reviewers):
    name = f"auto-{tmp_path.name[-10:]}".replace("_", "-")
    (v1,) = _register(registry, tiny_package, name, 1)
    home = tmp_path / "home"
    with pytest.raises(RegistryError, match="FINESHIP_AUTO_PROMOTE=true"):
        auto_promote(registry, name, v1, tiny_package, reviewers.policy(home))
    auto_promote(registry, name, v1, tiny_package, reviewers.policy(home, auto_promote=True))
    v = registry.get_version(name, version=v1)
    assert v.tags["fineship.review"] == "auto_promoted" and v.tags["approved_by"] == "pipeline"
    assert CHAMPION in v.aliases and (home / "keys" / "pipeline.key").stat().st_mode & 0o077 == 0
    pkg = registry.download_package(name, v1, tmp_path / "dl")
    assert verify_deployable(v, pkg, reviewers.policy(home, auto_promote=True)).purpose == "auto-promotion"
    # Where the operator's policy is off, a pipeline-signed version does not deploy.
    with pytest.raises(RegistryError, match="FINESHIP_AUTO_PROMOTE"):
        verify_deployable(v, pkg, reviewers.policy(home, auto_promote=False))


def test_auto_promotion_refuses_a_loosened_gate_and_an_unverified_or_missing_champion(registry, tiny_package, tmp_path,
                                                                                      reviewers):
    """Under FINESHIP_AUTO_PROMOTE the run's gate is run input: weaker than the operator's floor, or judged against
    a champion whose approval does not verify (or against no champion while versions exist), the version is
    registered, tagged with the reasons, and waits for a reviewer; a stricter gate is promoted."""
    from components.config import GateConfig
    from tasks.registry import promote_by_policy

    name = f"floor-{tmp_path.name[-10:]}".replace("_", "-")
    policy = reviewers.policy(tmp_path / "home", auto_promote=True)
    (v1,) = _register(registry, tiny_package, name, 1)

    def promote(version: str, gate: GateConfig, champion=None):
        return promote_by_policy.fn(registry, registry.get_version(name, version=version), str(tiny_package), policy,
                                    gate, GateConfig(), champion, str(tiny_package) if champion else None)

    loosened = promote(v1, GateConfig(min_accuracy=0.0, margin=0.5, max_label_agreement_drop=None))
    reasons = loosened.tags["fineship.auto_promotion"]
    assert CHAMPION not in loosened.aliases and "fineship.signature" not in loosened.tags
    for expected in ("gate.min_accuracy=0.0 (operator floor 0.8)", "gate.margin=0.5 (operator floor 0.01)",
                     "gate.max_label_agreement_drop=None (operator floor 0.3)"):
        assert expected in reasons
    assert CHAMPION in promote(v1, GateConfig(min_accuracy=0.9, margin=0.0)).aliases  # stricter: promoted
    (v2,) = _register(registry, tiny_package, name, 1)
    champion = registry.get_version(name, alias=CHAMPION)
    # someone edits the champion's signature tag: the gate compared v2 with a champion nobody vouches for
    forged = json.loads(champion.tags["fineship.signature"]) | {"signature": base64.b64encode(bytes(64)).decode()}
    registry.set_version_tags(name, v1, {"fineship.signature": json.dumps(forged)})
    refused = promote(v2, GateConfig(), champion=registry.get_version(name, version=v1))
    assert CHAMPION not in refused.aliases and "the champion v1 it was judged against does not verify" in \
        refused.tags["fineship.auto_promotion"]
    # someone removes the champion alias: with earlier versions and no champion, nothing is promoted either
    registry.client.delete_registered_model_alias(name, CHAMPION)
    orphan = promote(v2, GateConfig())
    assert CHAMPION not in orphan.aliases and "none is champion" in orphan.tags["fineship.auto_promotion"]


def test_unknown_version(registry, tmp_path):
    with pytest.raises(RegistryError, match="has no version 9"):
        registry.get_version("nope", version="9")
