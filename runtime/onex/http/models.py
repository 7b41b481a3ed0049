"""The API's shapes: limits and patterns, request bodies, the response envelope and what each route answers with.

Request bodies are pydantic models: they validate what comes in. What goes out is built by the handlers as plain
dicts (no model is built per response on the hot path), typed as the ``TypedDict`` shapes below, so mypy checks every
handler's answer against them; ``onex.http.openapi`` generates the OpenAPI document from these same classes. A field
added to an answer is therefore a field added here, or mypy fails.
"""

from __future__ import annotations

import base64
import binascii
import dataclasses
import json
import time
import uuid
from collections.abc import Mapping, Sequence
from datetime import UTC, date, datetime
from typing import Annotated, Any, Final, Literal, NotRequired, TypeVar

import orjson
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    StringConstraints,
    ValidationError,
    ValidationInfo,
    field_validator,
)
from starlette.requests import Request
from starlette.responses import Response
from typing_extensions import TypedDict  # pydantic reads typing's TypedDict only from Python 3.12

from onex import stamps
from onex._model_reads import PlainReads
from onex.envelope import new_id
from onex.files import FILE_TYPES
from onex.settings import DEFAULT_HTTP_BATCH_LIMIT, DEFAULT_HTTP_MAX_BODY, DEFAULT_HTTP_TIMEOUT_S
from onex.store import MAX_OFFSET

API_VERSION: Final = "v1"
DEFAULT_MAX_BODY: Final = DEFAULT_HTTP_MAX_BODY
DEFAULT_MAX_STREAM: Final = 4 * 1024 * 1024 * 1024
DEFAULT_BATCH_LIMIT: Final = DEFAULT_HTTP_BATCH_LIMIT
DEFAULT_TIMEOUT_S: Final = DEFAULT_HTTP_TIMEOUT_S
DEFAULT_NAME: Final = "content.txt"  # the name content without a file_path is stamped under (as the effect does)

NAMESPACE_PATTERN: Final = r"^[A-Za-z0-9._:/-]{1,256}$"
FILE_PATH_PATTERN: Final = r"^[^\x00-\x1f\x7f]{1,1024}$"
HASH_PATTERN: Final = r"^[0-9a-fA-F]{64}$"
AGGREGATION_PATTERN: Final = r"^[^\x00-\x1f\x7f]{1,256}$"  # an aggregation's name, as its contract spells it
MAX_PAGE: Final = 1000

M = TypeVar("M", bound=BaseModel)

# --- request bodies ----------------------------------------------------------------------------------------------

# Strings are always valid Unicode: pydantic's JSON parser refuses a lone surrogate escape ("\ud800") as malformed
# JSON, and form fields are decoded as strict UTF-8. So whatever passes can be encoded, stamped and stored.
Text = str
Namespace = Annotated[str, StringConstraints(pattern=NAMESPACE_PATTERN)]
FilePath = Annotated[
    str,
    StringConstraints(pattern=FILE_PATH_PATTERN),
    Field(description="Names the content (picks the comment syntax); nothing is read from or written to disk."),
]
StampType = Literal["lightweight", "rich"]
Hash = Annotated[str, Field(pattern="^[0-9a-f]{64}$")]
Count = Annotated[int, Field(ge=0)]


class _Body(PlainReads):
    model_config = ConfigDict(extra="forbid", frozen=True)


_SEED = "Accepted from the bridge's (omninode_bridge) clients; "
# A version as the bridge's clients send it: "1.0", or 1.0 (a number, as YAML and JSON read it).
Version = Annotated[str | float | None, Field(description=_SEED + "must be one this server speaks, or 422.")]


class StampOptions(_Body):
    stamp_type: StampType = "lightweight"
    include_metadata: Annotated[bool, Field(description=_SEED + "every stamp carries its metadata.")] = True
    validate_integrity: Annotated[bool, Field(description=_SEED + "the content is always hashed.")] = True


