"""Each way around the review that issue #13 lists, tried and refused; the legitimate path beside it.

Threat model: the attacker can start any flow with any parameters and edit any MLflow tag, but holds
no trusted reviewer's private key and cannot change the operator's configuration.
"""

from __future__ import annotations

import json
import shutil

import pytest

from components.config import load_config
from components.errors import ConfigError, RegistryError, SignatureError, SignatureProblem
from components.registry.mlflow_registry import MlflowRegistry, local_tracking_uri
from components.registry.signing import sign_package
from components.registry.review import (
    REVIEW,
    SIGNATURE,
    approve,
    record_approval,
    reject,
    sign_approval,
    verify_deployable,
)
from tests.support.reviewers import approve_as
from tests.support.tiny import seed_mlflow_db

NAME = "bypass-news"


@pytest.fixture
def setup(tmp_path, tiny_package, reviewers):
    registry = MlflowRegistry(local_tracking_uri(seed_mlflow_db(tmp_path / "mlflow.db")), tmp_path / "artifacts")
    for i, gate in enumerate(("passed", "passed", "rejected")):
        run_id = registry.start_run("bypass", f"r{i}")
        registry.log_and_register(run_id, tiny_package, NAME, ["a text"], ["torch==2.13.0"], {"fineship.gate": gate})
        registry.end_run(run_id)
    return registry, reviewers.policy(tmp_path / "home"), tmp_path


def _package(registry, version, tmp_path, tag="p"):
    return registry.download_package(NAME, version, tmp_path / f"{tag}{version}")


def test_a_hand_set_approval_tag_deploys_nothing(setup):
    registry, policy, tmp_path = setup
    registry.set_version_tags(NAME, "1", {REVIEW: "approved", "approved_by": "ana"})  # what the MLflow UI allows
    with pytest.raises(RegistryError, match="no signed approval"):
        verify_deployable(registry.get_version(NAME, version="1"), _package(registry, "1", tmp_path), policy)


def test_a_signature_copied_to_another_version_or_edited_is_refused(setup, reviewers):
    registry, policy, tmp_path = setup
    approve_as(registry, NAME, "1", reviewers.signer("ana"), policy)
    signature = registry.get_version(NAME, version="1").tags[SIGNATURE]
    registry.set_version_tags(NAME, "2", {SIGNATURE: signature, REVIEW: "approved"})
    with pytest.raises(SignatureError) as err:
        verify_deployable(registry.get_version(NAME, version="2"), _package(registry, "2", tmp_path), policy)
    assert err.value.problem == SignatureProblem.WRONG_MODEL
    edited = json.loads(signature)
    edited["manifest"]["model_version"] = "2"  # retarget the manifest: the signature no longer holds
    registry.set_version_tags(NAME, "2", {SIGNATURE: json.dumps(edited)})
    with pytest.raises(SignatureError) as err:
        verify_deployable(registry.get_version(NAME, version="2"), _package(registry, "2", tmp_path, "q"), policy)
    assert err.value.problem == SignatureProblem.BAD_SIGNATURE


def test_an_untrusted_key_cannot_approve(setup, reviewers):
    registry, policy, tmp_path = setup
    mallory = reviewers.signer("mallory", trusted=False)  # a key pair the operator never trusted
    package = _package(registry, "1", tmp_path)
    with pytest.raises(SignatureError) as err:
        approve(registry, NAME, "1", mallory, package, policy)
    assert err.value.problem == SignatureProblem.UNTRUSTED_KEY
    assert registry.get_version(NAME, version="1").tags.get(SIGNATURE) is None
    # Written straight into the tag, the same signature is refused at deployment.
    bundle = sign_approval(registry, NAME, "1", mallory, package, policy)
    registry.set_version_tags(NAME, "1", {SIGNATURE: bundle.model_dump_json()})
    with pytest.raises(SignatureError, match="not in the trust store"):
        verify_deployable(registry.get_version(NAME, version="1"), package, policy)


