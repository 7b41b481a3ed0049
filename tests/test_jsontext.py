"""onex._jsontext: the stores' JSON text is the standard library's, refusals included (made by orjson)."""

from __future__ import annotations

import dataclasses
import enum
import json
import math
import uuid
from datetime import UTC, datetime
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st
from onex import _jsontext

STANDARD = json.JSONEncoder(ensure_ascii=False, separators=(",", ":"), allow_nan=False).encode

# What JSON holds, with finite floats whose text both libraries write alike (not below 1e-4: see the module
# docstring, and the test below).
scalars = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**63), max_value=2**64 - 1)
    | st.floats(allow_nan=False, allow_infinity=False).filter(lambda f: f == 0 or abs(f) >= 1e-4)
    | st.text()
)
documents = st.recursive(
    scalars,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
    max_leaves=30,
)


@given(documents)
def test_the_text_is_the_standard_librarys(value: Any) -> None:
    assert _jsontext.dumps(value) == STANDARD(value)
    assert _jsontext.dumpb(value) == STANDARD(value).encode()
    assert json.loads(_jsontext.dumps(value)) == value


class Level(enum.IntEnum):
    HIGH = 2


class Color(enum.Enum):
    RED = 1


class Text(str):
    pass


@dataclasses.dataclass
class Point:
    x: int


@pytest.mark.parametrize(
    "value",
    [
        pytest.param({"n": 2**70}, id="int-beyond-64-bits"),
        pytest.param({1: "a", None: "b", 2.5: "c", False: "d"}, id="non-string-keys"),
        pytest.param({"level": Level.HIGH, "text": Text("t")}, id="subclasses"),
        pytest.param(json.loads("[" * 300 + "]" * 300), id="nesting-beyond-254"),
        pytest.param({"a": None, "b": [1.5, None]}, id="nulls-without-nan"),
    ],
)
def test_what_orjson_does_not_take_is_encoded_by_the_standard_library(value: Any) -> None:
    assert _jsontext.dumps(value) == STANDARD(value)


def test_a_lone_surrogate_is_text_but_not_utf8_as_before() -> None:
    value = {"s": "lone \ud800 surrogate"}
    assert _jsontext.dumps(value) == STANDARD(value)
    with pytest.raises(UnicodeEncodeError):
        _jsontext.dumpb(value)


@pytest.mark.parametrize(
    "value",
    [
        {"ratio": math.nan},
        {"deep": [{"x": None, "y": (1.0, -math.inf)}]},
        [math.inf],
        math.nan,
    ],
)
def test_nan_and_infinity_are_refused(value: Any) -> None:
    with pytest.raises(ValueError, match="not JSON compliant"):
        _jsontext.dumps(value)


@pytest.mark.parametrize(
    "value",
    [{"when": datetime(2024, 5, 1, tzinfo=UTC)}, {"point": Point(1)}, {"handle": object()}, {"raw": b"x"}, {1, 2}],
    ids=["datetime", "dataclass", "object", "bytes", "set"],
)
def test_what_json_cannot_hold_is_a_type_error_as_before(value: Any) -> None:
    with pytest.raises(TypeError):
        STANDARD(value)
    with pytest.raises(TypeError):
        _jsontext.dumps(value)


def test_a_circular_value_is_refused_as_the_standard_library_refuses_it() -> None:
    loop: list[Any] = []
    loop.append(loop)
    with pytest.raises(ValueError, match="Circular"):
        _jsontext.dumps(loop)


def test_the_documented_differences() -> None:
    # Small floats: another text of the same number.
    assert [_jsontext.dumps(f) for f in (1e-05, 1.5e-07)] == ["0.00001", "1.5e-7"]
    assert [json.loads(_jsontext.dumps(f)) for f in (1e-05, 1.5e-07)] == [1e-05, 1.5e-07]
    # UUIDs and enums: written as their text and value, where the standard library refused them.
    u = uuid.UUID(int=1)
    assert _jsontext.dumps({"id": u, "color": Color.RED}) == f'{{"id":"{u}","color":1}}'
