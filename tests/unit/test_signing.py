"""Approval signatures (issue #13): every security claim is attacked, next to a control that passes.

Real Ed25519 keys and real files in tmp_path; nothing is mocked.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import shutil
import stat
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from components.errors import RegistryError
from components.errors import SignatureError, SignatureProblem
from components.registry.keys import (
    ALLOW_SELF_APPROVAL_ENV,
    APPROVAL,
    AUTO_PROMOTION,
    SIGNATURE_FILE,
    TRUSTED_REVIEWERS_ENV,
    Signer,
    init_reviewer,
    key_id,
    load_or_create_pipeline_signer,
    load_pipeline_public_key,
    load_private_key,
    load_reviewer,
    load_trust_store,
    public_pem,
    trusted_reviewers_dir,
)
from components.registry.signing import (
    Manifest,
    SignatureBundle,
    canonical_json,
    check_separation,
    hash_file,
    list_package_files,
    read_signature,
    self_approval_allowed,
    sign_package,
    verify_approval,
    write_signature,
)

MODEL = "fineship-news"


def _problem(excinfo: pytest.ExceptionInfo[SignatureError]) -> SignatureProblem:
    return excinfo.value.problem


@pytest.fixture
def package(tmp_path: Path) -> Path:
    d = tmp_path / "package"
    d.mkdir()
    (d / "model.safetensors").write_bytes(b"\x00\x01weights\x02\x03")
    (d / "tokenizer.json").write_text('{"vocab": ["a", "b"]}')
    (d / "config.json").write_text('{"id2label": {"0": "neg", "1": "pos"}}')
    (d / "fineship.json").write_text('{"labels": ["neg", "pos"]}')
    return d


@pytest.fixture
def key_dir(tmp_path: Path) -> Path:
    return tmp_path / "reviewers"


@pytest.fixture
def alice(key_dir: Path) -> Signer:
    init_reviewer("alice", key_dir)
    return load_reviewer("alice", key_dir)


@pytest.fixture
def bob(key_dir: Path) -> Signer:
    init_reviewer("bob", key_dir)
    return load_reviewer("bob", key_dir)


@pytest.fixture
def trust_dir(tmp_path: Path, key_dir: Path, alice: Signer, bob: Signer) -> Path:
    """The operator's trust store: alice's and bob's public keys, copied as they were handed over."""
    d = tmp_path / "trusted"
    d.mkdir()
    for name in ("alice", "bob"):
        shutil.copy(key_dir / f"{name}.pub", d / f"{name}.pub")
    return d


@pytest.fixture
def home(tmp_path: Path) -> Path:
    return tmp_path / "home"


def _verify(package: Path, bundle: SignatureBundle, trust_dir: Path, version: str = "3", **kw):
    return verify_approval(package, MODEL, version, bundle, load_trust_store(trust_dir), **kw)


# -- the positive path -------------------------------------------------------------------------


def test_a_reviewers_signature_over_the_package_verifies(package, alice, trust_dir):
    bundle = sign_package(package, MODEL, 3, alice, comment="looks good")
    result = _verify(package, bundle, trust_dir)
    assert (result.signer, result.purpose, result.model_version, result.files) == ("alice", APPROVAL, "3", 4)
    assert result.key_id == alice.key_id == key_id(alice.private_key.public_key())
    assert result.comment == "looks good" and result.gate_override is False
    assert result.signed_at.tzinfo is not None
    assert set(bundle.manifest.files) == {"model.safetensors", "tokenizer.json", "config.json", "fineship.json"}


def test_the_bundle_round_trips_through_its_file_and_the_file_is_not_signed(package, alice, trust_dir):
    bundle = sign_package(package, MODEL, "3", alice)
    path = write_signature(bundle, package)  # stored inside the package: it must not count as a package file
    assert path == package / SIGNATURE_FILE
    assert SIGNATURE_FILE not in list_package_files(package)
    again = read_signature(package)
    assert again == bundle
    assert _verify(package, again, trust_dir).signer == "alice"
    stored = json.loads(path.read_text())
    assert set(stored) == {"algorithm", "manifest", "signature"} and stored["algorithm"] == "ed25519"
    assert len(base64.b64decode(stored["signature"])) == 64


