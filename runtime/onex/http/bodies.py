"""Reading request bodies within limits: whole (JSON and small forms) or streamed (a multipart file of any size).

A body over its limit gets 413 without being read whole: a larger ``Content-Length`` is refused before a byte is
read, and a body without one (chunked) is counted while it streams. A body that stops arriving gets 408: the server
(``onex.http.server``) marks the request ``STALLED`` and wakes its reader, so that no timer is set for the bodies that
arrive whole. The multipart reader turns the body into part / data / end events as it arrives, holding nothing but the
headers of the part in hand.
"""

from __future__ import annotations

import dataclasses
from collections.abc import AsyncIterator, Sequence
from typing import TYPE_CHECKING, Final

from python_multipart.exceptions import MultipartParseError
from python_multipart.multipart import MultipartParser, parse_options_header
from starlette.requests import Request

from onex.http.models import ApiError

if TYPE_CHECKING:
    from python_multipart.multipart import MultipartCallbacks  # a TypedDict defined for type checkers only

_MAX_FORM_FIELDS: Final = 64
_MAX_FIELD_SIZE: Final = 64 * 1024
# The scope key the server sets (to the seconds it waited) on a request whose body stopped arriving.
STALLED: Final = "onex.stalled"


def media_type(request: Request) -> str:
    return request.headers.get("content-type", "").split(";", 1)[0].strip().lower()


def is_json(media_type: str) -> bool:
    return media_type in ("", "application/json") or media_type.endswith("+json")


def _too_large(limit: int) -> ApiError:
    return ApiError(413, "payload_too_large", f"the request body exceeds {limit} bytes", field="body")


def _declared_length(request: Request, limit: int) -> None:
    """Refuse a body whose declared length is over ``limit`` before reading any of it."""
    length = request.headers.get("content-length")
    if length is None:
        return
    try:
        declared = int(length)
    except ValueError:
        raise ApiError(400, "bad_request", "Content-Length is not a number", field="content-length") from None
    if declared > limit:
        raise _too_large(limit)


def _disconnected() -> ApiError:
    return ApiError(400, "client_disconnected", "the client went away before the body was read")


def _stalled(request: Request) -> ApiError | None:
    """408 if the server marked the request ``STALLED``; read only while more body is due (not on the fast path)."""
    waited = request.scope.get(STALLED)
    if waited is None:
        return None
    # Connection: close, or what is left of the body would be read as the next request's head.
    message = f"the request body stopped arriving: nothing came for {waited:g} s"
    return ApiError(408, "request_timeout", message, field="body", headers={"Connection": "close"})


async def _stream(request: Request, limit: int) -> AsyncIterator[bytes]:
    """The body in the chunks it arrives in, counted: 413 as soon as it passes ``limit``, 408 if it stalls. From
    the ASGI messages, as ``read_body``: Starlette's ``stream()`` swallows the empty message that wakes a stalled
    reader, and waits again."""
    _declared_length(request, limit)
    receive = request.receive
    total = 0
    while True:
        message = await receive()
        if message["type"] != "http.request":  # http.disconnect
            raise _disconnected()
        chunk = message.get("body", b"")
        total += len(chunk)
        if total > limit:
            raise _too_large(limit)
        if chunk:
            yield chunk
        if not message.get("more_body", False):
            return
        if (stalled := _stalled(request)) is not None:
            raise stalled


async def read_body(request: Request, limit: int) -> bytes:
    """The whole body, counted as ``_stream`` counts it: straight from the ASGI messages, without the two async
    generators (``_stream``'s and Starlette's) a body read once per request would go through."""
    _declared_length(request, limit)
    receive = request.receive
    chunks: list[bytes] = []
    total = 0
    while True:
        message = await receive()
        if message["type"] != "http.request":  # http.disconnect
            raise _disconnected()
        chunk = message.get("body", b"")
        total += len(chunk)
        if total > limit:
            raise _too_large(limit)
        if chunk:
            chunks.append(chunk)
        if not message.get("more_body", False):
            return chunks[0] if len(chunks) == 1 else b"".join(chunks)
        if (stalled := _stalled(request)) is not None:
            raise stalled


# --- multipart/form-data -----------------------------------------------------------------------------------------


@dataclasses.dataclass(slots=True)
class Part:
    """A part begins: its form field's name and, for a file, the file's name."""

    name: str
    filename: str | None


@dataclasses.dataclass(slots=True)
class PartData:
    data: bytes


@dataclasses.dataclass(slots=True)
class PartEnd:
    pass


FormEvent = Part | PartData | PartEnd


