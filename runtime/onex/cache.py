"""Caches: lookups a node (or the HTTP gateway) makes often and may answer again, built from a caching subcontract.

A ``Cache`` keeps the results of the lookups its subcontract names (``cached``; any other lookup reads through),
each under a key rendered from ``key_template`` with the lookup's fields, for ``ttl_ms`` at most, at most
``max_entries`` of them (the least recently used go first), in this process (``MemoryCache``, timed by the node's
clock) or in Redis (``RedisCache``: ``PX`` expiry, shared by every process pointed at the same server and database).
``ONEX_CACHE_URL``, when set, replaces every subcontract's ``backend``. Values are stored as JSON, so a hit returns
what a miss returned (after a JSON round trip: lists, dicts, strings, numbers), never an object a caller could
change in place for the next one.

Invalidation. ``invalidate_on`` names events; ``listen`` subscribes the cache to their topics with a consumer group
of its own per process (as every node answers introspection requests), so every process hears every such event and
drops what it names, whichever replica handled it: every entry, or with ``key`` (a template over the event's
payload) the entries whose key starts with it. A node whose own handler writes what its cache reads also calls
``invalidate`` once that write committed, so its own reads never serve the value from before. Another process hears
an event when it is published, which may be before the process that persists it committed: a read in between stores
the old value again, and ``ttl_ms`` bounds how long it is served (the bound on staleness; a lookup that loaded while
an invalidation arrived in this process does not store what it loaded). The nodes and the gateway do this wiring
(``onex.nodes.Node``, ``onex.http.app``); docs/contracts.md ("caching") documents each field.

Hits and misses per lookup are counted in ``meter`` (``onex_cache_hits_total`` / ``onex_cache_misses_total``).
A Redis that does not answer (refuses, or says nothing for ``REDIS_TIMEOUT_S``) is logged and read through: a cache
outage slows reads down, it does not fail them; nor does it hang them, and after a failure Redis is left alone for
``REDIS_RETRY_AFTER_S`` (on the cache's clock), so one read in that while pays the timeout, not every read. An
invalidation Redis did not take may have left entries it names there: until a clear of every entry of the cache
succeeds (tried on the first round trip after the pause), nothing is read from Redis nor stored in it.
"""

from __future__ import annotations

import abc
import json
import logging
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from typing import TYPE_CHECKING, Any, Final

from pydantic import BaseModel

from onex.bus import EventBus, Subscription
from onex.clock import Clock
from onex.contracts import CacheInvalidation, CachingSubcontract, Contract, template_fields
from onex.envelope import CONTROL_EVENTS, OnexEnvelopeV1
from onex.exceptions import OnexError
from onex.meters import CacheMeter
from onex.settings import Settings

if TYPE_CHECKING:
    from redis.asyncio import Redis
    from redis.commands.core import AsyncScript

__all__ = ["Cache", "MemoryCache", "RedisCache", "node_cache", "open_cache"]

_log = logging.getLogger("onex.cache")

# A healthy server answers a cache's round trip in well under a millisecond, and a cached read must not wait on a sick
# one (overloaded, paused, a network that drops packets after the connection was made) much longer than the read it
# would save: connecting and every round trip give up after this long, and the read goes to the store.
REDIS_TIMEOUT_S: Final = 0.25
# After a round trip failed, Redis is not asked again for this long (on the cache's clock): during an outage one read
# in this while pays REDIS_TIMEOUT_S (and the log one warning), not every read.
REDIS_RETRY_AFTER_S: Final = 1.0


def _fields(template: str) -> tuple[str, ...]:
    """The fields of a key template; ``OnexError`` for one ``onex validate`` refuses (a contract built by hand)."""
    try:
        return template_fields(template)
    except ValueError as exc:
        raise OnexError(f"cache key template {template!r}: {exc}") from None


