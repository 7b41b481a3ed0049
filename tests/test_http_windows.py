"""``GET /namespace/{ns}/windows``: a namespace's aggregation windows, through the real gateway (uvicorn on a loopback
port, every node on a MemoryBus, a SQLite store) and a real HTTP client, over rows the test wrote through
``Store.apply``. The namespaces here are the test's own: no node writes windows for them."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
from onex.store import AggregateWindowRow, WriteBatch

from tests.fixtures.http import LiveServer, live_server
from tests.test_http import envelope_of, failed, ok

T0 = datetime(2024, 5, 1, 12, 0, tzinfo=UTC)
MINUTE = timedelta(minutes=1)


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveServer]:
    with live_server(tmp_path_factory.mktemp("windows")) as live:
        yield live


@pytest.fixture
def api(server: LiveServer) -> Iterator[httpx.Client]:
    with server.client() as client:
        yield client


def window(namespace: str, start: datetime | None, **fields: Any) -> AggregateWindowRow:
    values: dict[str, Any] = {
        "node": "reducer",
        "aggregation": "namespace_stats",
        "group": {"namespace": namespace},
        "window_id": start.isoformat() if start else "",
        "window_start": start,
        "window_end": start + MINUTE if start else None,
        "closed": False,
        "items": 2,
        "values": {"count": 2, "mean": 1.5, "nested": {"none": None}},
        "state": {"internal": [1, 2]},
        "version": 3,
    }
    values.update(fields)
    return AggregateWindowRow(**values)


@pytest.fixture
def namespace(server: LiveServer) -> str:
    """A namespace of the test's own, with slashes, holding four windows (one closed, one running total); another
    namespace beside it holds one."""
    ns = f"t/win:{uuid.uuid4().hex[:8]}"
    rows = [
        window(ns, T0, closed=True, items=5, values={"count": 5}),
        window(ns, T0 + MINUTE),
        window(ns, T0 + MINUTE, group={"namespace": ns, "file_type": "code"}, aggregation="by_type"),
        window(ns, None, aggregation="totals", items=7, values={"count": 7}),
        window(f"{ns}.other", T0 + 5 * MINUTE),
    ]
    server.call(server.runtime.store.apply(WriteBatch(aggregate_windows=rows)))
    return ns


def starts(data: dict[str, Any]) -> list[tuple[str, str | None]]:
    return [(w["aggregation"], w["window_start"]) for w in data["windows"]]


def test_the_windows_of_a_namespace_newest_first_in_the_envelope(api: httpx.Client, namespace: str) -> None:
    response = api.get(f"/namespace/{namespace}/windows")
    data = ok(response)
    assert envelope_of(response)["message"] == "4 window(s)"

    assert (data["namespace"], data["aggregation"], data["closed"], data["limit"], data["count"]) == (
        namespace,
        None,
        None,
        100,
        4,
    )
    assert starts(data) == [
        ("by_type", (T0 + MINUTE).isoformat()),  # one start: then by group key, '{"file_type":...' first
        ("namespace_stats", (T0 + MINUTE).isoformat()),
        ("namespace_stats", T0.isoformat()),
        ("totals", None),  # the running total, last
    ]
    closed = data["windows"][2]
    assert closed == {
        "node": "reducer",
        "aggregation": "namespace_stats",
        "group": {"namespace": namespace},
        "window_id": T0.isoformat(),
        "window_start": T0.isoformat(),
        "window_end": (T0 + MINUTE).isoformat(),
        "closed": True,
        "items": 5,
        "values": {"count": 5},
        "version": 3,
        "updated_at": closed["updated_at"],
    }
    assert datetime.fromisoformat(closed["updated_at"]).utcoffset() == timedelta(0)
    assert data["windows"][1]["values"] == {"count": 2, "mean": 1.5, "nested": {"none": None}}
    assert all("state" not in w for w in data["windows"])  # the engine's internals stay in the store


def test_the_windows_are_filtered_and_limited(api: httpx.Client, namespace: str) -> None:
    path = f"/namespace/{namespace}/windows"
    assert starts(ok(api.get(path, params={"aggregation": "totals"}))) == [("totals", None)]
    assert starts(ok(api.get(path, params={"closed": "true"}))) == [("namespace_stats", T0.isoformat())]
    assert len(ok(api.get(path, params={"closed": "false"}))["windows"]) == 3
    data = ok(api.get(path, params={"aggregation": "namespace_stats", "closed": "false", "limit": 1}))
    assert (data["aggregation"], data["closed"], data["limit"], data["count"]) == ("namespace_stats", False, 1, 1)
    assert starts(data) == [("namespace_stats", (T0 + MINUTE).isoformat())]
    assert ok(api.get(path, params={"aggregation": "nowhere"}))["windows"] == []
    everything = starts(ok(api.get(path)))
    assert starts(ok(api.get(path, params={"limit": 2}))) == everything[:2]


def test_an_unknown_namespace_has_no_windows(api: httpx.Client) -> None:
    data = ok(api.get(f"/namespace/t.none.{uuid.uuid4().hex}/windows"))
    assert (data["count"], data["windows"]) == (0, [])


def test_the_namespace_page_and_its_windows_are_two_routes(api: httpx.Client, namespace: str) -> None:
    page = ok(api.get(f"/namespace/{namespace}"))
    assert set(page) == {"namespace", "stamps", "pagination", "aggregates"}
    assert page["namespace"] == namespace
    windows = ok(api.get(f"/namespace/{namespace}/windows"))
    assert windows["namespace"] == namespace  # the slashes of the namespace are its own, "/windows" the route's
    assert ok(api.get("/namespace/windows"))["namespace"] == "windows"  # a namespace called "windows" keeps its page


@pytest.mark.parametrize(
    ("path", "field"),
    [
        ("/namespace/has%20space/windows", "namespace"),
        ("/namespace/ok/windows?closed=yes", "closed"),
        ("/namespace/ok/windows?closed=", "closed"),
        ("/namespace/ok/windows?limit=0", "limit"),
        ("/namespace/ok/windows?limit=1001", "limit"),
        ("/namespace/ok/windows?limit=ten", "limit"),
        ("/namespace/ok/windows?aggregation=", "aggregation"),
        ("/namespace/ok/windows?aggregation=a%00b", "aggregation"),
        (f"/namespace/ok/windows?aggregation={'a' * 257}", "aggregation"),
    ],
)
def test_the_parameters_are_checked(api: httpx.Client, path: str, field: str) -> None:
    failed(api.get(path), 422, field)


def test_the_windows_are_503_while_the_store_is_down(tmp_path: Path) -> None:
    with live_server(tmp_path) as live, live.client() as client:
        ok(client.get("/namespace/ns/windows"))
        live.call(live.runtime.store.aclose())
        try:
            body = failed(client.get("/namespace/ns/windows"), 503)
            assert body["error"]["code"] == "store_unavailable"
        finally:
            live.call(live.runtime.store.open())
        ok(client.get("/namespace/ns/windows"))
