"""The gateway: the handlers of the API's routes (``onex.http.openapi.OPERATIONS``) and the Starlette application.

Every stamp request becomes a STAMP_REQUESTED workflow on the bus, submitted through one long-lived
``StampClient(keep_stamps=True)``; the handler waits for the workflow's outcome and its STAMP_CREATED event and
answers with the stamped content. Hashing and validation need no workflow and are answered here
(``onex.http.content``). Reads come from the store, through the gateway's caches when the project ships their
subcontracts (``subcontracts/caching/gateway_stamps.yaml`` for ``GET /stamp/{hash}``, ``gateway_namespaces.yaml`` for
``GET /namespace/{ns}``; ``ONEX_CACHE_URL`` may put them in Redis, shared by every replica). A gateway hosts no node
to hang them on (``--no-nodes``), so it reads those files itself and listens for their ``invalidate_on`` events on
the bus from its first cached read on, in a consumer group of its own: every gateway drops what any stamp or
aggregate changes, and ``ttl_ms`` bounds what a read between an event and its commit keeps (``onex.cache``).
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import dataclasses
import json
import logging
import math
import re
import time
import uuid
from collections import Counter
from collections.abc import Awaitable, Callable, Mapping
from datetime import datetime
from pathlib import Path
from typing import Any, Final, TypeVar

from pydantic import BaseModel
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles
from swagger_ui_bundle import swagger_ui_path  # type: ignore[import-untyped]  # the package ships no type hints

from onex import stamps
from onex.bus import Subscription
from onex.cache import Cache, open_cache
from onex.client import BATCH_PROCESSED_EVENT, STAMP_VALIDATED_EVENT, StampClient, publish_report, validated_report
from onex.clock import Clock
from onex.contracts import CachingSubcontract, load_subcontract
from onex.envelope import DEAD_LETTER_EVENT, OnexEnvelopeV1, topic_name
from onex.exceptions import BusError, OnexError, StoreError, StoreUnavailable
from onex.http.bodies import Part, PartData, PartEnd, form_events, is_json, media_type, read_body, read_form
from onex.http.content import StreamingHash, check_protocol, hash_content, maybe_thread, verify, version_problem
from onex.http.metastore import MetastoreApi
from onex.http.models import (
    AGGREGATION_PATTERN,
    DEFAULT_BATCH_LIMIT,
    DEFAULT_MAX_BODY,
    DEFAULT_MAX_STREAM,
    DEFAULT_NAME,
    DEFAULT_TIMEOUT_S,
    FILE_PATH_PATTERN,
    HASH_PATTERN,
    MAX_PAGE,
    NAMESPACE_PATTERN,
    RETRY_LATER,
    AggregateWindowView,
    ApiError,
    BatchItem,
    BatchRequest,
    BatchResult,
    BatchSummary,
    BusView,
    Error,
    HashRequest,
    HashResult,
    Health,
    ItemError,
    NamespacePage,
    NamespaceWindows,
    NodeView,
    ProtocolRequest,
    RegistryView,
    StampRecords,
    StampRequest,
    StampResult,
    StoreView,
    ValidateRequest,
    ValidateResult,
    bus_unavailable,
    dumps,
    envelope,
    error_response,
    parse,
    store_unavailable,
)
from onex.http.observe import Metrics, Observe
from onex.http.openapi import DOCS, OPERATIONS, PREFIX, openapi_30, openapi_document
from onex.metastore.service import CONTRACT as METASTORE_CONTRACT
from onex.metastore.service import Metastore
from onex.metrics import cache_text, readiness
from onex.runtime import Runtime
from onex.settings import DEFAULT_TENANT, Settings
from onex.store import MAX_OFFSET, StoreHealth

M = TypeVar("M", bound=BaseModel)
T = TypeVar("T")
Endpoint = Callable[[Request], Awaitable[Response]]

_NAMESPACE_RE: Final = re.compile(NAMESPACE_PATTERN)
_HASH_RE: Final = re.compile(HASH_PATTERN)
_AGGREGATION_RE: Final = re.compile(AGGREGATION_PATTERN)
_log = logging.getLogger("onex.http")
# The gateway's caches: their subcontracts, under the project root; a project without them reads the store each time.
STAMP_CACHE: Final = "subcontracts/caching/gateway_stamps.yaml"
NAMESPACE_CACHE: Final = "subcontracts/caching/gateway_namespaces.yaml"
# A store read waits at least this long, whatever timeout_s (0 in tests, for workflows that are to time out at once).
_MIN_READ_S: Final = 1.0


def _iso(value: datetime | None) -> str | None:
    return None if value is None else value.isoformat()


def gateway_cache(settings: Settings, clock: Clock, path: str) -> Cache | None:
    """The cache the subcontract at ``path`` (under the project root) describes, if the project has it."""
    file = settings.root / path
    if not file.is_file():
        return None
    spec = load_subcontract(file, root=settings.root)
    if not isinstance(spec, CachingSubcontract):
        raise OnexError(f"{path}: a caching subcontract was expected, not {spec.subcontract_type}")
    return open_cache(
        spec, name="gateway", clock=clock, tenant=settings.tenant, env=settings.env, url=settings.cache_url
    )


def _metastore(runtime: Runtime, settings: Settings) -> tuple[Metastore | None, bool]:
    """The metastore the API serves and whether the gateway owns it: the hosted metastore effect's (the node's),
    else one of the gateway's own (``--no-nodes``); None when the project has no metastore contract."""
    for node in runtime.nodes:
        hosted = getattr(node, "metastore", None)
        if isinstance(hosted, Metastore):
            return hosted, False
    if (settings.root / METASTORE_CONTRACT).is_file():
        return Metastore(runtime.store, runtime.bus, settings=settings, clock=runtime.clock), True
    return None, False


