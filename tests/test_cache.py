"""onex.cache: every field of the caching subcontract, on both backends (one conformance suite), and where the
runtime uses it: the registry's alive-node lookups, invalidated through the bus, and its metrics."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import AsyncExitStack
from pathlib import Path
from typing import Any, Literal, Protocol
from urllib.parse import urlsplit, urlunsplit

import pytest
from onex.bus import MemoryBus, Subscription
from onex.cache import REDIS_RETRY_AFTER_S, REDIS_TIMEOUT_S, Cache, MemoryCache, RedisCache, node_cache, open_cache
from onex.clock import SYSTEM_CLOCK
from onex.contracts import CachingSubcontract, load_contract, load_subcontract
from onex.envelope import NODE_HEARTBEAT, NODE_INTROSPECTION, OnexEnvelopeV1, topic_name
from onex.exceptions import ContractError, OnexError
from onex.metrics import registry_for
from onex.settings import Settings
from onex.store import RegistrationRow, WriteBatch
from onex.testing import Harness, ManualClock
from prometheus_client import generate_latest
from prometheus_client.parser import text_string_to_metric_families

from nodes.registry.v1_0_0.node import NodeRegistry
from tests.fixtures.redis import RedisTarget

pytestmark = pytest.mark.anyio

ROOT = Path(__file__).resolve().parent.parent
BACKENDS = [pytest.param("memory", id="memory"), pytest.param("redis", id="redis", marks=pytest.mark.redis)]
TENANT = "t"


def spec(**fields: Any) -> CachingSubcontract:
    fields.setdefault("cached", ["alive_nodes"])
    fields.setdefault("key_template", "alive:{node_type}")
    return CachingSubcontract(version="1.0.0", **fields)


class MakeCache(Protocol):
    """``await make_cache(**subcontract_fields)``: a cache on the test's backend, closed at teardown."""

    def __call__(self, **fields: Any) -> Awaitable[Cache]: ...


@pytest.fixture(params=BACKENDS)
async def make_cache(request: pytest.FixtureRequest) -> AsyncIterator[MakeCache]:
    url: str | None = None
    env = "dev"
    if request.param == "redis":
        target: RedisTarget = request.getfixturevalue("redis_target")
        url, env = target.url, target.env
    async with AsyncExitStack() as stack:

        async def make(**fields: Any) -> Cache:
            cache = open_cache(spec(**fields), name="node", clock=ManualClock(), tenant=TENANT, env=env, url=url)
            stack.push_async_callback(cache.aclose)
            return cache

        yield make


class Loads:
    """A lookup's loader that counts its calls and returns what it is told."""

    def __init__(self, value: Any = None) -> None:
        self.calls = 0
        self.value = value

    def __call__(self, value: Any = None) -> Callable[[], Awaitable[Any]]:
        async def load() -> Any:
            self.calls += 1
            return self.value if value is None else value

        return load


# --- the conformance suite: memory and redis --------------------------------------------------------------------


async def test_a_cached_lookup_loads_once_and_counts_its_hits_and_misses(make_cache: MakeCache) -> None:
    cache = await make_cache()
    loads = Loads(["a", "b"])

    first = await cache.lookup("alive_nodes", loads(), node_type="EFFECT")
    second = await cache.lookup("alive_nodes", loads(), node_type="EFFECT")

    assert first == second == ["a", "b"]
    assert loads.calls == 1
    assert cache.meter.lookups() == [("alive_nodes", 1, 1)]


async def test_only_the_lookups_named_in_cached_are_kept(make_cache: MakeCache) -> None:
    cache = await make_cache(cached=["alive_nodes"])
    loads = Loads(1)

    for _ in range(3):
        assert await cache.lookup("something_else", loads(), node_type="EFFECT") == 1

    assert loads.calls == 3
    assert cache.meter.lookups() == []  # reads through, not a miss


async def test_the_key_template_decides_which_lookups_share_an_entry(make_cache: MakeCache) -> None:
    by_type = await make_cache(key_template="alive:{node_type}")
    assert by_type.key("alive_nodes", node_type="EFFECT") == "alive_nodes:alive:EFFECT"
    assert await by_type.lookup("alive_nodes", Loads()(["e"]), node_type="EFFECT") == ["e"]
    assert await by_type.lookup("alive_nodes", Loads()(["r"]), node_type="REDUCER") == ["r"]  # an entry of its own

    one_key = await make_cache(key_template="alive")  # node_type is not part of the key: one entry for all
    await one_key.lookup("alive_nodes", Loads()(["e"]), node_type="EFFECT")
    assert await one_key.lookup("alive_nodes", Loads()(["r"]), node_type="REDUCER") == ["e"]

    with pytest.raises(OnexError, match=r"alive:\{node_type\}"):
        await by_type.lookup("alive_nodes", Loads()(["x"]))  # a field the template needs is missing


