"""The small languages inside contracts, each parsed at load and again by what runs it: guards
(``parse_condition``: FSM conditions, routing conditions, aggregation ``where``), cache key templates
(``template_fields``: ``onex.cache``) and the ``$ref``s of an event's ``payload_schema`` (``unresolved_refs``:
``onex.catalog``). Each raises or yields the reason in words a contract author can act on.
"""

from __future__ import annotations

import re
import string
from collections.abc import Iterator, Mapping
from typing import Any, Final

import referencing.exceptions
from re2 import _re2  # type: ignore[import-untyped]  # google-re2 ships no annotations
from referencing import Registry, Resource
from referencing.jsonschema import DRAFT202012

# --- guards -----------------------------------------------------------------------------------------------------
CONDITION_OPERATORS: frozenset[str] = frozenset(
    {"equals", "not_equals", "==", "!=", "greater_than", "less_than", ">=", "<=", ">", "<"}
    | {"min_length", "max_length", "exists", "not_exists", "in", "not_in", "contains", "matches"}
)
_UNARY_OPERATORS = frozenset({"exists", "not_exists"})
_FIELD_RE = re.compile(r"^[A-Za-z][A-Za-z0-9_]*(\.[A-Za-z][A-Za-z0-9_]*)*$")


def parse_condition(expression: str) -> tuple[str, str, str | None]:
    """Split a guard ``field operator value`` (``field exists``) into its tokens; ``ValueError`` says why not.

    The grammar is ONEX's: whitespace-separated tokens, never evaluated as Python. Fields are dotted names
    into the entity's context; names starting with ``_`` are private and refused. A ``matches`` value must be
    a regular expression RE2 runs (``Pattern``).
    """
    tokens = expression.split()
    if len(tokens) == 2 and tokens[1] in _UNARY_OPERATORS:
        field_name, operator, value = tokens[0], tokens[1], None
    elif len(tokens) == 2 and tokens[1] in CONDITION_OPERATORS:
        raise ValueError(f"operator {tokens[1]!r} needs a value: `field {tokens[1]} value`")
    elif len(tokens) != 3:
        raise ValueError(f"expected `field operator value` (three tokens), found {len(tokens)}")
    else:
        field_name, operator, value = tokens
        if operator in _UNARY_OPERATORS:
            raise ValueError(f"operator {operator!r} takes no value: `field {operator}`")
    if operator not in CONDITION_OPERATORS:
        raise ValueError(f"unknown operator {operator!r}; expected one of {', '.join(sorted(CONDITION_OPERATORS))}")
    if field_name.startswith("_"):
        raise ValueError(f"field {field_name!r} is private: names starting with '_' cannot be tested")
    if not _FIELD_RE.match(field_name):
        raise ValueError(f"field {field_name!r} is not a dotted name")
    if operator == "matches" and value is not None:
        try:
            Pattern(value)
        except ValueError as exc:
            raise ValueError(
                f"{value!r} is not a regular expression RE2 can run ({exc}); RE2 has no back-references or "
                "look-around, so that matching takes time linear in the value"
            ) from None
    return field_name, operator, value


_RE2_OPTIONS: Final = _re2.RE2.Options()
_RE2_OPTIONS.log_errors = False  # a refused pattern is a ValueError naming the guard, not a line on stderr from C++
_RE2_OPTIONS.never_capture = True  # a guard asks whether it matches, never what: one span to hand back, not one a group
_UNANCHORED: Final = _re2.RE2.Anchor.UNANCHORED