def test_the_signed_bytes_are_canonical_json(package, alice):
    manifest = sign_package(package, MODEL, "3", alice).manifest
    raw = manifest.canonical_bytes()
    assert raw == json.dumps(json.loads(raw), sort_keys=True, separators=(",", ":")).encode()
    assert canonical_json({"b": 1, "a": [1, "é"]}) == b'{"a":[1,"\\u00e9"],"b":1}'


def test_nested_files_are_signed_by_relative_posix_path(package, alice, trust_dir):
    (package / "extra").mkdir()
    (package / "extra" / "notes.txt").write_text("n")
    bundle = sign_package(package, MODEL, "3", alice)
    assert "extra/notes.txt" in bundle.manifest.files
    _verify(package, bundle, trust_dir)
    (package / "extra" / "notes.txt").write_text("m")
    with pytest.raises(SignatureError, match="extra/notes.txt changed"):
        _verify(package, bundle, trust_dir)


# -- the files are exactly what was approved -----------------------------------------------------


def test_one_changed_weight_byte_is_refused_naming_the_file_and_the_fix(package, alice, trust_dir):
    bundle = sign_package(package, MODEL, "3", alice)
    _verify(package, bundle, trust_dir)  # control
    weights = package / "model.safetensors"
    data = bytearray(weights.read_bytes())
    data[3] ^= 0x01
    weights.write_bytes(bytes(data))
    with pytest.raises(SignatureError) as e:
        _verify(package, bundle, trust_dir)
    assert _problem(e) is SignatureProblem.FILES_CHANGED
    message = str(e.value)
    assert "weights file model.safetensors changed since fineship-news v3 was approved by alice" in message
    assert "`fineship approve fineship-news 3`" in message


def test_an_added_file_is_refused(package, alice, trust_dir):
    bundle = sign_package(package, MODEL, "3", alice)
    _verify(package, bundle, trust_dir)  # control
    (package / "model-00002.safetensors").write_bytes(b"more weights")
    with pytest.raises(SignatureError, match="weights file model-00002.safetensors was added") as e:
        _verify(package, bundle, trust_dir)
    assert _problem(e) is SignatureProblem.FILES_CHANGED


def test_a_removed_file_is_refused(package, alice, trust_dir):
    bundle = sign_package(package, MODEL, "3", alice)
    _verify(package, bundle, trust_dir)  # control
    (package / "tokenizer.json").unlink()
    with pytest.raises(SignatureError, match="tokenizer file tokenizer.json is missing") as e:
        _verify(package, bundle, trust_dir)
    assert _problem(e) is SignatureProblem.FILES_CHANGED


def test_every_problem_is_listed_at_once(package, alice, trust_dir):
    bundle = sign_package(package, MODEL, "3", alice)
    (package / "config.json").write_text("{}")
    (package / "fineship.json").unlink()
    (package / "stray.bin").write_bytes(b"x")
    with pytest.raises(SignatureError) as e:
        _verify(package, bundle, trust_dir)
    message = str(e.value)
    for part in ("model config config.json changed", "package metadata fineship.json is missing",
                 "file stray.bin was added"):
        assert part in message


def test_a_symlink_in_the_package_is_refused(package, alice, tmp_path):
    sign_package(package, MODEL, "3", alice)  # control
    outside = tmp_path / "outside.bin"
    outside.write_bytes(b"x")
    (package / "link.bin").symlink_to(outside)
    with pytest.raises(SignatureError, match="link.bin .* is a symbolic link") as e:
        sign_package(package, MODEL, "3", alice)
    assert _problem(e) is SignatureProblem.PACKAGE


def test_an_empty_package_cannot_be_signed(tmp_path, alice):
    (tmp_path / "empty").mkdir()
    with pytest.raises(SignatureError, match="holds no files"):
        sign_package(tmp_path / "empty", MODEL, "3", alice)


