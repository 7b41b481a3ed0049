"""How the SQLite store writes ids and times as text (``onex._sqlite_values``; a written row's ids are formatted by its
writer, ``onex._sqlite_exec.uuid_text``), the texts it remembers included."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta, timezone

import pytest
from hypothesis import given
from hypothesis import strategies as st
from onex import _sqlite_exec
from onex._sqlite_exec import uuid_text
from onex._sqlite_values import _ts, _uid, _uid_int

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


def test_a_written_rows_ids_go_to_the_writer_as_ints_strings_normalised() -> None:
    cid = uuid.uuid4()
    assert _uid_int(cid) == cid.int
    assert _uid_int(str(cid).upper()) == cid.int  # type: ignore[arg-type]  # a careless caller's str
    with pytest.raises(ValueError, match="badly formed"):
        _uid_int("not an id")  # type: ignore[arg-type]


@given(st.integers(min_value=0, max_value=2**128 - 1))
def test_the_writer_formats_an_id_as_uuid_does(value: int) -> None:
    assert uuid_text(value) == str(uuid.UUID(int=value))


def test_the_texts_remembered_are_bounded(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(_sqlite_exec, "_TEXTS_KEPT", 8)
    ids = [uuid.uuid4() for _ in range(50)]
    assert [uuid_text(i.int) for i in ids] == [str(i) for i in ids]
    assert [uuid_text(i.int) for i in ids[-3:]] == [str(i) for i in ids[-3:]]  # remembered ones
    assert len(_sqlite_exec._texts_kept) <= 8
    assert _sqlite_exec._texts_kept[ids[-1].int] == str(ids[-1])  # the latest is remembered