def _render(template: str, fields: Mapping[str, Any], what: str) -> str:
    try:
        return template.format_map(fields)
    except (KeyError, IndexError, AttributeError, ValueError) as exc:
        raise OnexError(f"cache key template {template!r} cannot be rendered from {what}: {exc!r}") from None


def _payload_fields(payload: Any) -> Mapping[str, Any]:
    if isinstance(payload, BaseModel):
        return payload.model_dump()
    return payload if isinstance(payload, Mapping) else {}


class Cache(abc.ABC):
    """The lookups of one caching subcontract; ``lookup`` reads through it. Close with ``aclose``.

    ``name`` says whose cache it is (a node's contract name, ``gateway``): the metrics' ``node`` label, and with
    Redis part of every key (``onex:{env}:{tenant}:{name}:v{major}:{lookup}:{key}``), so the replicas of one node
    (of one tenant, and one major version of its contract) share entries.
    """

    def __init__(self, spec: CachingSubcontract, *, name: str, clock: Clock) -> None:
        self.spec = spec
        self.name = name
        self.clock = clock
        self.meter = CacheMeter()
        self.fields = _fields(spec.key_template)
        self._cached = frozenset(spec.cached)
        self._rules: dict[str, list[CacheInvalidation]] = {}
        for rule in spec.invalidations():
            self._rules.setdefault(rule.event, []).append(rule)
        self._epoch = 0  # moves on every invalidation: a load that saw it move does not store what it loaded

    @property
    def events(self) -> frozenset[str]:
        """The events that invalidate this cache (``invalidate_on``)."""
        return frozenset(self._rules)

    def key(self, lookup: str, **fields: Any) -> str:
        """The key of ``lookup``'s entry for ``fields``: ``{lookup}:{key_template rendered with fields}``."""
        return f"{lookup}:{_render(self.spec.key_template, fields, f'the fields of lookup {lookup!r}')}"

    async def lookup(
        self,
        lookup: str,
        load: Callable[[], Awaitable[Any]],
        *,
        default: Callable[[Any], Any] | None = None,
        **fields: Any,
    ) -> Any:
        """The cached value of ``lookup`` for ``fields``, or ``await load()`` stored (when ``lookup`` is one the
        subcontract caches). ``load`` returns a JSON value; ``default`` encodes what ``json`` cannot (as
        ``json.dumps``'s). Both a hit and a miss return the value decoded from its JSON."""
        if lookup not in self._cached:
            return await load()
        key = self.key(lookup, **fields)
        raw = await self._get(key)
        if raw is not None:
            self.meter.hits[lookup] += 1
            return json.loads(raw)
        self.meter.misses[lookup] += 1
        epoch = self._epoch
        raw = json.dumps(await load(), default=default, separators=(",", ":"))
        if epoch == self._epoch:  # invalidated while loading: what was loaded may predate the change
            await self._set(key, raw)
        return json.loads(raw)

    async def invalidate(self, event_type: str, payload: Any = None) -> None:
        """Drop what ``event_type`` invalidates (``invalidate_on``): every entry, or those its rules' ``key``
        templates name from ``payload`` (a model or a mapping). A payload without a field a template needs clears
        every entry: more misses, never a stale hit."""
        rules = self._rules.get(event_type)
        if not rules:
            return
        self._epoch += 1
        prefixes: list[str] = []
        for rule in rules:
            if rule.key is None:
                await self.clear()
                return
            try:
                prefix = _render(rule.key, _payload_fields(payload), f"a {event_type} payload")
            except OnexError as exc:
                _log.warning("%s: clearing the whole cache: %s", self.name, exc)
                await self.clear()
                return
            prefixes.extend(f"{lookup}:{prefix}" for lookup in self.spec.cached)
        await self._drop(prefixes)

    async def clear(self) -> None:
        """Drop every entry."""
        self._epoch += 1
        await self._clear()

    async def listen(
        self,
        bus: EventBus,
        group: str,
        topics: Mapping[str, str],
        topic_of: Callable[[str], str],
        *,
        into: list[Subscription],
    ) -> None:
        """Subscribe ``group`` to the topics of the ``invalidate_on`` events (``topics`` by event name, else
        ``topic_of(name)``), invalidating as they arrive; the subscription is appended to ``into``, for the caller
        to close. ``group`` must be this process's own (every process hears every event); it starts at the
        latest message: an entry stored after this returns is invalidated by what is published after it."""
        names = sorted({topics.get(event) or topic_of(event) for event in self.events})
        await bus.ensure_topics(names)

        async def heard(envelopes: Sequence[OnexEnvelopeV1]) -> None:
            for envelope in envelopes:
                await self.invalidate(envelope.event_type, envelope.payload)

        # Invalidated by control events alone (the registry's cache of live nodes): a background subscription.
        background = self.events <= CONTROL_EVENTS
        into.append(await bus.subscribe(names, group, batch_handler=heard, start="latest", background=background))

    async def aclose(self) -> None:  # noqa: B027  # a backend that holds nothing has nothing to release
        """Release what the backend holds (connections)."""

    # -- the backend --
    @abc.abstractmethod
    async def _get(self, key: str) -> str | None:
        """The entry's JSON if it is there and alive (it becomes the most recently used), else None."""

    @abc.abstractmethod
    async def _set(self, key: str, raw: str) -> None:
        """Store the entry for ``ttl_ms``, then evict the least recently used beyond ``max_entries``."""

    @abc.abstractmethod
    async def _drop(self, prefixes: Iterable[str]) -> None:
        """Drop the entries whose key starts with one of ``prefixes``."""

    @abc.abstractmethod
    async def _clear(self) -> None:
        """Drop every entry."""


