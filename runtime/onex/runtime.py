"""Hosting: build the bus and store from settings, instantiate nodes from contracts, start, drain, stop.

On the memory bus one process hosts every node. On Kafka, ``--node`` picks the nodes this process hosts and
several processes hosting the same node form one consumer group. Startup subscribes every hosted node before any
of them announces itself, so no node publishes to a consumer that has not subscribed yet. Shutdown (SIGINT or
SIGTERM) drains: subscriptions stop taking messages, in-hand messages finish, buffered aggregates are flushed,
and only then is the bus closed.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import signal
import time
from collections.abc import Callable, Sequence
from types import TracebackType

from onex.bus import EventBus, MemoryBus
from onex.clock import SYSTEM_CLOCK, Clock
from onex.contracts import Contract, ContractSet, load_contracts, resolve_implementation
from onex.envelope import IdSource, OnexEnvelopeV1, new_id
from onex.exceptions import OnexError, StoreError
from onex.logs import event
from onex.nodes import Node, RegistryNode
from onex.settings import Settings, redact_url
from onex.store import Store, dead_letter_row
from onex.stores import open_store

# Consumers start before producers so that the first events published find their subscribers.
START_ORDER = ("database_adapter_effect", "registry", "reducer", "stamping_effect", "orchestrator")

_log = logging.getLogger("onex.runtime")


def tune_gc() -> None:
    """Tune the cyclic garbage collector for a process that hosts nodes (called by ``onex run`` / ``onex stamp``).

    The hot path allocates many short-lived, acyclic objects (envelopes, payload models, rows) while thousands of
    in-flight messages stay alive in bus buffers; with CPython's default thresholds the collector rescans that live
    set over and over. Raising the young-generation threshold and freezing everything allocated at startup
    (imports, contracts, compiled schemas) cut the end-to-end CPU per item by about a third in ``bench/e2e.py``.
    Reference cycles are still collected, just in larger, rarer sweeps. A young generation of 100,000 rather than
    20,000 objects took another ~5-8% off (bench/e2e.py, 2 cores).
    """
    gc.collect()
    gc.freeze()
    gc.set_threshold(100_000, 50, 1_000)


def open_bus(settings: Settings) -> EventBus:
    """The bus for ``settings.bus``: ``memory://`` or ``kafka://HOST:PORT[,HOST:PORT]``."""
    if settings.bus.startswith("memory:"):
        return MemoryBus(partitions=settings.partitions, buffer_size=settings.buffer_size)
    if settings.bus.startswith("kafka:"):
        from onex._kafka import KafkaBus

        return KafkaBus.from_url(settings.bus)  # type: ignore[no-any-return,unused-ignore]
    raise OnexError(f"unsupported bus URL {settings.bus!r}: expected memory:// or kafka://HOST:PORT")


def select(contracts: ContractSet, names: Sequence[str] | None, version: str | None = None) -> list[Contract]:
    """The contracts to host: the named ones (highest version unless ``version``), or every node's highest when
    ``names`` is None (an empty list hosts nothing: a pure client of a deployment)."""
    wanted = list(names) if names is not None else contracts.names()
    chosen = [contracts.get(name, version) for name in wanted]
    order = {name: i for i, name in enumerate(START_ORDER)}
    return sorted(chosen, key=lambda c: order.get(c.name, -1))