class StampRequest(_Body):
    """One document to stamp; ``file_path`` only names it (it picks the comment syntax): nothing touches disk.

    ``content`` (text) or ``content_base64`` (bytes that are not UTF-8 text: a sidecar stamp, the bytes unchanged).
    The other fields are the bridge's request fields (O.N.E. v0.1), so that its clients' bodies are accepted."""

    # content_base64 first: content's validator reads it.
    content_base64: Annotated[
        str | None,
        Field(
            description="Bytes that are not UTF-8 text (an image, an archive), base64-encoded: they get a sidecar "
            "stamp, returned as `sidecar`, and are never changed. Instead of `content`."
        ),
    ] = None
    content: Annotated[
        Text | None,
        Field(description="The text to stamp (UTF-8); required unless content_base64 is given.", validate_default=True),
    ] = None
    namespace: Namespace = stamps.DEFAULT_NAMESPACE
    file_path: FilePath | None = None
    options: StampOptions = StampOptions()
    id: Annotated[str | None, Field(max_length=256, description="A batch item's id, returned with its result.")] = None
    metadata: Annotated[
        dict[str, Any] | None,
        Field(description=_SEED + "a string `author` becomes the stamp's author; the rest is not stored."),
    ] = None
    protocol_version: Version = None
    metadata_version: Version = None
    intelligence_data: Annotated[
        dict[str, Any] | None, Field(description=_SEED + "onex stores what the workflow's intelligence step answers.")
    ] = None
    version: Annotated[int | None, Field(description=_SEED + "the store numbers a file's stamps itself.")] = None
    op_id: Annotated[
        str | None, Field(max_length=256, description=_SEED + "onex's op_id is the workflow's id (answered as op_id).")
    ] = None

    @field_validator("content_base64")
    @classmethod
    def _base64(cls, value: str | None) -> str | None:
        if value is not None:
            try:
                base64.b64decode(value, validate=True)
            except (binascii.Error, ValueError):
                raise ValueError("not base64 (RFC 4648, no line breaks)") from None
        return value

    @field_validator("content")
    @classmethod
    def _one_content(cls, value: str | None, info: ValidationInfo) -> str | None:
        # validate_default (below): this runs for a missing content too, so the error names the field.
        given = info.data.get("content_base64") is not None
        if value is None and not given and "content_base64" in info.data:
            raise ValueError("Field required (or content_base64, for bytes that are not text)")
        if value is not None and given:
            raise ValueError("give content (text) or content_base64 (bytes), not both")
        return value


class BatchRequest(_Body):
    """Stamp requests, each validated on its own so that one bad item fails alone (``StampRequest`` each).

    ``namespace`` and ``options``, when given, are those of every item that does not say (the bridge's shape)."""

    items: list[Any] = Field(min_length=1)
    namespace: Namespace | None = None
    options: StampOptions | None = None
    protocol_version: Version = None
    metadata_version: Version = None


class HashRequest(_Body):
    content: Text
    file_path: FilePath | None = None


class ValidateRequest(_Body):
    content: Text
    file_path: FilePath | None = None
    sidecar: Annotated[Text | None, Field(description="The sidecar's YAML, for types without comments.")] = None
    namespace: Annotated[
        Namespace, Field(description="Named in the METADATA_STAMP_VALIDATED event this check publishes.")
    ] = stamps.DEFAULT_NAMESPACE
    options: Annotated[dict[str, Any] | None, Field(description=_SEED + "not used.")] = None


class ProtocolRequest(_Body):
    """``metadata`` (a block given as an object) or ``sidecar`` (a sidecar's YAML) is checked against ``content``;
    without either, the rich block found in ``content`` is."""

    content: Text
    file_path: FilePath | None = None
    sidecar: Text | None = None
    metadata: Annotated[dict[str, Any] | None, Field(description="A metadata block given as an object.")] = None
    target_protocol: Annotated[
        Literal["O.N.E.v0.1"] | None, Field(description=_SEED + "the one protocol checked is O.N.E. v0.1.")
    ] = None
    validation_level: Annotated[
        Literal["strict", "moderate", "lenient"] | None, Field(description=_SEED + "every check is strict.")
    ] = None
    namespace: Annotated[Namespace | None, Field(description=_SEED + "not used.")] = None


# Multipart forms: read part by part (``onex.http.bodies``), described here for the document.


