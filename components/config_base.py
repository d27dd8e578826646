"""The base of every configuration section (shared by `components.config` and the sections kept beside it)."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict


class Section(BaseModel):
    """A frozen configuration section that refuses unknown fields (a typo fails at load time, naming the field)."""

    model_config = ConfigDict(extra="forbid", frozen=True)
