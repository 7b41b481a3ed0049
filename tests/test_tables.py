"""The one description of the tables (``onex._tables``) and the encoders and decoders generated from it.

What the stores do with it (the SQL and its conflict rules) is pinned by ``tests/test_store_conformance.py``.
"""

from __future__ import annotations

import dataclasses
import uuid
from datetime import UTC, datetime
from typing import Any

import pytest
from onex import _tables
from onex._tables import Column, Rule, Table
from onex.store import TABLES, StepRow, WorkflowRow, WriteBatch

T0 = datetime(2024, 5, 1, 12, 0, 0, 123456, tzinfo=UTC)
DESCRIBED = (
    _tables.WORKFLOWS,
    _tables.STEPS,
    _tables.STAMPS,
    _tables.TRANSITIONS,
    _tables.BRIDGE_STATES,
    _tables.REGISTRATIONS,
    _tables.HEARTBEATS,
    _tables.EVENT_LOGS,
    _tables.PROCESSED,
    _tables.DEAD_LETTERS,
    _tables.AGGREGATE_WINDOWS,
    _tables.NODE_STATES,
)


def test_every_table_is_described_and_every_batch_field_has_its_table() -> None:
    assert {t.name for t in DESCRIBED} == set(TABLES)
    row_fields = {f.name for f in dataclasses.fields(WriteBatch)} - {"consumer", "processed_event_ids"}
    assert [field for field, _ in _tables.BATCH] == [f for f in WriteBatch.__dataclass_fields__ if f in row_fields]
    for field, table in _tables.BATCH:
        assert table.row is not None
        assert table.row.__name__ in repr(WriteBatch.__annotations__[field])


def test_a_description_whose_columns_are_not_the_rows_fields_is_refused() -> None:
    columns = tuple(Column(c.name, c.kind) for c in _tables.STEPS.columns)
    with pytest.raises(ValueError, match="are not the fields of StepRow"):
        Table("workflow_steps", StepRow, tuple(reversed(columns)), key=("workflow_id", "step_name"))
    with pytest.raises(ValueError, match="identifiers"):
        Table("t", None, (Column("x); DROP TABLE t; --", "text"),), key=())


def test_the_conflict_clause_follows_the_rules_and_the_guard() -> None:
    rules = {**_tables.COMMON_RULES, Rule.GREATEST: "G", Rule.MERGE: "M({seq})", Rule.NOW: "N"}

    workflow = _tables.WORKFLOWS.on_conflict(rules)
    assert workflow.startswith("ON CONFLICT (correlation_id) DO UPDATE SET")
    assert "state_seq = G" in workflow
    assert "metadata = M(state_seq)" in workflow
    assert "updated_at = N" in workflow
    assert "correlation_id =" not in workflow  # the key
    assert "created_at =" not in workflow  # set once
    assert (
        "file_hash = CASE WHEN EXCLUDED.state_seq >= w.state_seq THEN COALESCE(EXCLUDED.file_hash, w.file_hash) "
        "ELSE COALESCE(w.file_hash, EXCLUDED.file_hash) END" in workflow
    )
    assert _tables.BRIDGE_STATES.on_conflict(rules).endswith("WHERE EXCLUDED.version > b.version")
    assert "last_heartbeat = COALESCE(EXCLUDED.last_heartbeat, n.last_heartbeat)" in _tables.REGISTRATIONS.on_conflict(
        rules
    )
    assert _tables.STAMPS.on_conflict(rules) == "ON CONFLICT DO NOTHING"  # its id and its natural key are unique
    assert _tables.DEAD_LETTERS.on_conflict(rules) == "ON CONFLICT (event_id) DO NOTHING"


def test_the_encoder_converts_by_kind_leaves_none_alone_and_fills_in_the_time_when_asked() -> None:
    calls: list[Any] = []

    def uid(value: Any) -> str:
        calls.append(value)
        return f"u:{value}"

    convert: dict[Any, Any] = dict.fromkeys(("text", "int", "bigint", "float", "json"), None)
    convert |= {"uuid": uid, "timestamp": datetime.isoformat}
    cid = uuid.uuid4()
    step = StepRow(cid, "stamp", 1, "completed")
    later = StepRow(cid, "stamp", 2, "completed", 1.5, {"a": 1}, "boom", T0)

    filled = _tables.encoder(_tables.STEPS, convert, fill_now=True)
    assert filled([step, later], "NOW") == [
        (f"u:{cid}", "stamp", 1, "completed", None, {}, None, "NOW", "NOW"),  # created_at missing; updated_at
        (f"u:{cid}", "stamp", 2, "completed", 1.5, {"a": 1}, "boom", T0.isoformat(), "NOW"),
    ]
    left = _tables.encoder(_tables.STEPS, convert, fill_now=False)
    assert left([step], "NOW") == [(f"u:{cid}", "stamp", 1, "completed", None, {}, None, None)]

    calls.clear()
    workflow = _tables.encoder(_tables.WORKFLOWS, convert, fill_now=False)
    workflow([WorkflowRow(cid, "w", "pending", 0)], None)
    assert calls == [cid]  # the stamp_id None never reached the converter


def test_the_decoder_builds_the_row_from_the_selected_columns() -> None:
    cid = uuid.uuid4()
    convert: dict[Any, Any] = dict.fromkeys(("text", "int", "bigint", "float", "json"), None)
    convert |= {"uuid": uuid.UUID, "timestamp": datetime.fromisoformat}
    decode = _tables.decoder(_tables.WORKFLOWS, convert)
    fetched = (
        str(cid),
        "w",
        "processing",
        1,
        "ns",
        None,
        "h",
        None,
        T0.isoformat(),
        None,
        3.5,
        None,
        {"k": 1},
        {"v": 1},
    )

    assert decode(fetched) == WorkflowRow(
        cid, "w", "processing", 1, "ns", None, "h", None, T0, None, 3.5, None, {"k": 1}, {"v": 1}
    )
    assert _tables.WORKFLOWS.select().startswith("SELECT correlation_id, workflow_type, current_state, state_seq,")
