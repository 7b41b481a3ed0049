"""Payloads the stamping effect publishes."""

from __future__ import annotations

import uuid
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field


class _Payload(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class ModelStampCreated(_Payload):
    workflow_id: uuid.UUID
    stamp_id: uuid.UUID
    file_path: str
    file_hash: str
    file_size: int
    file_type: str
    namespace: str
    stamp_type: Literal["lightweight", "rich", "sidecar"]
    status: Literal["stamped", "unchanged"]
    dry_run: bool = False
    stamp: dict[str, Any] = Field(default_factory=dict)
    stamped_content: str | None = None  # for content requests: the stamped text


class ModelStampFailed(_Payload):
    workflow_id: uuid.UUID
    file_path: str | None = None
    namespace: str
    error: str
    retryable: bool = False
