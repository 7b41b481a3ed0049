"""Submit stamp requests to a running node graph and await their outcomes.

Used by ``onex stamp`` (in-process or against a Kafka deployment), by the HTTP gateway and by benchmarks. The
client subscribes to the workflow outcome events with a consumer group of its own before it submits anything, and
matches outcomes to requests by correlation id (unless it only submits: ``listen=False``). It is an async context
manager.

``StampRun`` is a whole ``onex stamp``: one deadline (``--timeout``) bounds all of it, and what has no outcome by
then is reported ``pending``, never ``failed``: a deployment keeps working on what it was given. ``StampReport`` and
``VerifyReport`` are what ``onex stamp`` and ``onex verify`` found, as data; the CLI draws them (``onex._render``).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from types import TracebackType
from typing import Any, Final, Literal, NamedTuple, TypeVar

from onex.bus import EventBus, Subscription
from onex.catalog import readers_for
from onex.contracts import ContractSet
from onex.envelope import OnexEnvelopeV1, dlq_topic, new_id
from onex.exceptions import BusError, OnexError, PayloadError, StoreError, StoreUnavailable
from onex.files import WalkEntry, iter_files
from onex.nodes import EventCatalog
from onex.settings import Settings
from onex.stamps import BUSY, VerifyResult, verify_file
from onex.store import BridgeStateRow, Store
from onex.stores import store_for

_log = logging.getLogger("onex.client")

REQUEST_EVENT = "STAMP_REQUESTED"
# The stamping service's reports (nodes.models.ModelStampValidated / ModelBatchProcessed), published by the HTTP
# gateway and the CLI on its behalf (``publish_report``).
STAMP_VALIDATED_EVENT = "METADATA_STAMP_VALIDATED"
BATCH_PROCESSED_EVENT = "METADATA_BATCH_PROCESSED"
# Workflows `onex stamp` keeps in flight (when it waits for them): enough to keep every node busy, few enough that
# the bus's buffers, the orchestrator's running workflows and the garbage collector's young objects stay small.
MAX_PENDING = 1_000
OUTCOME_EVENTS = ("WORKFLOW_COMPLETED", "WORKFLOW_FAILED")
STAMP_EVENT = "STAMP_CREATED"
# Abandoned workflows whose late outcome the client still recognises, to pass it to ``on_outcome``; past this many
# the oldest is forgotten. An outcome comes seconds after its caller gave up, or never (a request the broker lost, no
# orchestrator running), and a gateway that keeps timing out must not grow by one id per request. ~100 bytes each.
ABANDONED_KEPT = 10_000

Outcome = OnexEnvelopeV1
T = TypeVar("T")


async def publish_report(
    bus: EventBus,
    catalog: EventCatalog,
    settings: Settings,
    event_name: str,
    payloads: Sequence[Mapping[str, Any]],
    *,
    source: str,
    correlation_id: uuid.UUID | None = None,
    strict: bool = False,
) -> bool:
    """Publish one envelope per payload of ``event_name`` (a report: ``STAMP_VALIDATED_EVENT``,
    ``BATCH_PROCESSED_EVENT``), each validated against its contract's model and keyed as the contract says; whether
    they were published. A report is a side effect of work that is done: a project whose contracts do not declare
    the event, or a bus that refuses it, is logged and answered False, never raised to the caller (unless ``strict``:
    then it is an ``OnexError`` saying why)."""
    from onex.poke import build

    if event_name not in catalog.events:
        if strict:
            raise OnexError(f"no contract of the project declares {event_name}")
        _log.warning("%s is not published: no contract declares it", event_name)
        return False
    try:
        for payload in payloads:
            poke = build(catalog, settings, event_name, payload, correlation_id=correlation_id)
            envelope = poke.envelope.model_copy(update={"source_service": source, "source_node_id": source})
            await bus.publish(poke.topic, envelope)
    except (BusError, PayloadError) as exc:
        if strict:
            raise
        _log.warning("%s was not published: %s", event_name, exc)
        return False
    return True


def _catalog(contracts: ContractSet, settings: Settings) -> EventCatalog:
    catalog = EventCatalog(contracts.contracts, settings)
    missing = {REQUEST_EVENT, STAMP_EVENT, *OUTCOME_EVENTS} - catalog.events.keys()
    if missing:
        raise OnexError(f"no contract declares {', '.join(sorted(missing))}: is the orchestrator contract present?")
    return catalog


async def _wait(future: asyncio.Future[T], timeout: float | None) -> T:
    """The result of ``future``, waiting up to ``timeout`` seconds (TimeoutError after); a caller that gives up
    (a timeout, a cancellation) leaves ``future`` as it is, for other callers.

    What ``wait_for(shield(future), timeout)`` does, for a fraction of its cost (the gateway waits like this once per
    request): one future, one done callback and one timer, where those two make three futures and a task's worth of
    callbacks, and one turn of the event loop fewer between the outcome and its caller."""
    if future.done():
        return future.result()
    loop = asyncio.get_running_loop()
    woken: asyncio.Future[None] = loop.create_future()

    def wake(_: object = None) -> None:
        if not woken.done():
            woken.set_result(None)

    future.add_done_callback(wake)
    timer = loop.call_later(timeout, wake) if timeout is not None else None
    try:
        await woken
    finally:
        future.remove_done_callback(wake)
        if timer is not None:
            timer.cancel()
    if not future.done():
        raise TimeoutError
    return future.result()  # raises CancelledError if the future was cancelled (the client closed), as shield did


class StampClient:
    """Publishes STAMP_REQUESTED events and resolves each to its WORKFLOW_COMPLETED / WORKFLOW_FAILED envelope, or to
    the DEAD_LETTER envelope of a request that was rejected (its payload's ``error`` says why).

    ``keep_stamps=True`` also keeps each workflow's STAMP_CREATED envelope (``stamp_of``), for callers that need
    the stamped content (the HTTP gateway). ``on_outcome`` is called for every outcome (progress bars).
    ``max_pending``: ``submit()`` waits while it waits for that many workflows (not abandoned ones), so a client with
    100,000 files keeps a bounded number in flight instead of filling every buffer of the bus with them (which on
    the memory bus makes every garbage collection rescan them). None: no limit.
    ``listen=False``: submit only. No consumer group is joined (on Kafka that takes seconds), nothing is kept per
    request, and ``outcome()`` / ``stamp()`` raise; for callers that do not wait (``onex stamp --no-wait``).

    A program that keeps thousands of workflows in flight does well to call ``onex.runtime.tune_process()`` first, as
    ``onex stamp`` and ``onex run`` do: with CPython's default thresholds the garbage collector keeps rescanning
    them, and in ``bench/multiprocess.py`` (20,000 in flight) reading an outcome took about twice the CPU.
    """

    def __init__(
        self,
        bus: EventBus,
        contracts: ContractSet,
        settings: Settings,
        *,
        keep_stamps: bool = False,
        on_outcome: Callable[[OnexEnvelopeV1], None] | None = None,
        max_pending: int | None = None,
        listen: bool = True,
    ) -> None:
        if max_pending is not None and max_pending < 1:
            raise ValueError(f"max_pending must be at least 1, not {max_pending}")
        if not listen and (max_pending is not None or keep_stamps or on_outcome is not None):
            raise ValueError("max_pending, keep_stamps and on_outcome need outcomes: they cannot go with listen=False")
        self.bus = bus
        self.listen = listen
        self.max_pending = max_pending
        self._room = asyncio.Event()
        self.settings = settings
        self._source = f"onex-client-{settings.instance}"
        self.catalog = _catalog(contracts, settings)
        self.topics = {name: self.catalog.topic(name) for name in (REQUEST_EVENT, STAMP_EVENT, *OUTCOME_EVENTS)}
        self.keep_stamps = keep_stamps
        self.on_outcome = on_outcome
        self.group = f"onex.client.{uuid.uuid4().hex[:12]}"
        # Keyed by the workflow ids' ints: ``uuid.UUID.__hash__`` is Python, about three times the cost of an int's
        # lookup, and a stamp looks these up about seven times.
        self._waiting: dict[int, asyncio.Future[OnexEnvelopeV1]] = {}
        self._stamps: dict[int, OnexEnvelopeV1] = {}
        self._outcomes: dict[int, OnexEnvelopeV1] = {}
        self._stamp_waiters: dict[int, asyncio.Future[OnexEnvelopeV1]] = {}
        # Insertion-ordered (a dict, not a set): the oldest is evicted past ABANDONED_KEPT.
        self._abandoned: dict[int, None] = {}
        self._subscriptions: list[Subscription] = []

    async def __aenter__(self) -> StampClient:
        if not self.listen:
            await self.bus.ensure_topics([self.topics[REQUEST_EVENT]])
            return self
        # A request the orchestrator cannot accept is dead-lettered: that, too, is its outcome.
        topics = [self.topics[e] for e in OUTCOME_EVENTS] + [dlq_topic(self.topics[REQUEST_EVENT])]
        if self.keep_stamps:
            topics.append(self.topics[STAMP_EVENT])
        await self.bus.ensure_topics([*topics, self.topics[REQUEST_EVENT]])
        # The group is this client's own and lives as long as it does: it wants the outcomes of the requests it is
        # about to submit, not the topics' whole history (which a new group on a broker would read from the
        # beginning, only to drop every outcome by correlation id).
        typed = readers_for((self.topics[e], self.catalog.events[e].codec) for e in (*OUTCOME_EVENTS, STAMP_EVENT))
        sub = await self.bus.subscribe(topics, self.group, batch_handler=self._on_events, start="latest", readers=typed)
        self._subscriptions.append(sub)
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        for sub in self._subscriptions:
            await sub.aclose()
        for future in (*self._waiting.values(), *self._stamp_waiters.values()):
            future.cancel()

    async def _on_events(self, envelopes: Iterable[OnexEnvelopeV1]) -> None:
        for envelope in envelopes:
            correlation_id = envelope.correlation_id
            if correlation_id is None:
                continue
            cid = correlation_id.int
            try:
                # Typed: off Kafka an outcome's or a stamp's payload is a dict until validated into its model here.
                envelope = self.catalog.decoded(envelope)
            except PayloadError as exc:
                _log.error("workflow %s: an outcome that does not fit its model, ignored: %s", correlation_id, exc)
                continue
            if envelope.event_type == STAMP_EVENT:
                waiter = self._stamp_waiters.pop(cid, None)
                if waiter is not None and not waiter.done():
                    waiter.set_result(envelope)
                if cid in self._waiting or cid in self._outcomes:  # an abandoned workflow is in neither
                    self._stamps[cid] = envelope
                continue
            future = self._waiting.pop(cid, None)
            if future is None:
                # Abandoned (nobody waits for it: keep nothing, but on_outcome hears of it), another client's
                # workflow, or a duplicate outcome.
                if cid in self._abandoned:
                    del self._abandoned[cid]
                    if self.on_outcome is not None:
                        self.on_outcome(envelope)
                continue
            self._room.set()
            self._outcomes[cid] = envelope
            if not future.done():
                future.set_result(envelope)
            if self.on_outcome is not None:
                self.on_outcome(envelope)

    def request(self, payload: dict[str, Any], *, correlation_id: uuid.UUID | None = None) -> OnexEnvelopeV1:
        """The envelope of a request; its payload is validated by the orchestrator that consumes it (the edge). The
        envelope's own fields are this client's, so it is built, not validated (a correlation id given as text or
        as a UUID subclass is read as ``uuid.UUID``, as validation would)."""
        if correlation_id is None:
            correlation_id = new_id()
        elif type(correlation_id) is not uuid.UUID:
            correlation_id = uuid.UUID(str(correlation_id))
        return OnexEnvelopeV1.built(
            event_id=new_id(),
            event_type=REQUEST_EVENT,
            event_timestamp=datetime.now(UTC),
            source_node_id=self._source,
            source_service="onex-client",
            source_version="1.0.0",
            source_instance=None,
            correlation_id=correlation_id,
            causation_id=None,
            environment=self.settings.env,
            region=None,
            partition_key=None,
            payload=payload,
        )

    async def submit(self, payload: dict[str, Any], *, correlation_id: uuid.UUID | None = None) -> uuid.UUID:
        """Publish one request; returns its correlation id. Waits while ``max_pending`` workflows are pending and
        while the bus applies backpressure."""
        if self.max_pending is not None:
            while len(self._waiting) >= self.max_pending:
                self._room.clear()
                await self._room.wait()
        envelope = self.request(payload, correlation_id=correlation_id)
        cid = envelope.correlation_id
        assert cid is not None
        if not self.listen:
            await self.bus.publish(self.topics[REQUEST_EVENT], envelope)
            return cid
        # Registered before publishing: the outcome may arrive before publish() returns.
        key = cid.int
        self._waiting[key] = asyncio.get_running_loop().create_future()
        try:
            await self.bus.publish(self.topics[REQUEST_EVENT], envelope)
        except BaseException:
            # Not published (an error, or cancelled while the bus applied backpressure: a caller's deadline): the
            # caller never learns this id, so nothing may wait for it or count it as pending.
            self._waiting.pop(key, None)
            self._room.set()
            raise
        return cid

    async def outcome(self, cid: uuid.UUID, *, timeout: float | None = None) -> OnexEnvelopeV1:
        """The outcome of a submitted request (waits up to ``timeout`` seconds; TimeoutError after)."""
        key = cid.int
        done = self._outcomes.get(key)
        if done is not None:
            return done
        if not self.listen:
            raise OnexError("this client does not listen for outcomes: create it with listen=True")
        future = self._waiting.get(key)
        if future is None:
            raise OnexError(f"workflow {cid} was not submitted by this client")
        return await _wait(future, timeout)

    def stamp_of(self, cid: uuid.UUID) -> OnexEnvelopeV1 | None:
        return self._stamps.get(cid.int)

    async def stamp(self, cid: uuid.UUID, *, timeout: float | None = None) -> OnexEnvelopeV1:
        """The STAMP_CREATED envelope of a workflow (``keep_stamps=True``), waiting up to ``timeout`` seconds for it.

        Outcomes and stamps travel on different topics, so a workflow's outcome may arrive before its stamp (on
        Kafka, in any order); a caller that got a completed outcome waits here for the stamp.
        """
        key = cid.int
        kept = self._stamps.get(key)
        if kept is not None:
            return kept
        if not self.keep_stamps:
            raise OnexError("this client does not keep stamps: create it with keep_stamps=True")
        waiter = self._stamp_waiters.get(key)
        if waiter is None:
            waiter = self._stamp_waiters[key] = asyncio.get_running_loop().create_future()
        try:
            return await _wait(waiter, timeout)
        finally:
            if waiter.done() or timeout is not None:
                self._stamp_waiters.pop(key, None)

    def forget(self, cid: uuid.UUID) -> None:
        """Drop what is kept about a finished workflow (long-running clients call this after reading it)."""
        key = cid.int
        self._outcomes.pop(key, None)
        self._stamps.pop(key, None)
        waiter = self._stamp_waiters.pop(key, None)
        if waiter is not None:
            waiter.cancel()

    def abandon(self, cid: uuid.UUID) -> None:
        """Stop waiting for a workflow that is still running (a caller gave up): it no longer counts as ``pending``
        (nor against ``max_pending``), a caller still waiting in ``outcome()`` for it is cancelled, and its outcome
        and stamp are dropped when they arrive instead of being kept; ``on_outcome`` still hears of the outcome, for
        the last ``ABANDONED_KEPT`` abandoned workflows. A finished workflow is simply forgotten."""
        self.forget(cid)
        key = cid.int
        future = self._waiting.pop(key, None)
        if future is None:
            return
        # Out of ``_waiting`` now, not when the outcome arrives: an outcome may never arrive (a request the broker
        # lost, no orchestrator running), and a workflow counted until then would stay pending, in /health and the
        # gateway's gauge, for good. A late outcome needs only the id, to reach on_outcome; the ids kept for that are
        # bounded, oldest out first, so one whose outcome never comes is dropped in time.
        future.cancel()
        self._room.set()
        self._abandoned[key] = None
        if len(self._abandoned) > ABANDONED_KEPT:
            del self._abandoned[next(iter(self._abandoned))]

    @property
    def pending(self) -> int:
        return len(self._waiting)


# --- whole runs, as the CLI does them -------------------------------------------------------------------------------


class Problem(NamedTuple):
    """A file the summary lists: failed, skipped or pending, why, and its workflow's id once it was submitted."""

    status: str
    path: str
    reason: str
    correlation_id: uuid.UUID | None = None


