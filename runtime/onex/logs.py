"""Process logs: one line per event on stderr, as text or as one JSON object a line.

Built on the standard library's ``logging``: every library onex runs on (aiokafka, asyncpg, uvicorn) already logs
through it, so one handler and one formatter put all their lines in the same format, with no bridge to keep.

A line carries a timestamp, a level, the node id (None for the process as a whole), a short event name and a
message; ``event()`` adds fields (event id, event type, correlation id, counters), passed as ``extra={"onex": ...}``
so they never collide with ``LogRecord``'s own attributes. Lines from other loggers get the event name ``log``.
"""

from __future__ import annotations

import json
import logging
import sys
import time
from collections.abc import Mapping
from typing import Any, TextIO

__all__ = ["JsonFormatter", "TextFormatter", "configure", "dead_lettered", "event", "fields_of", "retried"]

_HANDLER_NAME = "onex-stderr"


def fields_of(record: logging.LogRecord) -> dict[str, Any]:
    """The onex fields of ``record``: ``node``, ``event`` and whatever ``event()`` was given."""
    extra = getattr(record, "onex", None)
    fields: dict[str, Any] = {"node": None, "event": "log"}
    if isinstance(extra, Mapping):
        fields.update(extra)
    return fields


def _timestamp(record: logging.LogRecord) -> str:
    whole = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
    return f"{whole}.{int(record.msecs):03d}Z"


class JsonFormatter(logging.Formatter):
    """One JSON object a line: ``ts``, ``level``, ``logger``, ``node``, ``event``, ``message``, then the fields."""

    def format(self, record: logging.LogRecord) -> str:
        line: dict[str, Any] = {"ts": _timestamp(record), "level": record.levelname.lower(), "logger": record.name}
        fields = fields_of(record)
        line["node"] = fields.pop("node")
        line["event"] = fields.pop("event")
        line["message"] = record.getMessage()
        line.update(fields)
        if record.exc_info:
            line["exception"] = self.formatException(record.exc_info)
        return json.dumps(line, default=str)


class TextFormatter(logging.Formatter):
    """``TIMESTAMP LEVEL NODE EVENT: message key=value ...`` (``-`` when there is no node).

    A record is one line, whatever its message holds: a log shipper (and ``grep``) takes each line for a record, so
    the line breaks of a message (a pydantic error is several lines) and the whitespace around them are collapsed
    to single spaces; the JSON format keeps the message whole. A traceback follows on the lines after, as logging
    always writes it: shippers join those to the record above.
    """

    def format(self, record: logging.LogRecord) -> str:
        fields = fields_of(record)
        node = fields.pop("node") or "-"
        name = fields.pop("event")
        extras = "".join(f" {key}={value}" for key, value in fields.items())
        line = f"{_timestamp(record)} {record.levelname} {node} {name}: {record.getMessage()}{extras}"
        if not line.isprintable():  # the common case costs one scan; a clean line keeps its spacing as it is
            line = " ".join(line.split())
        if record.exc_info:
            line += "\n" + self.formatException(record.exc_info)
        return line


def configure(level: str = "info", fmt: str = "text", stream: TextIO | None = None) -> logging.Handler:
    """Send every logger's lines at ``level`` and above to ``stream`` (stderr) in ``fmt`` (``text`` or ``json``).

    Replaces the handler a previous call installed, so calling it again (tests) does not double the lines.
    """
    root = logging.getLogger()
    for old in [h for h in root.handlers if h.get_name() == _HANDLER_NAME]:
        root.removeHandler(old)
    handler = logging.StreamHandler(stream or sys.stderr)
    handler.set_name(_HANDLER_NAME)
    handler.setFormatter(JsonFormatter() if fmt == "json" else TextFormatter())
    root.addHandler(handler)
    numeric = logging.getLevelName(level.upper())
    root.setLevel(numeric)
    # onex's own loggers follow the chosen level; the libraries' INFO chatter (aiokafka's group joins) stays out
    # unless asked for with debug.
    logging.getLogger("onex").setLevel(numeric)
    if numeric > logging.DEBUG:
        root.setLevel(max(numeric, logging.WARNING))
    return handler


def event(
    logger: logging.Logger, level: int, name: str, message: str, *, node: str | None = None, **fields: Any
) -> None:
    """Log ``message`` as event ``name`` of ``node`` with ``fields`` (cheap when the level is off)."""
    if logger.isEnabledFor(level):
        logger.log(level, message, extra={"onex": {"node": node, "event": name, **fields}})


def _about(envelope: Any) -> dict[str, str | None]:
    """The fields that name an event in a log line: its id, its type and its workflow."""
    return {
        "event_id": str(envelope.event_id),
        "event_type": envelope.event_type,
        "correlation_id": None if envelope.correlation_id is None else str(envelope.correlation_id),
    }


def retried(logger: logging.Logger, envelope: Any, error: BaseException, *, attempt: int, group: str) -> None:
    """The ``retry`` line of a bus: which event, of what type and workflow, which attempt comes, after what."""
    event(
        logger,
        logging.WARNING,
        "retry",
        f"retrying after {error!r}",
        **_about(envelope),
        attempt=attempt,
        group=group,
    )


def dead_lettered(
    logger: logging.Logger, envelope: Any, error: BaseException, *, attempts: int, group: str, topic: str
) -> None:
    """The ``dead_letter`` line of a bus: the event given up on, after how many attempts, and why."""
    event(
        logger,
        logging.WARNING,
        "dead_letter",
        f"dead-lettered after {attempts} attempt(s): {error!r}",
        **_about(envelope),
        attempts=attempts,
        group=group,
        topic=topic,
    )
