"""The JSON text the stores write (JSON columns on SQLite, jsonb on PostgreSQL, the metastore's bodies).

The text is what ``json.JSONEncoder(ensure_ascii=False, separators=(",", ":"), allow_nan=False)`` writes, made by
orjson: a workflow's checkpoint (about 40 values and the request's content) encodes in 0.8 µs instead of 9.9 (4.2
with the NaN check below, which only a text holding a null needs: a checkpoint leaves out what is None), and the
SQLite writer thread encodes while holding the interpreter lock the nodes' event loop needs (issue 12's profile: the
store's JSON was a quarter of that thread's Python time).

Where the two libraries would answer differently, the standard library answers, so every value is stored, or refused
with the error, exactly as before:

- NaN and Infinity: orjson writes ``null``; a row holding one is refused (``ValueError``), as jsonb refuses them. The
  values are walked for a non-finite float only when the text holds a ``null`` at all.
- what orjson does not take (``TypeError``): integers beyond 64 bits, non-string keys, subclasses of str, int, dict,
  list and float (an ``IntEnum``, say), datetimes and dataclasses (passed through, refused as the standard library
  refuses them), strings with lone surrogates, nesting deeper than 254: the standard library encodes or refuses them.

Left different, documented: a ``uuid.UUID`` or an ``enum.Enum`` inside a value is written as its text or value
(the standard library refused them), and a float below 1e-4 is written as orjson writes it (``0.00001`` and
``1.5e-7`` against ``1e-05`` and ``1.5e-07``): the same number to every JSON reader.
"""

from __future__ import annotations

import json
from typing import Any, Final

import orjson

_STANDARD: Final = json.JSONEncoder(ensure_ascii=False, separators=(",", ":"), allow_nan=False).encode
_OPTIONS: Final = orjson.OPT_PASSTHROUGH_DATACLASS | orjson.OPT_PASSTHROUGH_DATETIME | orjson.OPT_PASSTHROUGH_SUBCLASS


def dumps(value: Any) -> str:
    """``value`` as compact JSON text. ``TypeError`` for what JSON cannot hold, ``ValueError`` for NaN or Infinity
    (and for circular references), as ``json`` raises them."""
    data = _orjson(value)
    return _STANDARD(value) if data is None else data.decode()


def dumpb(value: Any) -> bytes:
    """``dumps`` as UTF-8 (``UnicodeEncodeError`` for a string holding a lone surrogate)."""
    data = _orjson(value)
    return _STANDARD(value).encode() if data is None else data


def fragment(value: Any) -> orjson.Fragment:
    """``dumpb`` as an ``orjson.Fragment``: text that ``orjson.dumps`` embeds in a larger document as it is."""
    return orjson.Fragment(dumpb(value))


def _orjson(value: Any) -> bytes | None:
    """orjson's text of ``value``, or None where the standard library must answer (or raise)."""
    try:
        data = orjson.dumps(value, option=_OPTIONS)
    except TypeError:
        return None
    # find, not ``b"null" in data``: CPython first takes the operand of a bytes ``in`` for a byte's number, and
    # formats (then drops) a TypeError when it is not one, which costs more than the search.
    if data.find(b"null") >= 0 and not _finite(value):
        return None  # the standard library raises ValueError: out of range float values are not JSON compliant
    return data


def _finite(value: Any) -> bool:
    """No NaN or Infinity anywhere in ``value`` (dicts, lists and tuples of what orjson encoded: a float there is
    exactly a float, subclasses having been passed through)."""
    kind = type(value)
    if kind is float:
        return bool(value - value == 0.0)  # NaN - NaN and inf - inf are NaN
    if kind is dict:
        value = value.values()
    elif kind is not list and kind is not tuple:
        return True
    for item in value:
        kind = type(item)
        if kind is float:
            if item - item != 0.0:
                return False
        elif (kind is dict or kind is list or kind is tuple) and not _finite(item):
            return False
    return True
