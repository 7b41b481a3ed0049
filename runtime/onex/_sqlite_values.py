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


# The text of the ids encoded lately. A stamp's rows name the same few ids again and again (its workflow's id in five
# rows of four tables): 12 a stamp, 4 of them distinct. Cleared when full; a lookup or an entry racing a clear on
# another thread only costs an encoding. Times are not remembered: utc_text formats one for about what hashing a new
# datetime to look it up costs (a stamp's 9 times counted 0.4 % more instructions with the lookup than without).
_TEXTS_KEPT: Final = 8192
_uid_texts: dict[int, str] = {}


def _ts(value: datetime | None) -> str | None:
    """ISO-8601 in UTC at a fixed width (microseconds always present), so text order is time order; naive means UTC
    in onex (PostgresStore reads it the same way)."""
    return None if value is None else utc_text(value)


def _uid(value: uuid.UUID) -> str:
    if type(value) is uuid.UUID:
        key = value.int
        text = _uid_texts.get(key)
        if text is None:
            if len(_uid_texts) >= _TEXTS_KEPT:
                _uid_texts.clear()
            text = _uid_texts[key] = uuid_text(value)
        return text
    # A str from a careless caller: validate and normalise it as asyncpg does, so that the same id is always the
    # same text (the uuid columns are compared as text).
    return str(uuid.UUID(str(value)))


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
