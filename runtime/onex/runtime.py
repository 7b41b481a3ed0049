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
import functools
import gc
import logging
import os
import signal
import sys
import threading
import time
from collections.abc import Awaitable, Callable, Coroutine, Mapping, Sequence
from pathlib import Path
from types import TracebackType
from typing import Any, TypeVar

from onex.bus import EventBus, MemoryBus
from onex.clock import SYSTEM_CLOCK, Clock
from onex.contracts import (
    Contract,
    ContractSet,
    find_contract_files,
    find_subcontract_files,
    load_contracts,
    resolve_implementation,
)
from onex.envelope import IdSource, OnexEnvelopeV1, new_id
from onex.exceptions import ContractError, OnexError, StoreError
from onex.logs import event
from onex.nodes import Node, RegistryNode
from onex.resilience import held
from onex.routing import service_topics
from onex.settings import Settings, redact_url
from onex.store import Store, dead_letter_row
from onex.stores import store_for

# Consumers start before producers so that the first events published find their subscribers.
START_ORDER = ("database_adapter_effect", "registry", "reducer", "stamping_effect", "orchestrator")

_log = logging.getLogger("onex.runtime")
T = TypeVar("T")


SWITCH_INTERVAL_S = 0.001
"""How long a thread runs Python before another that waits for the interpreter lock may take it (CPython's default
is 5 ms); ``tune_process`` sets it."""


def tune_process() -> None:
    """Tune the interpreter for a process that hosts nodes (called by ``onex run`` / ``onex stamp``).

    The cyclic garbage collector: the hot path allocates many short-lived, acyclic objects (envelopes, payload
    models, rows) while thousands of in-flight messages stay alive in bus buffers; with CPython's default thresholds
    the collector rescans that live set over and over. Raising the young-generation threshold and freezing
    everything allocated at startup (imports, contracts, compiled schemas) cut the end-to-end CPU per item by about a
    third in ``bench/e2e.py``. Reference cycles are still collected, just in larger, rarer sweeps. A young generation
    of 100,000 rather than 20,000 objects took another ~5-8% off (bench/e2e.py, 2 cores).

    The switch interval (``SWITCH_INTERVAL_S``): SQLite's writer thread gives the interpreter lock up for every
    statement it runs and must take it back afterwards; with the default 5 ms it waited up to that long each time
    while the event loop's thread ran the nodes, so its groups took 2.5 times their CPU time, and the orchestrator's
    outcomes and the database adapter waited on them (README, design decisions).
    """
    gc.collect()
    gc.freeze()
    gc.set_threshold(100_000, 50, 1_000)
    sys.setswitchinterval(SWITCH_INTERVAL_S)


def event_loop_factory(choice: str = "auto") -> Callable[[], asyncio.AbstractEventLoop] | None:
    """What makes the event loop ``choice`` names (``ONEX_EVENT_LOOP``), for ``asyncio.Runner(loop_factory=...)``:
    uvloop's for ``uvloop``, and for ``auto`` where uvloop is installed (not on Windows); None, asyncio's own, for
    ``asyncio`` and for ``auto`` without uvloop. OnexError, naming the variable, for ``uvloop`` when it is missing.

    uvloop runs the loop itself, its timers, sockets and callbacks in C (libuv): over HTTP, where a request is a few
    small batches and many callbacks, the server spent 9-15 % less CPU a request and answered 12-15 % more requests
    a second at saturation in four pairs of five (issue 12's thirty-third part); with a thousand workflows in flight
    in one process, where the loop's own work is a small part of a stamp, it is no faster than asyncio's
    (docs/performance.md). Its ``loop.time()`` counts whole milliseconds, as its timers do: every deadline onex puts
    on the loop (handlers', requests') is a millisecond or longer.
    """
    if choice == "asyncio":
        return None
    try:
        import uvloop
    except ImportError:
        if choice == "uvloop":
            raise OnexError(
                "ONEX_EVENT_LOOP=uvloop: uvloop is not installed (pip install uvloop, or set ONEX_EVENT_LOOP to auto "
                "or asyncio)"
            ) from None
        return None
    return uvloop.new_event_loop  # type: ignore[no-any-return,unused-ignore]


_sigterm_handled = False  # while run_main's loop takes SIGTERM