class Gateway:
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
        # Every key the API accepts and its metastore tenant: `api_key` (tenant "default") and settings.api_keys.
        self.keys = settings.tenant_keys()
        if api_key:
            self.keys.setdefault(api_key, DEFAULT_TENANT)
        metastore, owned = _metastore(runtime, settings)
        self.metastore = MetastoreApi(metastore, runtime, keys=self.keys, max_body=max_body, owned=owned)
        self.max_body = max_body
        self.max_stream = max_stream
        self.batch_limit = batch_limit
        self.timeout_s = timeout_s
        self.metrics = Metrics()
        self.stamp_cache = gateway_cache(settings, runtime.clock, STAMP_CACHE)
        self.namespace_cache = gateway_cache(settings, runtime.clock, NAMESPACE_CACHE)
        self._listening: set[int] = set()  # id() of the caches that hear their invalidations
        self._subscriptions: list[Subscription] = []
        self._listener: asyncio.Future[None] | None = None
        self._listen_lock = asyncio.Lock()
        self._openapi: bytes | None = None
        self._openapi_30: bytes | None = None
        # Shutdown (``drain``): requests wait for their workflows until _drain_by at the latest; _let_go, once it has
        # passed, abandons those still waiting (_awaiting, their ids) so that each is answered.
        self._awaiting: set[uuid.UUID] = set()
        self._drain_by = math.inf
        self._let_go = False

    # -- plumbing --
    @property
    def caches(self) -> list[Cache]:
        return [cache for cache in (self.stamp_cache, self.namespace_cache) if cache is not None]

    async def listen(self) -> None:
        """Subscribe the caches to their invalidations (once each); cached reads start it and read the store until
        it returned. BusError if the bus refuses."""
        async with self._listen_lock:
            for index, cache in enumerate(self.caches):
                if id(cache) not in self._listening:
                    group = f"onex.gateway.{self.client.group}.cache.{index}"  # this process's: it hears everything
                    await cache.listen(self.runtime.bus, group, {}, self._topic, into=self._subscriptions)
                    self._listening.add(id(cache))

    async def _listen_quietly(self) -> None:
        try:
            await self.listen()
        except BusError as exc:  # the next cached read tries again
            _log.warning("the gateway's caches cannot hear their invalidations yet, reading the store: %s", exc)

    async def aclose(self) -> None:
        """Stop listening for invalidations and close the caches (their Redis connections), and the metastore."""
        with contextlib.suppress(BusError):
            await self.metastore.aclose()
        if self._listener is not None:
            self._listener.cancel()
            with contextlib.suppress(asyncio.CancelledError, BusError):
                await self._listener
        for subscription in self._subscriptions:
            with contextlib.suppress(BusError):
                await subscription.aclose()
        self._subscriptions.clear()
        for cache in self.caches:
            await cache.aclose()

    def _topic(self, event_name: str) -> str:
        known = self.client.catalog.events.get(event_name)
        settings = self.settings
        return known.topic if known is not None else topic_name(event_name, env=settings.env, tenant=settings.tenant)

    async def _read(self, cache: Cache | None, lookup: str, load: Callable[[], Awaitable[Any]], **fields: Any) -> Any:
        """``load()`` as JSON, through ``cache`` once it hears its invalidations; read through until it does."""
        if cache is None:
            return json.loads(dumps(await load()))
        if id(cache) not in self._listening:
            # Joining a group takes a Kafka broker seconds: not on this request's time. Without the invalidations
            # nothing may be cached, so reads go to the store until the subscriptions are in place.
            if self._listener is None or self._listener.done():
                self._listener = asyncio.ensure_future(self._listen_quietly())
            return json.loads(dumps(await load()))

        async def encoded() -> Any:
            return json.loads(dumps(await load()))

        return await cache.lookup(lookup, encoded, **fields)

    async def _bounded(self, read: Awaitable[T]) -> T:
        """A store read, given the request's time (``timeout_s``, at least ``_MIN_READ_S``) and no more: a store
        that does not answer (a connection that hangs, a lock) is ``StoreUnavailable``, as one that refuses."""
        wait = max(self.timeout_s, _MIN_READ_S)
        try:
            async with asyncio.timeout(wait):
                return await read
        except TimeoutError:
            raise StoreUnavailable(f"no answer within {wait:g} s") from None

    def drain(self, within: float) -> None:
        """The server is shutting down: a request waits for its workflow ``within`` seconds more at most, then is
        answered 504 with the workflow's id (it keeps running). ``serve`` calls it with less than its grace: a request
        the server cancels when the grace runs out gets a bare 500, and its client never learns the workflow's id."""
        self._drain_by = time.monotonic() + within
        asyncio.get_running_loop().call_later(within, self._release)

    def _release(self) -> None:
        self._let_go = True
        for cid in list(self._awaiting):
            self.client.abandon(cid)  # its waiter's outcome() raises CancelledError: see _result

    def _released(self) -> bool:
        """Whether a CancelledError came from ``_release`` (abandon cancelled the future waited on) rather than from
        the request's task being cancelled, which must go on."""
        task = asyncio.current_task()
        return self._let_go and (task is None or not task.cancelling())

    def _left_running(self, cid: uuid.UUID, state: str) -> ApiError:
        self.metrics.outcomes["timed_out"] += 1
        return ApiError(
            504,
            "workflow_timeout",
            f"the gateway is shutting down: workflow {cid} keeps running and its stamp will be stored "
            "(GET /stamp/{hash} finds it)",
            data={"workflow_id": str(cid), "state": state},
        )

    def authorized(self, headers: Mapping[str, str]) -> bool:
        return not self.keys or self.metastore.key_tenant(headers) is not None

    def endpoint(self, handler: Endpoint) -> Endpoint:
        async def handle(request: Request) -> Response:
            try:
                return await handler(request)
            except ApiError as exc:
                return error_response(request, exc)

        return handle

    def _handler(self, name: str) -> Endpoint:
        """An operation's handler: a method of the gateway, or ``metastore.NAME`` one of its ``MetastoreApi``."""
        owner, _, method = name.rpartition(".")
        handler: Endpoint = getattr(self.metastore if owner == "metastore" else self, method)
        return handler

    async def start(self) -> None:
        """Start what the gateway serves beyond the runtime: the metastore, hearing every process's changes."""
        await self.metastore.start()

    def routes(self) -> list[Route | Mount]:
        """The API's routes (``OPERATIONS``), then those of the document and of ``/docs``."""
        api = [Route(op.route, self.endpoint(self._handler(op.handler)), methods=[op.method]) for op in OPERATIONS]
        return [
            *api,
            Route(f"{PREFIX}/openapi.json", self.openapi, methods=["GET"]),
            Route("/openapi.json", self.openapi, methods=["GET"]),
            Route(DOCS, self.docs, methods=["GET"]),
            Route(f"{DOCS}/init.js", self.docs_script, methods=["GET"]),
            Route(f"{DOCS}/openapi.json", self.openapi_30, methods=["GET"]),
            Mount(f"{DOCS}/static", StaticFiles(directory=Path(str(swagger_ui_path))), name="swagger-ui"),
        ]

    async def _json(self, request: Request, model: type[M]) -> M:
        return parse(model, await read_body(request, self.max_body))

    @staticmethod
    def _unsupported(request: Request, allowed: str) -> ApiError:
        return ApiError(
            415,
            "unsupported_media_type",
            f"Content-Type {media_type(request) or '(none)'} is not accepted here; send {allowed}",
            field="content-type",
        )

    # -- workflows --
    async def _submit(self, item: StampRequest, *, prefix: str = "") -> uuid.UUID:
        _check_versions(item, prefix)
        payload: dict[str, Any] = {
            "namespace": item.namespace,
            "stamp_type": item.options.stamp_type,
        }
        if item.content_base64 is not None:
            payload["content_base64"] = item.content_base64
        else:
            payload["content"] = item.content
        if item.file_path is not None:
            payload["file_path"] = item.file_path
        author = (item.metadata or {}).get("author")
        if isinstance(author, str) and author.strip():
            payload["author"] = author
        try:
            # The runtime's ids: time-ordered (version 7), so the rows keyed by the workflow's id are written at the
            # end of their indexes (README, Idempotency), and a Runtime(ids=...) applies to workflows over HTTP too.
            return await self.client.submit(payload, correlation_id=self.runtime.ids())
        except BusError as exc:
            raise bus_unavailable(f"the event bus refused the request: {exc}") from None

    async def _result(self, cid: uuid.UUID, deadline: float) -> StampResult:
        """The stamp of a submitted workflow once it completed; ApiError if it failed or did not finish in time, or
        the server is shutting down (``drain``)."""
        until = min(deadline, self._drain_by)
        awaiting = self._awaiting
        awaiting.add(cid)
        try:
            try:
                outcome = await self.client.outcome(cid, timeout=max(until - time.monotonic(), 0.0))
            except asyncio.CancelledError:  # the server is shutting down, or gave up on this request
                self.client.abandon(cid)
                if self._released():
                    raise self._left_running(cid, "processing") from None
                raise
            except TimeoutError:
                self.client.abandon(cid)
                if until < deadline:  # the shutdown's, not the request's
                    raise self._left_running(cid, "processing") from None
                self.metrics.outcomes["timed_out"] += 1
                if (unreachable := await self.runtime.bus.unreachable()) is not None:
                    # The request may only be queued in this process: "it keeps running" would be a promise.
                    raise bus_unavailable(
                        f"workflow {cid} did not complete within {self.timeout_s:g} s, and {unreachable}: the request "
                        "may not have reached any node",
                        data={"workflow_id": str(cid), "state": "unknown"},
                    ) from None
                raise ApiError(
                    504,
                    "workflow_timeout",
                    f"workflow {cid} did not complete within {self.timeout_s:g} s; "
                    "it keeps running and its stamp will be stored",
                    data={"workflow_id": str(cid), "state": "processing"},
                ) from None
            try:
                return await self._completed(cid, outcome, until)
            except asyncio.CancelledError:  # waiting for its stamp
                if self._released():
                    raise self._left_running(cid, "completed") from None
                raise
            finally:
                self.client.forget(cid)
        finally:
            awaiting.discard(cid)

    async def _completed(self, cid: uuid.UUID, outcome: OnexEnvelopeV1, deadline: float) -> StampResult:
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
            # The bridge's StampResponse (O.N.E. v0.1): what its clients read.
            "file_hash": stamp.file_hash,
            "stamp_data": {
                "hash": stamp.file_hash,
                "namespace": stamp.namespace,
                "timestamp": str(fields.get("ts") or fields.get("last_modified_at") or ""),
                "protocol_version": self.settings.protocol_version,
                "file_metadata": {"file_type": stamp.file_type, "size": stamp.file_size, "mode": stamp.file_mode},
            },
            "op_id": str(cid),
            "metadata_version": self.settings.metadata_version,
            # The stamp's own event is what this answer was built from, so it went out.
            "event_published": True,
        }

    # -- endpoints --
    async def stamp(self, request: Request) -> Response:
        kind = media_type(request)
        if kind == "multipart/form-data":
            form = await read_form(
                request, self.max_body, file_fields=("file",), text_fields=("namespace", "file_path", "stamp_type")
            )
            if len(form.files) != 1:
                raise ApiError(422, "validation_error", "file: exactly one file part is required", field="file")
            _, filename, data = form.files[0]
            raw: dict[str, Any] = {"options": {}}
            try:
                raw["content"] = data.decode()
            except UnicodeDecodeError:  # not text: a sidecar stamp, the bytes unchanged
                raw["content_base64"] = base64.b64encode(data).decode("ascii")
            if "namespace" in form.fields:
                raw["namespace"] = form.fields["namespace"]
            if form.fields.get("file_path") or filename:
                raw["file_path"] = form.fields.get("file_path") or filename
            if "stamp_type" in form.fields:
                raw["options"]["stamp_type"] = form.fields["stamp_type"]
            item = parse(StampRequest, raw)
        elif is_json(kind):
            item = await self._json(request, StampRequest)
        else:
            raise self._unsupported(request, "application/json or multipart/form-data")
        deadline = time.monotonic() + self.timeout_s
        cid = await self._submit(item)
        result = await self._result(cid, deadline)
        return envelope(request, result, message=f"{result['status']}: workflow {cid} completed")

    async def batch(self, request: Request) -> Response:
        if not is_json(media_type(request)):
            raise self._unsupported(request, "application/json")
        body = await self._json(request, BatchRequest)
        if len(body.items) > self.batch_limit:
            raise ApiError(422, "validation_error", f"items: at most {self.batch_limit} items per batch", field="items")
        _check_versions(body, "")
        deadline = time.monotonic() + self.timeout_s
        batch_id = self.runtime.ids()
        # The batch's namespace and options, for the items that do not give theirs (the bridge's shape).
        shared: dict[str, Any] = {}
        if body.namespace is not None:
            shared["namespace"] = body.namespace
        if body.options is not None:
            shared["options"] = body.options.model_dump()
        results: list[BatchItem] = []
        pending: list[tuple[int, uuid.UUID]] = []
        ids: list[str | None] = []
        namespaces: set[str] = set()
        for index, raw in enumerate(body.items):
            item_id = raw.get("id") if isinstance(raw, dict) and isinstance(raw.get("id"), str) else None
            ids.append(item_id)
            try:
                if not isinstance(raw, dict):
                    raise ApiError(422, "validation_error", f"items.{index}: must be an object", field=f"items.{index}")
                item = parse(StampRequest, {**shared, **raw}, prefix=f"items.{index}")
                namespaces.add(item.namespace)
                pending.append((index, await self._submit(item, prefix=f"items.{index}.")))
                results.append({"index": index, "id": item_id, "status": "success", "data": None, "error": None})
            except ApiError as exc:
                results.append(self._item_error(index, item_id, exc))
        for position, (index, cid) in enumerate(pending):
            try:
                results[index] = {
                    "index": index,
                    "id": ids[index],
                    "status": "success",
                    "data": await self._result(cid, deadline),
                    "error": None,
                }
            except ApiError as exc:
                results[index] = self._item_error(index, ids[index], exc)
            except asyncio.CancelledError:
                for _, later in pending[position + 1 :]:
                    self.client.abandon(later)
                raise
        succeeded = sum(1 for r in results if r["status"] == "success")
        summary: BatchSummary = {"total": len(results), "succeeded": succeeded, "failed": len(results) - succeeded}
        report = {
            "batch_id": batch_id,
            "total": len(results),
            "successful": succeeded,
            "failed": len(results) - succeeded,
            "namespace": namespaces.pop() if len(namespaces) == 1 else "*",
        }
        published = await self._report(BATCH_PROCESSED_EVENT, [report])
        data: BatchResult = {
            "batch_id": str(batch_id),
            "items": results,
            "summary": summary,
            "event_published": published,
        }
        if succeeded == len(results):
            return envelope(request, data, message=f"{succeeded} item(s) stamped")
        if succeeded:
            return envelope(request, data, status="partial", message=f"{succeeded} of {len(results)} item(s) stamped")
        # Nothing succeeded: the items' own status when they share one (all timed out: 504), else 422.
        statuses = {r["error"]["http_status"] for r in results if r["error"] is not None}
        http_status = statuses.pop() if len(statuses) == 1 else 422
        return envelope(
            request,
            data,
            status="error",
            http_status=http_status,
            message="no item could be stamped",
            error={"code": "batch_failed", "field": "items"},
            headers=RETRY_LATER if http_status == 503 else None,
        )

    @staticmethod
    def _item_error(index: int, item_id: str | None, exc: ApiError) -> BatchItem:
        error: ItemError = {"code": exc.code, "field": exc.field, "message": exc.message, "http_status": exc.status}
        if exc.details:
            error["details"] = exc.details
        return {"index": index, "id": item_id, "status": "error", "data": exc.data, "error": error}

    async def _report(self, event_name: str, payloads: list[dict[str, Any]]) -> bool:
        """Publish the stamping service's report ``event_name``; whether it went out (a report that cannot be sent
        is logged, and never fails the request whose work is done)."""
        client = self.client
        return await publish_report(
            client.bus, client.catalog, self.settings, event_name, payloads, source="onex-gateway"
        )

    async def validate(self, request: Request) -> Response:
        kind = media_type(request)
        documents: list[tuple[bytes, str, bytes | None]] = []
        namespace = stamps.DEFAULT_NAMESPACE
        if kind == "multipart/form-data":
            form = await read_form(request, self.max_body, file_fields=("file",), text_fields=())
            if not form.files:
                raise ApiError(422, "validation_error", "file: at least one file part is required", field="file")
            for _, filename, data in form.files:
                name = filename or DEFAULT_NAME
                if not re.fullmatch(FILE_PATH_PATTERN, name):
                    raise ApiError(422, "validation_error", "file: bad file name", field="file")
                documents.append((data, name, None))
        elif is_json(kind):
            body = await self._json(request, ValidateRequest)
            namespace = body.namespace
            sidecar = body.sidecar.encode() if body.sidecar is not None else None
            documents.append((body.content.encode(), body.file_path or DEFAULT_NAME, sidecar))
        else:
            raise self._unsupported(request, "application/json or multipart/form-data")
        size = sum(len(d) for d, _, _ in documents)
        results = await maybe_thread(size, lambda: [verify(d, n, s) for d, n, s in documents])
        summary = Counter(r["status"] for r in results)
        validated = [
            validated_report(
                r["file_path"], r["status"], expected=r["expected_hash"], actual=r["actual_hash"], namespace=namespace
            )
            for r in results
        ]
        report: ValidateResult = {
            "results": results,
            "summary": {
                "valid": summary["valid"],
                "modified": summary["modified"],
                "unstamped": summary["unstamped"],
                "error": summary["error"],
            },
            "event_published": await self._report(STAMP_VALIDATED_EVENT, validated),
        }
        return envelope(request, report, message=", ".join(f"{n} {k}" for k, n in sorted(summary.items())))

    async def hash(self, request: Request) -> Response:
        started = time.perf_counter()
        kind = media_type(request)
        if kind == "multipart/form-data":
            result = await self._hash_stream(request)
        elif is_json(kind):
            body = await self._json(request, HashRequest)
            data = body.content.encode()
            name = body.file_path or DEFAULT_NAME
            result = await maybe_thread(len(data), lambda: hash_content(data, name))
        else:
            raise self._unsupported(request, "application/json or multipart/form-data")
        # The bridge's HashResponse (O.N.E. v0.1): what its clients read. Reading a multipart file and hashing it
        # are one stream, so the time is of both.
        result["file_hash"] = result["hash"]
        result["file_size_bytes"] = result["size"]
        result["execution_time_ms"] = round((time.perf_counter() - started) * 1000, 3)
        return envelope(request, result, message=f"blake3 {result['hash']}")

    async def _hash_stream(self, request: Request) -> HashResult:
        """The one ``file`` part hashed as it arrives: memory holds one chunk (and the head) whatever its size."""
        hasher: StreamingHash | None = None
        result: HashResult | None = None
        async for event in form_events(request, self.max_stream):
            if isinstance(event, Part):
                if event.name != "file":
                    raise ApiError(422, "validation_error", f"{event.name}: unexpected field", field=event.name)
                if result is not None:
                    raise ApiError(422, "validation_error", "file: exactly one file part is accepted", field="file")
                hasher = StreamingHash(event.filename or DEFAULT_NAME)
            elif isinstance(event, PartData) and hasher is not None:
                hasher.update(event.data)
            elif isinstance(event, PartEnd) and hasher is not None:
                result = hasher.result()
                hasher = None
        if result is None:
            raise ApiError(422, "validation_error", "file: a file part is required", field="file")
        return result

    async def validate_protocol(self, request: Request) -> Response:
        if not is_json(media_type(request)):
            raise self._unsupported(request, "application/json")
        body = await self._json(request, ProtocolRequest)
        data = body.content.encode()
        sidecar = body.sidecar.encode() if body.sidecar is not None else None
        result = await maybe_thread(
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

        async def load() -> list[dict[str, Any]]:
            rows = await self._bounded(self.runtime.store.get_stamps_by_hash(file_hash))
            return [dataclasses.asdict(row) for row in rows]

        try:
            rows = await self._read(self.stamp_cache, "stamps_by_hash", load, file_hash=file_hash)
        except StoreError as exc:
            raise store_unavailable(exc) from None
        if not rows:
            raise ApiError(404, "not_found", f"no stamp with hash {file_hash} is stored", field="file_hash")
        records: StampRecords = {"file_hash": file_hash, "count": len(rows), "stamps": rows}
        return envelope(request, records, message=f"{len(rows)} stamp record(s)")

    async def namespace(self, request: Request) -> Response:
        namespace = str(request.path_params["namespace"])
        if not _NAMESPACE_RE.fullmatch(namespace):
            raise ApiError(
                422, "validation_error", "namespace: must be 1-256 characters of [A-Za-z0-9._:/-]", field="namespace"
            )
        limit = self._query_int(request, "limit", 100, 1, MAX_PAGE)
        offset = self._query_int(request, "offset", 0, 0, MAX_OFFSET)

        async def load() -> dict[str, Any]:
            store = self.runtime.store

            async def both() -> dict[str, Any]:
                rows = await store.list_stamps(namespace, limit=limit, offset=offset)
                return {"stamps": rows, "aggregates": await store.get_bridge_state(namespace)}

            return await self._bounded(both())

        try:
            found = await self._read(
                self.namespace_cache, "namespace_page", load, namespace=namespace, limit=limit, offset=offset
            )
        except StoreError as exc:
            raise store_unavailable(exc) from None
        rows, state = found["stamps"], found["aggregates"]
        page: NamespacePage = {
            "namespace": namespace,
            "stamps": rows,
            "pagination": {
                "limit": limit,
                "offset": offset,
                "count": len(rows),
                "next_offset": offset + len(rows) if len(rows) == limit else None,
            },
            "aggregates": state,
        }
        return envelope(request, page, message=f"{len(rows)} stamp(s)")

    async def namespace_windows(self, request: Request) -> Response:
        """The namespace's aggregation windows from the store (not cached: an open window changes with every item)."""
        namespace = str(request.path_params["namespace"])
        if not _NAMESPACE_RE.fullmatch(namespace):
            raise ApiError(
                422, "validation_error", "namespace: must be 1-256 characters of [A-Za-z0-9._:/-]", field="namespace"
            )
        aggregation = request.query_params.get("aggregation")
        if aggregation is not None and not _AGGREGATION_RE.fullmatch(aggregation):
            message = "aggregation: must be 1-256 characters, none a control character"
            raise ApiError(422, "validation_error", message, field="aggregation")
        closed = self._query_bool(request, "closed")
        limit = self._query_int(request, "limit", 100, 1, MAX_PAGE)
        try:
            rows = await self._bounded(
                self.runtime.store.list_aggregate_windows(
                    namespace=namespace, aggregation=aggregation, closed=closed, limit=limit
                )
            )
        except StoreError as exc:
            raise store_unavailable(exc) from None
        windows: list[AggregateWindowView] = [
            {
                "node": row.node,
                "aggregation": row.aggregation,
                "group": row.group,
                "window_id": row.window_id,
                "window_start": _iso(row.window_start),
                "window_end": _iso(row.window_end),
                "closed": row.closed,
                "items": row.items,
                "values": row.values,
                "version": row.version,
                "updated_at": _iso(row.updated_at),
            }
            for row in rows
        ]
        data: NamespaceWindows = {
            "namespace": namespace,
            "aggregation": aggregation,
            "closed": closed,
            "limit": limit,
            "count": len(windows),
            "windows": windows,
        }
        return envelope(request, data, message=f"{len(windows)} window(s)")

    @staticmethod
    def _query_bool(request: Request, name: str) -> bool | None:
        raw = request.query_params.get(name)
        if raw is None:
            return None
        if raw not in ("true", "false"):
            raise ApiError(422, "validation_error", f"{name}: must be true or false", field=name)
        return raw == "true"

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
        state = self.runtime.bus.state.value
        # The kind from the URL's scheme only: a Kafka URL may carry credentials.
        kind = self.runtime.settings.bus.partition(":")[0]
        up = state == "running" and await self.runtime.bus.unreachable() is None  # a broker that answers, on Kafka
        bus: BusView = {"status": "ok" if up else "down", "state": state, "kind": kind}
        try:
            store_health = await self.runtime.store.health()
        except (StoreError, OSError) as exc:
            store_health = StoreHealth("down", str(exc))
        # The store's detail names files and hosts: shown only to callers who could read everything else.
        store: StoreView = {"status": store_health.status, "queued_writes": store_health.queued_writes}
        if self.authorized(request.headers):
            store["detail"] = store_health.detail
        nodes: list[NodeView] = [
            {
                "name": n.contract.name,
                "version": n.contract.version,
                "node_id": n.node_id,
                "lifecycle": str(n.lifecycle.value),
                "health": n.health(),
            }
            for n in self.runtime.nodes
        ]
        registry: RegistryView = {"status": "unknown", "registered": 0, "by_health": {}}
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
        data: Health = {
            "status": "degraded" if degraded else "ok",
            "bus": bus,
            "store": store,
            "registry": registry,
            "nodes": nodes,
            "gateway": {"pending_workflows": self.client.pending},
        }
        if degraded:
            error: Error = {"code": "degraded", "field": None, "details": [{"component": c} for c in degraded]}
            return envelope(
                request, data, status="error", http_status=503, message=f"degraded: {', '.join(degraded)}", error=error
            )
        return envelope(request, data, message="ok")

    async def live(self, request: Request) -> Response:
        return envelope(request, {"status": "live"}, message="live")

    async def ready(self, request: Request) -> Response:
        # A gateway hosting no node is ready when its bus runs (it submits and hears outcomes through it) and the
        # store answers; one hosting nodes is ready when they run, too (readiness() checks those).
        state = self.runtime.bus.state.value
        reason = f"bus {state}" if state != "running" else await readiness(self.runtime)
        if reason is not None:
            raise ApiError(503, "not_ready", f"not ready: {reason}", data={"status": "not_ready", "reason": reason})
        return envelope(request, {"status": "ready"}, message="ready")

    async def prometheus(self, request: Request) -> Response:
        text = self.metrics.render(self.runtime, pending_workflows=self.client.pending)
        caches = [*self.caches, *(node.cache for node in self.runtime.nodes if node.cache is not None)]
        text += cache_text((cache.name, cache.meter) for cache in caches)
        return Response(text, media_type="text/plain; version=0.0.4; charset=utf-8")

    def _document(self) -> dict[str, Any]:
        return openapi_document(batch_limit=self.batch_limit, max_body=self.max_body, api_key=bool(self.keys))

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

    ``api_key`` is a key accepted, as tenant "default" (None: none; ``serve`` passes ``settings.api_key``); the keys
    of ``settings.api_keys`` are accepted too, each as its tenant. The metastore's routes are served when the project
    has its contract; ``await app.state.gateway.start()`` starts it (``serve`` does). ``max_body`` bounds
    every body that is read whole, ``max_stream`` the file streamed by ``/hash``; ``batch_limit`` is the most items
    a batch may hold; ``timeout_s`` is how long a request waits for its workflows (then 504).
    """
    if not client.keep_stamps:
        raise ValueError("the gateway needs a StampClient(keep_stamps=True): it answers with the stamped content")
    gateway = Gateway(
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
        middleware=[
            Middleware(Observe, metrics=gateway.metrics, authorized=gateway.authorized if gateway.keys else None)
        ],
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


def _check_versions(body: StampRequest | BatchRequest, prefix: str) -> None:
    """422 naming the field when a request declares a protocol or metadata version this server does not speak (the
    bridge's clients send ``protocol_version: "1.0"``, ``metadata_version: "0.1"``)."""
    for key in ("protocol_version", "metadata_version"):
        value = getattr(body, key)
        if value is not None and (problem := version_problem(key, value)) is not None:
            raise ApiError(422, "validation_error", f"{prefix}{problem}", field=f"{prefix}{key}")