@dataclass
class StampReport:
    """The outcome of ``onex stamp``: per-status counts, per-file problems, per-namespace aggregates.

    ``pending`` files had no outcome by the deadline: submitted ones, which a deployment may still complete (each
    listed with its correlation id), and ``unsubmitted`` ones, never handed over. ``aggregates`` is None when the
    store was not read (``--no-wait``) or could not be (``store_error`` says why); the counts are the outcomes heard
    on the bus either way.
    """

    counts: Counter[str] = field(default_factory=Counter)
    problems: list[Problem] = field(default_factory=list)
    aggregates: list[BridgeStateRow] | None = None
    store_error: str | None = None
    submitted: int = 0
    unsubmitted: int = 0
    waited: bool = True
    namespace: str = ""
    timeout_s: float = 0.0
    elapsed_s: float = 0.0
    dry_run: bool = False
    batch_id: uuid.UUID | None = None  # of the METADATA_BATCH_PROCESSED it published, if it did
    batch_published: bool = False

    @property
    def failed(self) -> int:
        return self.counts["failed"]

    @property
    def busy(self) -> int:
        return self.counts["busy"]

    @property
    def pending(self) -> int:
        return self.counts["pending"]

    def headline(self) -> str:
        """What was done, counted honestly: ``stamped 0 file(s), 57 unchanged``; a dry run ``would stamp``."""
        verb = "would stamp" if self.dry_run else "stamped"
        text = f"{verb} {self.counts['stamped']} file(s), {self.counts['unchanged']} unchanged"
        others = [f"{self.counts[c]} {c}" for c in ("failed", "busy", "skipped") if self.counts[c]]
        return ", ".join([text, *others])

    def to_dict(self) -> dict[str, Any]:
        """The report as JSON-ready data (``onex stamp -o json``)."""
        return {
            "headline": self.headline(),
            "dry_run": self.dry_run,
            "waited": self.waited,
            "counts": {c: self.counts[c] for c in ("stamped", "unchanged", "skipped", "failed", "busy", "pending")},
            "submitted": self.submitted,
            "unsubmitted": self.unsubmitted,
            "elapsed_s": round(self.elapsed_s, 3),
            "batch_id": None if self.batch_id is None else str(self.batch_id),
            "batch_published": self.batch_published,
            "problems": [
                {
                    "status": p.status,
                    "path": p.path,
                    "correlation_id": None if p.correlation_id is None else str(p.correlation_id),
                    "reason": p.reason,
                }
                for p in self.problems
            ],
            "aggregates": None
            if self.aggregates is None
            else [
                {
                    "namespace": a.namespace,
                    "total_workflows_processed": a.total_workflows_processed,
                    "total_items_aggregated": a.total_items_aggregated,
                    "total_size_bytes": a.total_size_bytes,
                    "unique_file_hashes": a.unique_file_hashes,
                    "by_file_type": a.aggregation_metadata.get("by_file_type", {}),
                }
                for a in self.aggregates
            ],
            "store_error": self.store_error,
        }