def _sigterm_default_in_child() -> None:
    """In a process forked while ``run_main``'s loop takes SIGTERM: the default again. The handler it inherits only
    wakes the parent's loop, so ``Process.terminate()`` would not stop it (multiprocessing's fork context)."""
    global _sigterm_handled
    if _sigterm_handled:
        _sigterm_handled = False
        with contextlib.suppress(ValueError):  # forked from a thread other than the main one
            signal.signal(signal.SIGTERM, signal.SIG_DFL)
            signal.set_wakeup_fd(-1)  # the parent's loop's


os.register_at_fork(after_in_child=_sigterm_default_in_child)


def _nothing() -> None:
    pass


def exit_unless_stopped(seconds: float) -> Callable[[], None]:
    """Arm the shutdown deadline (``Settings.shutdown_timeout_s``; 0: none): unless the function returned is called
    within ``seconds``, the process says so and exits with status 1 on the spot, from a thread of its own (the event
    loop may be the one that is stuck). Draining waits for the store while it is down (the nodes hold store outages),
    and a drain that never ends would only meet the supervisor's SIGKILL, unexplained. What exiting leaves is what a
    crash leaves, which onex recovers from: on Kafka the records not committed come again to the group, and workflows
    resume from their checkpoints; on the memory bus what was in hand is lost."""
    if seconds <= 0:
        return _nothing

    def expire() -> None:
        _log.error(
            "shutdown did not finish within %g s (ONEX_SHUTDOWN_TIMEOUT_S): exiting as a crash would; what was not "
            "committed comes again (Kafka), workflows resume from their checkpoints",
            seconds,
        )
        logging.shutdown()  # flush the handlers: os._exit runs no cleanup
        os._exit(1)

    timer = threading.Timer(seconds, expire)
    timer.daemon = True
    timer.name = "onex-shutdown-deadline"
    timer.start()
    return timer.cancel


def run_main(coro: Coroutine[Any, Any, T], *, event_loop: str = "auto", shutdown_timeout_s: float = 0.0) -> T:
    """``asyncio.run(coro)`` on the event loop ``event_loop`` names (``event_loop_factory``): how every ``onex``
    command runs, and the benchmarks' onex runs with it.

    SIGTERM does what SIGINT (Ctrl-C) does under ``asyncio.run``: it cancels ``coro``, whose ``finally`` blocks and
    context managers drain and close what it opened, and then raises KeyboardInterrupt (unless ``coro`` caught the
    cancellation and returned). Without this, SIGTERM (what ``kill``, systemd and Kubernetes send) killed the process
    where it stood: temporary files left beside the files being stamped, workflows left processing. Code that waits
    for a signal itself (``Runtime.run_until_signal``) takes SIGTERM over while it waits. Past ``shutdown_timeout_s``
    after SIGTERM (``exit_unless_stopped``) the process exits anyway.
    """
    terminated = False
    disarm: Callable[[], None] = _nothing

    async def main() -> T:
        nonlocal terminated
        task = asyncio.current_task()
        assert task is not None
        loop = asyncio.get_running_loop()

        def terminate() -> None:
            nonlocal terminated, disarm
            if not terminated:
                disarm = exit_unless_stopped(shutdown_timeout_s)
            terminated = True
            task.cancel()

        global _sigterm_handled
        # Only where SIGTERM is at its default, as asyncio.Runner takes SIGINT only where it is at its default.
        handled = signal.getsignal(signal.SIGTERM) is signal.SIG_DFL
        if handled:
            try:
                loop.add_signal_handler(signal.SIGTERM, terminate)
            except (NotImplementedError, RuntimeError):  # Windows; a thread other than the main one
                handled = False
        _sigterm_handled = handled
        try:
            return await coro
        finally:
            if handled:
                _sigterm_handled = False
                loop.remove_signal_handler(signal.SIGTERM)  # back to the default

    with asyncio.Runner(loop_factory=event_loop_factory(event_loop)) as runner:
        try:
            return runner.run(main())
        except asyncio.CancelledError:
            if terminated:
                raise KeyboardInterrupt from None
            raise
        finally:
            disarm()


def chosen_loop(choice: str = "auto") -> str:
    """``uvloop`` or ``asyncio``: the loop ``choice`` gives here (``event_loop_factory``), as a benchmark records it."""
    return "asyncio" if event_loop_factory(choice) is None else "uvloop"


def loop_name(loop: asyncio.AbstractEventLoop) -> str:
    """``uvloop`` or ``asyncio``: the kind of ``loop``, as the start of a node's log says."""
    return "uvloop" if type(loop).__module__.startswith("uvloop") else "asyncio"


