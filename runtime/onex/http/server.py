"""Serving the gateway: the listening socket, uvicorn in the runtime's event loop, and the connection transport
that sends a response in one write.

``serve`` runs the API on uvicorn until SIGINT/SIGTERM and is what the CLI calls; ``serve_metrics`` runs the
health and metrics endpoints (``onex.metrics.create_app``) on the same kind of server while a block runs.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import socket
import time
from collections.abc import AsyncIterator, Callable, Iterable, Iterator
from typing import Any, Final

import uvicorn
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from onex.client import StampClient
from onex.exceptions import OnexError
from onex.http.app import create_app
from onex.http.bodies import STALLED
from onex.http.models import DEFAULT_MAX_STREAM
from onex.metrics import create_app as create_metrics_app
from onex.runtime import Runtime
from onex.settings import Settings

# A request's head must arrive whole within READ_TIMEOUT_S of the connection or of the response before it (an idle
# connection, a head sent in dribs: closed), and its body may pause no longer than that between two reads (then 408).
# So one slow or silent client holds a connection for seconds, not for good, and no more than that delays a shutdown.
READ_TIMEOUT_S: Final = 5.0
# On SIGTERM uvicorn lets the requests in hand finish for SHUTDOWN_GRACE_S, then cancels them (a bare 500). Those still
# waiting for their workflows are answered DRAIN_S into the shutdown instead: 504, the workflow keeps running.
SHUTDOWN_GRACE_S: Final = 10
DRAIN_S: Final = 8.0


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
    (HTTP connections first, then the client, then the nodes). It holds its connections to ``read_timeout_s``
    (``_HttpProtocol.sweep``), looking at them on uvicorn's tick: no timer per connection or request."""

    def __init__(self, config: uvicorn.Config, *, read_timeout_s: float) -> None:
        super().__init__(config)
        self.read_timeout_s = read_timeout_s
        self._sweep_every = max(1, min(10, int(read_timeout_s * 2)))  # ticks of 0.1 s: each second, or more often

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield

    def sweep(self) -> None:
        now = time.monotonic()
        for connection in list(self.server_state.connections):
            if isinstance(connection, _HttpProtocol):
                connection.sweep(now, self.read_timeout_s)

    async def on_tick(self, counter: int) -> bool:
        if counter % self._sweep_every == 0:
            self.sweep()
        return await super().on_tick(counter)

    async def shutdown(self, sockets: list[socket.socket] | None = None) -> None:
        # uvicorn ticks no more while it waits for the requests in hand: a stalled one would hold it for the grace.
        async def sweeping() -> None:
            while True:
                await asyncio.sleep(self._sweep_every / 10)
                self.sweep()

        sweeper = asyncio.ensure_future(sweeping())
        try:
            await super().shutdown(sockets)
        finally:
            sweeper.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await sweeper


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
    """uvicorn's httptools protocol (the project depends on httptools) writing through a ``_CoalescingTransport``,
    and counting its reads for ``sweep``.

    uvicorn bounds only the wait between a response and the next request (``timeout_keep_alive``): a connection that
    sends nothing, half a head, or half a body would otherwise stay open for good (slowloris)."""

    _reads = 0  # data_received calls: a body that arrived in the meantime is not stalled
    _watched: tuple[object, int | None, float] | None = None  # what the sweeps saw: (cycle, reads, since when)

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]  # as uvicorn's
        coalescing = _CoalescingTransport(transport, asyncio.get_running_loop())
        super().connection_made(coalescing)  # type: ignore[arg-type]  # a transport in all but its class

    def data_received(self, data: bytes) -> None:
        self._reads += 1
        super().data_received(data)

    def sweep(self, now: float, limit: float) -> None:
        """Called every tick or few by ``_Server``: close the connection whose next request's head has not arrived
        within ``limit`` seconds; wake the request whose body has not moved for ``limit`` seconds, marked ``STALLED``
        for ``onex.http.bodies`` to answer 408. What the app is busy with, or what flow control paused, is left be."""
        transport = self.transport
        if transport is None or transport.is_closing():
            return
        cycle = self.cycle
        reads: int | None
        if cycle is None or cycle.response_complete:
            reads = None  # waiting for a head: it must arrive whole, trickling bytes does not help
        elif cycle.more_body and not self.flow.read_paused:
            reads = self._reads  # reading a body: any read is progress
        else:
            self._watched = None
            return
        watched = self._watched
        if watched is None or watched[0] is not cycle or watched[1] != reads:
            self._watched = (cycle, reads, now)
            return
        if now - watched[2] < limit:
            return
        self._watched = None
        if reads is None:
            transport.close()
        else:
            cycle.scope[STALLED] = limit  # type: ignore[typeddict-unknown-key]  # the app's key, as Observe's
            cycle.message_event.set()


def quiet_server(app: Any, *, grace_s: int, read_timeout_s: float = READ_TIMEOUT_S) -> uvicorn.Server:
    """A uvicorn server for ``app`` that leaves logging, signals and the lifespan to onex; a connection must send its
    requests within ``read_timeout_s`` (``_HttpProtocol.sweep``); on shutdown it lets the requests in hand finish for
    ``grace_s`` seconds."""
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
    return _Server(config, read_timeout_s=read_timeout_s)


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
    read_timeout_s: float = READ_TIMEOUT_S,
    drain_s: float = DRAIN_S,
) -> None:
    """Serve the API on ``sock`` (from ``bind``) over a started ``runtime`` until ``stop`` is set, or, without
    ``stop``, until SIGINT/SIGTERM. Then stops accepting connections, finishes the requests in hand (up to
    ``SHUTDOWN_GRACE_S``; those still waiting for their workflows ``drain_s`` in are answered 504 with the workflow's
    id) and leaves the runtime to its owner. ``ready`` is called with the base URL once the socket serves. The limits
    not given come from ``settings`` (``http_max_body``, ``http_batch_limit``, ``http_timeout_s``);
    ``read_timeout_s`` bounds a request's head and the pauses in its body (``READ_TIMEOUT_S``)."""
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
        try:
            await app.state.gateway.start()  # the metastore hears every process's changes before the API answers
        except BaseException:
            await app.state.gateway.aclose()
            raise
        server = quiet_server(app, grace_s=SHUTDOWN_GRACE_S, read_timeout_s=read_timeout_s)
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
            app.state.gateway.drain(drain_s)  # before the grace runs out, so that no request is cancelled unanswered
            server.should_exit = True
            waiting.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await waiting
            try:
                await serving
            finally:
                await app.state.gateway.aclose()  # its caches: invalidation subscriptions, Redis connections


@contextlib.asynccontextmanager
async def serve_metrics(runtime: Runtime, sock: socket.socket) -> AsyncIterator[str]:
    """Serve ``/healthz``, ``/readyz`` and ``/metrics`` on ``sock`` (``bind``) while the block runs; yields the base
    URL."""
    server = quiet_server(create_metrics_app(runtime), grace_s=2)
    task = asyncio.create_task(server.serve(sockets=[sock]), name="onex-metrics")
    try:
        yield base_url(sock)
    finally:
        server.should_exit = True
        await task