# Reading the summary from a store that is unavailable: first pause, doubling up to the last.
_STORE_RETRY_S = (0.1, 2.0)


OnProgress = Callable[[int, int | None], None]
"""``on_progress(done, total)``: ``done`` files have their outcome, of ``total`` submitted (None while submitting).
Called once connected (``0, None``), after each outcome, and once every file is submitted."""


def _no_progress(done: int, total: int | None) -> None:
    pass


def _confined_to(settings: Settings, paths: Sequence[Path]) -> Settings:
    """``settings`` for an in-process run: the stamping effect may touch exactly ``paths`` (``stamp_roots``), made
    absolute, as relative roots would be taken from the project root, not from the directory they were given in."""
    return settings.with_(stamp_roots=tuple(Path(os.path.abspath(p)) for p in paths))


class StampRun:
    """Stamp the files under some paths: in-process (memory bus, every node hosted here) or by submitting to a
    deployment over Kafka. ``run(paths, on_progress=...)`` reports progress as it goes (the CLI draws a bar).

    ``timeout`` bounds the whole run: connecting, submitting (which waits while ``MAX_PENDING`` workflows are in
    flight), waiting for the outcomes and reading the summary from the store. At the deadline nothing more is
    submitted, and every file without an outcome is reported ``pending``. In process, the workflows already in flight
    then still finish while the nodes drain (their outcomes are counted): the run overruns by that much.

    A deployment's store is opened only after the outcomes are in, and read with retries until the deadline: a
    store that is down meanwhile neither stops files from being submitted nor fails a run whose outcomes are known.
    """

    def __init__(
        self,
        settings: Settings,
        contracts: ContractSet,
        *,
        rich: bool = False,
        namespace: str = "onex.default",
        dry_run: bool = False,
        excludes: Sequence[str] = (),
        wait: bool = True,
        timeout: float = 600.0,
        force: bool = False,
    ) -> None:
        self.settings = settings
        self.contracts = contracts
        self.rich = rich
        self.namespace = namespace
        self.dry_run = dry_run
        self.force = force  # stamp files the user may not write (mode bits) too; otherwise they are skipped
        self.excludes = tuple(excludes)
        self.wait = wait
        self.timeout = timeout

    async def run(self, paths: Sequence[Path], *, on_progress: OnProgress | None = None) -> StampReport:
        from onex.runtime import Runtime

        started = time.monotonic()
        deadline = asyncio.get_running_loop().time() + self.timeout
        report = StampReport(waited=self.wait, namespace=self.namespace, timeout_s=self.timeout, dry_run=self.dry_run)
        in_process = self.settings.bus.startswith("memory:")
        deployment_store = None if in_process else store_for(self.settings)
        settings = _confined_to(self.settings, paths) if in_process else self.settings
        runtime = Runtime(settings, contracts=self.contracts, nodes=None if in_process else [], store=deployment_store)
        progress = on_progress or _no_progress
        done = 0
        # Outcomes are counted as they arrive and then forgotten: nothing is kept per file but its path until its
        # outcome is in (a run of 100,000 files would otherwise hold 100,000 outcome envelopes).
        pending: dict[uuid.UUID, str] = {}
        # In process, a workflow reported stamped must also be recorded as completed in the store: the database
        # adapter writes it after the outcome is out, and a write it could not make must not read as success.
        recorded: dict[uuid.UUID, tuple[str, str]] = {}
        all_in = asyncio.Event()

        def arrived(outcome: OnexEnvelopeV1) -> None:
            nonlocal done
            cid = outcome.correlation_id
            if cid is None or (path := pending.pop(cid, None)) is None:
                return
            status = self._count(report, outcome, path)
            if in_process and status in ("stamped", "unchanged") and not self.dry_run:
                recorded[cid] = (path, status)
            assert client is not None  # outcomes arrive only once it subscribed
            client.forget(cid)
            done += 1
            progress(done, None)
            if not pending:
                all_in.set()

        entries = iter_files(
            paths, excludes=self.excludes, remove_stale_temps=not self.dry_run, skip_read_only=not self.force
        )
        unsubmitted: list[WalkEntry] = []  # the file being submitted when the deadline came
        async with contextlib.AsyncExitStack() as stack:
            if deployment_store is not None:
                stack.push_async_callback(deployment_store.aclose)
            client: StampClient | None = None
            limit = asyncio.timeout_at(deadline)
            try:
                async with limit:
                    await stack.enter_async_context(runtime)
                    client = await stack.enter_async_context(
                        StampClient(
                            runtime.bus,
                            self.contracts,
                            self.settings,
                            on_outcome=arrived if self.wait else None,
                            max_pending=MAX_PENDING if self.wait else None,
                            listen=self.wait,
                        )
                    )
                    progress(0, None)
                    for entry in entries:
                        if entry.problem is not None:
                            self._walk_problem(report, entry)
                            continue
                        unsubmitted.append(entry)
                        cid = await client.submit(
                            {
                                # Absolute, so that the store records one spelling of the file whatever the cwd
                                # (`onex trace PATH` finds it from any; a deployment does not share the cwd). Joined
                                # to the cwd and no more: symlinks stay as given (the effect resolves them to check
                                # the roots), and so does "..", which collapsed by os.path.abspath could name
                                # another file than the one given when it follows a symlink.
                                "file_path": str(entry.path.absolute()),
                                "namespace": self.namespace,
                                "stamp_type": "rich" if self.rich else "lightweight",
                                "dry_run": self.dry_run,
                            }
                        )
                        unsubmitted.pop()
                        if self.wait:
                            pending[cid] = str(entry.path)
                        report.submitted += 1
                    progress(done, report.submitted)
                    if not self.wait:
                        # "Submitted" means the broker has them: a record still in the producer's buffer is not.
                        await runtime.bus.flush()
                    while pending:
                        all_in.clear()
                        await all_in.wait()
                    if self.wait and not self.dry_run:
                        await self._batch_processed(runtime.bus, client, report)
            except TimeoutError:
                if not limit.expired():
                    raise
                if client is None:
                    why = f"no connection to the bus within the {self.timeout:g} s timeout"
                elif self.wait:
                    why = f"at the deadline {len(pending)} workflow(s) were in flight (at most {MAX_PENDING} are)"
                else:
                    why = "the deadline came first"
                for entry in (*unsubmitted, *entries):
                    if entry.problem is not None:
                        self._walk_problem(report, entry)
                        continue
                    report.counts["pending"] += 1
                    report.unsubmitted += 1
                    report.problems.append(Problem("pending", str(entry.path), f"not submitted: {why}"))
            if client is not None:
                if in_process:
                    # The reducer's last windows and the adapter's last writes land first; after a deadline, the
                    # workflows in flight finish too, and the client, still subscribed, counts their outcomes.
                    await runtime.drain()
                    await self._check_recorded(runtime.store, recorded, report)
                if self.wait:
                    store = runtime.store if in_process else deployment_store
                    assert store is not None
                    report.aggregates, report.store_error = await self._aggregates(
                        store, deadline=deadline, connect=not in_process
                    )
        for cid, path in pending.items():
            report.counts["pending"] += 1
            report.problems.append(
                Problem(
                    "pending", path, f"no outcome within {self.timeout:g} s; the deployment may still complete it", cid
                )
            )
        report.elapsed_s = time.monotonic() - started
        return report

    async def _batch_processed(self, bus: EventBus, client: StampClient, report: StampReport) -> None:
        """METADATA_BATCH_PROCESSED for the whole run, once its outcomes are in (not for a dry run, which changes
        nothing, nor without waiting, when they are not known)."""
        report.batch_id = new_id()
        successful = report.counts["stamped"] + report.counts["unchanged"]
        payload = {
            "batch_id": report.batch_id,
            "total": report.submitted,
            "successful": successful,
            "failed": report.submitted - successful,
            "namespace": self.namespace,
        }
        report.batch_published = await publish_report(
            bus, client.catalog, self.settings, BATCH_PROCESSED_EVENT, [payload], source="onex-stamp"
        )

    async def _aggregates(
        self, store: Store, *, deadline: float, connect: bool
    ) -> tuple[list[BridgeStateRow] | None, str | None]:
        """The namespace's aggregates, or None and why the store could not be read by ``deadline``.

        An unavailable store (a connection lost, a server restarting) is tried again with backoff until the
        deadline; any other store error is final, since trying again cannot help (a schema that needs ``onex db
        upgrade``). ``connect``: open the store first (and migrate the embedded SQLite default, as ``onex run`` does).
        """
        loop = asyncio.get_running_loop()
        delay, longest = _STORE_RETRY_S
        why = f"the {self.timeout:g} s timeout came before the store was read"
        while loop.time() < deadline:
            limit = asyncio.timeout_at(deadline)
            try:
                async with limit:
                    if connect:
                        await store.open()
                        if store.url.startswith("sqlite:"):
                            await store.upgrade()
                    rows = await store.list_bridge_states()
                return [row for row in rows if row.namespace == self.namespace], None
            except StoreUnavailable as exc:
                why = str(exc)
            except StoreError as exc:
                return None, str(exc)
            except TimeoutError:
                if limit.expired():
                    return None, why
                why = "the store did not answer in time"
            if loop.time() + delay >= deadline:
                break
            await asyncio.sleep(delay)
            delay = min(delay * 2, longest)
        return None, why

    @staticmethod
    async def _check_recorded(store: Store, recorded: dict[uuid.UUID, tuple[str, str]], report: StampReport) -> None:
        """Count as failed every workflow reported completed whose completion the store does not hold."""
        ids = list(recorded)
        stored: set[uuid.UUID] = set()
        try:
            for start in range(0, len(ids), 1_000):
                states = await store.workflow_states(ids[start : start + 1_000])
                stored.update(cid for cid, state in states.items() if state == "completed")
        except StoreError as exc:
            report.store_error = f"could not check that the stamped files were recorded: {exc}"
            return
        for cid in ids:
            if cid not in stored:
                path, status = recorded[cid]
                report.counts[status] -= 1
                report.counts["failed"] += 1
                report.problems.append(
                    Problem("failed", path, "stamped, but not recorded in the store (see the log)", cid)
                )

    @staticmethod
    def _walk_problem(report: StampReport, entry: WalkEntry) -> None:
        assert entry.problem is not None  # WalkEntry sets both or neither
        assert entry.kind is not None
        status = "skipped" if entry.kind.omission else "failed"
        report.counts[status] += 1
        report.problems.append(Problem(status, str(entry.path), entry.problem))

    @staticmethod
    def _count(report: StampReport, outcome: OnexEnvelopeV1, path: str) -> str:
        """Count ``outcome`` in ``report``; returns the status it was counted as."""
        payload = outcome.payload  # ModelWorkflowFinished (typed by the client), or a dead letter's dict
        if payload.get("state") != "completed":
            error = str(payload.get("error"))
            # A file open in another process was left as it was (the stamping effect retried it): not broken, busy.
            status = "busy" if BUSY in error else "failed"
            report.counts[status] += 1
            report.problems.append(Problem(status, path, error, outcome.correlation_id))
            return status
        stamp_step = next((s for s in payload.steps if s.step_name == "stamp"), None)
        status = "unchanged" if stamp_step is not None and stamp_step.data.get("status") == "unchanged" else "stamped"
        report.counts[status] += 1
        return status


