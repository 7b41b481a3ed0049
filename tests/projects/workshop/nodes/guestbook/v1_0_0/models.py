"""Payload models of the guestbook, named by its contract as ``nodes.guestbook.v1_0_0.models:...``."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict


class ModelSignature(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    name: str
    message: str = ""
