"""Persisted task results as plain JSON (never pickle), and the code digest that keys the data cache.

The validation and split results are cached on disk between runs. Pickle would run whatever a
tampered result file holds when it is loaded; this serializer reads JSON into the two result types
it knows, and nothing else.
"""

from __future__ import annotations

import io
import json
from typing import Any

import pandas as pd
from prefect.cache_policies import CachePolicy
from prefect.serializers import Serializer
from pydantic import BaseModel, ConfigDict, Field

from components.data.profile import DataProfile
from components.data.split import SplitManifest, Splits
from components.data.validation import SUITE_VERSION, ValidationReport
from components.provenance import source_digest

# The modules whose code decides what reading, cleaning, validation and split produce: any change to them (or to the suite
# version) is a new cache key, so a rule fix re-validates data cached under the old rules.
DATA_CODE = ("components.data.io", "components.data.cleaning", "components.data.validation", "components.data.split",
             "components.data.near_dup", "components.data.profile", "components.data.policy", "components.config",
             "components.data.docs_offline",
             "tasks.data", "tasks.results")


def data_code_key() -> str:
    return f"suite-{SUITE_VERSION}-code-{source_digest(DATA_CODE)}"


DATA_CODE_CACHE = CachePolicy.from_cache_key_fn(lambda _ctx, _params: data_code_key())


class DataCheck(BaseModel):
    """What validation found, and the profile of data that passed (the cached result of `check-data`)."""

    model_config = ConfigDict(frozen=True)

    report: ValidationReport
    profile: DataProfile | None = None


def _frame_json(df: pd.DataFrame) -> str:
    return df.to_json(orient="split", date_format="iso")


def _frame(text: str) -> pd.DataFrame:
    return pd.read_json(io.StringIO(text), orient="split", dtype=False)


class ResultJSONSerializer(Serializer):
    """JSON for the cached data results (`DataCheck`, `Splits`); anything else is refused, both ways."""

    type: str = Field(default="fineship-json", frozen=True)

    def dumps(self, obj: Any) -> bytes:
        if isinstance(obj, DataCheck):
            doc = {"kind": "DataCheck", "data": obj.model_dump(mode="json")}
        elif isinstance(obj, Splits):
            doc = {"kind": "Splits", "manifest": obj.manifest.model_dump(mode="json"),
                   "frames": {k: _frame_json(obj.frame(k)) for k in ("train", "validation", "test")}}
        else:
            raise TypeError(f"fineship-json persists DataCheck and Splits results only, not {type(obj).__name__}")
        return json.dumps(doc).encode("utf-8")

    def loads(self, blob: bytes) -> Any:
        doc = json.loads(blob)
        if doc.get("kind") == "DataCheck":
            return DataCheck.model_validate(doc["data"])
        if doc.get("kind") == "Splits":
            return Splits(manifest=SplitManifest.model_validate(doc["manifest"]),
                          **{k: _frame(v) for k, v in doc["frames"].items()})
        raise ValueError(f"not a fineship result: kind {doc.get('kind')!r}")
