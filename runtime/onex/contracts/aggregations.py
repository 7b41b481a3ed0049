"""Aggregations: what makes one meaningless beyond its schema (``aggregation_problems``), which the engine
(``onex.aggregation``) refuses too, and the key field each type groups by."""

from __future__ import annotations

from collections.abc import Iterator, Sequence

from onex.contracts.grammar import _FIELD_RE, parse_condition
from onex.contracts.models import Aggregation, Window

# --- aggregations -----------------------------------------------------------------------------------------------

# The key field each aggregation type groups by, unless ``field`` overrides it (TIME_WINDOW has no key of its own;
# CUSTOM's key is what its method returns).
AGGREGATION_KEY_FIELDS: dict[str, str] = {
    "NAMESPACE_GROUPING": "namespace",
    "FILE_TYPE_GROUPING": "stamp.file_type",
    "SIZE_BUCKETS": "stamp.file_size",
    "WORKFLOW_GROUPING": "workflow_id",
}

_AggregationProblem = tuple[tuple[str | int, ...], str, str]  # (path below the aggregation, issue code, message)


def _window_problems(window: Window) -> Iterator[_AggregationProblem]:
    def only(allowed: set[str]) -> Iterator[_AggregationProblem]:
        for name in ("size_ms", "size_items", "slide_ms", "slide_items", "gap_ms"):
            if name not in allowed and getattr(window, name) is not None:
                yield ("window", name), "aggregation-window", f"{name} means nothing to a {description} window"

    if window.type == "session":
        description = "session"
        if window.gap_ms is None:
            yield ("window", "type"), "aggregation-window", "a session window needs gap_ms"
        yield from only({"gap_ms"})
        return
    by_time, by_count = window.size_ms is not None, window.size_items is not None
    description = f"{window.type} {'count' if by_count else 'time'}"
    if by_time == by_count:
        yield ("window", "type"), "aggregation-window", f"a {window.type} window needs one of size_ms or size_items"
        return
    if window.type == "tumbling":
        yield from only({"size_ms", "size_items"})
    elif by_time:
        yield from only({"size_ms", "slide_ms"})
        if window.slide_ms is None:
            yield ("window", "type"), "aggregation-window", "a sliding window by time needs slide_ms"
        elif window.size_ms is not None and window.slide_ms > window.size_ms:
            yield ("window", "slide_ms"), "aggregation-window", "slide_ms must not exceed size_ms"
    else:
        yield from only({"size_items", "slide_items"})
        if window.slide_items is None:
            yield ("window", "type"), "aggregation-window", "a sliding window by count needs slide_items"
        elif window.size_items is not None and window.slide_items > window.size_items:
            yield ("window", "slide_items"), "aggregation-window", "slide_items must not exceed size_items"
    if by_count and window.grace_ms:
        yield ("window", "grace_ms"), "aggregation-window", "grace_ms applies to time windows, not count windows"


def _bucket_problems(buckets: Sequence[int], at: tuple[str | int, ...]) -> Iterator[_AggregationProblem]:
    for index in range(1, len(buckets)):
        if buckets[index] <= buckets[index - 1]:
            message = f"buckets must be ascending: {buckets[index]} follows {buckets[index - 1]}"
            yield (*at, index), "aggregation-buckets", message


def aggregation_problems(aggregation: Aggregation) -> Iterator[_AggregationProblem]:
    """What makes one aggregation meaningless, beyond its schema: the engine (``onex.aggregation``) refuses the same.

    Every field must change what is computed, so a field its type or function does not read is a problem too.
    """
    kind = aggregation.type
    if aggregation.where is not None:
        try:
            parse_condition(aggregation.where)
        except ValueError as exc:
            yield ("where",), "aggregation-condition", f"guard {aggregation.where!r}: {exc}"
    for index, path in enumerate(aggregation.group_by):
        if not _FIELD_RE.match(path):
            yield ("group_by", index), "aggregation-field", f"group_by {path!r} is not a dotted field name"
    if aggregation.field is not None:
        if kind in ("TIME_WINDOW", "CUSTOM"):
            yield ("field",), "aggregation-field", f"{kind} has no key field: field means nothing to it"
        elif not _FIELD_RE.match(aggregation.field):
            yield ("field",), "aggregation-field", f"field {aggregation.field!r} is not a dotted field name"
    if kind == "CUSTOM" and not aggregation.method:
        yield ("type",), "aggregation-method", "a CUSTOM aggregation needs method: the node method returning its key"
    if kind != "CUSTOM" and aggregation.method is not None:
        yield ("method",), "aggregation-method", f"method is read by CUSTOM aggregations only, not {kind}"
    if kind == "SIZE_BUCKETS" and not aggregation.buckets:
        yield ("type",), "aggregation-buckets", "a SIZE_BUCKETS aggregation needs buckets (upper bounds, ascending)"
    if kind != "SIZE_BUCKETS" and aggregation.buckets:
        yield ("buckets",), "aggregation-buckets", f"buckets are read by SIZE_BUCKETS aggregations only, not {kind}"
    yield from _bucket_problems(aggregation.buckets, ("buckets",))
    if kind == "TIME_WINDOW" and aggregation.window is None:
        yield ("type",), "aggregation-window", "a TIME_WINDOW aggregation needs a window"
    if aggregation.window is not None:
        yield from _window_problems(aggregation.window)
    names: dict[str, int] = {}
    for index, function in enumerate(aggregation.functions):
        at: tuple[str | int, ...] = ("functions", index)
        if function.name in names:
            message = f"function name {function.name!r} is taken (by functions[{names[function.name]}])"
            yield (*at, "name"), "aggregation-duplicate", message
        names.setdefault(function.name, index)
        if function.function == "count" and function.field is not None:
            yield (*at, "field"), "aggregation-function", "count counts records: it reads no field"
        elif function.function != "count" and function.field is None:
            yield (*at, "function"), "aggregation-function", f"{function.function} needs field: the value it reads"
        elif function.field is not None and not _FIELD_RE.match(function.field):
            yield (*at, "field"), "aggregation-field", f"field {function.field!r} is not a dotted field name"
        if function.function == "histogram" and not function.buckets:
            yield (*at, "function"), "aggregation-buckets", "histogram needs buckets (upper bounds, ascending)"
        if function.function != "histogram" and function.buckets:
            message = f"buckets are read by histogram only, not {function.function}"
            yield (*at, "buckets"), "aggregation-buckets", message
        yield from _bucket_problems(function.buckets, (*at, "buckets"))