class Pattern:
    """A ``matches`` guard's regular expression, run by RE2 (google-re2), never by Python's ``re``.

    ``re`` backtracks: ``(a+)+$`` against thirty ``a`` and a ``b`` takes it minutes, and a feature flag's rule is
    written over HTTP by any client with an API key, then evaluated on the gateway's event loop. RE2 runs in time
    linear in the value whatever the pattern (the engine LaunchDarkly's Go evaluator uses too), and refuses what it
    cannot run so: back-references, look-ahead and look-behind. Its syntax is otherwise Python's, but ``\\d``, ``\\w``
    and ``\\s`` are ASCII only and ``$`` matches at the very end only (not before a final newline).

    ``search`` answers a bool: the module's ``_Regexp.search`` builds a match object through a generator and maps its
    byte offsets back to characters (5.8 us a call against 0.14 for ``re``); RE2's own call with the text encoded
    once takes 0.7 and allocates the bytes and one span. ``tests/test_fsm.py`` checks the two agree.
    """

    __slots__ = ("_match", "pattern")

    def __init__(self, pattern: str) -> None:
        """Compile ``pattern``; ``ValueError`` says why RE2 refuses it."""
        regexp = _re2.RE2(pattern.encode(), _RE2_OPTIONS)
        if not regexp.ok():
            error = regexp.error()
            raise ValueError(error.decode(errors="replace") if isinstance(error, bytes) else str(error))
        self.pattern = pattern
        self._match = regexp.Match

    def search(self, text: str) -> bool:
        """Whether the pattern matches anywhere in ``text``."""
        data = text.encode(errors="surrogatepass")  # a lone surrogate in a value (JSON allows one) fails no guard
        found: int = self._match(_UNANCHORED, data, 0, len(data))[0][0]  # the match's start, -1 when none
        return found >= 0

    def __repr__(self) -> str:
        return f"Pattern({self.pattern!r})"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Pattern) and other.pattern == self.pattern

    def __hash__(self) -> int:
        return hash(self.pattern)

    def __reduce__(self) -> tuple[type[Pattern], tuple[str]]:
        return Pattern, (self.pattern,)  # pickled and copied as its text, compiled again (as re.Pattern is)


# --- cache key templates and payload schema references ------------------------------------------------------------


def template_fields(template: str) -> tuple[str, ...]:
    """The fields a cache key template (``key_template``, ``invalidate_on[].key``) is rendered from, in order.

    ``ValueError`` says why the template is not one ``onex.cache`` can render: malformed braces, a positional or
    dotted/indexed field (``{}``, ``{0}``, ``{a.b}``, ``{a[0]}``), a conversion (``!r``) or a format spec (``:>5``);
    a key is the plain text of its fields, so ``{{`` and ``}}`` are the only other braces allowed.
    """
    try:
        parsed = list(string.Formatter().parse(template))
    except ValueError as exc:
        raise ValueError(f"malformed: {exc} (a literal brace is written {{{{ or }}}})") from None
    fields: list[str] = []
    for _, name, spec, conversion in parsed:
        if name is None:
            continue
        if not name.isidentifier():
            raise ValueError(f"{{{name}}} is not a field name: write {{name}}, a name the lookup passes")
        if conversion is not None:
            raise ValueError(f"{{{name}!{conversion}}}: conversions are not supported, write {{{name}}}")
        if spec:
            raise ValueError(f"{{{name}:{spec}}}: format specs are not supported, write {{{name}}}")
        fields.append(name)
    return tuple(fields)


def unresolved_refs(schema: Mapping[str, Any]) -> Iterator[tuple[tuple[str | int, ...], str]]:
    """``(path of the $ref's mapping, message)`` for every ``$ref`` in a ``payload_schema`` that does not resolve.

    jsonschema resolves a ``$ref`` only when a payload reaches it, so a dangling one would fail every message; the
    schema is one resource, and nothing outside it is fetched (a URL ``$ref`` is never retrieved).
    """
    resource = Resource.from_contents(dict(schema), default_specification=DRAFT202012)
    resolver = Registry().with_resource(resource.id() or "", resource).resolver(base_uri=resource.id() or "")

    def walk(node: Any, path: tuple[str | int, ...]) -> Iterator[tuple[tuple[str | int, ...], str]]:
        if isinstance(node, Mapping):
            ref = node.get("$ref")
            if isinstance(ref, str):
                try:
                    resolver.lookup(ref)
                except referencing.exceptions.Unresolvable:
                    where = "" if ref.startswith("#") else ": only references within the payload_schema (#/...) are"
                    yield path, f"$ref {ref!r} resolves to nothing{where or ' in the payload_schema'}"
            for key, child in node.items():
                if key not in ("const", "enum", "default", "examples"):  # values, not schemas
                    yield from walk(child, (*path, key))
        elif isinstance(node, list):
            for index, child in enumerate(node):
                yield from walk(child, (*path, index))

    yield from walk(schema, ())