class MemoryCache(Cache):
    """Entries in this process, in least-recently-used order; ``ttl_ms`` on ``clock.monotonic()``."""

    def __init__(self, spec: CachingSubcontract, *, name: str, clock: Clock) -> None:
        super().__init__(spec, name=name, clock=clock)
        self._entries: OrderedDict[str, tuple[float | None, str]] = OrderedDict()  # key -> (expires at, JSON)

    def __len__(self) -> int:
        return len(self._entries)

    async def _get(self, key: str) -> str | None:
        entry = self._entries.get(key)
        if entry is None:
            return None
        expires, raw = entry
        if expires is not None and self.clock.monotonic() >= expires:
            del self._entries[key]
            return None
        self._entries.move_to_end(key)
        return raw

    async def _set(self, key: str, raw: str) -> None:
        ttl = self.spec.ttl_ms
        self._entries[key] = (None if ttl is None else self.clock.monotonic() + ttl / 1000, raw)
        self._entries.move_to_end(key)
        while len(self._entries) > self.spec.max_entries:
            self._entries.popitem(last=False)

    async def _drop(self, prefixes: Iterable[str]) -> None:
        starts = tuple(prefixes)
        for key in [key for key in self._entries if key.startswith(starts)]:
            del self._entries[key]

    async def _clear(self) -> None:
        self._entries.clear()


# Each script runs atomically on the server. Recency is a counter on the server (``tick``), not a client's clock:
# replicas on several machines share one least-recently-used order.
_GET = """
local value = redis.call('GET', KEYS[1])
if value then redis.call('ZADD', KEYS[2], redis.call('INCR', KEYS[3]), KEYS[1]) end
return value
"""
_SET = """
if ARGV[2] == '' then redis.call('SET', KEYS[1], ARGV[1]) else redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2]) end
redis.call('ZADD', KEYS[2], redis.call('INCR', KEYS[3]), KEYS[1])
local excess = redis.call('ZCARD', KEYS[2]) - tonumber(ARGV[3])
if excess > 0 then
  local evicted = redis.call('ZPOPMIN', KEYS[2], excess)
  for i = 1, #evicted, 2 do redis.call('DEL', evicted[i]) end
end
return excess
"""
# Invalidations read the index and delete in one script: a SET between a client's read of the index and its DEL
# would leave an entry no index names, which no later invalidation drops and a GET would serve (and index again).
_DROP = """
local dropped = 0
for _, key in ipairs(redis.call('ZRANGE', KEYS[1], 0, -1)) do
  for i = 1, #ARGV do
    if string.sub(key, 1, #ARGV[i]) == ARGV[i] then
      redis.call('DEL', key)
      redis.call('ZREM', KEYS[1], key)
      dropped = dropped + 1
      break
    end
  end
end
return dropped
"""
_CLEAR = """
for _, key in ipairs(redis.call('ZRANGE', KEYS[1], 0, -1)) do redis.call('DEL', key) end
redis.call('DEL', KEYS[1], KEYS[2])
"""


