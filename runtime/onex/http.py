"""The HTTP gateway: the metadata-stamping API, served next to the nodes (``onex run --http HOST:PORT``).

Every stamp request becomes a STAMP_REQUESTED workflow on the bus, submitted through one long-lived
``StampClient(keep_stamps=True)``; the handler waits for the workflow's outcome and its STAMP_CREATED event and
answers with the stamped content. Hashing and validation need no workflow and are answered here. Reads come from the
store. Routes (under ``PREFIX``):

=======  ==========================  ===================================================================
POST     /stamp                      JSON ``{content, namespace?, file_path?, options: {stamp_type}}`` or a
                                     multipart ``file`` (+ ``namespace``, ``file_path``, ``stamp_type`` fields)
POST     /validate                   valid / modified / unstamped for a JSON ``content`` or each multipart file
POST     /hash                       BLAKE3 (stamp removed) of JSON ``content`` or a multipart file, streamed
GET      /stamp/{file_hash}          the stored stamp records of a hash; 404 if none
POST     /batch                      ``{items: [...]}``, up to ``batch_limit`` stamp requests; per-item results
GET      /namespace/{namespace}      a page of a namespace's stamps (``limit``, ``offset``) and its aggregates
POST     /validate-protocol          a rich (or sidecar) block checked against the metadata protocol
GET      /health                     bus, store, registry and hosted nodes; 503 when degraded
GET      /health/live                200 while the event loop answers (a liveness probe)
GET      /health/ready               200 when ready (``onex.metrics.readiness``, and the bus runs); else 503
GET      /metrics                    Prometheus text format
GET      /openapi.json               the OpenAPI 3.1 document (also at ``/openapi.json``)
=======  ==========================  ===================================================================

Outside the prefix: ``GET /docs``, interactive documentation (Swagger UI, served from the ``swagger-ui-bundle``
package's files under ``/docs/static/``: nothing is fetched from elsewhere), reading ``/docs/openapi.json``, the same
document in OpenAPI 3.0 (the bundled Swagger UI 4 renders no 3.1 document).

**Envelope.** Every JSON response but the OpenAPI document is ``{status, data, error, message, metadata}``:
``status`` is ``success``, ``error`` or ``partial`` (a batch in which some items failed); ``error`` is ``null`` or
``{code, field, details}``; ``metadata`` holds ``request_id`` (also the ``X-Request-ID`` header), ``api_version``,
``timestamp`` and ``duration_ms``. A request's ``X-Request-ID`` (1-128 of ``[A-Za-z0-9._:-]``) is kept as its id;
otherwise one is made.

**Access log.** One ``access`` line per request at INFO on the ``onex.http`` logger (``onex.logs``' format): method,
path (without the query string, which may carry secrets), status, duration_ms and request_id.

**Input.** Bodies over ``max_body`` bytes get 413 without being read whole: a larger ``Content-Length`` is refused
before a byte is read, and a body without one (chunked) is counted while it streams. ``/hash`` streams a multipart
file through BLAKE3 chunk by chunk, so it is bounded by ``max_stream`` instead, not by memory. Malformed JSON, a
body that does not match the request schema, a namespace with characters outside ``[A-Za-z0-9._:/-]`` and content
that is not UTF-8 text get 422 naming the field. Content travels inside the workflow's events, so it must be text:
a binary upload is refused (422) rather than mangled. On Kafka the broker's message size limit bounds it too.

**Workflows.** A workflow that does not complete within ``timeout_s`` gets 504 with its ``workflow_id``; it keeps
running (the client drops its outcome when it arrives) and its stamp lands in the store. A workflow that failed
(content that cannot be stamped, say) gets 422 with the workflow's error. Stamps are persisted by the database
adapter after the workflow's outcome is published, so ``GET /stamp/{hash}`` may trail a ``POST /stamp`` briefly.

**Auth.** With an API key (``ONEX_API_KEY``; ``Settings.api_key``), every route but the health routes, the OpenAPI
document and ``/docs`` requires ``Authorization: Bearer <key>`` (401 otherwise). The document stays public so that
clients can discover the API; it says which routes need the key.

``create_app`` builds the Starlette application (tests host it on any server); ``serve`` runs it on uvicorn in the
runtime's event loop until SIGINT/SIGTERM and is what the CLI calls.
"""

from __future__ import annotations

import asyncio
import bisect
import contextlib
import dataclasses
import hmac
import ipaddress
import json
import logging
import os
import random
import re
import socket
import time
import uuid
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Iterator, Mapping, Sequence
from datetime import UTC, date, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, Final, Literal, TypeVar

import uvicorn
from blake3 import blake3
from pydantic import BaseModel, ConfigDict, Field, StringConstraints, ValidationError
from python_multipart.exceptions import MultipartParseError
from python_multipart.multipart import MultipartParser, parse_options_header
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.requests import ClientDisconnect, Request
from starlette.responses import Response
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles
from starlette.types import ASGIApp, Message, Receive, Scope, Send
from swagger_ui_bundle import swagger_ui_path  # type: ignore[import-untyped]  # the package ships no type hints
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from onex import stamps
from onex.client import StampClient
from onex.contracts import NodeType
from onex.envelope import DEAD_LETTER_EVENT, OnexEnvelopeV1
from onex.exceptions import BusError, OnexError, StampError, StoreError
from onex.files import FILE_TYPES
from onex.logs import event as log_event
from onex.metrics import readiness
from onex.runtime import Runtime
from onex.settings import DEFAULT_HTTP_BATCH_LIMIT, DEFAULT_HTTP_MAX_BODY, DEFAULT_HTTP_TIMEOUT_S, Settings
from onex.store import StoreHealth

if TYPE_CHECKING:
    from python_multipart.multipart import MultipartCallbacks  # a TypedDict defined for type checkers only

__all__ = [
    "DEFAULT_BATCH_LIMIT",
    "DEFAULT_MAX_BODY",
    "DEFAULT_MAX_STREAM",
    "DEFAULT_TIMEOUT_S",
    "PREFIX",
    "bind",
    "check_protocol",
    "create_app",
    "openapi_30",
    "openapi_document",
    "parse_address",
    "serve",
]

PREFIX: Final = "/api/v1/metadata-stamping"
DOCS: Final = "/docs"
API_VERSION: Final = "v1"
DEFAULT_MAX_BODY: Final = DEFAULT_HTTP_MAX_BODY
DEFAULT_MAX_STREAM: Final = 4 * 1024 * 1024 * 1024
DEFAULT_BATCH_LIMIT: Final = DEFAULT_HTTP_BATCH_LIMIT
DEFAULT_TIMEOUT_S: Final = DEFAULT_HTTP_TIMEOUT_S
DEFAULT_NAME: Final = "content.txt"  # the name content without a file_path is stamped under (as the effect does)

NAMESPACE_PATTERN: Final = r"^[A-Za-z0-9._:/-]{1,256}$"
FILE_PATH_PATTERN: Final = r"^[^\x00-\x1f\x7f]{1,1024}$"
HASH_PATTERN: Final = r"^[0-9a-fA-F]{64}$"
_NAMESPACE_RE: Final = re.compile(NAMESPACE_PATTERN)
_HASH_RE: Final = re.compile(HASH_PATTERN)
_SEMVER_RE: Final = re.compile(r"^(0|[1-9][0-9]*)\.(0|[1-9][0-9]*)\.(0|[1-9][0-9]*)$")
MAX_PAGE: Final = 1000
MAX_OFFSET: Final = 10**12
# Content this large is hashed or verified on a worker thread instead of in the event loop.
_THREAD_FROM: Final = 1024 * 1024
_MAX_FORM_FIELDS: Final = 64
_MAX_FIELD_SIZE: Final = 64 * 1024
_REQUIRED_FIELDS: Final = (
    "metadata_version",
    "protocol_version",
    "name",
    "namespace",
    "uuid",
    "author",
    "created_at",
    "last_modified_at",
    "hash",
    "file_type",
    "size",
)

T = TypeVar("T")
M = TypeVar("M", bound=BaseModel)

# Request and workflow ids: random, unique, not secret. Not uuid4(), which costs a system call per id, and not the
# global `random`, which anyone may reseed (Hypothesis does, for every example it runs): a reseeded generator
# repeats its ids, and the orchestrator ignores a request whose correlation id it has seen. Reseeded in a forked
# child, which would otherwise repeat its parent's sequence.
_ids = random.Random()
os.register_at_fork(after_in_child=_ids.seed)


def _new_id() -> uuid.UUID:
    return uuid.UUID(int=_ids.getrandbits(128), version=4)


_access_log = logging.getLogger("onex.http")
# An incoming X-Request-ID is kept only if it is short and plain: it goes into log lines and response headers.
_REQUEST_ID_RE: Final = re.compile(rb"[A-Za-z0-9._:-]{1,128}")


Endpoint = Callable[[Request], Awaitable[Response]]


# --- errors and the response envelope ----------------------------------------------------------------------------