async def test_max_entries_evicts_the_least_recently_used(make_cache: MakeCache) -> None:
    cache = await make_cache(max_entries=2)
    loads = Loads("v")
    for node_type in ("A", "B", "A", "C"):  # A used again after B: B is the least recently used when C arrives
        await cache.lookup("alive_nodes", loads(), node_type=node_type)
    assert loads.calls == 3

    await cache.lookup("alive_nodes", loads(), node_type="A")
    await cache.lookup("alive_nodes", loads(), node_type="C")
    assert loads.calls == 3  # both kept
    await cache.lookup("alive_nodes", loads(), node_type="B")
    assert loads.calls == 4  # evicted


async def test_an_event_in_invalidate_on_clears_every_entry(make_cache: MakeCache) -> None:
    cache = await make_cache(invalidate_on=[NODE_INTROSPECTION])
    loads = Loads("v")
    for node_type in ("A", "B"):
        await cache.lookup("alive_nodes", loads(), node_type=node_type)

    await cache.invalidate(NODE_HEARTBEAT, {"node_type": "A"})  # not named: nothing happens
    await cache.lookup("alive_nodes", loads(), node_type="A")
    assert loads.calls == 2

    await cache.invalidate(NODE_INTROSPECTION, {"node_type": "A"})
    for node_type in ("A", "B"):
        await cache.lookup("alive_nodes", loads(), node_type=node_type)
    assert loads.calls == 4


async def test_an_invalidation_with_a_key_drops_the_entries_its_payload_names(make_cache: MakeCache) -> None:
    cache = await make_cache(
        cached=["namespace_page"],
        key_template="{namespace}|{limit}|{offset}",
        invalidate_on=[{"event": "STAMP_CREATED", "key": "{namespace}|"}],
    )
    loads = Loads("page")
    pages = [("a", 10, 0), ("a", 10, 10), ("ab", 10, 0)]
    for namespace, limit, offset in pages:
        await cache.lookup("namespace_page", loads(), namespace=namespace, limit=limit, offset=offset)

    await cache.invalidate("STAMP_CREATED", {"namespace": "a", "file_hash": "f" * 64})
    for namespace, limit, offset in pages:
        await cache.lookup("namespace_page", loads(), namespace=namespace, limit=limit, offset=offset)
    assert loads.calls == 5  # both pages of "a" again; "ab" kept

    await cache.invalidate("STAMP_CREATED", {"file_hash": "f" * 64})  # names nothing it can render: clears all
    await cache.lookup("namespace_page", loads(), namespace="ab", limit=10, offset=0)
    assert loads.calls == 6


async def test_invalidate_on_events_arrive_through_the_bus(make_cache: MakeCache) -> None:
    cache = await make_cache(invalidate_on=[NODE_INTROSPECTION])
    topic = topic_name(NODE_INTROSPECTION, env="dev", tenant="t")
    loads = Loads("v")
    async with MemoryBus() as bus:
        subscriptions: list[Subscription] = []
        await cache.listen(bus, "process-1.cache", {NODE_INTROSPECTION: topic}, str.lower, into=subscriptions)
        await cache.lookup("alive_nodes", loads(), node_type="A")

        await bus.publish(topic, OnexEnvelopeV1(event_type=NODE_INTROSPECTION, source_node_id="x", payload={}))
        await bus.join()
        await cache.lookup("alive_nodes", loads(), node_type="A")
        await subscriptions[0].aclose()
    assert loads.calls == 2


async def test_a_value_is_the_same_json_on_a_hit_as_on_a_miss(make_cache: MakeCache) -> None:
    cache = await make_cache()
    value = {"ids": ("a", "b"), "n": 1}
    missed = await cache.lookup("alive_nodes", Loads()(value), node_type="A")
    hit = await cache.lookup("alive_nodes", Loads()(value), node_type="A")
    assert missed == hit == {"ids": ["a", "b"], "n": 1}
    missed["ids"].append("changed")  # a caller's copy: the entry is not changed
    assert await cache.lookup("alive_nodes", Loads()(value), node_type="A") == {"ids": ["a", "b"], "n": 1}