class StampUpload(TypedDict):
    file: Annotated[bytes, Field(description="UTF-8 text, stamped in place; other bytes get a sidecar stamp")]
    namespace: NotRequired[Namespace]
    file_path: NotRequired[FilePath]
    stamp_type: NotRequired[StampType]


class FilesUpload(TypedDict):
    file: bytes


# Path and query parameters: checked by the handlers, described here for the document.


class StampKey(BaseModel):
    file_hash: Annotated[str, Field(pattern=HASH_PATTERN)]


class NamespacePageQuery(BaseModel):
    namespace: Namespace
    limit: Annotated[int, Field(ge=1, le=MAX_PAGE)] = 100
    offset: Annotated[int, Field(ge=0, le=MAX_OFFSET)] = 0


class NamespaceWindowsQuery(BaseModel):
    namespace: Namespace
    aggregation: Annotated[
        str | None, Field(pattern=AGGREGATION_PATTERN, description="Only this aggregation's windows.")
    ] = None
    closed: Annotated[bool | None, Field(description="true: closed windows only; false: open ones only.")] = None
    limit: Annotated[int, Field(ge=1, le=MAX_PAGE)] = 100


# --- the envelope ------------------------------------------------------------------------------------------------


class Error(TypedDict):
    code: str
    field: str | None
    details: NotRequired[list[dict[str, Any]]]


class Metadata(TypedDict):
    request_id: str
    api_version: Literal["v1"]
    timestamp: str
    duration_ms: float | None


class Envelope(TypedDict):
    """Every JSON answer but the OpenAPI document; ``data`` is the route's result."""

    status: Literal["success", "error", "partial"]
    data: Any
    error: Error | None
    message: str
    metadata: Metadata


class ErrorEnvelope(TypedDict):
    """An answer that failed; ``data`` may say more (a workflow's id and state)."""

    status: Literal["error"]
    data: dict[str, Any] | None
    error: Error
    message: str
    metadata: Metadata


class ApiError(Exception):
    """A request that ends in an error response: HTTP status, a stable ``code`` and the field at fault, if any.

    Internal control flow: every handler turns it into a response, so it never leaves this package (and is not an
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


# Retry-After of a 503 for a bus or store that is away: a PostgreSQL store's breaker lets a trial through every 2 s and
# a Kafka client reconnects within seconds; sooner would only add load to what is recovering.
RETRY_AFTER_S: Final = 5
RETRY_LATER: Final = {"Retry-After": str(RETRY_AFTER_S)}


def store_unavailable(exc: Exception) -> ApiError:
    """503 ``store_unavailable``: the store did not answer (it may, later: ``Retry-After``)."""
    return ApiError(503, "store_unavailable", f"the store cannot answer: {exc}", headers=RETRY_LATER)


def bus_unavailable(message: str, data: dict[str, Any] | None = None) -> ApiError:
    """503 ``bus_unavailable``: the event bus refused what was to be published, or cannot reach its broker
    (``Retry-After``)."""
    return ApiError(503, "bus_unavailable", message, data=data, headers=RETRY_LATER)


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


# Datetimes and dataclasses go to ``_jsonable``, as they did with the standard library (orjson's own forms differ).
_ORJSON_OPTIONS: Final = orjson.OPT_PASSTHROUGH_DATACLASS | orjson.OPT_PASSTHROUGH_DATETIME


def dumps(value: Any) -> bytes:
    """``value`` as compact JSON, ``_jsonable`` answering for what JSON has no type for: made by orjson, a stamp's
    answer in 0.7 µs against 11.8 with the standard library (timeit). What orjson refuses (a string holding a lone
    surrogate, integers beyond 64 bits, keys that are not strings, nesting deeper than 254) the standard library
    writes, as before, escaping what is not ASCII (a JSON string cannot carry a lone surrogate any other way).
    Otherwise text that is not ASCII is written as UTF-8 rather than escaped, NaN and Infinity as ``null`` (the
    standard library wrote ``NaN``, which is not JSON), an ``Enum`` as its value: the same to every JSON reader, or
    better."""
    try:
        return orjson.dumps(value, default=_jsonable, option=_ORJSON_OPTIONS)
    except TypeError:  # orjson.JSONEncodeError
        return json.dumps(value, default=_jsonable, separators=(",", ":")).encode()


class JSONResponse(Response):
    media_type = "application/json"

    def render(self, content: Any) -> bytes:
        return content if isinstance(content, bytes) else dumps(content)


def _metadata(request: Request) -> Metadata:
    started = request.scope.get("onex.started")
    return {
        "request_id": request.scope.get("onex.request_id") or new_id().hex,
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
    error: Error | None = None,
    http_status: int = 200,
    headers: Mapping[str, str] | None = None,
) -> JSONResponse:
    """A response in the API's one envelope."""
    body: Envelope = {
        "status": status,
        "data": data,
        "error": error,
        "message": message,
        "metadata": _metadata(request),
    }
    return JSONResponse(dumps(body), status_code=http_status, headers=headers)


