"""How the SQLite store writes ids and times as text (``onex._sqlite_values``), the texts it remembers included."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta, timezone

import pytest
from onex import _sqlite_values
from onex._sqlite_values import _ts, _uid

PARIS = timezone(timedelta(hours=1))


def test_times_are_utc_text_at_a_fixed_width_whatever_zone_they_come_in() -> None:
    instant = datetime(2026, 12, 3, 17, 0, tzinfo=UTC)
    text = "2026-12-03T17:00:00.000000+00:00"
    assert _ts(instant) == text
    # The same instant in another zone equals the one remembered: the text is the same, still UTC.
    assert _ts(instant.astimezone(PARIS)) == text
    assert _ts(datetime(2026, 12, 3, 18, 0, 0, 5, tzinfo=PARIS)) == "2026-12-03T17:00:00.000005+00:00"
    # Naive means UTC; it never equals an aware time, so it is encoded on its own.
    assert _ts(datetime(2026, 12, 3, 17, 0)) == text
    assert _ts(None) is None


def test_ids_are_their_canonical_text_and_strings_are_normalised() -> None:
    cid = uuid.uuid4()
    assert _uid(cid) == str(cid)
    assert _uid(uuid.UUID(int=cid.int)) == str(cid)  # an equal id, another object
    assert _uid(str(cid).upper()) == str(cid)  # type: ignore[arg-type]  # a careless caller's str
    with pytest.raises(ValueError, match="badly formed"):
        _uid("not an id")  # type: ignore[arg-type]


def test_the_texts_remembered_are_bounded(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(_sqlite_values, "_TEXTS_KEPT", 8)
    ids = [uuid.uuid4() for _ in range(50)]
    assert [_uid(i) for i in ids] == [str(i) for i in ids]
    assert len(_sqlite_values._uid_texts) <= 8