class ApiError(Exception):
    """A request that ends in an error response: HTTP status, a stable ``code`` and the field at fault, if any.

    Internal control flow: every handler turns it into a response, so it never leaves this module (and is not an
    ``OnexError``, which is for callers of the library)."""

    def __init__(
        self,
        status: int,
        code: str,
        message: str,
        *,
        field: str | None = None,
        details: list[dict[str, Any]] | None = None,
        data: Any = None,
        headers: Mapping[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.field = field
        self.details = details
        self.data = data
        self.headers = dict(headers or {})


def _jsonable(value: Any) -> Any:
    """``json.dumps`` default: payloads on the memory bus keep UUIDs and datetimes as objects, and a stamp block may
    hold any value YAML's safe loader makes (dates, sets, bytes)."""
    if isinstance(value, uuid.UUID):
        return str(value)
    if isinstance(value, datetime | date):
        return value.isoformat()
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return dataclasses.asdict(value)
    if isinstance(value, set | frozenset):
        return sorted(value, key=str)
    if isinstance(value, bytes):
        return value.decode("utf-8", "replace")
    return str(value)


def _dumps(value: Any) -> bytes:
    # ensure_ascii: a JSON string cannot carry a lone surrogate any other way, and nothing here should crash on one.
    return json.dumps(value, default=_jsonable, separators=(",", ":")).encode()


class JSONResponse(Response):
    media_type = "application/json"

    def render(self, content: Any) -> bytes:
        return content if isinstance(content, bytes) else _dumps(content)


def _metadata(request: Request) -> dict[str, Any]:
    started = request.scope.get("onex.started")
    return {
        "request_id": request.scope.get("onex.request_id") or _new_id().hex,
        "api_version": API_VERSION,
        "timestamp": datetime.now(UTC).isoformat(),
        "duration_ms": round((time.perf_counter() - started) * 1000, 3) if isinstance(started, float) else None,
    }


def envelope(
    request: Request,
    data: Any,
    *,
    status: Literal["success", "error", "partial"] = "success",
    message: str = "",
    error: dict[str, Any] | None = None,
    http_status: int = 200,
    headers: Mapping[str, str] | None = None,
) -> JSONResponse:
    """A response in the API's one envelope."""
    body = {"status": status, "data": data, "error": error, "message": message, "metadata": _metadata(request)}
    return JSONResponse(_dumps(body), status_code=http_status, headers=headers)


def error_response(request: Request, exc: ApiError) -> JSONResponse:
    info: dict[str, Any] = {"code": exc.code, "field": exc.field}
    if exc.details:
        info["details"] = exc.details
    return envelope(
        request, exc.data, status="error", message=exc.message, error=info, http_status=exc.status, headers=exc.headers
    )


def _field_of(loc: Sequence[int | str]) -> str:
    return ".".join(str(part) for part in loc) or "body"


def _validation_error(exc: ValidationError, prefix: str = "") -> ApiError:
    details = []
    for item in exc.errors(include_url=False, include_input=False, include_context=False):
        field = _field_of([*(p for p in prefix.split(".") if p), *item["loc"]])
        message = "unexpected field" if item["type"] == "extra_forbidden" else str(item["msg"])
        if item["type"] == "json_invalid":
            field, message = "body", f"malformed JSON: {item['msg']}"
        details.append({"field": field, "message": message, "type": item["type"]})
    first = details[0]
    return ApiError(
        422, "validation_error", f"{first['field']}: {first['message']}", field=first["field"], details=details
    )


def _parse(model: type[M], raw: bytes | Mapping[str, Any], *, prefix: str = "") -> M:
    try:
        if isinstance(raw, bytes):
            return model.model_validate_json(raw)
        return model.model_validate(raw)
    except ValidationError as exc:
        raise _validation_error(exc, prefix) from None


# --- request models ----------------------------------------------------------------------------------------------


# Strings are always valid Unicode: pydantic's JSON parser refuses a lone surrogate escape ("\ud800") as malformed
# JSON, and form fields are decoded as strict UTF-8. So whatever passes can be encoded, stamped and stored.
Text = str
Namespace = Annotated[str, StringConstraints(pattern=NAMESPACE_PATTERN)]
FilePath = Annotated[str, StringConstraints(pattern=FILE_PATH_PATTERN)]
StampType = Literal["lightweight", "rich"]


class _Body(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class StampOptions(_Body):
    stamp_type: StampType = "lightweight"


class StampRequest(_Body):
    """One document to stamp; ``file_path`` only names it (it picks the comment syntax): nothing touches disk."""

    content: Text
    namespace: Namespace = stamps.DEFAULT_NAMESPACE
    file_path: FilePath | None = None
    options: StampOptions = StampOptions()


class BatchRequest(_Body):
    items: list[Any] = Field(min_length=1)


class HashRequest(_Body):
    content: Text
    file_path: FilePath | None = None


class ValidateRequest(_Body):
    content: Text
    file_path: FilePath | None = None
    sidecar: Text | None = None


class ProtocolRequest(_Body):
    """``metadata`` (a block given as an object) or ``sidecar`` (a sidecar's YAML) is checked against ``content``;
    without either, the rich block found in ``content`` is."""

    content: Text
    file_path: FilePath | None = None
    sidecar: Text | None = None
    metadata: dict[str, Any] | None = None


# --- reading bodies ----------------------------------------------------------------------------------------------


def _media_type(request: Request) -> str:
    return request.headers.get("content-type", "").split(";", 1)[0].strip().lower()


def _is_json(media_type: str) -> bool:
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


async def _stream(request: Request, limit: int) -> AsyncIterator[bytes]:
    """The body in the chunks it arrives in, counted: 413 as soon as it passes ``limit``."""
    _declared_length(request, limit)
    total = 0
    try:
        async for chunk in request.stream():
            total += len(chunk)
            if total > limit:
                raise _too_large(limit)
            if chunk:
                yield chunk
    except ClientDisconnect:
        raise ApiError(400, "client_disconnected", "the client went away before the body was read") from None


async def _read_body(request: Request, limit: int) -> bytes:
    """The whole body, counted as ``_stream`` counts it: straight from the ASGI messages, without the two async
    generators (``_stream``'s and Starlette's) a body read once per request would go through."""
    _declared_length(request, limit)
    receive = request.receive
    chunks: list[bytes] = []
    total = 0
    while True:
        message = await receive()
        if message["type"] != "http.request":  # http.disconnect
            raise ApiError(400, "client_disconnected", "the client went away before the body was read")
        chunk = message.get("body", b"")
        total += len(chunk)
        if total > limit:
            raise _too_large(limit)
        if chunk:
            chunks.append(chunk)
        if not message.get("more_body", False):
            return chunks[0] if len(chunks) == 1 else b"".join(chunks)


@dataclasses.dataclass(slots=True)
class _Part:
    name: str
    filename: str | None


@dataclasses.dataclass(slots=True)
class _PartData:
    data: bytes


@dataclasses.dataclass(slots=True)
class _PartEnd:
    pass


_FormEvent = _Part | _PartData | _PartEnd


class _FormReader:
    """Turns a multipart/form-data body, fed chunk by chunk, into part / data / end events: nothing is buffered but
    the headers of the part being read, so a file of any size streams through."""

    def __init__(self, content_type: str) -> None:
        _, params = parse_options_header(content_type)
        boundary = params.get(b"boundary")
        if not boundary:
            raise ApiError(422, "validation_error", "multipart body without a boundary", field="content-type")
        self.events: list[_FormEvent] = []
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

    def feed(self, chunk: bytes) -> list[_FormEvent]:
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
            self.events.append(_PartData(data[start:end]))

    def _part_end(self) -> None:
        self.events.append(_PartEnd())

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
            self.events.append(_Part(name.decode(), filename.decode() if filename is not None else None))
        except UnicodeDecodeError:
            raise MultipartParseError("a part name or file name that is not UTF-8") from None

    def _end(self) -> None:
        self.ended = True


async def _form_events(request: Request, limit: int) -> AsyncIterator[_FormEvent]:
    reader = _FormReader(request.headers.get("content-type", ""))
    async for chunk in _stream(request, limit):
        for event in reader.feed(chunk):
            yield event
    if not reader.ended:
        raise ApiError(422, "validation_error", "multipart body ends before its closing boundary", field="body")


@dataclasses.dataclass(slots=True)
class _Form:
    fields: dict[str, str]
    files: list[tuple[str, str | None, bytes]]  # (field name, file name, content)


async def _read_form(request: Request, limit: int, *, file_fields: Sequence[str], text_fields: Sequence[str]) -> _Form:
    """A whole (small) multipart form: the parts named in ``file_fields`` as bytes, the others as text."""
    form = _Form({}, [])
    current: _Part | None = None
    buffer = bytearray()
    async for event in _form_events(request, limit):
        if isinstance(event, _Part):
            if event.name not in (*file_fields, *text_fields):
                raise ApiError(422, "validation_error", f"{event.name}: unexpected field", field=event.name)
            current, buffer = event, bytearray()
        elif isinstance(event, _PartData) and current is not None:
            buffer += event.data
            if current.name in text_fields and len(buffer) > _MAX_FIELD_SIZE:
                raise ApiError(
                    422, "validation_error", f"{current.name}: longer than {_MAX_FIELD_SIZE} bytes", field=current.name
                )
        elif isinstance(event, _PartEnd) and current is not None:
            if current.name in file_fields:
                form.files.append((current.name, current.filename, bytes(buffer)))
            else:
                if current.name in form.fields:
                    raise ApiError(422, "validation_error", f"{current.name}: given twice", field=current.name)
                form.fields[current.name] = _text(bytes(buffer), current.name)
            current = None
    return form


def _text(data: bytes, field: str) -> str:
    try:
        return data.decode()
    except UnicodeDecodeError as exc:
        raise ApiError(
            422,
            "validation_error",
            f"{field}: not UTF-8 text (byte {exc.start}); only text can be stamped in place",
            field=field,
        ) from None


# --- hashing and checking content --------------------------------------------------------------------------------


class _StreamingHash:
    """BLAKE3 of content with its stamp removed, fed in chunks, as ``stamps.hash_file`` computes it: the first
    ``HEAD_SIZE`` bytes (where a stamp can be) are held until the stamp is found, the rest streams through."""

    def __init__(self, file_name: str) -> None:
        self.file_name = file_name
        self.received = 0
        self.removed = 0
        self._head = bytearray()
        self._hasher: Any = None

    def update(self, chunk: bytes) -> None:
        self.received += len(chunk)
        if self._hasher is not None:
            self._hasher.update(chunk)
            return
        self._head += chunk
        if len(self._head) >= stamps.HEAD_SIZE:
            self._start()

    def _start(self) -> None:
        head, self._head = bytes(self._head), bytearray()
        front = head[: stamps.HEAD_SIZE]
        stripped = stamps.strip_stamp(front, file_name=self.file_name)
        self.removed = len(front) - len(stripped)
        self._hasher = blake3()
        self._hasher.update(stripped)
        self._hasher.update(head[stamps.HEAD_SIZE :])

    def result(self) -> dict[str, Any]:
        if self._hasher is None:
            self._start()
        return {
            "hash": str(self._hasher.hexdigest()),
            "algorithm": "blake3",
            "size": self.received - self.removed,
            "received_bytes": self.received,
            "stamp_removed": self.removed > 0,
        }


def _hash_content(data: bytes, name: str) -> dict[str, Any]:
    hasher = _StreamingHash(name)
    hasher.update(data)
    return hasher.result()


def _stamp_dict(stamp: stamps.Stamp | None) -> dict[str, Any] | None:
    if stamp is None:
        return None
    return {"uid": stamp.uid, "hash": stamp.hash, "ts": stamp.ts, "kind": stamp.kind, "fields": stamp.fields}


def _verify(data: bytes, name: str, sidecar: bytes | None) -> dict[str, Any]:
    result = stamps.verify_bytes(data, file_name=name, sidecar=sidecar)
    if sidecar is not None:
        try:
            stamp: stamps.Stamp | None = stamps.parse_sidecar(sidecar, name + ".onex.yaml")
        except StampError:
            stamp = None
    else:
        stamp = stamps.find_stamp(data, file_name=name)
    return {
        "file_path": name,
        "status": result.status,
        "expected_hash": result.expected,
        "actual_hash": result.actual,
        "stamp": _stamp_dict(stamp),
        "error": result.error,
    }


def _issue(field: str, code: str, message: str) -> dict[str, str]:
    return {"field": field, "code": code, "message": message}


def _timestamp(value: Any) -> datetime | None:
    if isinstance(value, datetime):
        return value
    if isinstance(value, str):
        with contextlib.suppress(ValueError):
            return datetime.fromisoformat(value)
    return None


def _supported(version: str, supported: str) -> bool:
    """Same major version; for 0.x (where a minor version may break) the same minor too."""
    major, minor, _ = (int(p) for p in version.split("."))
    s_major, s_minor, _ = (int(p) for p in supported.split("."))
    return major == s_major and (major > 0 or minor == s_minor)


def check_protocol(data: bytes, name: str, *, sidecar: bytes | None, metadata: dict[str, Any] | None) -> dict[str, Any]:
    """Check a metadata block (``metadata``, a sidecar, or the rich block in ``data``) against the protocol."""
    issues: list[dict[str, str]] = []
    stripped = stamps.strip_stamp(data, file_name=name)
    actual = stamps.hash_bytes(stripped)
    fields: dict[str, Any] | None = metadata
    source = "metadata"
    if fields is None and sidecar is not None:
        source = "sidecar"
        try:
            fields = stamps.parse_sidecar(sidecar, name + ".onex.yaml").fields
        except StampError as exc:
            issues.append(_issue("sidecar", "invalid", str(exc)))
    elif fields is None:
        source = "content"
        stamp = stamps.find_stamp(data, file_name=name)
        if stamp is None:
            issues.append(
                _issue(
                    "content",
                    "missing",
                    "no metadata block found (a block needs a 64-hex hash and a "
                    "uuid, and sits where the file's stamp goes)",
                )
            )
        elif stamp.kind != "rich":
            issues.append(_issue("content", "not_rich", "a lightweight stamp carries no metadata block"))
        else:
            fields = stamp.fields
    if fields is not None:
        issues.extend(_check_fields(fields, actual=actual, size=len(stripped)))
    return {
        "valid": not issues,
        "source": source,
        "issues": issues,
        "metadata": fields,
        "expected_hash": fields.get("hash") if fields else None,
        "actual_hash": actual,
        "supported_versions": {
            "metadata_version": stamps.METADATA_VERSION,
            "protocol_version": stamps.PROTOCOL_VERSION,
        },
    }


def _check_fields(fields: Mapping[str, Any], *, actual: str, size: int) -> Iterator[dict[str, str]]:
    for key in _REQUIRED_FIELDS:
        if key not in fields or fields[key] is None:
            yield _issue(key, "missing", f"{key} is required")
    for key, supported in (
        ("metadata_version", stamps.METADATA_VERSION),
        ("protocol_version", stamps.PROTOCOL_VERSION),
    ):
        value = fields.get(key)
        if value is None:
            continue
        if not isinstance(value, str) or not _SEMVER_RE.fullmatch(value):
            yield _issue(key, "format", f"{key} must be a semantic version such as {supported}")
        elif not _supported(value, supported):
            yield _issue(key, "unsupported", f"{key} {value} is not supported (this server speaks {supported})")
    for key in ("name", "author"):
        value = fields.get(key)
        if value is not None and (not isinstance(value, str) or not value.strip()):
            yield _issue(key, "type", f"{key} must be a non-empty string")
    namespace = fields.get("namespace")
    if namespace is not None and (not isinstance(namespace, str) or not _NAMESPACE_RE.fullmatch(namespace)):
        yield _issue("namespace", "format", "namespace must be 1-256 characters of [A-Za-z0-9._:/-]")
    uid = fields.get("uuid")
    if uid is not None:
        try:
            uuid.UUID(str(uid))
        except ValueError:
            yield _issue("uuid", "format", "uuid must be a UUID")
    times: dict[str, datetime] = {}
    for key in ("created_at", "last_modified_at"):
        value = fields.get(key)
        if value is None:
            continue
        parsed = _timestamp(value)
        if parsed is None or parsed.tzinfo is None:
            yield _issue(key, "format", f"{key} must be an ISO 8601 timestamp with a UTC offset")
        else:
            times[key] = parsed
    if len(times) == 2 and times["last_modified_at"] < times["created_at"]:
        yield _issue("last_modified_at", "order", "last_modified_at is before created_at")
    digest = fields.get("hash")
    if digest is not None:
        if not isinstance(digest, str) or not re.fullmatch(r"[0-9a-f]{64}", digest):
            yield _issue("hash", "format", "hash must be 64 lowercase hex characters (BLAKE3)")
        elif digest != actual:
            yield _issue("hash", "mismatch", f"hash {digest} does not match the content's {actual}")
    file_type = fields.get("file_type")
    if file_type is not None and file_type not in FILE_TYPES:
        yield _issue("file_type", "unknown", f"file_type must be one of {', '.join(FILE_TYPES)}")
    declared = fields.get("size")
    if declared is not None:
        if not isinstance(declared, int) or isinstance(declared, bool) or declared < 0:
            yield _issue("size", "type", "size must be a non-negative integer")
        elif declared != size:
            yield _issue("size", "mismatch", f"size {declared} does not match the content's {size} bytes")


async def _maybe_thread(size: int, fn: Callable[[], T]) -> T:
    return await asyncio.to_thread(fn) if size >= _THREAD_FROM else fn()


# --- metrics -----------------------------------------------------------------------------------------------------

_METHODS: Final = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS", "TRACE", "CONNECT"})
_CONVERTER_RE: Final = re.compile(r"\{(\w+):\w+\}")
_BUCKETS: Final = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)


def _label(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


class _Metrics:
    """Request counts and latency histograms by route template (bounded label sets), workflow outcomes."""

    def __init__(self) -> None:
        self.requests: Counter[tuple[str, str, int]] = Counter()
        self.histograms: dict[tuple[str, str], list[float]] = {}  # bucket counts..., then sum, then count
        self.in_flight = 0
        self.outcomes: Counter[str] = Counter()
        self._templates: dict[str, str] = {}  # Starlette's "{namespace:path}" -> "{namespace}"

    def observe(self, method: str, route: str, status: int, seconds: float) -> None:
        route = self._templates.get(route) or self._templates.setdefault(route, _CONVERTER_RE.sub(r"{\1}", route))
        self.requests[(method, route, status)] += 1
        histogram = self.histograms.get((method, route))
        if histogram is None:
            histogram = self.histograms[(method, route)] = [0.0] * (len(_BUCKETS) + 2)
        index = bisect.bisect_left(_BUCKETS, seconds)
        if index < len(_BUCKETS):
            histogram[index] += 1
        histogram[-2] += seconds
        histogram[-1] += 1

    def render(self, gateway: _Gateway) -> str:
        out: list[str] = []

        def family(name: str, kind: str, help_: str) -> None:
            out.append(f"# HELP {name} {help_}")
            out.append(f"# TYPE {name} {kind}")

        family("onex_http_requests_total", "counter", "HTTP requests handled, by method, route and status code.")
        for (method, route, status), n in sorted(self.requests.items()):
            out.append(f'onex_http_requests_total{{method="{method}",route="{_label(route)}",status="{status}"}} {n}')
        family("onex_http_request_duration_seconds", "histogram", "Time from request to response, by route.")
        for (method, route), histogram in sorted(self.histograms.items()):
            labels = f'method="{method}",route="{_label(route)}"'
            cumulative = 0.0
            for bound, in_bucket in zip(_BUCKETS, histogram, strict=False):
                cumulative += in_bucket
                out.append(f'onex_http_request_duration_seconds_bucket{{{labels},le="{bound}"}} {cumulative:.0f}')
            out.append(f'onex_http_request_duration_seconds_bucket{{{labels},le="+Inf"}} {histogram[-1]:.0f}')
            out.append(f"onex_http_request_duration_seconds_sum{{{labels}}} {histogram[-2]:.6f}")
            out.append(f"onex_http_request_duration_seconds_count{{{labels}}} {histogram[-1]:.0f}")
        family("onex_http_requests_in_flight", "gauge", "Requests being handled now.")
        out.append(f"onex_http_requests_in_flight {self.in_flight}")
        family("onex_http_workflows_total", "counter", "Workflows the gateway submitted, by outcome.")
        for outcome in ("completed", "failed", "rejected", "timed_out"):
            out.append(f'onex_http_workflows_total{{outcome="{outcome}"}} {self.outcomes[outcome]}')
        family("onex_http_workflows_pending", "gauge", "Workflows the gateway submitted that have no outcome yet.")
        out.append(f"onex_http_workflows_pending {gateway.client.pending}")
        family("onex_workflows", "gauge", "Workflows by FSM state, as counted by the orchestrators hosted here.")
        for node in gateway.runtime.nodes:
            by_state = getattr(node, "workflows_by_state", None)
            if node.contract.node_type is NodeType.ORCHESTRATOR and isinstance(by_state, Mapping):
                for state, n in sorted(by_state.items()):
                    out.append(
                        f'onex_workflows{{node="{_label(node.contract.name)}",state="{_label(str(state))}"}} {n}'
                    )
        stats = gateway.runtime.bus.statistics()
        for name, kind, value, help_ in (
            ("onex_bus_published_total", "counter", stats.published, "Messages accepted by the bus."),
            ("onex_bus_delivered_total", "counter", stats.delivered, "Messages whose handler returned."),
            ("onex_bus_retried_total", "counter", stats.retried, "Handler attempts retried after a failure."),
            ("onex_bus_dead_lettered_total", "counter", stats.dead_lettered, "Messages sent to a dead-letter topic."),
            ("onex_bus_buffered", "gauge", stats.buffered, "Messages accepted but not yet handled (consumer lag)."),
        ):
            family(name, kind, help_)
            out.append(f"{name} {value}")
        return "\n".join(out) + "\n"


# --- the gateway -------------------------------------------------------------------------------------------------


def _bus_state(bus: object) -> str:
    # KafkaBus exposes ``state``; MemoryBus keeps it private (``_state``) for now.
    state = getattr(bus, "state", None)
    if state is None:
        state = getattr(bus, "_state", None)
    value = getattr(state, "value", state)
    return str(value) if value is not None else "unknown"


class _Gateway:
    """The handlers, sharing the runtime, the client, the limits and the metrics."""

    def __init__(
        self,
        runtime: Runtime,
        client: StampClient,
        settings: Settings,
        *,
        api_key: str | None,
        max_body: int,
        max_stream: int,
        batch_limit: int,
        timeout_s: float,
    ) -> None:
        if max_body < 1 or max_stream < 1 or batch_limit < 1 or timeout_s < 0:
            raise ValueError("max_body, max_stream and batch_limit must be positive and timeout_s not negative")
        self.runtime = runtime
        self.client = client
        self.settings = settings
        self.api_key = api_key.encode() if api_key else None
        self.max_body = max_body
        self.max_stream = max_stream
        self.batch_limit = batch_limit
        self.timeout_s = timeout_s
        self.metrics = _Metrics()
        self._openapi: bytes | None = None
        self._openapi_30: bytes | None = None

    # -- plumbing --
    def authorized(self, headers: Mapping[str, str]) -> bool:
        if self.api_key is None:
            return True
        scheme, _, token = headers.get("authorization", "").partition(" ")
        return scheme.lower() == "bearer" and hmac.compare_digest(token.strip().encode("latin-1"), self.api_key)

    def endpoint(self, handler: Endpoint) -> Endpoint:
        async def handle(request: Request) -> Response:
            try:
                return await handler(request)
            except ApiError as exc:
                return error_response(request, exc)

        return handle

    def routes(self) -> list[Route | Mount]:
        e = self.endpoint
        return [
            Route(f"{PREFIX}/stamp", e(self.stamp), methods=["POST"]),
            Route(f"{PREFIX}/validate", e(self.validate), methods=["POST"]),
            Route(f"{PREFIX}/hash", e(self.hash), methods=["POST"]),
            Route(f"{PREFIX}/stamp/{{file_hash}}", e(self.get_stamp), methods=["GET"]),
            Route(f"{PREFIX}/batch", e(self.batch), methods=["POST"]),
            Route(f"{PREFIX}/namespace/{{namespace:path}}", e(self.namespace), methods=["GET"]),
            Route(f"{PREFIX}/validate-protocol", e(self.validate_protocol), methods=["POST"]),
            Route(f"{PREFIX}/health", e(self.health), methods=["GET"]),
            Route(f"{PREFIX}/health/live", e(self.live), methods=["GET"]),
            Route(f"{PREFIX}/health/ready", e(self.ready), methods=["GET"]),
            Route(f"{PREFIX}/metrics", e(self.prometheus), methods=["GET"]),
            Route(f"{PREFIX}/openapi.json", self.openapi, methods=["GET"]),
            Route("/openapi.json", self.openapi, methods=["GET"]),
            Route(DOCS, self.docs, methods=["GET"]),
            Route(f"{DOCS}/init.js", self.docs_script, methods=["GET"]),
            Route(f"{DOCS}/openapi.json", self.openapi_30, methods=["GET"]),
            Mount(f"{DOCS}/static", StaticFiles(directory=Path(str(swagger_ui_path))), name="swagger-ui"),
        ]

    async def _json(self, request: Request, model: type[M]) -> M:
        return _parse(model, await _read_body(request, self.max_body))

    @staticmethod
    def _unsupported(request: Request, allowed: str) -> ApiError:
        return ApiError(
            415,
            "unsupported_media_type",
            f"Content-Type {_media_type(request) or '(none)'} is not accepted here; send {allowed}",
            field="content-type",
        )

    # -- workflows --
    async def _submit(self, item: StampRequest) -> uuid.UUID:
        payload: dict[str, Any] = {
            "content": item.content,
            "namespace": item.namespace,
            "stamp_type": item.options.stamp_type,
        }
        if item.file_path is not None:
            payload["file_path"] = item.file_path
        try:
            return await self.client.submit(payload, correlation_id=_new_id())
        except BusError as exc:
            raise ApiError(503, "bus_unavailable", f"the event bus refused the request: {exc}") from None

    async def _result(self, cid: uuid.UUID, deadline: float) -> dict[str, Any]:
        """The stamp of a submitted workflow once it completed; ApiError if it failed or did not finish in time."""
        try:
            outcome = await self.client.outcome(cid, timeout=max(deadline - time.monotonic(), 0.0))
        except asyncio.CancelledError:  # the server is shutting down, or gave up on this request
            self.client.abandon(cid)
            raise
        except TimeoutError:
            self.client.abandon(cid)
            self.metrics.outcomes["timed_out"] += 1
            raise ApiError(
                504,
                "workflow_timeout",
                f"workflow {cid} did not complete within {self.timeout_s:g} s; "
                "it keeps running and its stamp will be stored",
                data={"workflow_id": str(cid), "state": "processing"},
            ) from None
        try:
            return await self._completed(cid, outcome, deadline)
        finally:
            self.client.forget(cid)

    async def _completed(self, cid: uuid.UUID, outcome: OnexEnvelopeV1, deadline: float) -> dict[str, Any]:
        payload = outcome.payload
        if outcome.event_type == DEAD_LETTER_EVENT:
            self.metrics.outcomes["rejected"] += 1
            raise ApiError(
                502,
                "workflow_rejected",
                f"the orchestrator rejected workflow {cid}: {payload.get('error')}",
                data={"workflow_id": str(cid), "state": "rejected"},
            )
        if payload.get("state") != "completed":
            self.metrics.outcomes["failed"] += 1
            raise ApiError(
                422,
                "workflow_failed",
                str(payload.get("error") or "the workflow failed"),
                data={"workflow_id": str(cid), "state": payload.get("state"), "error": payload.get("error")},
            )
        self.metrics.outcomes["completed"] += 1
        created = self.client.stamp_of(cid)
        if created is None:  # the outcome overtook its STAMP_CREATED (different topics): wait for it
            try:
                created = await self.client.stamp(cid, timeout=max(deadline - time.monotonic(), 1.0))
            except TimeoutError:
                raise ApiError(
                    504,
                    "stamp_timeout",
                    f"workflow {cid} completed but its stamp did not arrive",
                    data={"workflow_id": str(cid), "state": "completed"},
                ) from None
        # Both typed by the client: ModelStampCreated and ModelWorkflowFinished.
        stamp = created.payload
        fields = stamp.stamp
        sidecar = None
        if stamp.stamp_type == "sidecar":
            block = {k: v for k, v in fields.items() if k not in ("uid", "ts", "kind")}
            rendered = stamps.render_sidecar(
                stamps.Stamp(str(fields.get("uid")), stamp.file_hash, str(fields.get("ts")), "sidecar", block)
            )
            sidecar = rendered.decode()
        return {
            "workflow_id": str(cid),
            "state": "completed",
            "status": stamp.status,
            "hash": stamp.file_hash,
            "stamp_type": stamp.stamp_type,
            "stamped_content": stamp.stamped_content,
            "stamp": fields,
            "sidecar": sidecar,
            "file_path": stamp.file_path,
            "file_type": stamp.file_type,
            "file_size": stamp.file_size,
            "namespace": stamp.namespace,
            "execution_time_ms": payload.execution_time_ms,
        }

    # -- endpoints --
    async def stamp(self, request: Request) -> Response:
        media_type = _media_type(request)
        if media_type == "multipart/form-data":
            form = await _read_form(
                request, self.max_body, file_fields=("file",), text_fields=("namespace", "file_path", "stamp_type")
            )
            if len(form.files) != 1:
                raise ApiError(422, "validation_error", "file: exactly one file part is required", field="file")
            _, filename, data = form.files[0]
            raw: dict[str, Any] = {"content": _text(data, "file"), "options": {}}
            if "namespace" in form.fields:
                raw["namespace"] = form.fields["namespace"]
            if form.fields.get("file_path") or filename:
                raw["file_path"] = form.fields.get("file_path") or filename
            if "stamp_type" in form.fields:
                raw["options"]["stamp_type"] = form.fields["stamp_type"]
            item = _parse(StampRequest, raw)
        elif _is_json(media_type):
            item = await self._json(request, StampRequest)
        else:
            raise self._unsupported(request, "application/json or multipart/form-data")
        deadline = time.monotonic() + self.timeout_s
        cid = await self._submit(item)
        result = await self._result(cid, deadline)
        return envelope(request, result, message=f"{result['status']}: workflow {cid} completed")

    async def batch(self, request: Request) -> Response:
        if not _is_json(_media_type(request)):
            raise self._unsupported(request, "application/json")
        body = await self._json(request, BatchRequest)
        if len(body.items) > self.batch_limit:
            raise ApiError(422, "validation_error", f"items: at most {self.batch_limit} items per batch", field="items")
        deadline = time.monotonic() + self.timeout_s
        results: list[dict[str, Any]] = []
        pending: list[tuple[int, uuid.UUID]] = []
        for index, raw in enumerate(body.items):
            try:
                if not isinstance(raw, dict):
                    raise ApiError(422, "validation_error", f"items.{index}: must be an object", field=f"items.{index}")
                item = _parse(StampRequest, raw, prefix=f"items.{index}")
                pending.append((index, await self._submit(item)))
                results.append({})
            except ApiError as exc:
                results.append(self._item_error(index, exc))
        for position, (index, cid) in enumerate(pending):
            try:
                results[index] = {
                    "index": index,
                    "status": "success",
                    "data": await self._result(cid, deadline),
                    "error": None,
                }
            except ApiError as exc:
                results[index] = self._item_error(index, exc)
            except asyncio.CancelledError:
                for _, later in pending[position + 1 :]:
                    self.client.abandon(later)
                raise
        succeeded = sum(1 for r in results if r["status"] == "success")
        summary = {"total": len(results), "succeeded": succeeded, "failed": len(results) - succeeded}
        data = {"items": results, "summary": summary}
        if succeeded == len(results):
            return envelope(request, data, message=f"{succeeded} item(s) stamped")
        if succeeded:
            return envelope(request, data, status="partial", message=f"{succeeded} of {len(results)} item(s) stamped")
        # Nothing succeeded: the items' own status when they share one (all timed out: 504), else 422.
        statuses = {r["error"]["http_status"] for r in results}
        return envelope(
            request,
            data,
            status="error",
            http_status=statuses.pop() if len(statuses) == 1 else 422,
            message="no item could be stamped",
            error={"code": "batch_failed", "field": "items"},
        )

    @staticmethod
    def _item_error(index: int, exc: ApiError) -> dict[str, Any]:
        error: dict[str, Any] = {
            "code": exc.code,
            "field": exc.field,
            "message": exc.message,
            "http_status": exc.status,
        }
        if exc.details:
            error["details"] = exc.details
        return {"index": index, "status": "error", "data": exc.data, "error": error}

    async def validate(self, request: Request) -> Response:
        media_type = _media_type(request)
        documents: list[tuple[bytes, str, bytes | None]] = []
        if media_type == "multipart/form-data":
            form = await _read_form(request, self.max_body, file_fields=("file",), text_fields=())
            if not form.files:
                raise ApiError(422, "validation_error", "file: at least one file part is required", field="file")
            for _, filename, data in form.files:
                name = filename or DEFAULT_NAME
                if not re.fullmatch(FILE_PATH_PATTERN, name):
                    raise ApiError(422, "validation_error", "file: bad file name", field="file")
                documents.append((data, name, None))
        elif _is_json(media_type):
            body = await self._json(request, ValidateRequest)
            sidecar = body.sidecar.encode() if body.sidecar is not None else None
            documents.append((body.content.encode(), body.file_path or DEFAULT_NAME, sidecar))
        else:
            raise self._unsupported(request, "application/json or multipart/form-data")
        size = sum(len(d) for d, _, _ in documents)
        results = await _maybe_thread(size, lambda: [_verify(d, n, s) for d, n, s in documents])
        summary = Counter(r["status"] for r in results)
        report = {
            "results": results,
            "summary": {k: summary.get(k, 0) for k in ("valid", "modified", "unstamped", "error")},
        }
        return envelope(request, report, message=", ".join(f"{n} {k}" for k, n in sorted(summary.items())))

    async def hash(self, request: Request) -> Response:
        media_type = _media_type(request)
        if media_type == "multipart/form-data":
            result = await self._hash_stream(request)
        elif _is_json(media_type):
            body = await self._json(request, HashRequest)
            data = body.content.encode()
            name = body.file_path or DEFAULT_NAME
            result = await _maybe_thread(len(data), lambda: _hash_content(data, name))
            result["file_path"] = name
        else:
            raise self._unsupported(request, "application/json or multipart/form-data")
        return envelope(request, result, message=f"blake3 {result['hash']}")

    async def _hash_stream(self, request: Request) -> dict[str, Any]:
        """The one ``file`` part hashed as it arrives: memory holds one chunk (and the head) whatever its size."""
        hasher: _StreamingHash | None = None
        current: _Part | None = None
        result: dict[str, Any] | None = None
        async for event in _form_events(request, self.max_stream):
            if isinstance(event, _Part):
                if event.name != "file":
                    raise ApiError(422, "validation_error", f"{event.name}: unexpected field", field=event.name)
                if result is not None:
                    raise ApiError(422, "validation_error", "file: exactly one file part is accepted", field="file")
                current = event
                hasher = _StreamingHash(event.filename or DEFAULT_NAME)
            elif isinstance(event, _PartData) and hasher is not None:
                hasher.update(event.data)
            elif isinstance(event, _PartEnd) and hasher is not None and current is not None:
                result = hasher.result()
                result["file_path"] = current.filename or DEFAULT_NAME
                hasher = None
        if result is None:
            raise ApiError(422, "validation_error", "file: a file part is required", field="file")
        return result

    async def validate_protocol(self, request: Request) -> Response:
        if not _is_json(_media_type(request)):
            raise self._unsupported(request, "application/json")
        body = await self._json(request, ProtocolRequest)
        data = body.content.encode()
        sidecar = body.sidecar.encode() if body.sidecar is not None else None
        result = await _maybe_thread(
            len(data),
            lambda: check_protocol(data, body.file_path or DEFAULT_NAME, sidecar=sidecar, metadata=body.metadata),
        )
        message = "conforms to the metadata protocol" if result["valid"] else f"{len(result['issues'])} issue(s)"
        return envelope(request, result, message=message)

    async def get_stamp(self, request: Request) -> Response:
        file_hash = str(request.path_params["file_hash"])
        if not _HASH_RE.fullmatch(file_hash):
            raise ApiError(422, "validation_error", "file_hash: must be 64 hex characters (BLAKE3)", field="file_hash")
        file_hash = file_hash.lower()
        try:
            rows = await self.runtime.store.get_stamps_by_hash(file_hash)
        except StoreError as exc:
            raise ApiError(503, "store_unavailable", f"the store cannot answer: {exc}") from None
        if not rows:
            raise ApiError(404, "not_found", f"no stamp with hash {file_hash} is stored", field="file_hash")
        records = [dataclasses.asdict(row) for row in rows]
        return envelope(
            request,
            {"file_hash": file_hash, "count": len(records), "stamps": records},
            message=f"{len(records)} stamp record(s)",
        )

    async def namespace(self, request: Request) -> Response:
        namespace = str(request.path_params["namespace"])
        if not _NAMESPACE_RE.fullmatch(namespace):
            raise ApiError(
                422, "validation_error", "namespace: must be 1-256 characters of [A-Za-z0-9._:/-]", field="namespace"
            )
        limit = self._query_int(request, "limit", 100, 1, MAX_PAGE)
        offset = self._query_int(request, "offset", 0, 0, MAX_OFFSET)
        try:
            rows = await self.runtime.store.list_stamps(namespace, limit=limit, offset=offset)
            state = await self.runtime.store.get_bridge_state(namespace)
        except StoreError as exc:
            raise ApiError(503, "store_unavailable", f"the store cannot answer: {exc}") from None
        data = {
            "namespace": namespace,
            "stamps": [dataclasses.asdict(row) for row in rows],
            "pagination": {
                "limit": limit,
                "offset": offset,
                "count": len(rows),
                "next_offset": offset + len(rows) if len(rows) == limit else None,
            },
            "aggregates": dataclasses.asdict(state) if state is not None else None,
        }
        return envelope(request, data, message=f"{len(rows)} stamp(s)")

    @staticmethod
    def _query_int(request: Request, name: str, default: int, low: int, high: int) -> int:
        raw = request.query_params.get(name)
        if raw is None:
            return default
        try:
            value = int(raw)
        except ValueError:
            value = low - 1
        if not low <= value <= high:
            raise ApiError(422, "validation_error", f"{name}: must be an integer from {low} to {high}", field=name)
        return value

    async def health(self, request: Request) -> Response:
        state = _bus_state(self.runtime.bus)
        # The kind from the URL's scheme only: a Kafka URL may carry credentials.
        kind = self.runtime.settings.bus.partition(":")[0]
        bus = {"status": "ok" if state == "running" else "down", "state": state, "kind": kind}
        try:
            store_health = await self.runtime.store.health()
        except (StoreError, OSError) as exc:
            store_health = StoreHealth("down", str(exc))
        # The store's detail names files and hosts: shown only to callers who could read everything else.
        store: dict[str, Any] = {"status": store_health.status, "queued_writes": store_health.queued_writes}
        if self.authorized(request.headers):
            store["detail"] = store_health.detail
        nodes = [
            {
                "name": n.contract.name,
                "version": n.contract.version,
                "node_id": n.node_id,
                "lifecycle": str(n.lifecycle.value),
                "health": n.health(),
            }
            for n in self.runtime.nodes
        ]
        registry: dict[str, Any] = {"status": "unknown", "registered": 0, "by_health": {}}
        if store_health.status == "ok":
            try:
                registrations = await self.runtime.store.list_registrations()
            except StoreError:
                registrations = []
            else:
                registry["status"] = "ok"
            registry["registered"] = len(registrations)
            registry["by_health"] = dict(Counter(r.health_status for r in registrations))
        degraded = [
            name
            for name, ok in (
                ("bus", bus["status"] == "ok"),
                ("store", store_health.status == "ok"),
                *((f"node {n['name']}", n["health"] == "HEALTHY") for n in nodes),
            )
            if not ok
        ]
        data = {
            "status": "degraded" if degraded else "ok",
            "bus": bus,
            "store": store,
            "registry": registry,
            "nodes": nodes,
            "gateway": {"pending_workflows": self.client.pending},
        }
        if degraded:
            return envelope(
                request,
                data,
                status="error",
                http_status=503,
                message=f"degraded: {', '.join(degraded)}",
                error={"code": "degraded", "field": None, "details": [{"component": c} for c in degraded]},
            )
        return envelope(request, data, message="ok")

    async def live(self, request: Request) -> Response:
        return envelope(request, {"status": "live"}, message="live")

    async def ready(self, request: Request) -> Response:
        # A gateway hosting no node is ready when its bus runs (it submits and hears outcomes through it) and the
        # store answers; one hosting nodes is ready when they run, too (readiness() checks those).
        state = _bus_state(self.runtime.bus)
        reason = f"bus {state}" if state != "running" else await readiness(self.runtime)
        if reason is not None:
            raise ApiError(503, "not_ready", f"not ready: {reason}", data={"status": "not_ready", "reason": reason})
        return envelope(request, {"status": "ready"}, message="ready")

    async def prometheus(self, request: Request) -> Response:
        return Response(self.metrics.render(self), media_type="text/plain; version=0.0.4; charset=utf-8")

    def _document(self) -> dict[str, Any]:
        return openapi_document(batch_limit=self.batch_limit, max_body=self.max_body, api_key=self.api_key is not None)

    async def openapi(self, request: Request) -> Response:
        if self._openapi is None:
            self._openapi = json.dumps(self._document()).encode()
        return Response(self._openapi, media_type="application/json")

    async def openapi_30(self, request: Request) -> Response:
        if self._openapi_30 is None:
            self._openapi_30 = json.dumps(openapi_30(self._document())).encode()
        return Response(self._openapi_30, media_type="application/json")

    async def docs(self, request: Request) -> Response:
        return Response(_DOCS_PAGE, media_type="text/html; charset=utf-8")

    async def docs_script(self, request: Request) -> Response:
        return Response(_DOCS_SCRIPT, media_type="text/javascript; charset=utf-8")


class _Observe:
    """Outermost ASGI layer: request id and timing, the API key check, the request metrics and the access log.

    Plain ASGI rather than Starlette's ``BaseHTTPMiddleware``, which would run every request in a task of its own
    and buffer streamed bodies through a memory stream."""

    def __init__(self, app: ASGIApp, gateway: _Gateway) -> None:
        self.app = app
        self.gateway = gateway
        self.public = {
            f"{PREFIX}/health",
            f"{PREFIX}/health/live",
            f"{PREFIX}/health/ready",
            f"{PREFIX}/openapi.json",
            "/openapi.json",
            DOCS,
            f"{DOCS}/init.js",
            f"{DOCS}/openapi.json",
        }

    def _is_public(self, path: str) -> bool:
        return path in self.public or path.startswith(f"{DOCS}/static/")

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        request_id = _request_id(scope)
        scope["onex.started"] = started
        scope["onex.request_id"] = request_id
        status = 500
        metrics = self.gateway.metrics

        async def send_(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                message.setdefault("headers", []).append((b"x-request-id", request_id.encode()))
            await send(message)

        metrics.in_flight += 1
        try:
            if (
                self.gateway.api_key is None
                or self._is_public(scope["path"])
                or self.gateway.authorized(Request(scope).headers)
            ):
                await self.app(scope, receive, send_)
            else:
                exc = ApiError(
                    401,
                    "unauthorized",
                    "a valid API key is required: Authorization: Bearer <key>",
                    field="authorization",
                    headers={"www-authenticate": "Bearer"},
                )
                await error_response(Request(scope), exc)(scope, receive, send_)
        finally:
            metrics.in_flight -= 1
            # Label values must stay few: the route's template, never the path; a known method, never any token.
            route = getattr(scope.get("route"), "path", None) or "unmatched"
            method = scope["method"] if scope["method"] in _METHODS else "OTHER"
            elapsed = time.perf_counter() - started
            metrics.observe(method, route, status, elapsed)
            if _access_log.isEnabledFor(logging.INFO):
                _access(scope, method, status, elapsed, request_id)


def _request_id(scope: Scope) -> str:
    """The request's ``X-Request-ID`` if it sent a plain one, else a new id."""
    for name, value in scope["headers"]:
        if name == b"x-request-id":
            if _REQUEST_ID_RE.fullmatch(value):
                return str(value.decode("ascii"))
            break
    return _new_id().hex


def _access(scope: Scope, method: str, status: int, elapsed: float, request_id: str) -> None:
    """The ``access`` line of a request."""
    # The path as it was sent (percent-escapes kept, so no control character reaches a text log line), without the
    # query string: a server keeps `?...` in raw_path for some clients (httpx's ASGI transport).
    raw = scope.get("raw_path")
    path = raw.partition(b"?")[0].decode("latin-1") if isinstance(raw, bytes) else scope["path"]
    duration_ms = round(elapsed * 1000, 3)
    log_event(
        _access_log,
        logging.INFO,
        "access",
        f"{method} {path} {status} {duration_ms}ms",
        method=method,
        path=path,
        status=status,
        duration_ms=duration_ms,
        request_id=request_id,
    )


def create_app(
    runtime: Runtime,
    client: StampClient,
    settings: Settings,
    *,
    api_key: str | None = None,
    max_body: int = DEFAULT_MAX_BODY,
    max_stream: int = DEFAULT_MAX_STREAM,
    batch_limit: int = DEFAULT_BATCH_LIMIT,
    timeout_s: float = DEFAULT_TIMEOUT_S,
) -> Starlette:
    """The API as a Starlette application over a started runtime and an entered ``StampClient(keep_stamps=True)``.

    ``api_key`` is exactly the key required (None: none; ``serve`` passes ``settings.api_key``). ``max_body`` bounds
    every body that is read whole, ``max_stream`` the file streamed by ``/hash``; ``batch_limit`` is the most items
    a batch may hold; ``timeout_s`` is how long a request waits for its workflows (then 504).
    """
    if not client.keep_stamps:
        raise ValueError("the gateway needs a StampClient(keep_stamps=True): it answers with the stamped content")
    gateway = _Gateway(
        runtime,
        client,
        settings,
        api_key=api_key,
        max_body=max_body,
        max_stream=max_stream,
        batch_limit=batch_limit,
        timeout_s=timeout_s,
    )

    async def http_error(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, HTTPException)
        code = {404: "not_found", 405: "method_not_allowed"}.get(exc.status_code, "http_error")
        return error_response(request, ApiError(exc.status_code, code, str(exc.detail), headers=exc.headers))

    async def server_error(request: Request, exc: Exception) -> Response:
        return error_response(request, ApiError(500, "internal_error", "internal error; see the server log"))

    app = Starlette(
        routes=gateway.routes(),
        middleware=[Middleware(_Observe, gateway=gateway)],
        exception_handlers={HTTPException: http_error, Exception: server_error},
    )
    app.state.gateway = gateway
    return app


# --- /docs: Swagger UI from the swagger-ui-bundle package's files, nothing from elsewhere ---------------------------

_DOCS_PAGE: Final = f"""<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<title>onex metadata stamping API</title>
<link rel="stylesheet" href="{DOCS}/static/swagger-ui.css">
<link rel="icon" type="image/png" href="{DOCS}/static/favicon-32x32.png" sizes="32x32">
</head>
<body>
<div id="swagger-ui"></div>
<script src="{DOCS}/static/swagger-ui-bundle.js"></script>
<script src="{DOCS}/init.js"></script>
</body>
</html>
""".encode()

# validatorUrl null: Swagger UI would otherwise send the document to validator.swagger.io for its badge.
_DOCS_SCRIPT: Final = f"""window.onload = function () {{
  window.ui = SwaggerUIBundle({{
    url: "{DOCS}/openapi.json",
    dom_id: "#swagger-ui",
    deepLinking: true,
    validatorUrl: null,
    presets: [SwaggerUIBundle.presets.apis],
    layout: "BaseLayout",
  }});
}};
""".encode()


# --- serving -----------------------------------------------------------------------------------------------------


def parse_address(address: str) -> tuple[str, int]:
    """``HOST:PORT``, ``[V6]:PORT`` or ``:PORT`` (loopback) -> (host, port); ValueError if it is none of these."""
    host, sep, port_text = address.strip().rpartition(":")
    if not sep or not port_text.isdigit() or not 0 <= int(port_text) <= 65535:
        raise ValueError(f"{address!r} is not HOST:PORT (for example 127.0.0.1:8053)")
    host = host.strip("[]") or "127.0.0.1"
    return host, int(port_text)


def bind(address: str) -> socket.socket:
    """A listening TCP socket on ``HOST:PORT`` (bound here, so a busy port fails before any node starts)."""
    try:
        host, port = parse_address(address)
    except ValueError as exc:
        raise OnexError(str(exc)) from None
    try:
        family = socket.AF_INET6 if ipaddress.ip_address(host).version == 6 else socket.AF_INET
    except ValueError:
        family = socket.AF_INET  # a host name
    # proto=IPPROTO_TCP, not 0: asyncio sets TCP_NODELAY only on sockets that say they are TCP, and without it
    # every keep-alive response written in two parts waits ~40 ms for the client's delayed ACK (Nagle).
    sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        sock.bind((host, port))
        sock.listen(2048)
        sock.setblocking(False)
    except OSError as exc:
        sock.close()
        raise OnexError(f"cannot serve HTTP on {address}: {exc.strerror or exc}") from None
    return sock


class _Server(uvicorn.Server):
    """uvicorn without its signal handlers: the runtime owns SIGINT/SIGTERM, so that shutdown drains in order
    (HTTP connections first, then the client, then the nodes)."""

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield


class _CoalescingTransport:
    """A connection's transport whose writes within one turn of the event loop go out as one ``send``.

    uvicorn writes a response's head and its body separately, and asyncio sends each write at once when nothing is
    buffered: two system calls, and two TCP segments the client wakes up for, per response. Held until the loop's
    next turn they leave in one: under ``bench/http.py`` that halves the time spent in ``send`` (~50 us a response on
    a 2-core machine) and takes a quarter off the server's CPU per ``POST /hash``. Everything but writing and closing
    is the real transport's."""

    __slots__ = ("_held", "_loop", "_transport")

    def __init__(self, transport: asyncio.Transport, loop: asyncio.AbstractEventLoop) -> None:
        self._transport = transport
        self._loop = loop
        self._held: list[bytes] = []

    def write(self, data: bytes | bytearray | memoryview) -> None:
        if not self._held:
            self._loop.call_soon(self._flush)
        self._held.append(bytes(data))

    def writelines(self, lines: Iterable[bytes | bytearray | memoryview]) -> None:
        for data in lines:
            self.write(data)

    def _flush(self) -> None:
        if self._held:
            held, self._held = self._held, []
            if not self._transport.is_closing():
                self._transport.write(held[0] if len(held) == 1 else b"".join(held))

    def get_write_buffer_size(self) -> int:
        return self._transport.get_write_buffer_size() + sum(len(data) for data in self._held)

    def write_eof(self) -> None:
        self._flush()
        self._transport.write_eof()

    def close(self) -> None:
        self._flush()  # what was written before close() is still sent, as asyncio's transports do
        self._transport.close()

    def abort(self) -> None:
        self._held.clear()
        self._transport.abort()

    def __getattr__(self, name: str) -> Any:
        return getattr(self._transport, name)


class _HttpProtocol(HttpToolsProtocol):
    """uvicorn's httptools protocol (the project depends on httptools) writing through a ``_CoalescingTransport``."""

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]  # as uvicorn's
        coalescing = _CoalescingTransport(transport, asyncio.get_running_loop())
        super().connection_made(coalescing)  # type: ignore[arg-type]  # a transport in all but its class


def quiet_server(app: Any, *, grace_s: int) -> uvicorn.Server:
    """A uvicorn server for ``app`` that leaves logging, signals and the lifespan to onex; on shutdown it lets the
    requests in hand finish for ``grace_s`` seconds."""
    config = uvicorn.Config(
        app,
        http=_HttpProtocol,
        lifespan="off",
        log_config=None,
        log_level="warning",
        access_log=False,
        server_header=False,
        ws="none",
        timeout_graceful_shutdown=grace_s,
    )
    return _Server(config)


def base_url(sock: socket.socket) -> str:
    """``http://HOST:PORT`` of a bound socket (IPv6 hosts in brackets)."""
    host, port = sock.getsockname()[:2]
    return f"http://{f'[{host}]' if ':' in host else host}:{port}"


async def serve(
    runtime: Runtime,
    settings: Settings,
    *,
    sock: socket.socket,
    stop: asyncio.Event | None = None,
    ready: Callable[[str], None] | None = None,
    max_body: int | None = None,
    max_stream: int = DEFAULT_MAX_STREAM,
    batch_limit: int | None = None,
    timeout_s: float | None = None,
) -> None:
    """Serve the API on ``sock`` (from ``bind``) over a started ``runtime`` until ``stop`` is set, or, without
    ``stop``, until SIGINT/SIGTERM. Then stops accepting connections, finishes the requests in hand (up to 10 s)
    and leaves the runtime to its owner. ``ready`` is called with the base URL once the socket serves. The limits
    not given come from ``settings`` (``http_max_body``, ``http_batch_limit``, ``http_timeout_s``)."""
    async with StampClient(runtime.bus, runtime.contracts, settings, keep_stamps=True) as client:
        app = create_app(
            runtime,
            client,
            settings,
            api_key=settings.api_key,
            max_body=settings.http_max_body if max_body is None else max_body,
            max_stream=max_stream,
            batch_limit=settings.http_batch_limit if batch_limit is None else batch_limit,
            timeout_s=settings.http_timeout_s if timeout_s is None else timeout_s,
        )
        server = quiet_server(app, grace_s=10)
        url = base_url(sock)

        def announce() -> None:
            if ready is not None:
                ready(url)

        # The socket already listens (``bind``): connections made from here on queue until uvicorn takes them.
        serving = asyncio.create_task(server.serve(sockets=[sock]), name="onex-http")
        waiting: asyncio.Task[Any]
        if stop is not None:
            waiting = asyncio.create_task(stop.wait())
            announce()
        else:
            waiting = asyncio.create_task(runtime.run_until_signal(ready=announce))
        try:
            await asyncio.wait({serving, waiting}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            server.should_exit = True
            waiting.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await waiting
            await serving


# --- the OpenAPI document ----------------------------------------------------------------------------------------


def openapi_30(document: Mapping[str, Any]) -> dict[str, Any]:
    """``document`` (3.1) as OpenAPI 3.0.3, for the bundled Swagger UI 4, which renders no 3.1 document.

    Only what the gateway's document uses is translated: a list ``type`` with ``"null"`` and an ``anyOf`` branch
    ``{"type": "null"}`` become ``nullable``, ``const`` becomes a one-value ``enum``.
    """

    def schema(node: Any) -> Any:
        if isinstance(node, list):
            return [schema(item) for item in node]
        if not isinstance(node, Mapping):
            return node
        out: dict[str, Any] = {}
        for key, value in node.items():
            if key == "properties" and isinstance(value, Mapping):  # property names are not keywords
                out[key] = {name: schema(sub) for name, sub in value.items()}
            elif key == "const":
                out["enum"] = [value]
            elif key == "type" and isinstance(value, list):
                kinds = [kind for kind in value if kind != "null"]
                if len(kinds) < len(value):
                    out["nullable"] = True
                if len(kinds) == 1:
                    out["type"] = kinds[0]
                else:
                    out["anyOf"] = [{"type": kind} for kind in kinds]
            elif key in ("anyOf", "oneOf") and isinstance(value, list):
                branches = [branch for branch in value if branch != {"type": "null"}]
                if len(branches) < len(value):
                    out["nullable"] = True
                out[key] = schema(branches)
            else:
                out[key] = schema(value)
        return out

    converted: dict[str, Any] = schema(document)
    converted["openapi"] = "3.0.3"
    return converted


def _ref(name: str) -> dict[str, str]:
    return {"$ref": f"#/components/schemas/{name}"}


def _enveloped(data: dict[str, Any]) -> dict[str, Any]:
    return {"allOf": [_ref("Envelope"), {"type": "object", "properties": {"data": data}}]}


def _json_body(schema: dict[str, Any], *, multipart: dict[str, Any] | None = None) -> dict[str, Any]:
    content: dict[str, Any] = {"application/json": {"schema": schema}}
    if multipart is not None:
        content["multipart/form-data"] = {"schema": multipart}
    return {"required": True, "content": content}


def _responses(ok: dict[str, Any] | None, *codes: int, auth: bool, ok_description: str = "success") -> dict[str, Any]:
    descriptions = {
        401: "missing or wrong API key",
        404: "not found",
        413: "body larger than the configured limit",
        415: "unsupported Content-Type",
        422: "malformed or invalid input, or a workflow that failed",
        502: "the orchestrator rejected the workflow",
        503: "the bus or store is unavailable (health: degraded)",
        504: "the workflow did not complete in time; it keeps running",
    }
    responses: dict[str, Any] = {}
    if ok is not None:
        responses["200"] = {"description": ok_description, "content": {"application/json": {"schema": ok}}}
    for code in (*codes, *((401,) if auth else ())):
        responses[str(code)] = {
            "description": descriptions[code],
            "content": {"application/json": {"schema": _ref("ErrorEnvelope")}},
        }
    return responses


def openapi_document(
    *, batch_limit: int = DEFAULT_BATCH_LIMIT, max_body: int = DEFAULT_MAX_BODY, api_key: bool = False
) -> dict[str, Any]:
    """The OpenAPI 3.1 document of the API as configured (batch limit, body limit, whether a key is required)."""
    text = {"type": "string"}
    nullable_text = {"type": ["string", "null"]}
    namespace = {
        "type": "string",
        "pattern": NAMESPACE_PATTERN,
        "minLength": 1,
        "maxLength": 256,
        "default": stamps.DEFAULT_NAMESPACE,
    }
    file_path = {
        "type": "string",
        "pattern": FILE_PATH_PATTERN,
        "minLength": 1,
        "maxLength": 1024,
        "description": "Names the content (picks the comment syntax); nothing is read from or written to disk.",
    }
    optional_file_path = {**file_path, "type": ["string", "null"]}  # JSON bodies accept null for "not given"
    stamp_type = {"type": "string", "enum": ["lightweight", "rich"], "default": "lightweight"}
    any_object = {"type": "object", "additionalProperties": True}
    schemas: dict[str, Any] = {
        "Envelope": {
            "type": "object",
            "required": ["status", "data", "error", "message", "metadata"],
            "properties": {
                "status": {"type": "string", "enum": ["success", "error", "partial"]},
                "data": {},
                "error": {"anyOf": [_ref("Error"), {"type": "null"}]},
                "message": text,
                "metadata": _ref("Metadata"),
            },
        },
        "ErrorEnvelope": {
            "allOf": [
                _ref("Envelope"),
                {
                    "type": "object",
                    "properties": {
                        "status": {"const": "error"},
                        "error": _ref("Error"),
                        "data": {"type": ["object", "null"]},
                    },
                },
            ]
        },
        "Error": {
            "type": "object",
            "required": ["code", "field"],
            "properties": {"code": text, "field": nullable_text, "details": {"type": "array", "items": any_object}},
        },
        "Metadata": {
            "type": "object",
            "required": ["request_id", "api_version", "timestamp"],
            "properties": {
                "request_id": text,
                "api_version": {"const": API_VERSION},
                "timestamp": text,
                "duration_ms": {"type": ["number", "null"]},
            },
        },
        "StampOptions": {"type": "object", "additionalProperties": False, "properties": {"stamp_type": stamp_type}},
        "StampRequest": {
            "type": "object",
            "additionalProperties": False,
            "required": ["content"],
            "properties": {
                "content": {"type": "string", "description": "The text to stamp (UTF-8)."},
                "namespace": namespace,
                "file_path": optional_file_path,
                "options": _ref("StampOptions"),
            },
        },
        "StampUpload": {
            "type": "object",
            "required": ["file"],
            "properties": {
                "file": {"type": "string", "format": "binary", "description": "UTF-8 text"},
                "namespace": namespace,
                "file_path": file_path,
                "stamp_type": stamp_type,
            },
        },
        "StampResult": {
            "type": "object",
            "required": ["workflow_id", "state", "status", "hash", "stamp_type", "stamped_content", "stamp"],
            "properties": {
                "workflow_id": {"type": "string", "format": "uuid"},
                "state": {"const": "completed"},
                "status": {"type": "string", "enum": ["stamped", "unchanged"]},
                "hash": {"type": "string", "pattern": "^[0-9a-f]{64}$"},
                "stamp_type": {"type": "string", "enum": ["lightweight", "rich", "sidecar"]},
                "stamped_content": {
                    **nullable_text,
                    "description": "The content with its stamp (sidecar types: unchanged).",
                },
                "stamp": any_object,
                "sidecar": {
                    **nullable_text,
                    "description": "For types without comments: the sidecar to store next "
                    "to the file as <file>.onex.yaml.",
                },
                "file_path": text,
                "file_type": {"type": "string", "enum": list(FILE_TYPES)},
                "file_size": {"type": "integer", "minimum": 0},
                "namespace": text,
                "execution_time_ms": {"type": ["number", "null"]},
            },
        },
        "BatchRequest": {
            "type": "object",
            "additionalProperties": False,
            "required": ["items"],
            "properties": {
                "items": {"type": "array", "minItems": 1, "maxItems": batch_limit, "items": _ref("StampRequest")}
            },
        },
        "BatchItem": {
            "type": "object",
            "required": ["index", "status", "data", "error"],
            "properties": {
                "index": {"type": "integer"},
                "status": {"type": "string", "enum": ["success", "error"]},
                "data": {"anyOf": [_ref("StampResult"), {"type": ["object", "null"]}]},
                "error": {"type": ["object", "null"]},
            },
        },
        "BatchResult": {
            "type": "object",
            "required": ["items", "summary"],
            "properties": {"items": {"type": "array", "items": _ref("BatchItem")}, "summary": any_object},
        },
        "ContentRequest": {
            "type": "object",
            "additionalProperties": False,
            "required": ["content"],
            "properties": {"content": text, "file_path": optional_file_path},
        },
        "ValidateRequest": {
            "type": "object",
            "additionalProperties": False,
            "required": ["content"],
            "properties": {
                "content": text,
                "file_path": optional_file_path,
                "sidecar": {
                    "type": ["string", "null"],
                    "description": "The sidecar's YAML, for types without comments.",
                },
            },
        },
        "FilesUpload": {
            "type": "object",
            "required": ["file"],
            "properties": {"file": {"type": "string", "format": "binary"}},
        },
        "VerifyResult": {
            "type": "object",
            "required": ["file_path", "status", "expected_hash", "actual_hash", "stamp"],
            "properties": {
                "file_path": text,
                "status": {"type": "string", "enum": ["valid", "modified", "unstamped", "error"]},
                "expected_hash": nullable_text,
                "actual_hash": nullable_text,
                "stamp": {"type": ["object", "null"]},
                "error": nullable_text,
            },
        },
        "ValidateResult": {
            "type": "object",
            "required": ["results", "summary"],
            "properties": {"results": {"type": "array", "items": _ref("VerifyResult")}, "summary": any_object},
        },
        "HashResult": {
            "type": "object",
            "required": ["hash", "algorithm", "size", "received_bytes", "stamp_removed", "file_path"],
            "properties": {
                "hash": {"type": "string", "pattern": "^[0-9a-f]{64}$"},
                "algorithm": {"const": "blake3"},
                "size": {"type": "integer", "minimum": 0},
                "received_bytes": {"type": "integer", "minimum": 0},
                "stamp_removed": {"type": "boolean"},
                "file_path": text,
            },
        },
        "ProtocolRequest": {
            "type": "object",
            "additionalProperties": False,
            "required": ["content"],
            "properties": {
                "content": text,
                "file_path": optional_file_path,
                "sidecar": nullable_text,
                "metadata": {"type": ["object", "null"], "description": "A metadata block given as an object."},
            },
        },
        "ProtocolResult": {
            "type": "object",
            "required": ["valid", "source", "issues", "metadata", "actual_hash"],
            "properties": {
                "valid": {"type": "boolean"},
                "source": {"type": "string", "enum": ["metadata", "sidecar", "content"]},
                "issues": {
                    "type": "array",
                    "items": {
                        "type": "object",
                        "required": ["field", "code", "message"],
                        "properties": {"field": text, "code": text, "message": text},
                    },
                },
                "metadata": {"type": ["object", "null"]},
                "expected_hash": {},
                "actual_hash": text,
                "supported_versions": any_object,
            },
        },
        "StampRecords": {
            "type": "object",
            "required": ["file_hash", "count", "stamps"],
            "properties": {
                "file_hash": text,
                "count": {"type": "integer", "minimum": 1},
                "stamps": {"type": "array", "items": any_object},
            },
        },
        "NamespacePage": {
            "type": "object",
            "required": ["namespace", "stamps", "pagination", "aggregates"],
            "properties": {
                "namespace": text,
                "stamps": {"type": "array", "items": any_object},
                "pagination": any_object,
                "aggregates": {"type": ["object", "null"]},
            },
        },
        "Health": {
            "type": "object",
            "required": ["status", "bus", "store", "registry", "nodes"],
            "properties": {
                "status": {"type": "string", "enum": ["ok", "degraded"]},
                "bus": any_object,
                "store": any_object,
                "registry": any_object,
                "nodes": {"type": "array", "items": any_object},
                "gateway": any_object,
            },
        },
        "Probe": {
            "type": "object",
            "required": ["status"],
            "properties": {
                "status": {"type": "string", "enum": ["live", "ready", "not_ready"]},
                "reason": {**text, "description": "Why the gateway is not ready."},
            },
        },
    }
    probe = _ref("Probe")
    auth: dict[str, Any] = {"security": [{"bearerAuth": []}]} if api_key else {}
    public: dict[str, Any] = {"security": []} if api_key else {}
    body_codes = (413, 415, 422)
    paths: dict[str, Any] = {
        f"{PREFIX}/stamp": {
            "post": {
                "operationId": "stamp",
                "summary": "Stamp content through a workflow on the bus",
                **auth,
                "requestBody": _json_body(_ref("StampRequest"), multipart=_ref("StampUpload")),
                "responses": _responses(_enveloped(_ref("StampResult")), *body_codes, 502, 503, 504, auth=api_key),
            }
        },
        f"{PREFIX}/validate": {
            "post": {
                "operationId": "validate",
                "summary": "Find the stamps in content: valid, modified or unstamped",
                **auth,
                "requestBody": _json_body(_ref("ValidateRequest"), multipart=_ref("FilesUpload")),
                "responses": _responses(_enveloped(_ref("ValidateResult")), *body_codes, auth=api_key),
            }
        },
        f"{PREFIX}/hash": {
            "post": {
                "operationId": "hash",
                "summary": "BLAKE3 of content with its stamp removed (multipart: streamed)",
                **auth,
                "requestBody": _json_body(_ref("ContentRequest"), multipart=_ref("FilesUpload")),
                "responses": _responses(_enveloped(_ref("HashResult")), *body_codes, auth=api_key),
            }
        },
        f"{PREFIX}/stamp/{{file_hash}}": {
            "get": {
                "operationId": "getStamp",
                "summary": "The stored stamp records of a content hash",
                **auth,
                "parameters": [
                    {
                        "name": "file_hash",
                        "in": "path",
                        "required": True,
                        "schema": {"type": "string", "pattern": HASH_PATTERN},
                    }
                ],
                "responses": _responses(_enveloped(_ref("StampRecords")), 404, 422, 503, auth=api_key),
            }
        },
        f"{PREFIX}/batch": {
            "post": {
                "operationId": "batch",
                "summary": f"Stamp up to {batch_limit} items; status partial when only some succeed",
                **auth,
                "requestBody": _json_body(_ref("BatchRequest")),
                "responses": _responses(
                    _enveloped(_ref("BatchResult")),
                    *body_codes,
                    502,
                    503,
                    504,
                    auth=api_key,
                    ok_description="every item stamped (success) or some (partial)",
                ),
            }
        },
        f"{PREFIX}/namespace/{{namespace}}": {
            "get": {
                "operationId": "getNamespace",
                "summary": "A page of a namespace's stamps and its aggregates",
                **auth,
                "parameters": [
                    {
                        "name": "namespace",
                        "in": "path",
                        "required": True,
                        "schema": {k: v for k, v in namespace.items() if k != "default"},
                    },
                    {
                        "name": "limit",
                        "in": "query",
                        "schema": {"type": "integer", "minimum": 1, "maximum": MAX_PAGE, "default": 100},
                    },
                    {
                        "name": "offset",
                        "in": "query",
                        "schema": {"type": "integer", "minimum": 0, "maximum": MAX_OFFSET, "default": 0},
                    },
                ],
                "responses": _responses(_enveloped(_ref("NamespacePage")), 422, 503, auth=api_key),
            }
        },
        f"{PREFIX}/validate-protocol": {
            "post": {
                "operationId": "validateProtocol",
                "summary": "Check a metadata block against the metadata protocol",
                **auth,
                "requestBody": _json_body(_ref("ProtocolRequest")),
                "responses": _responses(_enveloped(_ref("ProtocolResult")), *body_codes, auth=api_key),
            }
        },
        f"{PREFIX}/health": {
            "get": {
                "operationId": "health",
                "summary": "Bus, store, registry and hosted nodes",
                **public,
                "responses": {
                    "200": {
                        "description": "healthy",
                        "content": {"application/json": {"schema": _enveloped(_ref("Health"))}},
                    },
                    "503": {
                        "description": "degraded",
                        "content": {"application/json": {"schema": _enveloped(_ref("Health"))}},
                    },
                },
            }
        },
        f"{PREFIX}/health/live": {
            "get": {
                "operationId": "live",
                "summary": "Liveness: 200 while the server's event loop answers",
                **public,
                "responses": {
                    "200": {"description": "live", "content": {"application/json": {"schema": _enveloped(probe)}}},
                },
            }
        },
        f"{PREFIX}/health/ready": {
            "get": {
                "operationId": "ready",
                "summary": "Readiness: the bus runs, the store answers and every hosted node runs",
                **public,
                "responses": {
                    "200": {"description": "ready", "content": {"application/json": {"schema": _enveloped(probe)}}},
                    "503": {
                        "description": "not ready: starting, draining, the bus or the store down, a node not running",
                        "content": {"application/json": {"schema": _ref("ErrorEnvelope")}},
                    },
                },
            }
        },
        f"{PREFIX}/metrics": {
            "get": {
                "operationId": "metrics",
                "summary": "Prometheus metrics (text exposition format 0.0.4)",
                **auth,
                "responses": {
                    "200": {"description": "metrics", "content": {"text/plain": {"schema": text}}},
                    **_responses(None, auth=api_key),
                },
            }
        },
    }
    document: dict[str, Any] = {
        "openapi": "3.1.0",
        "info": {
            "title": "onex metadata stamping API",
            "version": API_VERSION,
            "description": f"Stamps content with BLAKE3 metadata stamps through onex workflows. Bodies are limited to "
            f"{max_body} bytes; every JSON response is one envelope.",
        },
        "servers": [{"url": "/"}],
        "paths": paths,
        "components": {"schemas": schemas},
    }
    if api_key:
        document["components"]["securitySchemes"] = {"bearerAuth": {"type": "http", "scheme": "bearer"}}
    return document