def test_hashing_streams_in_chunks_and_matches_sha256(tmp_path):
    f = tmp_path / "big.safetensors"
    data = os.urandom(10_000)
    f.write_bytes(data)
    expected = hashlib.sha256(data).hexdigest()
    assert hash_file(f, chunk_size=7) == expected  # many partial reads, including a short last one
    assert hash_file(f) == expected


# -- the manifest is what was signed -------------------------------------------------------------


def _edit_manifest(bundle: SignatureBundle, **changes) -> SignatureBundle:
    raw = json.loads(bundle.to_json())
    raw["manifest"].update(changes)
    return SignatureBundle.from_json(json.dumps(raw))


def test_an_edited_version_in_the_manifest_breaks_the_signature(package, alice, trust_dir):
    bundle = sign_package(package, MODEL, "2", alice)
    _verify(package, bundle, trust_dir, version="2")  # control
    forged = _edit_manifest(bundle, model_version="3")
    with pytest.raises(SignatureError, match="does not match its manifest") as e:
        _verify(package, forged, trust_dir, version="3")
    assert _problem(e) is SignatureProblem.BAD_SIGNATURE


def test_edited_file_hashes_in_the_manifest_break_the_signature(package, alice, trust_dir):
    bundle = sign_package(package, MODEL, "3", alice)
    (package / "model.safetensors").write_bytes(b"swapped weights")
    files = {**bundle.manifest.files, "model.safetensors": hashlib.sha256(b"swapped weights").hexdigest()}
    with pytest.raises(SignatureError) as e:
        _verify(package, _edit_manifest(bundle, files=files), trust_dir)
    assert _problem(e) is SignatureProblem.BAD_SIGNATURE


def test_an_added_gate_override_breaks_the_signature(package, alice, trust_dir):
    bundle = sign_package(package, MODEL, "3", alice)
    with pytest.raises(SignatureError) as e:
        _verify(package, _edit_manifest(bundle, gate_override=True), trust_dir)
    assert _problem(e) is SignatureProblem.BAD_SIGNATURE


def test_a_damaged_signature_is_refused(package, alice, trust_dir):
    bundle = sign_package(package, MODEL, "3", alice)
    raw = bytearray(base64.b64decode(bundle.signature))
    raw[0] ^= 0xFF
    flipped = bundle.model_copy(update={"signature": base64.b64encode(bytes(raw)).decode()})
    with pytest.raises(SignatureError) as e:
        _verify(package, flipped, trust_dir)
    assert _problem(e) is SignatureProblem.BAD_SIGNATURE
    for garbage in ("not base64!", base64.b64encode(b"short").decode()):
        with pytest.raises(SignatureError) as e:
            _verify(package, bundle.model_copy(update={"signature": garbage}), trust_dir)
        assert _problem(e) is SignatureProblem.MALFORMED


def test_unknown_manifest_fields_and_wrong_types_are_refused(package, alice):
    bundle = sign_package(package, MODEL, "3", alice)
    SignatureBundle.from_json(bundle.to_json())  # control
    for change in ({"approved_for": "prod"}, {"model_version": 3}, {"format": "fineship.approval/v9"},
                   {"files": {"../etc/passwd": "0" * 64}},
                   {"signed_at": "yesterday"}, {"signed_at": "2026-01-01T00:00:00"}):
        with pytest.raises(SignatureError) as e:
            _edit_manifest(bundle, **change)
        assert _problem(e) is SignatureProblem.MALFORMED, change


def test_a_missing_signature_file_says_how_to_approve(package):
    with pytest.raises(SignatureError, match="fineship approve") as e:
        read_signature(package)
    assert _problem(e) is SignatureProblem.MISSING


# -- identity comes from the key ---------------------------------------------------------------


def test_an_untrusted_key_claiming_a_trusted_name_is_refused(package, alice, trust_dir):
    _verify(package, sign_package(package, MODEL, "3", alice), trust_dir)  # control: the real alice
    mallory = Signer(name="alice", private_key=Ed25519PrivateKey.generate())
    with pytest.raises(SignatureError) as e:
        _verify(package, sign_package(package, MODEL, "3", mallory), trust_dir)
    assert _problem(e) is SignatureProblem.UNTRUSTED_KEY
    assert "not in the trust store" in str(e.value) and f"alice, whose trusted key is {alice.key_id}" in str(e.value)