def error_response(request: Request, exc: ApiError) -> JSONResponse:
    info: Error = {"code": exc.code, "field": exc.field}
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


def parse(model: type[M], raw: bytes | Mapping[str, Any], *, prefix: str = "") -> M:
    """``raw`` (JSON bytes or a dict) as ``model``; a 422 ``ApiError`` naming the field (under ``prefix``) if not."""
    try:
        if isinstance(raw, bytes):
            return model.model_validate_json(raw)
        return model.model_validate(raw)
    except ValidationError as exc:
        raise _validation_error(exc, prefix) from None


# --- what the routes answer with (the envelope's ``data``) ---------------------------------------------------------


class FileMetadata(TypedDict):
    file_type: Annotated[str, Field(json_schema_extra={"enum": list(FILE_TYPES)})]
    size: Count
    mode: Annotated[str | None, Field(description='Permission bits as octal text ("0644"); null for content.')]


class StampData(TypedDict):
    """The bridge's ``stamp_data`` (O.N.E. v0.1)."""

    hash: Hash
    namespace: str
    timestamp: Annotated[str, Field(description="The stamp's time (its `ts`).")]
    protocol_version: str
    file_metadata: FileMetadata


class StampResult(TypedDict):
    workflow_id: Annotated[str, Field(json_schema_extra={"format": "uuid"})]
    state: Literal["completed"]
    status: Literal["stamped", "unchanged"]
    hash: Hash
    stamp_type: Literal["lightweight", "rich", "sidecar"]
    stamped_content: Annotated[str | None, Field(description="The content with its stamp (sidecar types: unchanged).")]
    stamp: dict[str, Any]
    sidecar: Annotated[
        str | None,
        Field(description="For types without comments: the sidecar to store next to the file as <file>.onex.yaml."),
    ]
    file_path: str
    file_type: Annotated[str, Field(json_schema_extra={"enum": list(FILE_TYPES)})]
    file_size: Count
    namespace: str
    execution_time_ms: float | None
    # The bridge's StampResponse fields (O.N.E. v0.1).
    file_hash: Annotated[Hash, Field(description="The same as `hash`.")]
    stamp_data: StampData
    op_id: Annotated[str, Field(json_schema_extra={"format": "uuid"}, description="The workflow's id.")]
    metadata_version: str
    event_published: Annotated[bool, Field(description="Whether the stamp's STAMP_CREATED event went out.")]


class ItemError(TypedDict):
    """Why one item of a batch failed: what the error envelope says, and the HTTP status it would have had."""

    code: str
    field: str | None
    message: str
    http_status: int
    details: NotRequired[list[dict[str, Any]]]


class BatchItem(TypedDict):
    index: int
    id: Annotated[str | None, Field(description="The item's id, as the request gave it.")]
    status: Literal["success", "error"]
    data: StampResult | dict[str, Any] | None
    error: ItemError | None


class BatchSummary(TypedDict):
    total: int
    succeeded: int
    failed: int


class BatchResult(TypedDict):
    batch_id: Annotated[str, Field(json_schema_extra={"format": "uuid"})]
    items: list[BatchItem]
    summary: BatchSummary
    event_published: Annotated[bool, Field(description="Whether METADATA_BATCH_PROCESSED went out.")]