class _FormReader:
    """Turns a multipart/form-data body, fed chunk by chunk, into part / data / end events: nothing is buffered but
    the headers of the part being read, so a file of any size streams through."""

    def __init__(self, content_type: str) -> None:
        _, params = parse_options_header(content_type)
        boundary = params.get(b"boundary")
        if not boundary:
            raise ApiError(422, "validation_error", "multipart body without a boundary", field="content-type")
        self.events: list[FormEvent] = []
        self.ended = False
        self.parts = 0
        self._headers: list[tuple[bytes, bytes]] = []
        self._name = bytearray()
        self._value = bytearray()
        callbacks: MultipartCallbacks = {
            "on_part_begin": self._part_begin,
            "on_part_data": self._part_data,
            "on_part_end": self._part_end,
            "on_header_field": self._header_field,
            "on_header_value": self._header_value,
            "on_header_end": self._header_end,
            "on_headers_finished": self._headers_finished,
            "on_end": self._end,
        }
        try:
            self._parser = MultipartParser(boundary, callbacks)
        except ValueError as exc:
            raise ApiError(422, "validation_error", f"bad multipart boundary: {exc}", field="content-type") from None

    def feed(self, chunk: bytes) -> list[FormEvent]:
        try:
            self._parser.write(chunk)
        except ValueError as exc:  # python-multipart's errors (MultipartParseError...) are ValueErrors
            raise ApiError(422, "validation_error", f"malformed multipart body: {exc}", field="body") from None
        events, self.events = self.events, []
        return events

    def _part_begin(self) -> None:
        self._headers = []

    def _part_data(self, data: bytes, start: int, end: int) -> None:
        if end > start:
            self.events.append(PartData(data[start:end]))

    def _part_end(self) -> None:
        self.events.append(PartEnd())

    def _header_field(self, data: bytes, start: int, end: int) -> None:
        self._name += data[start:end]

    def _header_value(self, data: bytes, start: int, end: int) -> None:
        self._value += data[start:end]

    def _header_end(self) -> None:
        self._headers.append((bytes(self._name).strip().lower(), bytes(self._value).strip()))
        self._name.clear()
        self._value.clear()

    def _headers_finished(self) -> None:
        self.parts += 1
        if self.parts > _MAX_FORM_FIELDS:
            raise MultipartParseError(f"more than {_MAX_FORM_FIELDS} parts")
        disposition = next((v for k, v in self._headers if k == b"content-disposition"), b"")
        kind, params = parse_options_header(disposition)
        name = params.get(b"name")
        if kind != b"form-data" or name is None:
            raise MultipartParseError("a part without Content-Disposition: form-data; name=...")
        filename = params.get(b"filename")
        try:
            self.events.append(Part(name.decode(), filename.decode() if filename is not None else None))
        except UnicodeDecodeError:
            raise MultipartParseError("a part name or file name that is not UTF-8") from None

    def _end(self) -> None:
        self.ended = True


async def form_events(request: Request, limit: int) -> AsyncIterator[FormEvent]:
    """The multipart body's events as it arrives (at most ``limit`` bytes); 422 if it is malformed or cut short."""
    reader = _FormReader(request.headers.get("content-type", ""))
    async for chunk in _stream(request, limit):
        for event in reader.feed(chunk):
            yield event
    if not reader.ended:
        raise ApiError(422, "validation_error", "multipart body ends before its closing boundary", field="body")


@dataclasses.dataclass(slots=True)
class Form:
    fields: dict[str, str]
    files: list[tuple[str, str | None, bytes]]  # (field name, file name, content)


async def read_form(request: Request, limit: int, *, file_fields: Sequence[str], text_fields: Sequence[str]) -> Form:
    """A whole (small) multipart form: the parts named in ``file_fields`` as bytes, the others as text."""
    form = Form({}, [])
    current: Part | None = None
    buffer = bytearray()
    async for event in form_events(request, limit):
        if isinstance(event, Part):
            if event.name not in (*file_fields, *text_fields):
                raise ApiError(422, "validation_error", f"{event.name}: unexpected field", field=event.name)
            current, buffer = event, bytearray()
        elif isinstance(event, PartData) and current is not None:
            buffer += event.data
            if current.name in text_fields and len(buffer) > _MAX_FIELD_SIZE:
                raise ApiError(
                    422, "validation_error", f"{current.name}: longer than {_MAX_FIELD_SIZE} bytes", field=current.name
                )
        elif isinstance(event, PartEnd) and current is not None:
            if current.name in file_fields:
                form.files.append((current.name, current.filename, bytes(buffer)))
            else:
                if current.name in form.fields:
                    raise ApiError(422, "validation_error", f"{current.name}: given twice", field=current.name)
                form.fields[current.name] = text(bytes(buffer), current.name)
            current = None
    return form


def text(data: bytes, field: str) -> str:
    """``data`` as UTF-8 text; 422 naming ``field`` if it is not (content travels in events, so it must be text)."""
    try:
        return data.decode()
    except UnicodeDecodeError as exc:
        raise ApiError(
            422,
            "validation_error",
            f"{field}: not UTF-8 text (byte {exc.start}); only text can be stamped in place",
            field=field,
        ) from None