VERIFY_STATUSES: Final = ("valid", "modified", "unstamped", "error", "skipped")


@dataclass
class VerifyReport:
    """The outcome of ``onex verify``: one result per file walked (a walk error is an ``error`` result; what the
    walk leaves out on purpose, a symlink out of the root, is ``skipped`` with the reason, as ``onex stamp`` says
    it), and the count per status."""

    results: list[VerifyResult] = field(default_factory=list)
    counts: Counter[str] = field(default_factory=Counter)

    def to_dict(self, *, show_all: bool = False) -> dict[str, Any]:
        """The report as JSON-ready data (``onex verify -o json``): the counts, and the files the table lists (those
        that are not valid; every file with ``show_all``)."""
        return {
            "counts": {c: self.counts[c] for c in VERIFY_STATUSES},
            "files": [
                {"path": r.path, "status": r.status, "expected": r.expected, "actual": r.actual, "error": r.error}
                for r in self.results
                if show_all or r.status != "valid"
            ],
        }


def validated_report(
    path: str, status: str, *, expected: str | None, actual: str | None, namespace: str
) -> dict[str, Any]:
    """The METADATA_STAMP_VALIDATED payload of one verdict (``nodes.models.ModelStampValidated``)."""
    return {
        "file_hash": actual,
        "validation_result": status,
        "namespace": namespace,
        "stamps_found": 0 if expected is None else 1,
        "file_path": path,
        "expected_hash": expected,
    }