async def test_a_lookup_invalidated_while_it_loads_does_not_store_what_it_loaded(make_cache: MakeCache) -> None:
    cache = await make_cache(invalidate_on=[NODE_INTROSPECTION])
    calls = 0

    async def load_racing_an_invalidation() -> int:
        nonlocal calls
        calls += 1
        await cache.invalidate(NODE_INTROSPECTION)  # the store changed after this load read it
        return calls

    assert await cache.lookup("alive_nodes", load_racing_an_invalidation, node_type="A") == 1
    assert await cache.lookup("alive_nodes", load_racing_an_invalidation, node_type="A") == 2


# --- ttl_ms: the clock in memory, PX in Redis ---------------------------------------------------------------------


async def test_ttl_ms_expires_a_memory_entry_on_the_nodes_clock() -> None:
    clock = ManualClock()
    cache = MemoryCache(spec(ttl_ms=1000), name="node", clock=clock)
    loads = Loads("v")
    await cache.lookup("alive_nodes", loads(), node_type="A")

    await clock.advance(0.999)
    await cache.lookup("alive_nodes", loads(), node_type="A")
    assert loads.calls == 1
    await clock.advance(0.001)
    await cache.lookup("alive_nodes", loads(), node_type="A")
    assert loads.calls == 2


async def test_without_ttl_ms_a_memory_entry_stays() -> None:
    clock = ManualClock()
    cache = MemoryCache(spec(ttl_ms=None), name="node", clock=clock)
    loads = Loads("v")
    await cache.lookup("alive_nodes", loads(), node_type="A")
    await clock.advance(10**6)
    await cache.lookup("alive_nodes", loads(), node_type="A")
    assert loads.calls == 1


@pytest.mark.parametrize(("ttl_ms", "low", "high"), [(60_000, 59_000, 60_000), (None, -1, -1)])
async def test_ttl_ms_is_the_redis_keys_expiry(
    redis_target: RedisTarget, ttl_ms: int | None, low: int, high: int
) -> None:
    cache = open_cache(
        spec(ttl_ms=ttl_ms), name="node", clock=SYSTEM_CLOCK, tenant=TENANT, env=redis_target.env, url=redis_target.url
    )
    assert isinstance(cache, RedisCache)
    client = redis_target.client()
    try:
        await cache.lookup("alive_nodes", Loads()("v"), node_type="A")
        key = f"onex:{redis_target.env}:{TENANT}:node:v1:alive_nodes:alive:A"
        assert await client.get(key) == b'"v"'
        assert low <= await client.pttl(key) <= high  # -1: no expiry
    finally:
        await client.aclose()
        await cache.aclose()


async def test_redis_replicas_share_entries_and_each_others_invalidations(redis_target: RedisTarget) -> None:
    caching = spec(invalidate_on=[NODE_INTROSPECTION])
    one, two = (
        open_cache(caching, name="node", clock=SYSTEM_CLOCK, tenant=TENANT, env=redis_target.env, url=redis_target.url)
        for _ in range(2)
    )
    loads = Loads("v")
    try:
        await one.lookup("alive_nodes", loads(), node_type="A")
        await two.lookup("alive_nodes", loads(), node_type="A")
        assert loads.calls == 1  # the second replica hit the first one's entry

        await one.invalidate(NODE_INTROSPECTION)
        await two.lookup("alive_nodes", loads(), node_type="A")
        assert loads.calls == 2
    finally:
        await one.aclose()
        await two.aclose()


async def test_a_redis_that_does_not_answer_is_read_through() -> None:
    cache = open_cache(spec(), name="node", clock=SYSTEM_CLOCK, tenant=TENANT, url="redis://127.0.0.1:1/0")
    loads = Loads("v")
    try:
        for _ in range(2):
            assert await cache.lookup("alive_nodes", loads(), node_type="A") == "v"
    finally:
        await cache.aclose()
    assert loads.calls == 2