class Runtime:
    """Hosts nodes in this process. An async context manager: ``async with Runtime(settings) as rt: ...``.

    ``bus`` and ``store`` may be passed in (tests, the harness); otherwise they are opened from ``settings`` and
    closed by the runtime. The embedded SQLite default is migrated automatically. ``clock`` (``onex.clock``; the
    system's by default) is every hosted node's clock, ``ids`` its source of ids that are not derived.
    """

    def __init__(
        self,
        settings: Settings,
        *,
        nodes: Sequence[str] | None = None,
        version: str | None = None,
        contracts: ContractSet | None = None,
        bus: EventBus | None = None,
        store: Store | None = None,
        clock: Clock | None = None,
        ids: IdSource | None = None,
    ) -> None:
        self.settings = settings
        self.clock = clock or SYSTEM_CLOCK  # handed to every hosted node: its timers read and wait through it
        self.ids = ids or new_id  # handed to every hosted node: the ids it makes that are not derived
        self.contracts = contracts or load_contracts(settings.root)
        self.selected = select(self.contracts, nodes, version)
        self._own_bus = bus is None
        self._own_store = store is None
        self.bus = bus or open_bus(settings)
        self.store = store or open_store(settings.store_url())
        self.nodes: list[Node] = []
        self.bus.on_dead_letter(self._alert_on_dead_letters)
        if not self.bus.retains_messages:  # the memory bus: dead letters die with the process unless kept
            self.bus.on_dead_letter(self._keep_dead_letter)
        self._alerted: set[str] = set()  # ids of the nodes whose dead-letter alert was logged and not cleared yet
        # starting -> running -> draining -> stopped; /readyz is 200 only while running.
        self.phase = "starting"
        self._summary: asyncio.Task[None] | None = None
        self._summarised: dict[str, tuple[int, int]] = {}  # node id -> (handled, failed) at the last summary
        self._summarised_at = time.monotonic()

    def node(self, name: str) -> Node:
        for n in self.nodes:
            if n.contract.name == name:
                return n
        raise LookupError(
            f"node {name!r} is not hosted here (hosted: {', '.join(n.contract.name for n in self.nodes)})"
        )

    async def _alert_on_dead_letters(self, group: str, event_type: str, letter: OnexEnvelopeV1) -> None:
        """The dead-letter alert: count ``letter`` for the hosted node of ``group``; the one that raises the alert
        logs an ERROR line and sends a DEGRADED heartbeat at once (the registry, ``onex ps``, /readyz see it)."""
        for node in self.nodes:
            if node.group != group or not node.dlq_alert.record():
                continue
            self._alerted.add(node.node_id)
            alert = node.dlq_alert
            event(
                _log,
                logging.ERROR,
                "dlq_alert",
                f"dead-letter alert: {alert.describe()}",
                node=node.node_id,
                threshold=alert.threshold,
                window_s=alert.window_s,
                event_type=event_type,
                topic=letter.payload.get("original_topic"),
            )
            with contextlib.suppress(OnexError):
                await node.publish_heartbeat()

    def _clear_alerts(self) -> None:
        for node in self.nodes:
            if node.node_id in self._alerted and not node.dlq_alert.raised():
                self._alerted.discard(node.node_id)
                event(_log, logging.INFO, "dlq_alert_cleared", "dead-letter alert cleared", node=node.node_id)

    async def _keep_dead_letter(self, group: str, event_type: str, letter: OnexEnvelopeV1) -> None:
        """On a bus that keeps no messages (memory), keep each dead letter in the store for ``onex dlq``."""
        try:
            await self.store.add_dead_letters([dead_letter_row(letter, group=group)])
        except Exception as exc:  # the bus goes on either way; say which letter is lost
            event(
                _log,
                logging.ERROR,
                "dead_letter_not_kept",
                f"dead letter {letter.event_id} could not be kept in the store: {exc}",
                event_id=str(letter.event_id),
                event_type=event_type,
                group=group,
            )

    async def start(self) -> None:
        from onex import __version__  # the package imports this module first

        event(
            _log,
            logging.INFO,
            "process_start",
            f"onex {__version__}: bus {redact_url(self.settings.bus)}, store {redact_url(self.store.url)}",
            bus=redact_url(self.settings.bus),
            store=redact_url(self.store.url),
        )
        if self._own_store:
            await self.store.open()
            if self.settings.store_url().startswith("sqlite:"):
                await self.store.upgrade()
        if self.selected:
            # Refuse to start nodes on a store they cannot use (a schema that needs `onex db upgrade`): they would
            # do their work (stamp files) and only then fail to record it. An unreachable server is not refused:
            # the database adapter holds its writes until it answers.
            health = await self.store.health()
            if health.status == "down":
                raise StoreError(health.detail)
        if self._own_bus:
            await self.bus.start()
        for contract in self.selected:
            cls = resolve_implementation(contract, root=self.settings.root)
            node = cls(contract, bus=self.bus, store=self.store, settings=self.settings, clock=self.clock, ids=self.ids)
            if not isinstance(node, Node):
                raise OnexError(f"{contract.implementation_path} is not an onex.nodes.Node")
            self.nodes.append(node)
        for node in self.nodes:
            event(
                _log, logging.INFO, "start", f"starting {node.contract.name} {node.contract.version}", node=node.node_id
            )
            await node.start()
        for node in self.nodes:
            await node.announce()
            event(_log, logging.INFO, "ready", "running and consuming", node=node.node_id, group=node.group)
        self.phase = "running"
        if self.nodes and self.settings.log_summary_s > 0:
            self._summarised_at = time.monotonic()
            self._summary = asyncio.create_task(self._summarise(self.settings.log_summary_s), name="onex-summary")

    async def _summarise(self, every_s: float) -> None:
        """Every ``every_s`` seconds, one line per node that handled or failed anything since the last one."""
        while True:
            await asyncio.sleep(every_s)
            self._summarise_now()

    def _summarise_now(self) -> None:
        self._clear_alerts()
        now = time.monotonic()
        try:
            self.log_summary(self._summarised, now - self._summarised_at)
        except Exception:  # a summary is not worth stopping the summaries for
            _log.exception("could not log the summary")
        self._summarised_at = now

    def log_summary(self, last: dict[str, tuple[int, int]], elapsed_s: float) -> None:
        """Log a ``summary`` line for each node whose (handled, failed) moved from ``last`` (updated in place)."""
        retried = getattr(self.bus, "retried_by", {})
        dead = getattr(self.bus, "dead_lettered_by", {})
        lag_of = getattr(self.bus, "lag", None)
        lag = lag_of() if callable(lag_of) else {}
        for node in self.nodes:
            handled, failed = node.meter.totals()
            before = last.get(node.node_id, (0, 0))
            if (handled, failed) == before:
                continue
            last[node.node_id] = (handled, failed)
            event(
                _log,
                logging.INFO,
                "summary",
                "work since the last summary",
                node=node.node_id,
                handled_per_s=round((handled - before[0]) / elapsed_s, 1) if elapsed_s > 0 else None,
                handled=handled,
                failed=failed,
                retried=sum(n for (group, _), n in retried.items() if group == node.group),
                dead_lettered=sum(n for (group, _), n in dead.items() if group == node.group),
                in_flight=node.active_operations,
                consumer_lag=sum(n for (group, _, _), n in lag.items() if group == node.group),
            )

    async def _stop_summary(self) -> None:
        """Stop the summaries, with a last one for the work done since the one before."""
        if self._summary is not None:
            self._summary.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._summary
            self._summary = None
            self._summarise_now()

    def _registries_last(self) -> tuple[list[Node], list[Node]]:
        """(every other node in reverse start order, the registries): registries go down last so that they hear
        the STOPPED heartbeats of the others."""
        others = [n for n in reversed(self.nodes) if not isinstance(n, RegistryNode)]
        return others, [n for n in self.nodes if isinstance(n, RegistryNode)]

    async def _quiesce(self) -> None:
        if isinstance(self.bus, MemoryBus):
            await self.bus.join()

    async def drain(self) -> None:
        """Drain producers first (reverse start order); on the memory bus, wait for quiescence around each, so what a
        drained node published (the reducer's last aggregates) is handled downstream before that node drains.
        Registries keep running until ``stop``."""
        if self.phase != "stopped":
            self.phase = "draining"
        await self._quiesce()
        for node in self._registries_last()[0]:
            event(_log, logging.INFO, "draining", "draining", node=node.node_id)
            await node.drain()
            await self._quiesce()

    async def stop(self) -> None:
        """Drain and stop every node (each announces STOPPED), then the registries, and close what we opened."""
        await self.drain()
        await self._stop_summary()  # the last summary counts what draining handled
        others, registries = self._registries_last()
        for node in others:
            await node.stop()
            event(_log, logging.INFO, "stopped", "stopped", node=node.node_id)
        await self._quiesce()  # the registries record the STOPPED heartbeats
        for node in registries:
            event(_log, logging.INFO, "draining", "draining", node=node.node_id)
            await node.stop()
            event(_log, logging.INFO, "stopped", "stopped", node=node.node_id)
        self.phase = "stopped"
        if self._own_bus:
            await self.bus.aclose()
        if self._own_store:
            await self.store.aclose()

    async def run_until_signal(self, *, ready: Callable[[], object] | None = None) -> None:
        """Run until SIGINT or SIGTERM, then drain and stop.

        ``ready`` is called once the signal handlers are in place: announce readiness from it, so that a signal sent
        as soon as the announcement is seen drains the runtime instead of killing the process.
        """
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            with contextlib.suppress(NotImplementedError, RuntimeError):
                loop.add_signal_handler(sig, stop.set)
        try:
            if ready is not None:
                ready()
            await stop.wait()
        finally:
            for sig in (signal.SIGINT, signal.SIGTERM):
                with contextlib.suppress(NotImplementedError, RuntimeError):
                    loop.remove_signal_handler(sig)

    async def __aenter__(self) -> Runtime:
        try:
            await self.start()
        except BaseException:
            await self.stop()
            raise
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.stop()
