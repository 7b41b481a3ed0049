"""How the SQLite store writes values as SQLite values and reads them back (``migrations/sqlite/0001_initial.sql``):
ids and times as text, JSON objects as text, for ``onex._sqlite``.

Times are ISO-8601 in UTC at a fixed width, so that text order is time order. No NaN or Infinity in JSON
(``onex._jsontext``): PostgreSQL's jsonb refuses them, and a row must be valid on both stores.
"""

from __future__ import annotations

import json
import uuid
from datetime import UTC, datetime
from typing import Any, Final

from onex import _jsontext
from onex._tables import Convert, Kind
from onex.clock import utc_text
from onex.envelope import uuid_text
from onex.store import group_key

_dumps: Final = _jsontext.dumps
_loads: Final = json.loads


def _json(value: dict[str, Any]) -> str:
    return _dumps(value) if value else "{}"


def _obj(text: str) -> dict[str, Any]:
    if text == "{}":
        return {}
    value: dict[str, Any] = _loads(text)
    return value


def _ts(value: datetime | None) -> str | None:
    """ISO-8601 in UTC at a fixed width (microseconds always present), so text order is time order; naive means UTC
    in onex (PostgresStore reads it the same way). Not remembered, as the ids' texts are (``_sqlite_exec.uuid_text``):
    utc_text formats a time for about what hashing a new datetime to look it up costs (a stamp's 9 times counted 0.4 %
    more instructions with the lookup than without)."""
    return None if value is None else utc_text(value)


def _uid(value: uuid.UUID) -> str:
    """An id as the store keeps it, for a read's keys (a written row's ids go to the writer as ints: ``_uid_int``)."""
    if type(value) is uuid.UUID:
        return uuid_text(value)
    # A str from a careless caller: validate and normalise it as asyncpg does, so that the same id is always the
    # same text (the uuid columns are compared as text).
    return str(uuid.UUID(str(value)))


def _uid_int(value: uuid.UUID) -> int:
    """A written row's uuid column as the store hands it to its writer: the id's 128-bit int, which the writer turns
    into ``_uid``'s text (``_sqlite_exec.Sql.uuids``), off the event loop's thread where the writer is a process. A str
    from a careless caller is validated here, as ``_uid`` validates it."""
    if type(value) is uuid.UUID:
        return value.int
    return uuid.UUID(str(value)).int


def _now() -> str:
    return utc_text(datetime.now(UTC))


# How each logical type of ``onex._tables`` is stored (see migrations/sqlite/0001_initial.sql) and read back; None
# stands for the value as it is. A None value is never converted (the generated code tests for it first).
_TO_SQL: Final[dict[Kind, Convert | None]] = {
    "uuid": _uid,
    "text": None,
    "int": None,
    "bigint": None,
    "float": None,
    "bool": None,  # sqlite3 binds True and False as 1 and 0
    "json": _json,
    "json_key": group_key,
    "timestamp": _ts,
}
# How a WriteBatch's rows are encoded: as _TO_SQL, but the ids as ints (_uid_int).
_TO_PARAMS: Final[dict[Kind, Convert | None]] = _TO_SQL | {"uuid": _uid_int}
_FROM_SQL: Final[dict[Kind, Convert | None]] = {
    "uuid": uuid.UUID,
    "text": None,
    "int": None,
    "bigint": None,
    "float": None,
    "bool": bool,
    "json": _obj,
    "json_key": _obj,
    "timestamp": datetime.fromisoformat,
}
