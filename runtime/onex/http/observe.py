"""What the gateway sees of every request: the outermost ASGI layer (request id and timing, the API key check, the
request metrics, the access log) and the Prometheus text of its metrics (``GET /metrics``).
"""

from __future__ import annotations

import bisect
import logging
import re
import time
from collections import Counter
from collections.abc import Callable, Mapping
from typing import Final

from starlette.requests import Request
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from onex.envelope import new_id
from onex.http.models import ApiError, error_response
from onex.http.openapi import DOCS, DOCUMENTATION_ROUTES, OPERATIONS, template
from onex.logs import event as log_event
from onex.nodes import OrchestratorNode
from onex.runtime import Runtime

_access_log = logging.getLogger("onex.http")
# An incoming X-Request-ID is kept only if it is short and plain: it goes into log lines and response headers.
_REQUEST_ID_RE: Final = re.compile(rb"[A-Za-z0-9._:-]{1,128}")
_METHODS: Final = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS", "TRACE", "CONNECT"})
_BUCKETS: Final = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)


def _label(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


class Metrics:
    """Request counts and latency histograms by route template (bounded label sets), workflow outcomes."""

    def __init__(self) -> None:
        self.requests: Counter[tuple[str, str, int]] = Counter()
        self.histograms: dict[tuple[str, str], list[float]] = {}  # bucket counts..., then sum, then count
        self.in_flight = 0
        self.outcomes: Counter[str] = Counter()
        self._templates: dict[str, str] = {}  # Starlette's "{namespace:path}" -> "{namespace}"

    def observe(self, method: str, route: str, status: int, seconds: float) -> None:
        route = self._templates.get(route) or self._templates.setdefault(route, template(route))
        self.requests[(method, route, status)] += 1
        histogram = self.histograms.get((method, route))
        if histogram is None:
            histogram = self.histograms[(method, route)] = [0.0] * (len(_BUCKETS) + 2)
        index = bisect.bisect_left(_BUCKETS, seconds)
        if index < len(_BUCKETS):
            histogram[index] += 1
        histogram[-2] += seconds
        histogram[-1] += 1

    def render(self, runtime: Runtime, *, pending_workflows: int) -> str:
        """The Prometheus text exposition (0.0.4) of these metrics, the hosted orchestrators' and the bus's."""
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
        family(
            "onex_http_workflows_pending", "gauge", "Workflows the gateway still waits for (not those it answered 504)."
        )
        out.append(f"onex_http_workflows_pending {pending_workflows}")
        family("onex_workflows", "gauge", "Workflows by FSM state, as counted by the orchestrators hosted here.")
        for node in runtime.nodes:
            if isinstance(node, OrchestratorNode):
                for state, n in sorted(node.workflows_by_state.items()):
                    out.append(
                        f'onex_workflows{{node="{_label(node.contract.name)}",state="{_label(str(state))}"}} {n}'
                    )
        stats = runtime.bus.statistics()
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


class Observe:
    """Outermost ASGI layer: request id and timing, the API key check, the request metrics and the access log.

    Plain ASGI rather than Starlette's ``BaseHTTPMiddleware``, which would run every request in a task of its own
    and buffer streamed bodies through a memory stream."""

    def __init__(
        self, app: ASGIApp, *, metrics: Metrics, authorized: Callable[[Mapping[str, str]], bool] | None
    ) -> None:
        """``authorized`` says whether a request's headers carry the API key (None: no key is required)."""
        self.app = app
        self.metrics = metrics
        self.authorized = authorized
        # What needs no key: the probes and the documentation (which says which routes need it).
        self.public = {op.route for op in OPERATIONS if op.public} | set(DOCUMENTATION_ROUTES)

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
        metrics = self.metrics

        async def send_(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                message.setdefault("headers", []).append((b"x-request-id", request_id.encode()))
            await send(message)

        metrics.in_flight += 1
        try:
            if self.authorized is None or self._is_public(scope["path"]) or self.authorized(Request(scope).headers):
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
    return new_id().hex


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
