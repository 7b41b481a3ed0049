"""Payloads the orchestrator consumes and publishes."""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

StampType = Literal["lightweight", "rich"]


class _Payload(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class ModelStampRequest(_Payload):
    """Stamp one file (``file_path``), or in-memory ``content``; with content, ``file_path`` is only its name
    (it picks the comment syntax) and nothing is read from or written to disk."""

    file_path: str | None = None
    content: str | None = None
    namespace: str = Field("onex.default", min_length=1, max_length=256)
    stamp_type: StampType = "lightweight"
    dry_run: bool = False
    author: str | None = None

    @model_validator(mode="after")
    def _one_input(self) -> ModelStampRequest:
        if self.file_path is None and self.content is None:
            raise ValueError("give file_path, content, or both (content named by file_path)")
        return self


class ModelStampCommand(_Payload):
    """The stamp step, routed to the stamping effect."""

    workflow_id: uuid.UUID
    file_path: str | None = None
    content: str | None = None
    namespace: str
    stamp_type: StampType = "lightweight"
    dry_run: bool = False
    author: str | None = None
    attempt: int = 1


class ModelWorkflowStarted(_Payload):
    workflow_id: uuid.UUID
    namespace: str
    file_path: str | None = None
    started_at: datetime


class ModelStepResult(_Payload):
    step_name: str
    step_order: int
    status: Literal["completed", "failed", "skipped", "pending", "running"]
    attempts: int = 0
    execution_time_ms: float | None = None
    error: str | None = None
    data: dict[str, Any] = Field(default_factory=dict)


class ModelStampRecord(_Payload):
    """The stamp a workflow made, as the outcome carries it (what ``metadata_stamps`` stores of it)."""

    stamp_id: uuid.UUID
    file_path: str
    file_hash: str
    file_size: int
    file_type: str
    stamp_type: Literal["lightweight", "rich", "sidecar"]
    status: Literal["stamped", "unchanged"]
    data: dict[str, Any] = Field(default_factory=dict)


class ModelWorkflowFinished(_Payload):
    """WORKFLOW_COMPLETED and WORKFLOW_FAILED: the outcome with every step and the stamp, so one event persists the
    whole workflow (its row, its steps and its stamp, in one transaction) and is all the reducer needs: the outcome
    is keyed by namespace, while everything the orchestrator consumes is keyed by workflow.
    """

    workflow_id: uuid.UUID
    state: Literal["completed", "failed"]
    state_seq: int
    namespace: str
    file_path: str | None = None
    started_at: datetime
    completed_at: datetime
    execution_time_ms: float
    file_hash: str | None = None
    stamp_id: uuid.UUID | None = None
    dry_run: bool = False
    error: str | None = None
    steps: tuple[ModelStepResult, ...] = ()
    stamp: ModelStampRecord | None = None
