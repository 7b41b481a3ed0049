"""The ``metadata_stamps`` rows of the shipped nodes' payloads, in one module, as their models are in ``nodes.models``.

Two nodes write them: the database adapter from a workflow's outcome (``ModelStampRecord``), or from a STAMP_CREATED
where its contract consumes that event, and the orchestrator from a STAMP_CREATED that no running workflow took as its
result (a late or a repeated one: README, "Design decisions").
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from onex.envelope import OnexEnvelopeV1
from onex.store import StampRow, maker

from .models import ModelStampCreated, ModelWorkflowFinished

# Built by ``onex.store.maker``: the same rows at about half the cost of the class's own call.
_stamp_row = maker(StampRow)


def _file_metadata(file_type: str, size: int, mode: str | None) -> dict[str, Any]:
    """metadata_stamps.file_metadata (O.N.E. v0.1): the file's type, size and permission bits (None for content)."""
    return {"file_type": file_type, "size": size, "mode": mode}


def created_stamp_row(
    envelope: OnexEnvelopeV1, payload: ModelStampCreated, metadata_version: str, protocol_version: str
) -> StampRow:
    """The row of a STAMP_CREATED (``envelope``, its typed ``payload``), created when the event was."""
    at: datetime = envelope.event_timestamp
    return _stamp_row(
        id=payload.stamp_id,
        file_hash=payload.file_hash,
        file_path=payload.file_path,
        file_size=payload.file_size,
        namespace=payload.namespace,
        stamp_type=payload.stamp_type,
        file_type=payload.file_type,
        workflow_id=payload.workflow_id,
        stamp_data=payload.stamp,
        created_at=at,
        op_id=payload.workflow_id,
        metadata_version=metadata_version,
        protocol_version=protocol_version,
        file_metadata=_file_metadata(payload.file_type, payload.file_size, payload.file_mode),
        updated_at=at,
    )


def outcome_stamp_row(outcome: ModelWorkflowFinished, metadata_version: str, protocol_version: str) -> StampRow:
    """The row of the stamp an outcome carries (``outcome.stamp`` is set), created when the workflow finished, with
    what its intelligence step answered."""
    stamp = outcome.stamp
    assert stamp is not None
    return _stamp_row(
        id=stamp.stamp_id,
        file_hash=stamp.file_hash,
        file_path=stamp.file_path,
        file_size=stamp.file_size,
        namespace=outcome.namespace,
        stamp_type=stamp.stamp_type,
        file_type=stamp.file_type,
        workflow_id=outcome.workflow_id,
        stamp_data=stamp.data,
        created_at=outcome.completed_at,
        op_id=outcome.workflow_id,
        intelligence_data=_intelligence(outcome),
        metadata_version=metadata_version,
        protocol_version=protocol_version,
        file_metadata=_file_metadata(stamp.file_type, stamp.file_size, stamp.file_mode),
        updated_at=outcome.completed_at,
    )


def _intelligence(outcome: ModelWorkflowFinished) -> dict[str, Any]:
    """What the workflow's intelligence step answered, or {} (skipped, failed, not configured)."""
    for step in outcome.steps:
        if step.step_name == "intelligence" and step.status == "completed":
            return step.data
    return {}