async def publish_verified(
    report: VerifyReport,
    settings: Settings,
    contracts: ContractSet,
    *,
    namespace: str,
    bus: EventBus | None = None,
) -> bool:
    """``onex verify --publish``: one METADATA_STAMP_VALIDATED per file of ``report``, on ``bus`` (started), else on
    the settings' bus (``--bus`` / ``ONEX_BUS``, as ``onex stamp`` picks it; opened and closed here). True once
    every one was published; an ``OnexError`` saying why not (``BusError`` when the bus cannot be reached)."""
    from onex.runtime import open_bus

    catalog = EventCatalog(contracts.contracts, settings)
    payloads = [
        validated_report(r.path, r.status, expected=r.expected, actual=r.actual, namespace=namespace)
        for r in report.results
        if r.status != "skipped"  # not verified: nothing to say about it
    ]
    if bus is not None:
        return await publish_report(
            bus, catalog, settings, STAMP_VALIDATED_EVENT, payloads, source="onex-verify", strict=True
        )
    async with open_bus(settings) as own:
        if STAMP_VALIDATED_EVENT in catalog.events:
            await own.ensure_topics([catalog.topic(STAMP_VALIDATED_EVENT)])
        await publish_report(own, catalog, settings, STAMP_VALIDATED_EVENT, payloads, source="onex-verify", strict=True)
        await own.flush()  # "published" means the broker has them
    return True


def verify_paths(paths: Sequence[Path], *, excludes: Sequence[str] = ()) -> VerifyReport:
    """Verify every file under ``paths`` offline (no bus, no store)."""
    report = VerifyReport()
    for entry in iter_files(paths, excludes=excludes):
        if entry.kind is not None:
            assert entry.problem is not None  # WalkEntry sets both or neither
            status: Literal["error", "skipped"] = "skipped" if entry.kind.omission else "error"
            result = VerifyResult(str(entry.path), status, None, None, entry.problem)
        else:
            result = verify_file(entry.path)
        report.results.append(result)
        report.counts[result.status] += 1
    return report
