"""The gateway's caches (subcontracts/caching/gateway_*.yaml): GET /stamp/{hash} and GET /namespace/{ns} answered
from the cache until a stamp or an aggregate changes them, counted in /metrics; on Redis, shared by replicas."""

from __future__ import annotations

import uuid
from collections import Counter
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest
from onex.client import StampClient
from onex.http import PREFIX, create_app
from onex.http.app import Gateway
from onex.store import StampRow
from onex.testing import Harness
from prometheus_client.parser import text_string_to_metric_families

from tests.fixtures.redis import RedisTarget

pytestmark = pytest.mark.anyio

ROOT = Path(__file__).resolve().parent.parent


def ok(response: httpx.Response) -> Any:
    assert response.status_code == 200, response.text
    return response.json()["data"]


class Counted:
    """Counts the store's reads the gateway caches."""

    def __init__(self, h: Harness) -> None:
        self.calls: Counter[str] = Counter()
        store = h.store
        by_hash, list_stamps = store.get_stamps_by_hash, store.list_stamps

        async def get_stamps_by_hash(file_hash: str) -> list[StampRow]:
            self.calls["get_stamps_by_hash"] += 1
            return await by_hash(file_hash)

        async def list_stamps_(namespace: str, *, limit: int = 100, offset: int = 0) -> list[StampRow]:
            self.calls["list_stamps"] += 1
            return await list_stamps(namespace, limit=limit, offset=offset)

        store.get_stamps_by_hash = get_stamps_by_hash  # type: ignore[method-assign]
        store.list_stamps = list_stamps_  # type: ignore[method-assign]


class Api(httpx.AsyncClient):
    """An HTTP client of one gateway's app, and that ``Gateway``."""

    gateway: Gateway


@asynccontextmanager
async def gateways(h: Harness, count: int = 1, *, listen: bool = True, **settings: Any) -> AsyncIterator[list[Api]]:
    """``count`` gateways (as replicas would be) over the harness's nodes, each an HTTP client of its app (whose
    ``app.state.gateway`` is the ``Gateway``)."""
    async with AsyncExitStack() as stack:
        clients = []
        for _ in range(count):
            client = await stack.enter_async_context(
                StampClient(h.runtime.bus, h.contracts, h.settings, keep_stamps=True)
            )
            app = create_app(h.runtime, client, h.settings.with_(**settings))
            gateway: Gateway = app.state.gateway
            stack.push_async_callback(gateway.aclose)
            if listen:
                await gateway.listen()  # else the first reads go to the store while it subscribes
            transport = httpx.ASGITransport(app=app)
            api = await stack.enter_async_context(Api(transport=transport, base_url=f"http://gw{PREFIX}"))
            api.gateway = gateway
            clients.append(api)
        yield clients


def stamp_body(content: str, namespace: str, file_path: str = "a.py") -> dict[str, Any]:
    return {"content": content, "file_path": file_path, "namespace": namespace}


async def test_get_stamp_is_answered_from_the_cache_until_a_new_stamp_of_the_hash(tmp_path: Path) -> None:
    async with Harness(root=ROOT) as h, gateways(h) as (api,):
        counted = Counted(h)
        content = f"x = '{uuid.uuid4().hex}'\n"
        file_hash = ok(await api.post("/stamp", json=stamp_body(content, "t.cache")))["hash"]
        await h.settle()

        for _ in range(3):
            assert ok(await api.get(f"/stamp/{file_hash}"))["count"] == 1
        assert counted.calls["get_stamps_by_hash"] == 1

        # The same content again: a second stamp record of that hash, and a STAMP_CREATED naming it.
        ok(await api.post("/stamp", json=stamp_body(content, "t.cache", "b.py")))
        await h.settle()
        assert ok(await api.get(f"/stamp/{file_hash}"))["count"] == 2
        assert counted.calls["get_stamps_by_hash"] == 2

        metrics = (await api.get("/metrics")).text
    samples = {
        (s.name, s.labels["node"], s.labels["cache"]): s.value
        for family in text_string_to_metric_families(metrics)
        for s in family.samples
        if s.name.startswith("onex_cache_")
    }
    assert samples[("onex_cache_hits_total", "gateway", "stamps_by_hash")] == 2
    assert samples[("onex_cache_misses_total", "gateway", "stamps_by_hash")] == 2


async def test_reads_go_to_the_store_until_the_gateway_hears_its_invalidations(tmp_path: Path) -> None:
    async with Harness(root=ROOT) as h, gateways(h, listen=False) as (api,):
        counted = Counted(h)
        file_hash = ok(await api.post("/stamp", json=stamp_body(f"e = '{uuid.uuid4().hex}'\n", "t.early")))["hash"]
        await h.settle()
        ok(await api.get(f"/stamp/{file_hash}"))  # starts subscribing, reads the store, stores nothing
        await api.gateway.listen()  # the subscriptions the first read started
        for _ in range(2):
            ok(await api.get(f"/stamp/{file_hash}"))
        assert counted.calls["get_stamps_by_hash"] == 2


async def test_an_unknown_hash_is_cached_too_and_found_once_stamped(tmp_path: Path) -> None:
    async with Harness(root=ROOT) as h, gateways(h) as (api,):
        content = f"y = '{uuid.uuid4().hex}'\n"
        hashed = ok(await api.post("/hash", json={"content": content, "file_path": "a.py"}))["hash"]
        assert (await api.get(f"/stamp/{hashed}")).status_code == 404
        ok(await api.post("/stamp", json=stamp_body(content, "t.cache")))
        await h.settle()
        assert ok(await api.get(f"/stamp/{hashed}"))["count"] == 1