class RedisCache(Cache):
    """Entries in Redis (redis-py's asyncio client, imported only here): ``SET ... PX ttl_ms``, and a sorted set
    of the keys by last use (``{prefix}{lookups}~lru``) that bounds them to ``max_entries``. A single server, not a
    cluster (the scripts touch keys they are not given). ``prefix`` namespaces every key:
    ``onex:{env}:{tenant}:{name}:v{major}:``. The index (and its counter) is named after the lookups the subcontract
    caches, as its entries are: two caches of one name (the gateway's) keep their own, so neither's ``max_entries``
    evicts, nor its ``clear`` drops, the other's entries."""

    def __init__(self, spec: CachingSubcontract, *, name: str, clock: Clock, url: str, prefix: str) -> None:
        super().__init__(spec, name=name, clock=clock)
        from redis.asyncio import Redis
        from redis.exceptions import RedisError

        self.url = url
        self.prefix = prefix
        # Explicit: by default redis-py waits forever (older releases) or 5 s (newer). from_url's connections do
        # not retry a call (Redis() would, 10 times): a failure costs one timeout at most, and REDIS_RETRY_AFTER_S
        # says when Redis is asked again.
        self.redis: Redis = Redis.from_url(url, socket_timeout=REDIS_TIMEOUT_S, socket_connect_timeout=REDIS_TIMEOUT_S)
        lookups = "+".join(sorted(spec.cached))
        self._index = f"{prefix}{lookups}~lru"
        self._tick = f"{prefix}{lookups}~tick"
        self._get_script: AsyncScript = self.redis.register_script(_GET)
        self._set_script: AsyncScript = self.redis.register_script(_SET)
        self._drop_script: AsyncScript = self.redis.register_script(_DROP)
        self._clear_script: AsyncScript = self.redis.register_script(_CLEAR)
        self._errors = (RedisError, OSError)  # OSError: refused, reset; TimeoutError is one too
        self._failing = False  # warned that Redis does not answer; an answer ends it
        # The hot path checks one flag: set while Redis is paused after a failure or holds what an invalidation it
        # did not take should have dropped (_stale); _usable decides whether a round trip may go ahead.
        self._suspect = False
        self._retry_at = 0.0  # clock.monotonic() before which Redis is not asked after a failure
        self._stale = False  # an invalidation did not reach Redis: no entry there is trusted until a clear succeeds
        self._lost = 0  # invalidations Redis did not take: a clear that overlapped a newer one does not end _stale
        self._recovering = False  # a round trip is clearing for _stale: the others read through meanwhile

    def _unavailable(self, exc: Exception, *, lost: bool = False) -> None:
        """A round trip failed: pause (``REDIS_RETRY_AFTER_S``); ``lost``: it was an invalidation."""
        if not self._failing:
            _log.warning("%s: the cache at %s does not answer, reading through: %s", self.name, self.url, exc)
        self._failing = True
        self._suspect = True
        self._retry_at = self.clock.monotonic() + REDIS_RETRY_AFTER_S
        if lost:
            self._lose()

    def _lose(self) -> None:
        self._stale = self._suspect = True
        self._lost += 1

    async def _usable(self) -> bool:
        """Whether a round trip may go to Redis now (only while ``_suspect``): not during the pause after a
        failure, and not before a clear of every entry dropped what a lost invalidation named (tried here)."""
        if self._recovering or self.clock.monotonic() < self._retry_at:
            return False
        if not self._stale:
            self._suspect = False
            return True
        self._recovering = True
        lost = self._lost
        try:
            await self._delete_all()
        except self._errors as exc:
            self._unavailable(exc)
            return False
        finally:
            self._recovering = False
        if lost != self._lost:  # another invalidation was lost meanwhile: it may name what was stored since
            return False
        self._stale = self._suspect = self._failing = False
        _log.info("%s: the cache at %s answers again; cleared what a lost invalidation named", self.name, self.url)
        return True

    async def _get(self, key: str) -> str | None:
        if self._suspect and not await self._usable():
            return None
        try:
            raw = await self._get_script(keys=[self.prefix + key, self._index, self._tick])
        except self._errors as exc:
            self._unavailable(exc)
            return None
        self._failing = False
        return None if raw is None else bytes(raw).decode()

    async def _set(self, key: str, raw: str) -> None:
        if self._suspect and not await self._usable():
            return
        ttl = "" if self.spec.ttl_ms is None else str(self.spec.ttl_ms)
        try:
            await self._set_script(
                keys=[self.prefix + key, self._index, self._tick], args=[raw, ttl, self.spec.max_entries]
            )
        except self._errors as exc:
            self._unavailable(exc)

    async def _drop(self, prefixes: Iterable[str]) -> None:
        if self._suspect and not await self._usable():
            self._lose()  # not asked during the pause: lost all the same
            return
        # The index holds every live key (at most max_entries, and the expired ones not yet evicted): no SCAN of
        # the server's whole keyspace.
        try:
            await self._drop_script(keys=[self._index], args=[self.prefix + prefix for prefix in prefixes])
        except self._errors as exc:
            self._unavailable(exc, lost=True)

    async def _clear(self) -> None:
        if self._suspect and not await self._usable():
            self._lose()
            return
        try:
            await self._delete_all()
        except self._errors as exc:
            self._unavailable(exc, lost=True)

    async def _delete_all(self) -> None:
        await self._clear_script(keys=[self._index, self._tick])

    async def aclose(self) -> None:
        await self.redis.aclose()