def test_an_untrusted_key_that_copies_a_trusted_key_id_is_refused(package, alice, trust_dir):
    mallory = Ed25519PrivateKey.generate()
    forged = Manifest(**{**sign_package(package, MODEL, "3", alice).manifest.model_dump(), "comment": "forged"})
    bundle = SignatureBundle(manifest=forged,
                             signature=base64.b64encode(mallory.sign(forged.canonical_bytes())).decode())
    with pytest.raises(SignatureError) as e:
        _verify(package, bundle, trust_dir)
    assert _problem(e) is SignatureProblem.BAD_SIGNATURE


def test_a_trusted_reviewer_cannot_sign_under_another_name(package, bob, trust_dir):
    _verify(package, sign_package(package, MODEL, "3", bob), trust_dir)  # control: bob as bob
    bob_as_alice = Signer(name="alice", private_key=bob.private_key)
    with pytest.raises(SignatureError, match="names alice as signer, but it is signed with bob's key") as e:
        _verify(package, sign_package(package, MODEL, "3", bob_as_alice), trust_dir)
    assert _problem(e) is SignatureProblem.SIGNER_MISMATCH


def test_a_key_removed_from_the_trust_store_is_no_longer_accepted(package, alice, trust_dir):
    bundle = sign_package(package, MODEL, "3", alice)
    _verify(package, bundle, trust_dir)  # control
    (trust_dir / "alice.pub").unlink()
    with pytest.raises(SignatureError) as e:
        _verify(package, bundle, trust_dir)
    assert _problem(e) is SignatureProblem.UNTRUSTED_KEY


def test_the_trust_store_refuses_one_key_under_two_names_and_the_pipeline_key(trust_dir, home):
    load_trust_store(trust_dir)  # control
    shutil.copy(trust_dir / "alice.pub", trust_dir / "mallory.pub")
    with pytest.raises(SignatureError, match="hold the same key") as e:
        load_trust_store(trust_dir)
    assert _problem(e) is SignatureProblem.TRUST_STORE
    (trust_dir / "mallory.pub").unlink()
    load_or_create_pipeline_signer(home)
    shutil.copy(home / "keys" / "pipeline.pub", trust_dir / "pipeline.pub")
    with pytest.raises(SignatureError, match="pipeline's key must not approve") as e:
        load_trust_store(trust_dir)
    assert _problem(e) is SignatureProblem.TRUST_STORE


def test_the_trust_store_refuses_a_world_writable_directory_and_a_missing_one(trust_dir, tmp_path):
    os.chmod(trust_dir, 0o777)
    with pytest.raises(SignatureError, match="writable by every user"):
        load_trust_store(trust_dir)
    os.chmod(trust_dir, 0o755)
    assert {k.name for k in load_trust_store(trust_dir).keys.values()} == {"alice", "bob"}  # control
    with pytest.raises(SignatureError, match="not a directory"):
        load_trust_store(tmp_path / "nowhere")


def test_the_trust_store_directory_comes_from_the_environment(trust_dir):
    assert trusted_reviewers_dir({TRUSTED_REVIEWERS_ENV: str(trust_dir)}) == trust_dir
    with pytest.raises(SignatureError, match=TRUSTED_REVIEWERS_ENV) as e:
        trusted_reviewers_dir({})
    assert _problem(e) is SignatureProblem.TRUST_STORE


# -- name and version ----------------------------------------------------------------------------


def test_a_signature_for_v2_does_not_approve_v3(package, alice, trust_dir):
    bundle = sign_package(package, MODEL, "2", alice)
    _verify(package, bundle, trust_dir, version="2")  # control
    with pytest.raises(SignatureError, match="approves fineship-news v2, not fineship-news v3") as e:
        _verify(package, bundle, trust_dir, version="3")
    assert _problem(e) is SignatureProblem.WRONG_MODEL


def test_a_signature_for_another_model_does_not_approve_this_one(package, alice, trust_dir):
    bundle = sign_package(package, "fineship-spam", "3", alice)
    with pytest.raises(SignatureError) as e:
        _verify(package, bundle, trust_dir)
    assert _problem(e) is SignatureProblem.WRONG_MODEL