async def test_redis_keys_are_a_tenants_and_a_contract_major_versions_own(redis_target: RedisTarget) -> None:
    registry = load_contract(ROOT / "contracts" / "registries" / "registry.yaml", root=ROOT)
    assert registry.version == "1.0.0"
    async with AsyncExitStack() as stack:

        def cache(tenant: str, version: str = "1.0.0") -> Cache:
            settings = Settings(env=redis_target.env, tenant=tenant, cache_url=redis_target.url)
            opened = node_cache(registry.model_copy(update={"version": version}), settings, ManualClock())
            assert isinstance(opened, RedisCache)
            stack.push_async_callback(opened.aclose)
            return opened

        assert await cache("acme").lookup("alive_nodes", Loads()(["acme-1"]), node_type="*") == ["acme-1"]
        assert await cache("globex").lookup("alive_nodes", Loads()([]), node_type="*") == []  # not acme's
        assert await cache("acme", "2.0.0").lookup("alive_nodes", Loads()(["v2"]), node_type="*") == ["v2"]
        # A minor version keeps the shape of its values: its replicas share the entries of the older ones.
        assert await cache("acme", "1.1.0").lookup("alive_nodes", Loads()(["x"]), node_type="*") == ["acme-1"]


class Outage:
    """A TCP proxy in front of the test's Redis server that fails as a server does: ``up`` forwards both ways,
    ``silent`` takes what it is sent and answers nothing (a server that hangs, a network that drops packets after
    the connection was made), ``closed`` closes every connection, open or new (a server gone). ``connections`` and
    ``requests``: how many connections it accepted and reads it got from clients, in any mode."""

    def __init__(self, target: RedisTarget) -> None:
        parts = urlsplit(target.url)
        self._upstream = (parts.hostname or "127.0.0.1", parts.port or 6379)
        self._parts = parts
        self.mode: Literal["up", "silent", "closed"] = "up"
        self.connections = 0
        self.requests = 0
        self.url = ""
        self._writers: set[asyncio.StreamWriter] = set()
        self._tasks: set[asyncio.Task[Any]] = set()

    async def __aenter__(self) -> Outage:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        port = self._server.sockets[0].getsockname()[1]
        auth, at, _ = self._parts.netloc.rpartition("@")
        self.url = urlunsplit(self._parts._replace(netloc=f"{auth}{at}127.0.0.1:{port}"))
        return self

    async def __aexit__(self, *exc: object) -> None:
        self.set("closed")
        self._server.close()
        await self._server.wait_closed()
        await asyncio.gather(*self._tasks, return_exceptions=True)

    def set(self, mode: Literal["up", "silent", "closed"]) -> None:
        self.mode = mode
        if mode == "closed":
            for writer in self._writers:
                writer.close()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)
        self._writers.add(writer)
        self.connections += 1
        try:
            if self.mode == "closed":
                return
            upstream_reader, upstream = await asyncio.open_connection(*self._upstream)
            self._writers.add(upstream)
            try:
                await asyncio.gather(self._pipe(reader, upstream, counted=True), self._pipe(upstream_reader, writer))
            finally:
                upstream.close()
        finally:
            writer.close()

    async def _pipe(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, *, counted: bool = False) -> None:
        try:
            while data := await reader.read(65536):
                self.requests += counted
                if self.mode == "up":
                    writer.write(data)
                    await writer.drain()
        except OSError:  # the other side closed
            pass
        finally:
            writer.close()


async def test_a_redis_that_accepts_but_never_answers_is_read_through_then_left_alone_a_while(
    redis_target: RedisTarget,
) -> None:
    clock = ManualClock()
    async with Outage(redis_target) as redis:
        cache = open_cache(spec(), name="node", clock=clock, tenant=TENANT, env=redis_target.env, url=redis.url)
        assert isinstance(cache, RedisCache)
        # How long it waits is not asserted (no timing in tests): that it is bounded is (older redis-py waits forever).
        options = cache.redis.connection_pool.connection_kwargs
        assert options["socket_timeout"] == options["socket_connect_timeout"] == REDIS_TIMEOUT_S
        try:
            assert await cache.lookup("alive_nodes", Loads()("stored"), node_type="A") == "stored"
            connected = redis.connections
            redis.set("silent")
            assert await cache.lookup("alive_nodes", Loads()("read"), node_type="A") == "read"  # gave up waiting
            assert redis.connections == connected  # one attempt: no retry within the call
            asked = redis.requests
            assert await cache.lookup("alive_nodes", Loads()("read"), node_type="A") == "read"
            assert redis.requests == asked  # not asked again during the pause

            redis.set("up")
            await clock.advance(REDIS_RETRY_AFTER_S)
            assert await cache.lookup("alive_nodes", Loads()("read"), node_type="A") == "stored"  # asked again
            assert cache.meter.lookups() == [("alive_nodes", 1, 3)]
        finally:
            await cache.aclose()