def node_cache(contract: Contract, settings: Settings, clock: Clock) -> Cache | None:
    """The cache of a node of ``contract`` (None without a caching subcontract), named after the contract; in
    Redis its keys are ``settings.tenant``'s and the contract's major version's."""
    caching = contract.subcontracts.caching
    if caching is None:
        return None
    return open_cache(
        caching,
        name=contract.name,
        clock=clock,
        tenant=settings.tenant,
        env=settings.env,
        version=contract.version,
        url=settings.cache_url,
    )


def open_cache(
    spec: CachingSubcontract,
    *,
    name: str,
    clock: Clock,
    tenant: str,
    env: str = "dev",
    version: str | None = None,
    url: str | None = None,
) -> Cache:
    """The cache ``spec`` describes, on ``url`` when given (``ONEX_CACHE_URL``), else on its ``backend``:
    ``memory`` or ``redis://HOST:PORT/DB``. OnexError for any other. In Redis every key starts with
    ``onex:{env}:{tenant}:{name}:v{major}:``, the major of ``version`` (the node contract's), else of the
    subcontract's: tenants never share entries, nor do versions whose values may differ in shape."""
    backend = url or spec.backend
    if backend in ("memory", "memory://"):
        return MemoryCache(spec, name=name, clock=clock)
    if backend.startswith(("redis://", "rediss://")):
        major = (version or spec.version).split(".", 1)[0]
        prefix = f"onex:{env}:{tenant}:{name}:v{major}:"
        return RedisCache(spec, name=name, clock=clock, url=backend, prefix=prefix)
    raise OnexError(f"unsupported cache backend {backend!r}: expected memory or redis://HOST:PORT/DB")