def open_bus(settings: Settings) -> EventBus:
    """The bus for ``settings.bus``: ``memory://`` or ``kafka://HOST:PORT[,HOST:PORT]``."""
    if settings.bus.startswith("memory:"):
        return MemoryBus(partitions=settings.partitions, buffer_size=settings.buffer_size)
    if settings.bus.startswith("kafka:"):
        from onex._kafka import KafkaBus

        return KafkaBus.from_url(settings.bus)  # type: ignore[no-any-return,unused-ignore]
    raise OnexError(f"unsupported bus URL {settings.bus!r}: expected memory:// or kafka://HOST:PORT")


def _contract_files(root: Path) -> dict[Path, tuple[float, int]]:
    """Every contract and subcontract file under ``root`` with its modification time and size."""
    found: dict[Path, tuple[float, int]] = {}
    for path in [*find_contract_files(root), *find_subcontract_files(root)]:
        with contextlib.suppress(OSError):  # removed between the listing and the stat: gone
            stat = path.stat()
            found[path] = (stat.st_mtime, stat.st_size)
    return found


def select(contracts: ContractSet, names: Sequence[str] | None, version: str | None = None) -> list[Contract]:
    """The contracts to host: the named ones (highest version unless ``version``), or every node's highest when
    ``names`` is None (an empty list hosts nothing: a pure client of a deployment)."""
    wanted = list(names) if names is not None else contracts.names()
    twice = sorted({name for name in wanted if wanted.count(name) > 1})
    if twice:  # one node id for both, and each metric twice: another replica is another process
        raise ValueError(f"node {', '.join(map(repr, twice))} named more than once: a process hosts one of each")
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
        self._version = version
        self._disarm = _nothing  # the shutdown deadline's, once a signal armed it (run_until_signal)
        self.selected = select(self.contracts, nodes, version)
        self._own_bus = bus is None
        self._own_store = store is None
        self.bus = bus or open_bus(settings)
        self.store = store or store_for(settings)
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

    def _build(self, contract: Contract, routed: Mapping[str, Mapping[str, str]]) -> Node:
        cls = resolve_implementation(contract, root=self.settings.root)
        node = cls(contract, bus=self.bus, store=self.store, settings=self.settings, clock=self.clock, ids=self.ids)
        if not isinstance(node, Node):
            raise OnexError(f"{contract.implementation_path} is not an onex.nodes.Node")
        for event_name, topic in routed.get(contract.name, {}).items():
            node.consume_from(event_name, topic)
        return node

    async def reload(self, contracts: ContractSet) -> list[str]:
        """Host the nodes of ``contracts`` in place of those whose contract changed, or whose routed topics did (a
        routing subcontract's targets moved a command to a topic of the service's own, or back); returns their names.

        Each changed node drains (it stops taking messages and finishes those in hand; what it had not taken, and
        what is published until its replacement joins, stays with its consumer group), stops, and a node built from
        the new contract starts and announces itself in its place, in the same group: it takes over where the old one
        stopped. Nodes whose contract and topics did not change keep running untouched. A node the new set no longer
        has keeps running on its old contract, with a warning (``reload_missing``): removing a node is a deployment
        change, not a reload.
        """
        known = set(contracts.names())
        names = [n.contract.name for n in self.nodes]
        for name in sorted(set(names) - known):
            event(_log, logging.WARNING, "reload_missing", f"{name} is no longer in the contracts: it keeps running")
        fresh = {c.name: c for c in select(contracts, [n for n in names if n in known], self._version)}
        # A routing edited in one contract (the orchestrator's) moves the topics other nodes read: those are
        # rebuilt too, or they keep reading commands now routed to another service, and theirs reach nobody.
        was_routed = service_topics(self.contracts, self.settings)
        routed = service_topics(contracts, self.settings)
        reloaded: list[str] = []
        for i, node in enumerate(self.nodes):
            name = node.contract.name
            new = fresh.get(name)
            if new is None or (new == node.contract and routed.get(name, {}) == was_routed.get(name, {})):
                continue
            replacement = self._build(
                new, routed
            )  # before the old one stops: a class that cannot be built changes nothing
            message = f"reloading {new.name} {node.contract.version} -> {new.version}"
            event(_log, logging.INFO, "reloading", message, node=node.node_id)
            async with self.bus.handing_over():  # what is published meanwhile waits in the node's groups for it
                await node.stop()
                self.nodes[i] = replacement
                replacement.takes_over = True
                await replacement.start()
            await replacement.announce()
            reloaded.append(new.name)
            event(_log, logging.INFO, "reloaded", "running on the new contract", node=replacement.node_id)
        self.contracts = contracts
        return reloaded

    def watch_contracts(self, *, interval_s: float = 1.0) -> asyncio.Task[None]:
        """Reload (``reload``) whenever a contract or subcontract file under the root changes and the project
        still validates; when it does not, log each problem and keep the running version. Returns the watching task
        (cancel it to stop); what the files hold when this is called is the baseline. Looks every ``interval_s`` on
        the runtime's clock (``onex run --reload``)."""
        seen = _contract_files(self.settings.root)
        return asyncio.create_task(self._watch(seen, interval_s), name="onex-reload")

    async def _watch(self, seen: dict[Path, tuple[float, int]], interval_s: float) -> None:
        root = self.settings.root
        while True:
            await self.clock.sleep(interval_s)
            now = _contract_files(root)
            if now == seen:
                continue
            seen = now
            try:
                contracts = load_contracts(root)
            except ContractError as exc:
                for issue in exc.issues:
                    event(_log, logging.ERROR, "reload_refused", str(issue), path=issue.path, code=issue.code)
                message = f"{len(exc.issues)} problem(s) in the changed contracts: still running the previous version"
                event(_log, logging.ERROR, "reload_refused", message)
                continue
            try:
                reloaded = await self.reload(contracts)
            except OnexError as exc:
                event(_log, logging.ERROR, "reload_failed", f"could not reload: {exc}")
                continue
            if not reloaded:
                event(_log, logging.INFO, "reload_unchanged", "contracts changed; no hosted node's contract did")

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
        """On a bus that keeps no messages (memory), keep each dead letter in the store for ``onex dlq``: the store
        is its only copy, so while the store is unavailable and the runtime runs, the letter is held (its message
        stays unacknowledged, as a handler's does) and written when the store is back."""
        try:
            await held(
                functools.partial(self.store.add_dead_letters, [dead_letter_row(letter, group=group)]),
                self.clock,
                lambda: self.phase in ("starting", "running"),  # draining: no wait for a store to come back
                lambda exc: _log.warning("dead letter %s: store unavailable, holding it: %s", letter.event_id, exc),
            )
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
            # Nor on one they could not write (a read-only SQLite file): every write would fail after the work.
            await self.store.probe_write()
        if self._own_bus:
            await self.bus.start()
        routed = service_topics(self.contracts, self.settings)  # commands routed to a service on a topic of its own
        self.nodes += [self._build(contract, routed) for contract in self.selected]
        loop = loop_name(asyncio.get_running_loop())
        for node in self.nodes:
            event(
                _log,
                logging.INFO,
                "start",
                f"starting {node.contract.name} {node.contract.version}",
                node=node.node_id,
                loop=loop,
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
        retried, dead, lag = self.bus.retried_by, self.bus.dead_lettered_by, self.bus.lag()
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
        try:
            await self._stop()
        finally:
            self._disarm()  # run_until_signal's shutdown deadline: met
            self._disarm = _nothing

    async def _stop(self) -> None:
        # A node whose drain or stop raises (its on_stop, say) is logged, and the others still stop and what the
        # runtime opened is still closed; then the first error is raised, the others noted on it.
        errors: list[Exception] = []

        async def attempt(call: Callable[[], Awaitable[object]], node: Node | None = None) -> None:
            try:
                await call()
            except Exception as exc:
                errors.append(exc)
                _log.error("%s: %s failed: %s", node.node_id if node else "runtime", call.__name__, exc, exc_info=exc)
            else:
                if node is not None:
                    event(_log, logging.INFO, "stopped", "stopped", node=node.node_id)

        await attempt(self.drain)  # a node it did not drain is drained by its stop() below
        await self._stop_summary()  # the last summary counts what draining handled
        others, registries = self._registries_last()
        for node in others:
            await attempt(node.stop, node)
        if not errors:  # after a failed stop, what its node left pending would never be handled: no waiting for it
            await self._quiesce()  # the registries record the STOPPED heartbeats
        for node in registries:
            event(_log, logging.INFO, "draining", "draining", node=node.node_id)
            await attempt(node.stop, node)
        self.phase = "stopped"
        if self._own_bus:
            await attempt(self.bus.aclose)
        if self._own_store:
            await attempt(self.store.aclose)
        if errors:
            for later in errors[1:]:
                errors[0].add_note(f"while stopping, also: {later!r}")
            raise errors[0]

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
            self._disarm = exit_unless_stopped(self.settings.shutdown_timeout_s)  # the drain that follows, bounded
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
