"""What the registry holds, for people and scripts: models with their champion and challenger, and one
version's evidence (metrics with intervals, gate, review and signature, lineage, where it is deployed)."""

from __future__ import annotations

import json
from collections.abc import Callable

from pydantic import BaseModel, ConfigDict, Field

from components.errors import RegistryError, SignatureError
from components.registry.keys import TrustStore
from components.registry.mlflow_registry import MlflowRegistry, RegisteredVersion
from components.registry.review import CHALLENGER, CHAMPION, REVIEW, SIGNATURE, approval_bundle

GATE_REASONS = "fineship.gate_reasons"


class VersionState(BaseModel):
    model_config = ConfigDict(frozen=True)

    version: str
    aliases: list[str]
    review: str = Field(description="approved | auto_promoted | rejected | awaiting review")
    gate: str


class ModelSummary(BaseModel):
    model_config = ConfigDict(frozen=True)

    name: str
    versions: int
    champion: VersionState | None = None
    challenger: VersionState | None = None
    latest: VersionState


class SignatureState(BaseModel):
    model_config = ConfigDict(frozen=True)

    present: bool
    signer: str | None = None
    key_id: str | None = None
    purpose: str | None = None
    signed_at: str | None = None
    files: int = 0
    signer_trusted: bool | None = Field(None, description="The signing key is in the operator's trust store (the "
                                        "files themselves are hashed again at every deployment).")
    problem: str | None = None


class Deployment(BaseModel):
    model_config = ConfigDict(frozen=True)

    target: str
    endpoint: str
    url: str | None = None
    running: bool | None = None


class VersionDetail(BaseModel):
    model_config = ConfigDict(frozen=True, protected_namespaces=())

    name: str
    version: str
    aliases: list[str]
    metrics: dict[str, str] = Field(description="Headline test metrics and their 95% intervals, as registered.")
    gate: str
    gate_reasons: list[str]
    review: str
    reviewed_by: str | None = None
    comment: str | None = None
    signature: SignatureState
    data_fingerprint: str | None = None
    split_digest: str | None = None
    git_commit: str | None = None
    base_model: str | None = None
    mlflow_run_id: str | None = None
    mlflow_run_url: str | None = None
    mlflow_version_url: str | None = None
    prefect_flow_run_url: str | None = None
    deployed: list[Deployment] = Field(default_factory=list)


def _review(v: RegisteredVersion) -> str:
    return v.tags.get(REVIEW) or "awaiting review"


def _state(v: RegisteredVersion) -> VersionState:
    return VersionState(version=v.version, aliases=sorted(v.aliases), review=_review(v),
                        gate=v.tags.get("fineship.gate", "unknown"))


def list_models(registry: MlflowRegistry) -> list[ModelSummary]:
    """Every registered model with its champion, challenger and newest version."""
    out = []
    for name in registry.model_names():
        versions = registry.list_versions(name)
        if not versions:
            continue
        by_alias = {a: v for v in versions for a in v.aliases}
        out.append(ModelSummary(name=name, versions=len(versions), latest=_state(versions[0]),
                                champion=_state(by_alias[CHAMPION]) if CHAMPION in by_alias else None,
                                challenger=_state(by_alias[CHALLENGER]) if CHALLENGER in by_alias else None))
    return out


def signature_state(v: RegisteredVersion, trust_store: TrustStore | None) -> SignatureState:
    """What the version's signature says, and whether its key is trusted here (no files are read)."""
    if not v.tags.get(SIGNATURE):
        return SignatureState(present=False)
    try:
        m = approval_bundle(v).manifest
    except (RegistryError, SignatureError) as err:
        return SignatureState(present=True, problem=str(err))
    trusted = None
    if trust_store is not None:
        trusted = m.key_id in trust_store.keys and trust_store.keys[m.key_id].name == m.signer
    return SignatureState(present=True, signer=m.signer, key_id=m.key_id, purpose=m.purpose, signed_at=m.signed_at,
                          files=len(m.files), signer_trusted=trusted)


def describe_version(registry: MlflowRegistry, name: str, version: str | None, trust_store: TrustStore | None,
                     deployments: Callable[[str, str], list[Deployment]] | None = None,
                     mlflow_ui_url: str | None = None) -> VersionDetail:
    """One version (default: the champion, else the newest) with everything a reviewer acts on."""
    if version is None:
        v = registry.find_version(name, CHAMPION) or next(iter(registry.list_versions(name)), None)
        if v is None:
            raise RegistryError(f"registered model '{name}' has no versions; see `fineship models list`")
    else:
        v = registry.get_version(name, version=version)
    t = v.tags
    metrics = {k.removeprefix("metric."): val for k, val in sorted(t.items()) if k.startswith("metric.")}
    ui = mlflow_ui_url.rstrip("/") if mlflow_ui_url else None
    return VersionDetail(
        name=v.name, version=v.version, aliases=sorted(v.aliases), metrics=metrics,
        gate=t.get("fineship.gate", "unknown"),
        gate_reasons=[r for r in t.get(GATE_REASONS, "").split("; ") if r],
        review=_review(v), reviewed_by=t.get("approved_by") or t.get("rejected_by"),
        comment=t.get("approval_comment") or t.get("rejection_comment"), signature=signature_state(v, trust_store),
        data_fingerprint=t.get("fineship.data_fingerprint"), split_digest=t.get("fineship.split_digest"),
        git_commit=t.get("fineship.git_commit"), base_model=t.get("fineship.base_model"), mlflow_run_id=v.run_id,
        mlflow_run_url=registry.run_url(v.run_id, mlflow_ui_url) if v.run_id else None,
        mlflow_version_url=f"{ui}/#/models/{v.name}/versions/{v.version}" if ui else None,
        prefect_flow_run_url=(registry.client.get_run(v.run_id).data.tags.get("fineship.prefect_flow_run_url")
                              if v.run_id else None),
        deployed=deployments(v.name, v.version) if deployments else [])


def local_deployments(records: list, name: str, version: str) -> list[Deployment]:
    """The local endpoints (from their records) serving `name` v`version`."""
    from components.deploy.local import is_running

    return [Deployment(target="local", endpoint=r.endpoint_name, url=r.url, running=is_running(r))
            for r in records if r.model_name == name and r.model_version == version]


def to_json(obj: BaseModel | list[BaseModel]) -> str:
    data = [o.model_dump(mode="json") for o in obj] if isinstance(obj, list) else obj.model_dump(mode="json")
    return json.dumps(data, indent=2)


