"""The payload models of the shipped nodes, in one module: each node imports the models it consumes and publishes from
here, never from another node's package, and the contracts name them here (``nodes.models:ModelStampRequest``).

Each is an ``onex.envelope.Payload``: frozen, no unknown fields, and readable like the dict it is on the wire.
"""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Any, Literal

from onex.envelope import Payload
from pydantic import Field, model_validator

StampType = Literal["lightweight", "rich"]


# --- the orchestrator's request and command --------------------------------------------------------------------


class ModelStampRequest(Payload):
    """Stamp one file (``file_path``), or in-memory ``content``; with content, ``file_path`` is only its name
    (it picks the comment syntax) and nothing is read from or written to disk."""

    file_path: str | None = None
    content: str | None = None
    # Content that is not UTF-8 text (an HTTP binary upload), base64-encoded: it gets a sidecar stamp and is never
    # changed. At most one of content and content_base64.
    content_base64: str | None = None
    namespace: str = Field("onex.default", min_length=1, max_length=256)
    stamp_type: StampType = "lightweight"
    dry_run: bool = False
    author: str | None = None

    @model_validator(mode="after")
    def _one_input(self) -> ModelStampRequest:
        if self.file_path is None and self.content is None and self.content_base64 is None:
            raise ValueError("give file_path, content, or both (content named by file_path)")
        if self.content is not None and self.content_base64 is not None:
            raise ValueError("give content or content_base64, not both")
        return self


class ModelStampCommand(Payload):
    """The stamp step, routed to the stamping effect."""

    workflow_id: uuid.UUID
    file_path: str | None = None
    content: str | None = None
    content_base64: str | None = None  # as ModelStampRequest's
    namespace: str
    stamp_type: StampType = "lightweight"
    dry_run: bool = False
    author: str | None = None
    attempt: int = 1


# --- the stamping effect's results ------------------------------------------------------------------------------


class ModelStampCreated(Payload):
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
    file_mode: str | None = None  # a file's permission bits as octal text ("0644"); None for content


class ModelStampFailed(Payload):
    workflow_id: uuid.UUID
    file_path: str | None = None
    namespace: str
    error: str
    retryable: bool = False


# --- the orchestrator's outcome ----------------------------------------------------------------------------------


class ModelStepResult(Payload):
    step_name: str
    step_order: int
    status: Literal["completed", "failed", "skipped", "pending", "running"]
    attempts: int = 0
    execution_time_ms: float | None = None
    error: str | None = None
    data: dict[str, Any] = Field(default_factory=dict)


class ModelStampRecord(Payload):
    """The stamp a workflow made, as the outcome carries it (what ``metadata_stamps`` stores of it)."""

    stamp_id: uuid.UUID
    file_path: str
    file_hash: str
    file_size: int
    file_type: str
    stamp_type: Literal["lightweight", "rich", "sidecar"]
    status: Literal["stamped", "unchanged"]
    data: dict[str, Any] = Field(default_factory=dict)
    file_mode: str | None = None  # as ModelStampCreated's


class ModelWorkflowFinished(Payload):
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


# --- the reducer's intent ----------------------------------------------------------------------------------------


class ModelAggregationIntent(Payload):
    """The reducer's intent: the new aggregate of a namespace, for an effect to persist."""

    intent_type: Literal["upsert_bridge_state"] = "upsert_bridge_state"
    target: Literal["bridge_states"] = "bridge_states"
    namespace: str
    version: int
    total_workflows_processed: int
    total_items_aggregated: int
    total_size_bytes: int
    unique_file_hashes: int
    current_fsm_state: str
    by_file_type: dict[str, int] = Field(default_factory=dict)
    size_buckets: dict[str, int] = Field(default_factory=dict)
    windows_closed: int = 0
    aggregated_at: datetime


# --- the stamping service's reports (published by the HTTP gateway and the CLI on its behalf) --------------------


class ModelStampValidated(Payload):
    """METADATA_STAMP_VALIDATED: one document or file checked against its stamp (``/validate``, ``onex verify
    --publish``). ``validation_result`` is the verdict (``onex.stamps.VerifyResult.status``); ``file_hash`` the
    content's BLAKE3 (None when it could not be read); ``stamps_found`` 1 when it carries a stamp (in place or in
    its sidecar), else 0."""

    file_hash: str | None
    validation_result: Literal["valid", "modified", "unstamped", "error"]
    namespace: str
    stamps_found: int = Field(ge=0)
    file_path: str | None = None
    expected_hash: str | None = None


class ModelBatchProcessed(Payload):
    """METADATA_BATCH_PROCESSED: once per HTTP ``/batch`` and per ``onex stamp`` run. ``namespace`` is the one its
    items share, ``*`` when they name several."""

    batch_id: uuid.UUID
    total: int = Field(ge=0)
    successful: int = Field(ge=0)
    failed: int = Field(ge=0)
    namespace: str