class StampView(TypedDict):
    uid: str
    hash: str
    ts: str
    kind: str
    fields: dict[str, Any]


class VerifyResult(TypedDict):
    file_path: str
    status: Literal["valid", "modified", "unstamped", "error"]
    expected_hash: str | None
    actual_hash: str | None
    stamp: StampView | None
    error: str | None


class ValidateSummary(TypedDict):
    valid: int
    modified: int
    unstamped: int
    error: int


class ValidateResult(TypedDict):
    results: list[VerifyResult]
    summary: ValidateSummary
    event_published: Annotated[bool, Field(description="Whether METADATA_STAMP_VALIDATED went out (one a result).")]


class HashResult(TypedDict):
    hash: Hash
    algorithm: Literal["blake3"]
    size: Count
    received_bytes: Count
    stamp_removed: bool
    file_path: str
    # The bridge's HashResponse fields, beside onex's own as /stamp carries them. Always in the answer: not required
    # here only because the hashing (``content.StreamingHash``) returns the rest and the route adds them.
    file_hash: NotRequired[Annotated[Hash, Field(description="The same as `hash`.")]]
    file_size_bytes: NotRequired[Annotated[int, Field(ge=0, description="The same as `size`: the bytes hashed.")]]
    execution_time_ms: NotRequired[
        Annotated[float, Field(ge=0, description="Reading and hashing the content, in milliseconds.")]
    ]


class Issue(TypedDict):
    field: str
    code: str
    message: str


class SupportedVersions(TypedDict):
    metadata_version: str
    protocol_version: str


class ProtocolResult(TypedDict):
    valid: bool
    source: Literal["metadata", "sidecar", "content"]
    issues: list[Issue]
    metadata: dict[str, Any] | None
    expected_hash: Any
    actual_hash: str
    supported_versions: SupportedVersions


class StampRecords(TypedDict):
    file_hash: str
    count: Annotated[int, Field(ge=1)]
    stamps: list[dict[str, Any]]


class Pagination(TypedDict):
    limit: int
    offset: int
    count: int
    next_offset: int | None


class NamespacePage(TypedDict):
    namespace: str
    stamps: list[dict[str, Any]]
    pagination: Pagination
    aggregates: dict[str, Any] | None


class AggregateWindowView(TypedDict):
    """One aggregation's result for one group of the namespace in one window (the store's ``AggregateWindowRow``
    without the engine's internal state)."""

    node: str
    aggregation: str
    group: dict[str, Any]
    window_id: Annotated[str, Field(description="Empty for an aggregation without windows (a running total).")]
    window_start: Annotated[str | None, Field(json_schema_extra={"format": "date-time"})]
    window_end: Annotated[str | None, Field(json_schema_extra={"format": "date-time"})]
    closed: bool
    items: Count
    values: dict[str, Any]
    version: int
    updated_at: Annotated[str | None, Field(json_schema_extra={"format": "date-time"})]


class NamespaceWindows(TypedDict):
    """A namespace's aggregation windows, newest window first (running totals last), at most ``limit``."""

    namespace: str
    aggregation: str | None
    closed: bool | None
    limit: int
    count: int
    windows: list[AggregateWindowView]


class BusView(TypedDict):
    status: Literal["ok", "down"]
    state: str
    kind: str


class StoreView(TypedDict):
    status: str
    queued_writes: int
    detail: NotRequired[Annotated[str, Field(description="Only for callers with the API key: it names files.")]]


class RegistryView(TypedDict):
    status: Literal["ok", "unknown"]
    registered: int
    by_health: dict[str, int]


class NodeView(TypedDict):
    name: str
    version: str
    node_id: str
    lifecycle: str
    health: str


class GatewayView(TypedDict):
    pending_workflows: int


class Health(TypedDict):
    status: Literal["ok", "degraded"]
    bus: BusView
    store: StoreView
    registry: RegistryView
    nodes: list[NodeView]
    gateway: GatewayView


class Probe(TypedDict):
    status: Literal["live", "ready", "not_ready"]
    reason: NotRequired[Annotated[str, Field(description="Why the gateway is not ready.")]]