@pytest.mark.parametrize("how", ["refused", "paused"])
@pytest.mark.parametrize("event", [NODE_INTROSPECTION, NODE_HEARTBEAT], ids=["clear", "drop"])
async def test_an_invalidation_redis_did_not_take_is_made_good_before_redis_is_trusted_again(
    redis_target: RedisTarget, event: str, how: str
) -> None:
    clock = ManualClock()
    caching = spec(
        ttl_ms=None, invalidate_on=[NODE_INTROSPECTION, {"event": NODE_HEARTBEAT, "key": "alive:{node_type}"}]
    )
    async with Outage(redis_target) as redis:
        cache = open_cache(caching, name="node", clock=clock, tenant=TENANT, env=redis_target.env, url=redis.url)
        try:
            assert await cache.lookup("alive_nodes", Loads()(["node-1"]), node_type="A") == ["node-1"]
            redis.set("closed")
            if how == "paused":  # a read found Redis gone; it answers again, but the invalidation is not sent yet
                assert await cache.lookup("alive_nodes", Loads()(["node-1"]), node_type="A") == ["node-1"]
                redis.set("up")
            await cache.invalidate(event, {"node_type": "A"})  # node-1 stopped
            redis.set("up")
            assert await cache.lookup("alive_nodes", Loads()(["none"]), node_type="A") == ["none"]  # paused

            redis.set("closed")  # the clear that makes good the lost invalidation fails too: tried again later
            await clock.advance(REDIS_RETRY_AFTER_S)
            assert await cache.lookup("alive_nodes", Loads()(["none"]), node_type="A") == ["none"]
            redis.set("up")
            await clock.advance(REDIS_RETRY_AFTER_S)
            assert await cache.lookup("alive_nodes", Loads()(["none"]), node_type="A") == ["none"]  # not node-1
            loads = Loads(["never"])
            assert await cache.lookup("alive_nodes", loads(), node_type="A") == ["none"]  # stored, and trusted
            assert loads.calls == 0
        finally:
            await cache.aclose()