# -- the pipeline's key ------------------------------------------------------------------------


def test_a_pipeline_signature_needs_the_auto_promote_policy(package, trust_dir, home):
    pipeline = load_or_create_pipeline_signer(home)
    bundle = sign_package(package, MODEL, "3", pipeline)
    assert bundle.manifest.purpose == AUTO_PROMOTION and bundle.manifest.signer == "pipeline"
    pub = load_pipeline_public_key(home)
    with pytest.raises(SignatureError, match="FINESHIP_AUTO_PROMOTE") as e:
        _verify(package, bundle, trust_dir, pipeline_key=pub)
    assert _problem(e) is SignatureProblem.PURPOSE_REFUSED
    result = _verify(package, bundle, trust_dir, allow_pipeline=True, pipeline_key=pub)
    assert (result.signer, result.purpose, result.key_id) == ("pipeline", AUTO_PROMOTION, pipeline.key_id)


def test_an_allowed_pipeline_signature_still_needs_the_pipeline_key(package, trust_dir, home, tmp_path):
    bundle = sign_package(package, MODEL, "3", load_or_create_pipeline_signer(home))
    with pytest.raises(SignatureError, match="no pipeline public key") as e:
        _verify(package, bundle, trust_dir, allow_pipeline=True, pipeline_key=None)
    assert _problem(e) is SignatureProblem.UNTRUSTED_KEY
    other_home = load_or_create_pipeline_signer(tmp_path / "other-home")
    with pytest.raises(SignatureError, match="not the pipeline's key") as e:
        _verify(package, bundle, trust_dir, allow_pipeline=True, pipeline_key=other_home.private_key.public_key())
    assert _problem(e) is SignatureProblem.UNTRUSTED_KEY


def test_a_reviewer_key_cannot_make_an_auto_promotion(package, alice, trust_dir, home):
    pub = load_or_create_pipeline_signer(home).private_key.public_key()
    alice_as_pipeline = Signer(name="pipeline", private_key=alice.private_key, pipeline=True)
    with pytest.raises(SignatureError) as e:
        _verify(package, sign_package(package, MODEL, "3", alice_as_pipeline), trust_dir,
                allow_pipeline=True, pipeline_key=pub)
    assert _problem(e) is SignatureProblem.UNTRUSTED_KEY


def test_the_pipeline_key_cannot_make_a_human_approval_even_if_trusted(package, trust_dir, home):
    pipeline = load_or_create_pipeline_signer(home)
    shutil.copy(home / "keys" / "pipeline.pub", trust_dir / "carol.pub")  # the operator's mistake
    as_carol = Signer(name="carol", private_key=pipeline.private_key)
    bundle = sign_package(package, MODEL, "3", as_carol)
    with pytest.raises(SignatureError, match="pipeline cannot approve") as e:
        _verify(package, bundle, trust_dir, allow_pipeline=True, pipeline_key=load_pipeline_public_key(home))
    assert _problem(e) is SignatureProblem.UNTRUSTED_KEY


def test_the_pipeline_key_is_created_once_with_mode_0600(home):
    assert load_pipeline_public_key(home) is None
    first = load_or_create_pipeline_signer(home)
    key_file = home / "keys" / "pipeline.key"
    assert stat.S_IMODE(key_file.stat().st_mode) == 0o600
    assert stat.S_IMODE((home / "keys").stat().st_mode) == 0o700
    assert load_or_create_pipeline_signer(home).key_id == first.key_id
    assert key_id(load_pipeline_public_key(home)) == first.key_id


# -- reviewer keys -----------------------------------------------------------------------------


def test_init_writes_a_0600_private_key_and_a_public_key_beside_it(key_dir):
    made = init_reviewer("alice", key_dir)
    assert made.private_key_path == key_dir / "alice.key" and made.public_key_path == key_dir / "alice.pub"
    assert stat.S_IMODE(made.private_key_path.stat().st_mode) == 0o600
    assert stat.S_IMODE(key_dir.stat().st_mode) == 0o700
    assert made.private_key_path.read_bytes().startswith(b"-----BEGIN PRIVATE KEY-----")
    assert made.public_key_path.read_bytes().startswith(b"-----BEGIN PUBLIC KEY-----")
    key = load_private_key(made.private_key_path)
    assert public_pem(key.public_key()) == made.public_key_path.read_bytes()
    assert key_id(key.public_key()) == made.key_id and not made.encrypted