def test_files_changed_after_the_approval_are_refused(setup, reviewers):
    registry, policy, tmp_path = setup
    approve_as(registry, NAME, "1", reviewers.signer("ana"), policy)
    package = _package(registry, "1", tmp_path)
    weights = next(package.glob("*.safetensors"))
    data = bytearray(weights.read_bytes())
    data[-1] ^= 0x01  # one flipped bit in the weights
    weights.write_bytes(bytes(data))
    with pytest.raises(SignatureError, match="changed since") as err:
        verify_deployable(registry.get_version(NAME, version="1"), package, policy)
    assert err.value.problem == SignatureProblem.FILES_CHANGED
    clean = _package(registry, "1", tmp_path, "clean")  # positive control: the registered files verify
    assert verify_deployable(registry.get_version(NAME, version="1"), clean, policy).signer == "ana"


def test_the_trainer_cannot_approve_unless_the_operator_allows_it(setup, reviewers):
    registry, policy, tmp_path = setup
    trainer = registry.run_user(registry.get_version(NAME, version="1").run_id)
    assert trainer
    me = reviewers.signer(trainer)
    package = _package(registry, "1", tmp_path)
    with pytest.raises(SignatureError, match="separation of duties.*FINESHIP_ALLOW_SELF_APPROVAL"):
        approve(registry, NAME, "1", me, package, policy)
    # A signature made by the trainer elsewhere is refused when recorded, too.
    self_policy = policy.model_copy(update={"allow_self_approval": True})
    bundle = sign_approval(registry, NAME, "1", me, package, self_policy)
    with pytest.raises(SignatureError, match="separation of duties"):
        record_approval(registry, NAME, "1", bundle, package, policy)
    assert record_approval(registry, NAME, "1", bundle, package, self_policy).to_version == "1"


def test_a_failed_gate_or_a_rejection_needs_a_recorded_override(setup, reviewers):
    registry, policy, tmp_path = setup
    ana = reviewers.signer("ana")
    with pytest.raises(RegistryError, match="gate is 'rejected'.*--override"):
        approve(registry, NAME, "3", ana, _package(registry, "3", tmp_path), policy)
    reject(registry, NAME, "2", by="bo", comment="worse on tech")
    with pytest.raises(RegistryError, match="rejected by bo.*--override"):
        approve(registry, NAME, "2", ana, _package(registry, "2", tmp_path), policy)
    approve(registry, NAME, "2", ana, _package(registry, "2", tmp_path, "o"), policy,
            override="bo's tech cases were mislabelled")
    v2 = registry.get_version(NAME, version="2")
    assert v2.tags["approval_override"] == "true" and "mislabelled" in v2.tags["approval_comment"]
    verified = verify_deployable(v2, _package(registry, "2", tmp_path, "d"), policy)
    assert verified.gate_override and "rejected by bo" in verified.comment  # the override is signed, not just tagged


def test_auto_promotion_cannot_be_a_run_setting(tmp_path):
    for attempt in (["registry.auto_promote=true"], ["registry.auto_promote=false"]):
        with pytest.raises(ConfigError, match="registry.auto_promote is operator policy.*FINESHIP_AUTO_PROMOTE"):
            load_config(None, attempt)
    preset = tmp_path / "sneaky.yaml"
    shutil.copy("flows/configs/ci.yaml", preset)
    preset.write_text(preset.read_text().replace("registry:\n", "registry:\n  auto_promote: true\n", 1))
    with pytest.raises(ConfigError, match="operator policy"):
        load_config(preset)
    # The retrain form and the API take the same typed tree: the flow parameter is refused too.
    from components.config import PipelineConfig

    with pytest.raises(ValueError, match="operator policy"):
        PipelineConfig.model_validate({"registry": {"auto_promote": True}})