@pytest.mark.parametrize("event", [NODE_INTROSPECTION, NODE_HEARTBEAT], ids=["clear", "drop"])
async def test_an_entry_another_replica_stores_while_one_invalidates_is_dropped_or_indexed(
    redis_target: RedisTarget, event: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """After each command one replica's invalidation sends, another replica stores an entry. An entry no index
    names would never be evicted or dropped, and a read would serve it: every entry left must be in the index."""
    caching = spec(
        ttl_ms=None, invalidate_on=[NODE_INTROSPECTION, {"event": NODE_HEARTBEAT, "key": "alive:{node_type}"}]
    )
    one, two = (
        open_cache(caching, name="node", clock=ManualClock(), tenant=TENANT, env=redis_target.env, url=redis_target.url)
        for _ in range(2)
    )
    assert isinstance(one, RedisCache)
    sent: Callable[..., Awaitable[Any]] = one.redis.execute_command
    stored: list[str] = []

    async def then_store(*args: Any, **options: Any) -> Any:
        answer = await sent(*args, **options)
        stored.append(f"A{len(stored)}")
        await two.lookup("alive_nodes", Loads()(["node-1"]), node_type=stored[-1])
        return answer

    try:
        await one.lookup("alive_nodes", Loads()(["node-1"]), node_type="A")
        monkeypatch.setattr(one.redis, "execute_command", then_store)
        await one.invalidate(event, {"node_type": "A"})
        monkeypatch.undo()
        assert stored
        keys = {key async for key in one.redis.scan_iter(match=f"{one.prefix}alive_nodes:*")}
        assert keys <= set(await one.redis.zrange(one._index, 0, -1)), stored
    finally:
        await one.aclose()
        await two.aclose()


# --- backend: the subcontract's, or ONEX_CACHE_URL's ---------------------------------------------------------------


async def test_backend_and_the_cache_url_setting_pick_the_backend() -> None:
    assert isinstance(open_cache(spec(backend="memory"), name="n", clock=SYSTEM_CLOCK, tenant=TENANT), MemoryCache)
    on_redis = open_cache(
        spec(backend="redis://127.0.0.1:6379/3"), name="n", clock=SYSTEM_CLOCK, tenant="acme", env="prod"
    )
    assert isinstance(on_redis, RedisCache)
    assert (on_redis.url, on_redis.prefix) == ("redis://127.0.0.1:6379/3", "onex:prod:acme:n:v1:")
    await on_redis.aclose()

    url = Settings.load(environ={"ONEX_CACHE_URL": "redis://127.0.0.1:6379/4"}).cache_url
    overridden = open_cache(spec(backend="memory"), name="n", clock=SYSTEM_CLOCK, tenant=TENANT, url=url)
    assert isinstance(overridden, RedisCache)
    await overridden.aclose()
    with pytest.raises(OnexError, match="unsupported cache backend"):
        open_cache(spec(backend="mongodb://x"), name="n", clock=SYSTEM_CLOCK, tenant=TENANT)


def test_the_schema_refuses_a_backend_that_is_not_memory_or_redis(tmp_path: Path) -> None:
    (tmp_path / "bad.yaml").write_text(
        "subcontract_type: caching\nversion: 1.0.0\nbackend: mongodb://host/db\ninvalidate_on: [{event: X, k: y}]\n"
    )
    with pytest.raises(ContractError) as raised:
        load_subcontract(tmp_path / "bad.yaml", root=tmp_path)
    assert "bad.yaml:3:" in str(raised.value)
    assert "bad.yaml:4:" in str(raised.value)


# --- the registry: alive_nodes, invalidated through the bus; metrics -------------------------------------------------


def registration(node_id: str, node_type: str = "EFFECT", health: str = "HEALTHY") -> RegistrationRow:
    return RegistrationRow(
        node_id=node_id,
        node_type=node_type,
        node_version="1.0.0",
        health_status=health,
        capabilities={},
        endpoints={},
        metadata={},
        last_heartbeat=None,
        registered_at=None,
    )


async def test_the_registry_caches_alive_nodes_until_an_event_invalidates_it() -> None:
    async with Harness(["registry"], root=ROOT, clock=ManualClock()) as h:  # the clock never reaches ttl_ms
        registry = h.runtime.node("registry")
        assert isinstance(registry, NodeRegistry)
        assert registry.cache is not None
        calls = 0
        list_registrations = h.store.list_registrations

        async def counted() -> list[RegistrationRow]:
            nonlocal calls
            calls += 1
            return await list_registrations()

        h.store.list_registrations = counted  # type: ignore[method-assign]
        await h.settle()  # the registry heard its own introspection
        assert await registry.alive_nodes() == [registry.node_id]
        assert await registry.alive_nodes("REGISTRY") == [registry.node_id]
        assert await registry.alive_nodes("EFFECT") == []
        assert await registry.alive_nodes() == [registry.node_id]
        assert calls == 3  # one per key_template key: alive:*, alive:REGISTRY, alive:EFFECT

        # Another replica's write: the store changes behind this registry's back, so its cache is stale ...
        await h.store.apply(WriteBatch(registrations=[registration("effect-1")]))
        assert await registry.alive_nodes("EFFECT") == []
        # ... until an invalidate_on event goes through the bus: every process hears it.
        await h.publish(NODE_HEARTBEAT, {"node_id": "someone", "node_type": "COMPUTE", "node_version": "1.0.0"})
        await h.settle()
        assert await registry.alive_nodes("EFFECT") == ["effect-1"]

        registry_text = generate_latest(registry_for(h.runtime)).decode()
    samples = {
        (s.name, s.labels.get("cache")): s.value
        for family in text_string_to_metric_families(registry_text)
        for s in family.samples
        if s.labels.get("node") == "registry"
    }
    assert samples[("onex_cache_hits_total", "alive_nodes")] == 2
    assert samples[("onex_cache_misses_total", "alive_nodes")] == 4


async def test_a_contract_without_caching_gives_its_node_no_cache() -> None:
    async with Harness(["reducer"], root=ROOT) as h:
        assert h.runtime.node("reducer").cache is None


def test_the_shipped_caching_subcontracts_load() -> None:
    for name in ("registry_lookups", "gateway_stamps", "gateway_namespaces"):
        caching = load_subcontract(ROOT / "subcontracts" / "caching" / f"{name}.yaml", root=ROOT)
        assert isinstance(caching, CachingSubcontract)
        assert caching.cached
        assert caching.ttl_ms
        assert caching.invalidations()
