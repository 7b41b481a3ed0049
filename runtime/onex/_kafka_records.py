"""How an envelope becomes a Kafka record's headers, and a record that is no envelope becomes a dead letter: the
record-level encoding of ``onex._kafka``, apart so that ``onex.dlq`` builds a replay's headers without aiokafka."""

from __future__ import annotations

import base64
from typing import Any, Final

from onex.envelope import DEAD_LETTER_EVENT, OnexEnvelopeV1, uuid_text

__all__ = ["RAW_LIMIT", "raw_dead_letter", "record_headers"]

_SPECVERSION: Final = b"1.0"
_CONTENT_TYPE: Final = ("content-type", b"application/json")
RAW_LIMIT: Final = 256 * 1024  # of an undecodable record's value, kept in its dead letter


def record_headers(envelope: OnexEnvelopeV1) -> list[tuple[str, bytes]]:
    """The headers of an envelope's record: CloudEvents binary mode and ``content-type``."""
    return [
        ("ce_id", uuid_text(envelope.event_id).encode()),
        ("ce_type", envelope.event_type.encode()),
        ("ce_source", envelope.source_node_id.encode()),
        ("ce_specversion", _SPECVERSION),
        ("ce_time", envelope.event_timestamp.isoformat().encode()),
        _CONTENT_TYPE,
    ]


def raw_dead_letter(topic: str, record: Any, error: BaseException, group: str) -> OnexEnvelopeV1:
    """The dead letter of a record that is no envelope (not JSON, a tombstone): its value as text (or base64), cut at
    ``RAW_LIMIT``, with where it was and why (``onex._kafka``'s module docstring)."""
    value: bytes = record.value or b""
    truncated = len(value) > RAW_LIMIT
    value = value[:RAW_LIMIT]
    try:
        raw, encoding = value.decode(), "utf-8"
    except UnicodeDecodeError:
        raw, encoding = base64.b64encode(value).decode("ascii"), "base64"
    key: str | None = record.key.decode(errors="replace") if record.key is not None else None
    return OnexEnvelopeV1(
        event_type=DEAD_LETTER_EVENT,
        source_node_id="onex-bus",
        partition_key=key,
        payload={
            "original_topic": topic,
            "original_raw": raw,
            "original_raw_encoding": encoding,
            "original_raw_truncated": truncated,
            "original_key": key,
            "original_partition": record.partition,
            "original_offset": record.offset,
            "error_type": type(error).__name__,
            "error": str(error),
            "attempts": 0,
            "group": group,
        },
    )