def test_a_bare_signature_for_a_failed_gate_is_refused_when_recorded_and_deployed(setup, reviewers):
    """G5: the gate rule holds where the approval is recorded and where it is deployed, not only in the signer's
    CLI: a reviewer's `sign_package` made around `sign_approval` carries no override and is refused."""
    registry, policy, tmp_path = setup
    ana = reviewers.signer("ana")
    package = _package(registry, "3", tmp_path)  # v3's gate tag says rejected
    bare = sign_package(package, NAME, "3", ana)
    with pytest.raises(RegistryError, match="gate is 'rejected'.*carries no override.*--override"):
        record_approval(registry, NAME, "3", bare, package, policy)
    v3 = registry.get_version(NAME, version="3")
    assert not v3.tags.get(SIGNATURE) and "champion" not in v3.aliases  # nothing recorded, nothing promoted
    # Written straight into the tag (what anyone with MLflow access can do), it does not deploy either.
    registry.set_version_tags(NAME, "3", {SIGNATURE: bare.model_dump_json(), REVIEW: "approved"})
    with pytest.raises(RegistryError, match="gate of bypass-news v3 is 'rejected'.*no gate override"):
        verify_deployable(registry.get_version(NAME, version="3"), package, policy)
    # The override is inside the signed manifest: flipping it in the stored bundle breaks the signature.
    forged = json.loads(bare.model_dump_json())
    forged["manifest"]["gate_override"] = True
    registry.set_version_tags(NAME, "3", {SIGNATURE: json.dumps(forged)})
    with pytest.raises(SignatureError) as err:
        verify_deployable(registry.get_version(NAME, version="3"), package, policy)
    assert err.value.problem == SignatureProblem.BAD_SIGNATURE
    # Deleting the gate tag does not help: a missing gate is not a passed one.
    registry.set_version_tags(NAME, "3", {SIGNATURE: bare.model_dump_json()})
    registry.client.delete_model_version_tag(NAME, "3", "fineship.gate")
    with pytest.raises(RegistryError, match="is 'missing', not passed"):
        verify_deployable(registry.get_version(NAME, version="3"), package, policy)
    registry.set_version_tags(NAME, "3", {"fineship.gate": "rejected", SIGNATURE: ""})
    # With the override signed in, it is accepted, recorded and deploys.
    overridden = sign_package(package, NAME, "3", ana, gate_override=True, comment="floor was set too high")
    change = record_approval(registry, NAME, "3", overridden, package, policy)
    v3 = registry.get_version(NAME, version="3")
    assert change.to_version == "3" and "champion" in v3.aliases
    assert v3.tags["approval_override"] == "true" and v3.tags["approval_comment"] == "floor was set too high"
    assert verify_deployable(v3, _package(registry, "3", tmp_path, "d"), policy).gate_override
    # Positive control: a bare signature over a version whose gate passed is recorded and deploys, unchanged.
    package1 = _package(registry, "1", tmp_path)
    record_approval(registry, NAME, "1", sign_package(package1, NAME, "1", ana), package1, policy)
    assert verify_deployable(registry.get_version(NAME, version="1"), package1, policy).signer == "ana"


def test_deleting_a_rejection_does_not_revive_the_earlier_approval(setup, reviewers):
    """G5: a rejection withdraws the signature; removing the (unsigned) rejection leaves the version unapproved,
    and recording the old signature again needs the override."""
    registry, policy, tmp_path = setup
    ana = reviewers.signer("ana")
    approve_as(registry, NAME, "2", ana, policy)
    old = registry.get_version(NAME, version="2").tags[SIGNATURE]
    approve_as(registry, NAME, "1", ana, policy)  # v1 becomes champion, so v2 can be rejected
    reject(registry, NAME, "2", by="bo", comment="worse on tech")
    v2 = registry.get_version(NAME, version="2")
    assert v2.tags[SIGNATURE] == "" and v2.tags["fineship.signature_revoked"] == old
    for key in (REVIEW, "rejected_by", "rejected_at", "rejection_comment"):  # the attacker removes the rejection
        registry.client.delete_model_version_tag(NAME, "2", key)
    package = _package(registry, "2", tmp_path)
    with pytest.raises(RegistryError, match="no signed approval"):
        verify_deployable(registry.get_version(NAME, version="2"), package, policy)
    # Re-recording the withdrawn signature while the rejection stands is refused without an override.
    reject(registry, NAME, "2", by="bo")
    from components.registry.signing import SignatureBundle

    with pytest.raises(RegistryError, match="rejected by bo.*carries no override"):
        record_approval(registry, NAME, "2", SignatureBundle.from_json(old), package, policy)
    assert registry.get_version(NAME, alias="champion").version == "1"
    # Positive control: v1, approved and never rejected, deploys.
    assert verify_deployable(registry.get_version(NAME, version="1"), _package(registry, "1", tmp_path), policy)