async def test_get_namespace_is_answered_from_the_cache_until_the_namespace_changes(tmp_path: Path) -> None:
    namespace = f"t.ns.{uuid.uuid4().hex[:8]}"
    async with Harness(root=ROOT) as h, gateways(h) as (api,):
        counted = Counted(h)
        ok(await api.post("/stamp", json=stamp_body(f"a = '{uuid.uuid4().hex}'\n", namespace)))
        await h.settle()

        first = ok(await api.get(f"/namespace/{namespace}", params={"limit": 1}))
        again = ok(await api.get(f"/namespace/{namespace}", params={"limit": 1}))
        assert first == again
        assert counted.calls["list_stamps"] == 1
        ok(await api.get(f"/namespace/{namespace}", params={"limit": 2}))  # another page: another entry
        assert counted.calls["list_stamps"] == 2

        ok(await api.post("/stamp", json=stamp_body(f"b = '{uuid.uuid4().hex}'\n", namespace, "b.py")))
        await h.settle()
        page = ok(await api.get(f"/namespace/{namespace}", params={"limit": 2}))
        assert [s["file_path"] for s in page["stamps"]] == ["a.py", "b.py"]
        assert counted.calls["list_stamps"] == 3

        other = ok(await api.get(f"/namespace/{namespace}.other"))
        assert other["stamps"] == []


async def test_the_aggregates_of_a_namespace_are_fresh_once_the_reducer_published_them(tmp_path: Path) -> None:
    namespace = f"t.agg.{uuid.uuid4().hex[:8]}"
    async with Harness(root=ROOT) as h, gateways(h) as (api,):
        ok(await api.post("/stamp", json=stamp_body(f"c = '{uuid.uuid4().hex}'\n", namespace)))
        await h.settle()
        ok(await api.get(f"/namespace/{namespace}"))  # cached, perhaps before the reducer's window closed
        await h.wait_for("STATE_AGGREGATION_COMPLETED", lambda e: e.payload["namespace"] == namespace)
        await h.settle()
        aggregates = ok(await api.get(f"/namespace/{namespace}"))["aggregates"]
        assert aggregates is not None
        assert aggregates["total_items_aggregated"] == 1


@pytest.mark.parametrize("shared", [False, True], ids=["memory", "redis"])
async def test_gateway_replicas_share_entries_on_redis_only(
    request: pytest.FixtureRequest, tmp_path: Path, shared: bool
) -> None:
    settings: dict[str, Any] = {}
    if shared:
        target: RedisTarget = request.getfixturevalue("redis_target")
        settings = {"cache_url": target.url, "env": target.env}
    async with Harness(root=ROOT, **settings) as h, gateways(h, 2) as (one, two):
        counted = Counted(h)
        file_hash = ok(await one.post("/stamp", json=stamp_body(f"d = '{uuid.uuid4().hex}'\n", "t.rep")))["hash"]
        await h.settle()
        for api in (one, two):
            assert ok(await api.get(f"/stamp/{file_hash}"))["count"] == 1
        assert counted.calls["get_stamps_by_hash"] == (1 if shared else 2)


async def test_gateways_of_two_tenants_on_one_redis_never_share_entries(redis_target: RedisTarget) -> None:
    settings: dict[str, Any] = {"cache_url": redis_target.url, "env": redis_target.env}
    async with (
        Harness(root=ROOT, **settings) as h,
        gateways(h) as (mine,),
        gateways(h, tenant="another_tenant") as (theirs,),
    ):
        counted = Counted(h)
        file_hash = ok(await mine.post("/stamp", json=stamp_body(f"t = '{uuid.uuid4().hex}'\n", "t.tenants")))["hash"]
        await h.settle()
        for api in (mine, theirs):
            assert ok(await api.get(f"/stamp/{file_hash}"))["count"] == 1
        assert counted.calls["get_stamps_by_hash"] == 2  # the second tenant's gateway read its own store


async def test_the_gateways_two_caches_keep_their_own_entries_on_redis(redis_target: RedisTarget) -> None:
    settings: dict[str, Any] = {"cache_url": redis_target.url, "env": redis_target.env}
    async with Harness(root=ROOT, **settings) as h, gateways(h) as (api,):
        stamps, pages = api.gateway.stamp_cache, api.gateway.namespace_cache
        assert stamps is not None
        assert pages is not None
        assert pages.spec.max_entries < stamps.spec.max_entries
        loads = 0

        async def load() -> list[str]:
            nonlocal loads
            loads += 1
            return ["a stamp"]

        async def page() -> dict[str, Any]:
            return {"stamps": [], "aggregates": None}

        await stamps.lookup("stamps_by_hash", load, file_hash="a" * 64)
        for n in range(pages.spec.max_entries):  # the page cache full: its cap evicts its own entries only
            await pages.lookup("namespace_page", page, namespace=f"ns{n}", limit=100, offset=0)
        await stamps.lookup("stamps_by_hash", load, file_hash="a" * 64)
        assert loads == 1
        await pages.clear()  # as a STAMP_CREATED without a namespace would
        await stamps.lookup("stamps_by_hash", load, file_hash="a" * 64)
        assert loads == 1