def test_init_refuses_to_overwrite_a_key_unless_forced(key_dir):
    first = init_reviewer("alice", key_dir)
    before = first.private_key_path.read_bytes()
    with pytest.raises(SignatureError, match="already exists") as e:
        init_reviewer("alice", key_dir)
    assert _problem(e) is SignatureProblem.KEY_FILE
    assert first.private_key_path.read_bytes() == before
    second = init_reviewer("alice", key_dir, force=True)
    assert second.key_id != first.key_id
    assert stat.S_IMODE(second.private_key_path.stat().st_mode) == 0o600
    assert key_id(load_private_key(second.private_key_path).public_key()) == second.key_id


def test_init_refuses_unsafe_and_reserved_names(key_dir):
    for name in ("../evil", "a/b", "", ".hidden", "pipeline"):
        with pytest.raises(SignatureError):
            init_reviewer(name, key_dir)
    assert not key_dir.exists() or not any(key_dir.iterdir())


def test_a_passphrase_encrypted_key_round_trips(key_dir, package, trust_dir):
    made = init_reviewer("carol", key_dir, passphrase="correct horse")
    assert made.encrypted
    assert made.private_key_path.read_bytes().startswith(b"-----BEGIN ENCRYPTED PRIVATE KEY-----")
    with pytest.raises(SignatureError, match="FINESHIP_REVIEWER_PASSPHRASE") as e:
        load_reviewer("carol", key_dir)
    assert _problem(e) is SignatureProblem.KEY_FILE
    with pytest.raises(SignatureError, match="passphrase .* is wrong"):
        load_reviewer("carol", key_dir, passphrase="wrong")
    carol = load_reviewer("carol", key_dir, passphrase="correct horse")
    assert carol.key_id == made.key_id
    shutil.copy(made.public_key_path, trust_dir / "carol.pub")
    assert _verify(package, sign_package(package, MODEL, "3", carol), trust_dir).signer == "carol"


def test_a_private_key_readable_by_others_is_refused(key_dir):
    made = init_reviewer("alice", key_dir)
    load_private_key(made.private_key_path)  # control
    os.chmod(made.private_key_path, 0o644)
    with pytest.raises(SignatureError, match="readable by other users") as e:
        load_private_key(made.private_key_path)
    assert _problem(e) is SignatureProblem.KEY_FILE


def test_a_missing_reviewer_key_says_how_to_make_one(key_dir):
    with pytest.raises(SignatureError, match="fineship reviewer init") as e:
        load_reviewer("nobody", key_dir)
    assert _problem(e) is SignatureProblem.KEY_FILE


# -- separation of duties ----------------------------------------------------------------------


def test_the_trainer_cannot_approve_their_own_version():
    with pytest.raises(SignatureError) as e:
        check_separation("alice", "Alice", allow_self_approval=False)
    assert _problem(e) is SignatureProblem.SELF_APPROVAL
    message = str(e.value)
    assert "alice trained this version" in message and "separation of duties" in message
    assert f"{ALLOW_SELF_APPROVAL_ENV}=true" in message


def test_another_reviewer_or_the_one_person_policy_may_approve():
    check_separation("bob", "alice", allow_self_approval=False)
    check_separation("alice", "alice", allow_self_approval=True)
    check_separation("alice", None, allow_self_approval=False)  # no run user recorded: nothing to compare


def test_the_self_approval_policy_reads_the_environment():
    assert self_approval_allowed({ALLOW_SELF_APPROVAL_ENV: "true"}) is True
    assert self_approval_allowed({ALLOW_SELF_APPROVAL_ENV: "0"}) is False
    assert self_approval_allowed({}) is False


def test_signature_errors_are_registry_errors():
    assert issubclass(SignatureError, RegistryError)
