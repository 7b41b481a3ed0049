"""The HTTP gateway, served by uvicorn on a free loopback port over every node on a MemoryBus and a throwaway SQLite
store, and driven by a real HTTP client (httpx): every endpoint, both stamp types, uploads, limits and failures.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import io
import json
import logging
import os
import re
import socket
import subprocess
import time
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from datetime import UTC, date, datetime
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

import asyncpg
import httpx
import pytest
import uvicorn
import uvicorn.server
from onex import stamps
from onex._postgres import PostgresSettings, PostgresStore
from onex._tables import AGGREGATE_WINDOWS, STAMPS
from onex.catalog import EventCatalog
from onex.client import StampClient
from onex.envelope import IdSource, OnexEnvelopeV1
from onex.filetypes import WHOLE_LIMIT
from onex.http import PREFIX, bind, create_app, openapi_30, openapi_document, parse_address, serve
from onex.http.content import StreamingHash, hash_content
from onex.http.models import _jsonable, dumps
from onex.http.server import _CoalescingTransport, _HttpProtocol
from onex.logs import configure
from onex.runtime import Runtime
from onex.settings import Settings
from onex.testing import SequentialIds
from swagger_ui_bundle import swagger_ui_path  # type: ignore[import-untyped]

from tests.fixtures.deployment import onex_command
from tests.fixtures.http import LiveServer, live_server, onex_run_http

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveServer]:
    with live_server(tmp_path_factory.mktemp("http")) as live:
        yield live


@pytest.fixture
def api(server: LiveServer) -> Iterator[httpx.Client]:
    with server.client() as client:
        yield client


def envelope_of(response: httpx.Response) -> dict[str, Any]:
    body: dict[str, Any] = response.json()
    assert set(body) == {"status", "data", "error", "message", "metadata"}, body
    assert body["metadata"]["api_version"] == "v1"
    assert body["metadata"]["request_id"] == response.headers["x-request-id"]
    return body


def ok(response: httpx.Response) -> dict[str, Any]:
    assert response.status_code == 200, response.text
    body = envelope_of(response)
    assert body["status"] == "success"
    assert body["error"] is None
    data: dict[str, Any] = body["data"]
    return data


def failed(response: httpx.Response, status: int, field: str | None = None) -> dict[str, Any]:
    assert response.status_code == status, response.text
    body = envelope_of(response)
    assert body["status"] == "error"
    if field is not None:
        assert body["error"]["field"] == field, body
    return body


def unique(text: str) -> str:
    return f"{text}\n# {uuid.uuid4()}\n"


# --- /stamp ---------------------------------------------------------------------------------------------------------


def test_stamp_json_lightweight_returns_the_stamped_content_its_hash_and_the_workflow(api: httpx.Client) -> None:
    content = unique("print('hello')")
    data = ok(api.post("/stamp", json={"content": content, "file_path": "src/hello.py", "namespace": "t.light"}))
    stamped = data["stamped_content"]
    assert stamped.endswith(content)
    assert stamped.startswith("# ONEX:uid=")
    assert data["status"] == "stamped"
    assert data["stamp_type"] == "lightweight"
    assert data["hash"] == stamps.hash_bytes(content.encode()) == data["stamp"]["hash"]
    assert stamps.verify_bytes(stamped.encode(), file_name="hello.py").status == "valid"
    assert uuid.UUID(data["workflow_id"])
    assert (data["file_path"], data["file_type"], data["namespace"]) == ("src/hello.py", "code", "t.light")
    assert data["file_size"] == len(content.encode())


def test_stamp_json_rich_writes_a_metadata_block_that_conforms_to_the_protocol(api: httpx.Client) -> None:
    content = unique("SELECT 1;")
    body = {"content": content, "file_path": "q.sql", "namespace": "t.rich", "options": {"stamp_type": "rich"}}
    data = ok(api.post("/stamp", json=body))
    assert data["stamp_type"] == "rich"
    assert "-- === OmniNode:Metadata ===" in data["stamped_content"]
    assert data["stamp"]["namespace"] == "t.rich"
    check = ok(api.post("/validate-protocol", json={"content": data["stamped_content"], "file_path": "q.sql"}))
    assert check["valid"], check["issues"]
    assert check["source"] == "content"


def test_stamp_multipart_upload_takes_its_name_from_the_file(api: httpx.Client) -> None:
    content = unique("x = 1").encode()
    response = api.post(
        "/stamp",
        files={"file": ("upload.py", content, "text/x-python")},
        data={"namespace": "t.up", "stamp_type": "rich"},
    )
    data = ok(response)
    assert data["file_path"] == "upload.py"
    assert data["stamp_type"] == "rich"
    assert data["namespace"] == "t.up"
    assert data["stamped_content"].encode().endswith(content)


def test_stamping_stamped_content_again_changes_nothing(api: httpx.Client) -> None:
    first = ok(api.post("/stamp", json={"content": unique("a: 1"), "file_path": "c.yaml"}))
    again = ok(api.post("/stamp", json={"content": first["stamped_content"], "file_path": "c.yaml"}))
    assert again["status"] == "unchanged"
    assert again["stamped_content"] == first["stamped_content"]
    assert again["stamp"]["uid"] == first["stamp"]["uid"]


def test_content_without_comments_gets_a_sidecar_and_is_returned_as_is(api: httpx.Client) -> None:
    content = json.dumps({"k": str(uuid.uuid4())})
    data = ok(api.post("/stamp", json={"content": content, "file_path": "data.json"}))
    assert data["stamp_type"] == "sidecar"
    assert data["stamped_content"] == content
    sidecar = data["sidecar"].encode()
    assert stamps.verify_bytes(content.encode(), file_name="data.json", sidecar=sidecar).status == "valid"


def test_content_that_cannot_be_stamped_fails_its_workflow_with_422(api: httpx.Client) -> None:
    never_closed = "---\n" + "key: value\n" * 2000  # front matter longer than a stamp may be pushed down by
    body = failed(api.post("/stamp", json={"content": never_closed, "file_path": "long.md"}), 422)
    assert body["error"]["code"] == "workflow_failed"
    assert body["data"]["state"] == "failed"
    assert "cannot place a stamp" in body["message"]


# --- input errors --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"namespace": "ns"}, "content"),
        ({"content": 5}, "content"),
        ({"content": "x", "options": {"stamp_type": "heavy"}}, "options.stamp_type"),
        ({"content": "x", "colour": "red"}, "colour"),
        ({"content": "x", "namespace": "has space"}, "namespace"),
        ({"content": "x", "namespace": "semi;colon"}, "namespace"),
        ({"content": "x", "namespace": ""}, "namespace"),
        ({"content": "x", "file_path": "a\nb.py"}, "file_path"),
        ({"content": "\ud800"}, "body"),  # a lone surrogate is not text: pydantic's JSON parser refuses it
    ],
)
def test_a_body_that_breaks_the_schema_is_422_naming_the_field(
    api: httpx.Client, body: dict[str, Any], field: str
) -> None:
    # json.dumps escapes a lone surrogate as \ud800, as a client in another language might send it
    raw = json.dumps(body).encode()
    response = failed(api.post("/stamp", content=raw, headers={"content-type": "application/json"}), 422, field)
    assert response["error"]["code"] == "validation_error"
    assert response["message"].startswith(f"{field}: ")


def test_malformed_json_is_422(api: httpx.Client) -> None:
    body = failed(api.post("/stamp", content=b'{"content": "x",', headers={"content-type": "application/json"}), 422)
    assert body["error"]["field"] == "body"
    assert "malformed JSON" in body["message"]


def test_a_binary_upload_gets_a_sidecar_rather_than_being_mangled(api: httpx.Client) -> None:
    # More in tests/test_bridge_compat.py (issue 16): the bytes are never changed.
    png = b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR" + uuid.uuid4().bytes
    data = ok(api.post("/stamp", files={"file": ("pic.png", png)}))
    assert (data["stamp_type"], data["stamped_content"]) == ("sidecar", None)
    assert stamps.verify_bytes(png, file_name="pic.png", sidecar=data["sidecar"].encode()).status == "valid"


def test_an_unknown_form_field_is_422(api: httpx.Client) -> None:
    failed(api.post("/stamp", files={"file": ("a.py", b"x")}, data={"colour": "red"}), 422, "colour")


def test_a_truncated_multipart_body_is_422(api: httpx.Client) -> None:
    body = b'--XyZ\r\nContent-Disposition: form-data; name="file"; filename="a.py"\r\n\r\nprint(1)\n'
    response = api.post("/stamp", content=body, headers={"content-type": "multipart/form-data; boundary=XyZ"})
    failed(response, 422, "body")


def test_an_unsupported_content_type_is_415(api: httpx.Client) -> None:
    failed(api.post("/stamp", content=b"x", headers={"content-type": "text/plain"}), 415, "content-type")


def test_unknown_routes_and_methods_answer_in_the_envelope(api: httpx.Client) -> None:
    assert failed(api.get("/nope"), 404)["error"]["code"] == "not_found"
    assert failed(api.get("/stamp"), 405)["error"]["code"] == "method_not_allowed"


# --- /validate and /hash -------------------------------------------------------------------------------------------


def test_validate_reports_valid_modified_and_unstamped(api: httpx.Client) -> None:
    stamped, _ = stamps.stamp_bytes(b"print(1)\n", file_name="v.py")
    cases = {"valid": stamped, "modified": stamped + b"print(2)\n", "unstamped": b"print(3)\n"}
    for status, content in cases.items():
        data = ok(api.post("/validate", json={"content": content.decode(), "file_path": "v.py"}))
        (result,) = data["results"]
        assert result["status"] == status
        assert data["summary"][status] == 1
        assert (result["stamp"] is None) == (status == "unstamped")


def test_validate_checks_each_uploaded_file(api: httpx.Client) -> None:
    stamped, _ = stamps.stamp_bytes(b"x = 1\n", file_name="a.py")
    files = [("file", ("a.py", stamped)), ("file", ("b.py", stamped + b"y = 2\n")), ("file", ("c.py", b"z = 3\n"))]
    data = ok(api.post("/validate", files=files))
    assert [(r["file_path"], r["status"]) for r in data["results"]] == [
        ("a.py", "valid"),
        ("b.py", "modified"),
        ("c.py", "unstamped"),
    ]


def test_validate_checks_a_sidecar_against_its_content(api: httpx.Client) -> None:
    content = b'{"a": 1}'
    _, stamp = stamps.stamp_bytes(content, file_name="d.json")
    sidecar = stamps.render_sidecar(stamp).decode()
    data = ok(api.post("/validate", json={"content": content.decode(), "file_path": "d.json", "sidecar": sidecar}))
    assert data["results"][0]["status"] == "valid"


def test_hash_is_blake3_of_the_content_without_its_stamp(api: httpx.Client) -> None:
    plain = b"print('hash me')\n"
    stamped, _ = stamps.stamp_bytes(plain, file_name="h.py")
    data = ok(api.post("/hash", json={"content": stamped.decode(), "file_path": "h.py"}))
    assert data["hash"] == stamps.hash_bytes(plain)
    assert data["stamp_removed"] is True
    assert data["size"] == len(plain)
    assert data["algorithm"] == "blake3"


def test_hash_streams_a_large_upload_and_agrees_with_hash_file(api: httpx.Client, tmp_path: Path) -> None:
    big = tmp_path / "big.py"
    body = b"".join(b"line %08d = %r\n" % (i, i * 7) for i in range(150_000))  # ~3.5 MiB, larger than the head
    stamped, _ = stamps.stamp_bytes(body, file_name="big.py", rich=True)
    big.write_bytes(stamped)
    with big.open("rb") as f:
        data = ok(api.post("/hash", files={"file": ("big.py", f)}))
    assert data["hash"] == stamps.hash_file(big) == stamps.hash_bytes(body)
    assert data["received_bytes"] == len(stamped)
    assert data["size"] == len(body)
    assert data["file_path"] == "big.py"


def test_hash_agrees_with_hash_file_when_a_character_straddles_the_end_of_the_head(tmp_path: Path) -> None:
    # UTF-16 text is hashed whole, as hash_file reads it: its first HEAD_SIZE bytes alone end mid-character here
    # (a surrogate pair across the boundary), so they do not decode, and the stamp is found only in the whole.
    body = "x = 1\n" + "#" * 10 + "\n"
    short, _ = stamps.stamp_bytes(("\ufeff" + body).encode("utf-16-le"), file_name="a.py")
    fill = "y" * ((stamps.HEAD_SIZE - len(short) - 2) // 2 - 1)
    original = ("\ufeff" + body + fill + "\n" + "\U0001f600" * 10 + "\n" + "z" * 1000 + "\n").encode("utf-16-le")
    stamped, stamp = stamps.stamp_bytes(original, file_name="a.py")
    assert stamped.find("\U0001f600".encode("utf-16-le")) == stamps.HEAD_SIZE - 2
    (tmp_path / "a.py").write_bytes(stamped)
    hashed = hash_content(stamped, "a.py")
    assert hashed["hash"] == stamp.hash == stamps.hash_file(tmp_path / "a.py") == stamps.hash_bytes(original)
    assert (hashed["size"], hashed["stamp_removed"]) == (len(original), True)
    streamed = StreamingHash("a.py")
    for start in range(0, len(stamped), 4096):  # in chunks, as an upload arrives
        streamed.update(stamped[start : start + 4096])
    assert streamed.result() == hashed


def test_hash_of_stamped_utf16_grown_past_the_whole_limit_agrees_with_hash_file(tmp_path: Path) -> None:
    # Past WHOLE_LIMIT only the head decides, as for hash_file: the stamp kept in place is removed all the same.
    original = b"\xff\xfe" + "x = 1\n".encode("utf-16-le")
    stamped, stamp = stamps.stamp_bytes(original, file_name="g.py")
    tail = "#\n".encode("utf-16-le") * (WHOLE_LIMIT // 4 + 1)
    (tmp_path / "g.py").write_bytes(stamped + tail)
    streamed = StreamingHash("g.py")
    for start in range(0, len(stamped + tail), 1 << 16):
        streamed.update((stamped + tail)[start : start + (1 << 16)])
    hashed = streamed.result()
    assert hashed["hash"] == stamps.hash_file(tmp_path / "g.py") == stamps.hash_bytes(original + tail)
    assert (hashed["size"], hashed["stamp_removed"]) == (len(original + tail), True)
    assert hashed["hash"] != stamp.hash


def test_hash_takes_exactly_one_file_part(api: httpx.Client) -> None:
    failed(api.post("/hash", files=[("file", ("a", b"1")), ("file", ("b", b"2"))]), 422, "file")
    failed(api.post("/hash", files={"other": ("a", b"1")}), 422, "other")


# --- /validate-protocol --------------------------------------------------------------------------------------------


def rich(content: bytes, name: str = "p.py") -> bytes:
    return stamps.stamp_bytes(content, file_name=name, rich=True, namespace="t.proto")[0]


def issues_of(api: httpx.Client, **body: Any) -> dict[str, str]:
    data = ok(api.post("/validate-protocol", json=body))
    assert data["valid"] is (not data["issues"])
    return {i["field"]: i["code"] for i in data["issues"]}


def test_validate_protocol_accepts_a_fresh_rich_block(api: httpx.Client) -> None:
    assert issues_of(api, content=rich(b"a = 1\n").decode(), file_path="p.py") == {}


def test_validate_protocol_finds_a_hash_and_size_that_do_not_match_the_content(api: httpx.Client) -> None:
    tampered = rich(b"a = 1\n").decode() + "b = 2\n"
    assert issues_of(api, content=tampered, file_path="p.py") == {"hash": "mismatch", "size": "mismatch"}


def test_validate_protocol_needs_a_rich_block(api: httpx.Client) -> None:
    light, _ = stamps.stamp_bytes(b"a = 1\n", file_name="p.py")
    assert issues_of(api, content=light.decode(), file_path="p.py") == {"content": "not_rich"}
    assert issues_of(api, content="a = 1\n", file_path="p.py") == {"content": "missing"}


def test_validate_protocol_checks_every_required_field_and_the_versions(api: httpx.Client) -> None:
    content = "x\n"
    metadata = {
        "metadata_version": "9.0.0",
        "protocol_version": "one",
        "name": "",
        "namespace": "bad namespace",
        "uuid": "not-a-uuid",
        "created_at": "2026-01-02T00:00:00+00:00",
        "last_modified_at": "2026-01-01T00:00:00",
        "hash": stamps.hash_bytes(content.encode()),
        "file_type": "spreadsheet",
        "size": 2,
    }
    assert issues_of(api, content=content, metadata=metadata) == {
        "author": "missing",
        "metadata_version": "unsupported",
        "protocol_version": "format",
        "name": "type",
        "namespace": "format",
        "uuid": "format",
        "last_modified_at": "format",
        "file_type": "unknown",
    }


def test_validate_protocol_checks_a_sidecar(api: httpx.Client) -> None:
    content = b"a,b\n1,2\n"
    _, stamp = stamps.stamp_bytes(content, file_name="t.csv")
    sidecar = stamps.render_sidecar(stamp).decode()
    assert issues_of(api, content=content.decode(), file_path="t.csv", sidecar=sidecar) == {}
    assert issues_of(api, content="changed content\n", file_path="t.csv", sidecar=sidecar) == {
        "hash": "mismatch",
        "size": "mismatch",
    }


# --- reads from the store ------------------------------------------------------------------------------------------


def test_a_stamp_is_found_by_its_hash_once_persisted(server: LiveServer, api: httpx.Client) -> None:
    data = ok(api.post("/stamp", json={"content": unique("k = 'v'"), "file_path": "k.py", "namespace": "t.get"}))
    server.settle()
    found = ok(api.get(f"/stamp/{data['hash'].upper()}"))
    assert found["file_hash"] == data["hash"]
    (record,) = found["stamps"]
    assert record["workflow_id"] == data["workflow_id"]
    assert (record["namespace"], record["file_path"], record["stamp_type"]) == ("t.get", "k.py", "lightweight")


def test_an_unknown_hash_is_404_and_a_malformed_one_422(api: httpx.Client) -> None:
    assert failed(api.get(f"/stamp/{'0' * 64}"), 404, "file_hash")["error"]["code"] == "not_found"
    failed(api.get("/stamp/xyz"), 422, "file_hash")


def wait_until(predicate: Callable[[], bool], timeout: float = 10.0) -> None:
    """Poll for something a timer produces (the reducer flushes aggregates every 500 ms)."""
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "condition not met in time"
        time.sleep(0.05)


def test_namespace_pages_through_its_stamps_and_shows_its_aggregates(server: LiveServer, api: httpx.Client) -> None:
    namespace = f"t/page:{uuid.uuid4().hex[:8]}"
    for i in range(5):
        ok(api.post("/stamp", json={"content": unique(f"n = {i}"), "file_path": f"n{i}.py", "namespace": namespace}))
    server.settle()
    first = ok(api.get(f"/namespace/{namespace}", params={"limit": 2}))
    assert len(first["stamps"]) == 2
    assert first["pagination"] == {"limit": 2, "offset": 0, "count": 2, "next_offset": 2}
    last = ok(api.get(f"/namespace/{namespace}", params={"limit": 2, "offset": 4}))
    assert [s["file_path"] for s in last["stamps"]] == ["n4.py"]
    assert last["pagination"]["next_offset"] is None
    paths = [
        s["file_path"]
        for page in (0, 2, 4)
        for s in ok(api.get(f"/namespace/{namespace}?limit=2&offset={page}"))["stamps"]
    ]
    assert paths == [f"n{i}.py" for i in range(5)]

    def aggregated() -> bool:
        aggregates = ok(api.get(f"/namespace/{namespace}"))["aggregates"]
        return aggregates is not None and aggregates["total_items_aggregated"] == 5

    wait_until(aggregated)


@pytest.mark.parametrize(
    ("path", "field"),
    [
        ("/namespace/has%20space", "namespace"),
        ("/namespace/ok?limit=0", "limit"),
        ("/namespace/ok?limit=1001", "limit"),
        ("/namespace/ok?limit=ten", "limit"),
        ("/namespace/ok?offset=-1", "offset"),
        ("/namespace/ok?offset=99999999999999999999999", "offset"),
    ],
)
def test_namespace_parameters_are_checked(api: httpx.Client, path: str, field: str) -> None:
    failed(api.get(path), 422, field)


def test_an_empty_namespace_is_an_empty_page(api: httpx.Client) -> None:
    data = ok(api.get(f"/namespace/t.empty.{uuid.uuid4().hex}"))
    assert data["stamps"] == []
    assert data["aggregates"] is None


# --- /batch --------------------------------------------------------------------------------------------------------


def test_batch_reports_each_item_and_partial_success(api: httpx.Client) -> None:
    items = [
        {"content": unique("a = 1"), "file_path": "a.py", "namespace": "t.batch"},
        {"content": "x", "namespace": "bad namespace!"},
        {"content": unique("b = 2"), "file_path": "b.py", "options": {"stamp_type": "rich"}},
        {"content": "---\n" + "k: v\n" * 2000, "file_path": "long.md"},
        "not an object",
    ]
    response = api.post("/batch", json={"items": items})
    assert response.status_code == 200, response.text
    body = envelope_of(response)
    assert body["status"] == "partial"
    results = body["data"]["items"]
    assert [r["status"] for r in results] == ["success", "error", "success", "error", "error"]
    assert [r["index"] for r in results] == [0, 1, 2, 3, 4]
    assert results[0]["data"]["stamp_type"] == "lightweight"
    assert results[2]["data"]["stamp_type"] == "rich"
    assert results[1]["error"]["field"] == "items.1.namespace"
    assert results[3]["error"]["code"] == "workflow_failed"
    assert results[4]["error"]["field"] == "items.4"
    assert body["data"]["summary"] == {"total": 5, "succeeded": 2, "failed": 3}


def test_a_batch_where_every_item_succeeds_is_a_success(api: httpx.Client) -> None:
    items = [{"content": unique(f"i = {i}"), "file_path": f"i{i}.py"} for i in range(10)]
    body = envelope_of(api.post("/batch", json={"items": items}))
    assert body["status"] == "success"
    assert len({r["data"]["workflow_id"] for r in body["data"]["items"]}) == 10


def test_a_batch_where_no_item_succeeds_is_422(api: httpx.Client) -> None:
    body = failed(api.post("/batch", json={"items": [{"content": 1}, {}]}), 422, "items")
    assert [r["status"] for r in body["data"]["items"]] == ["error", "error"]


def test_a_batch_over_the_limit_or_empty_is_422(api: httpx.Client) -> None:
    failed(api.post("/batch", json={"items": [{"content": "x"}] * 101}), 422, "items")
    failed(api.post("/batch", json={"items": []}), 422, "items")


# --- health, metrics, OpenAPI --------------------------------------------------------------------------------------


def test_health_reports_bus_store_registry_and_nodes(server: LiveServer, api: httpx.Client) -> None:
    data = ok(api.get("/health"))
    assert data["status"] == "ok"
    assert data["bus"] == {"status": "ok", "state": "running", "kind": "memory"}
    assert data["store"]["status"] == "ok"
    assert data["registry"]["status"] == "ok"
    assert {n["name"] for n in data["nodes"]} == {
        "database_adapter_effect", "metastore_effect", "orchestrator", "reducer", "registry", "stamping_effect",
    }  # fmt: skip
    assert all(n["health"] == "HEALTHY" for n in data["nodes"])


def test_metrics_count_requests_latencies_workflows_and_the_bus(api: httpx.Client) -> None:
    ok(api.post("/stamp", json={"content": unique("m = 1"), "file_path": "m.py"}))
    ok(api.get("/namespace/t.metrics"))
    response = api.get("/metrics")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/plain; version=0.0.4")
    text = response.text
    stamp_route = f'method="POST",route="{PREFIX}/stamp"'
    assert re.search(rf'onex_http_requests_total\{{{stamp_route},status="200"\}} [1-9]', text)
    assert re.search(rf'onex_http_request_duration_seconds_bucket\{{{stamp_route},le="\+Inf"\}} [1-9]', text)
    assert f"onex_http_request_duration_seconds_count{{{stamp_route}}}" in text
    assert f'route="{PREFIX}/namespace/{{namespace}}"' in text  # the template, without Starlette's converter
    assert ":path}" not in text
    assert re.search(r'onex_http_workflows_total\{outcome="completed"\} [1-9]', text)
    assert re.search(r'onex_workflows\{node="orchestrator",state="completed"\} [1-9]', text)
    for name in ("onex_bus_dead_lettered_total", "onex_bus_buffered", "onex_bus_published_total"):
        assert re.search(rf"^{name} \d+$", text, re.MULTILINE), name
    # Every sample line is "name{labels} value" or "name value": the exposition format.
    sample = re.compile(r'[a-z_]+(\{([a-z_]+="([^"\\]|\\.)*",?)*\})? [0-9.e+-]+')
    for line in text.splitlines():
        assert line.startswith("#") or sample.fullmatch(line), line


def test_the_openapi_document_is_served_at_both_paths_and_lists_every_route(server: LiveServer) -> None:
    with httpx.Client(base_url=server.url) as client:
        prefixed = client.get(f"{PREFIX}/openapi.json").json()
        root = client.get("/openapi.json").json()
    assert prefixed == root == openapi_document()
    # The metastore's routes (their own prefixes): tests/test_openapi.py.
    assert {p for p in prefixed["paths"] if p.startswith(PREFIX)} == {
        f"{PREFIX}{p}" for p in (
            "/stamp", "/validate", "/hash", "/stamp/{file_hash}", "/batch", "/namespace/{namespace}",
            "/validate-protocol", "/health", "/health/live", "/health/ready", "/metrics",
            "/namespace/{namespace}/windows",
        )
    }  # fmt: skip


# --- probes, /docs, the access log -----------------------------------------------------------------------------------


def test_health_live_and_ready_answer_200_in_the_envelope(api: httpx.Client) -> None:
    assert ok(api.get("/health/live")) == {"status": "live"}
    assert ok(api.get("/health/ready")) == {"status": "ready"}


class _Assets(HTMLParser):
    """The URLs a page makes a browser fetch: ``src`` of scripts, ``href`` of stylesheets and icons."""

    def __init__(self) -> None:
        super().__init__()
        self.urls: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        found = dict(attrs)
        url = found.get("src") if tag == "script" else found.get("href") if tag == "link" else None
        if url:
            self.urls.append(url)


def test_docs_is_swagger_ui_served_from_the_package_with_nothing_from_another_host(server: LiveServer) -> None:
    with httpx.Client(base_url=server.url, timeout=30) as client:
        page = client.get("/docs")
        assert page.status_code == 200, page.text
        assert page.headers["content-type"].startswith("text/html")
        parser = _Assets()
        parser.feed(page.text)
        assert len(parser.urls) >= 3, parser.urls  # the stylesheet, the bundle, the initialiser at least
        assert not re.search(r"https?://", page.text), page.text
        served = {}
        for url in parser.urls:
            assert url.startswith("/docs/"), url  # on this server, whatever its host name
            asset = client.get(url)
            assert asset.status_code == 200, (url, asset.status_code)
            assert asset.content, url
            served[url] = asset
        # The bundle is the package's file, byte for byte; the initialiser reads the document from here.
        bundle = next(r for u, r in served.items() if u.endswith("/swagger-ui-bundle.js"))
        assert bundle.content == (Path(str(swagger_ui_path)) / "swagger-ui-bundle.js").read_bytes()
        init = next(r.text for u, r in served.items() if u.endswith("init.js"))
        assert not re.search(r"https?://", init), init
        assert "validatorUrl: null" in init  # else Swagger UI sends the document to validator.swagger.io
        (document_url,) = re.findall(r'url: "([^"]+)"', init)
        document = client.get(document_url).json()
        # Swagger UI 4 renders only documents whose version starts with "3.0.": the same API, said in 3.0.
        assert document["openapi"].startswith("3.0.")
        assert document == openapi_30(openapi_document())
        assert document["paths"].keys() == openapi_document()["paths"].keys()
        assert client.get("/docs/static/no-such-file.js").status_code == 404
        assert client.get("/docs/static/../../pyproject.toml").status_code == 404


def test_the_30_rendering_keeps_no_31_keyword() -> None:
    document = openapi_30(openapi_document(api_key=True))

    def walk(node: Any) -> Iterator[tuple[str, Any]]:
        if isinstance(node, dict):
            for key, value in node.items():
                yield key, value
                yield from walk(value.values() if key == "properties" else value)
        elif isinstance(node, list | type({}.values())):
            for value in node:
                yield from walk(value)

    keywords = list(walk(document["components"]["schemas"])) + list(walk(document["paths"]))
    assert not [v for k, v in keywords if k == "type" and not isinstance(v, str)]
    assert not [k for k, _ in keywords if k == "const"]
    assert {"type": "null"} not in [v for _, v in keywords]
    metadata = document["components"]["schemas"]["Metadata"]["properties"]
    assert metadata["duration_ms"] == {"type": "number", "nullable": True}
    assert metadata["api_version"] == {"type": "string", "enum": ["v1"]}
    # 3.0 ignores the keywords next to a $ref (a default, a description): they go into an allOf with it.
    assert not [v for k, v in keywords if isinstance(v, dict) and "$ref" in v and len(v) > 1]


@contextlib.asynccontextmanager
async def in_process_app(
    tmp_path: Path, *, nodes: list[str] | None = None, ids: IdSource | None = None, **limits: Any
) -> AsyncIterator[tuple[httpx.AsyncClient, Runtime]]:
    """The app over a runtime on the memory bus, called in process: a request's middleware has finished (its access
    line logged) when the client returns its response. ``limits`` go to ``create_app``."""
    settings = Settings.load(environ={}, root=str(ROOT), store=f"sqlite:///{tmp_path}/onex.db").with_(
        heartbeat_interval_s=0
    )
    async with (
        Runtime(settings, nodes=nodes, ids=ids) as runtime,
        StampClient(runtime.bus, runtime.contracts, settings, keep_stamps=True) as client,
    ):
        app = create_app(runtime, client, settings, **limits)
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url=f"http://onex{PREFIX}") as http:
            yield http, runtime


@pytest.mark.anyio
async def test_a_stamps_workflow_id_comes_from_the_runtimes_time_ordered_ids(tmp_path: Path) -> None:
    """Over HTTP as in process, a workflow's id is one of the runtime's: time-ordered by default, so the rows keyed by
    it go at the end of their indexes (random ids made the SQLite writer's CPU a row over HTTP twice that in
    process), and ``Runtime(ids=...)``'s when given."""
    async with in_process_app(tmp_path) as (api, runtime):
        made = []
        for n in range(3):
            body = {"content": f"x = {n}\n", "file_path": f"t{n}.py", "namespace": "t.ids"}
            made.append(uuid.UUID(ok(await api.post("/stamp", json=body))["workflow_id"]))
            assert await runtime.store.get_workflow(made[-1]) is not None  # checkpointed under it before the answer
    assert [m.version for m in made] == [7, 7, 7]
    assert [m.int >> 80 for m in made] == sorted(m.int >> 80 for m in made)  # their milliseconds, in order
    given = SequentialIds(start=1_000_000)
    async with in_process_app(tmp_path / "given", ids=given) as (api, _):
        data = ok(await api.post("/stamp", json={"content": "y = 1\n", "file_path": "y.py", "namespace": "t.ids"}))
    assert 1_000_000 <= uuid.UUID(data["workflow_id"]).int & ((1 << 62) - 1) < given.next


@pytest.fixture
def access_lines() -> Iterator[Callable[[], list[dict[str, Any]]]]:
    """The JSON lines logged while the test runs, through onex.logs' own setup; levels restored afterwards."""
    levels = {name: logging.getLogger(name).level for name in ("", "onex")}
    stream = io.StringIO()
    handler = configure("info", "json", stream=stream)

    def lines() -> list[dict[str, Any]]:
        parsed = [json.loads(line) for line in stream.getvalue().splitlines()]
        return [line for line in parsed if line["event"] == "access"]

    yield lines
    logging.getLogger().removeHandler(handler)
    for name, level in levels.items():
        logging.getLogger(name).setLevel(level)


@pytest.mark.anyio
async def test_every_request_logs_one_access_line_in_json_with_its_request_id(
    tmp_path: Path, access_lines: Callable[[], list[dict[str, Any]]]
) -> None:
    async with in_process_app(tmp_path, nodes=[]) as (api, _):
        kept = await api.post("/hash?token=secret", json={"content": "x"}, headers={"x-request-id": "req-42.a:b"})
        made = await api.get("/nowhere")
        unfit = await api.get("/health/live", headers={"x-request-id": "has space"})
    assert kept.headers["x-request-id"] == "req-42.a:b" == kept.json()["metadata"]["request_id"]
    assert re.fullmatch(r"[0-9a-f]{32}", made.headers["x-request-id"])
    assert unfit.headers["x-request-id"] != "has space"
    assert re.fullmatch(r"[0-9a-f]{32}", unfit.headers["x-request-id"])

    lines = access_lines()
    assert len(lines) == 3, lines
    for line, response in zip(lines, (kept, made, unfit), strict=True):
        assert line.keys() >= {"ts", "level", "logger", "event", "message", "method", "path", "status", "duration_ms",
                               "request_id"}  # fmt: skip
        assert (line["level"], line["logger"]) == ("info", "onex.http")
        assert line["status"] == response.status_code
        assert line["request_id"] == response.headers["x-request-id"]
        assert isinstance(line["duration_ms"], float)
        assert line["duration_ms"] >= 0
    assert [(line["method"], line["path"], line["status"]) for line in lines] == [
        ("POST", f"{PREFIX}/hash", 200),  # the query string stays out of the log
        ("GET", f"{PREFIX}/nowhere", 404),
        ("GET", f"{PREFIX}/health/live", 200),
    ]
    assert "secret" not in json.dumps(lines)


@pytest.mark.anyio
async def test_a_gateway_hosting_no_node_is_ready_while_its_bus_runs_and_its_store_answers(tmp_path: Path) -> None:
    async with in_process_app(tmp_path, nodes=[]) as (api, runtime):
        assert runtime.nodes == []
        ready = await api.get("/health/ready")
        assert ready.status_code == 200, ready.text
        assert ready.json()["data"] == {"status": "ready"}

        await runtime.store.aclose()
        try:
            body = failed(await api.get("/health/ready"), 503)
            assert body["error"]["code"] == "not_ready"
            assert body["data"]["reason"].startswith("store unavailable"), body
            assert (await api.get("/health/live")).status_code == 200  # alive all the same
        finally:
            await runtime.store.open()

        await runtime.bus.aclose()
        body = failed(await api.get("/health/ready"), 503)
        assert body["data"]["reason"].startswith("bus "), body
        assert body["message"] == f"not ready: {body['data']['reason']}"


@pytest.mark.anyio
async def test_a_workflow_that_never_completes_is_504_and_not_pending_for_good(tmp_path: Path) -> None:
    """No orchestrator hosted: nobody answers the request (as when a broker loses it). After the 504 the gateway
    waits for nothing, so ``/health`` and the gauge come back to 0 instead of counting it for good."""
    async with in_process_app(tmp_path, nodes=[], timeout_s=0.0) as (api, _):
        for n in range(2):
            body = failed(await api.post("/stamp", json={"content": f"lost = {n}\n", "file_path": "lost.py"}), 504)
            assert body["error"]["code"] == "workflow_timeout"
        assert ok(await api.get("/health"))["gateway"]["pending_workflows"] == 0
        metrics = (await api.get("/metrics")).text
        assert "\nonex_http_workflows_pending 0\n" in metrics
        assert 'onex_http_workflows_total{outcome="timed_out"} 2' in metrics


# --- limits, timeouts, auth, degraded health (servers of their own) -------------------------------------------------


@pytest.fixture(scope="module")
def small(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveServer]:
    with live_server(tmp_path_factory.mktemp("small"), max_body=64 * 1024, max_stream=4 * 1024 * 1024) as live:
        yield live


def test_a_body_declared_too_large_is_refused_before_it_is_read(small: LiveServer) -> None:
    host, port = parse_address(small.url.removeprefix("http://"))
    with socket.create_connection((host, port), timeout=10) as sock:
        sock.sendall(
            f"POST {PREFIX}/stamp HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            f"Content-Length: {1 << 30}\r\n\r\n".encode()
        )  # and not one byte of the gigabyte announced
        response = b""
        while b"\r\n\r\n" not in response or not response.endswith(b"}"):
            chunk = sock.recv(65536)
            assert chunk, response
            response += chunk
    assert response.startswith(b"HTTP/1.1 413 "), response[:100]
    assert b'"payload_too_large"' in response


def test_a_streamed_body_is_refused_once_it_passes_the_limit(small: LiveServer) -> None:
    sent = 0

    def chunks() -> Iterator[bytes]:
        nonlocal sent
        yield b'{"content": "'
        for _ in range(64):
            sent += 4096
            yield b"x" * 4096
        yield b'"}'

    with small.client() as client:
        response = client.post("/stamp", content=chunks(), headers={"content-type": "application/json"})
    failed(response, 413, "body")


def test_the_limit_applies_to_uploads_but_hash_streams_past_it(small: LiveServer) -> None:
    big = b"y = 1\n" * 50_000  # 300 KB: over the 64 KiB body limit, under the 4 MiB stream limit
    with small.client() as client:
        failed(client.post("/stamp", files={"file": ("y.py", big)}), 413, "body")
        assert ok(client.post("/hash", files={"file": ("y.py", big)}))["hash"] == stamps.hash_bytes(big)
        failed(client.post("/hash", files={"file": ("y.py", big * 20)}), 413, "body")


def test_a_workflow_that_does_not_complete_in_time_is_504_and_keeps_running(tmp_path: Path) -> None:
    with live_server(tmp_path, timeout_s=0.0) as live, live.client() as client:
        body = failed(client.post("/stamp", json={"content": "late = 1\n", "file_path": "late.py"}), 504)
        assert body["error"]["code"] == "workflow_timeout"
        cid = uuid.UUID(body["data"]["workflow_id"])
        live.settle()
        workflow = live.call(live.runtime.store.get_workflow(cid))
        assert workflow is not None
        assert workflow.current_state == "completed"
        late_hash = stamps.hash_bytes(b"late = 1\n")
        assert ok(client.get(f"/stamp/{late_hash}"))["stamps"][0]["workflow_id"] == str(cid)
        # The gateway dropped the late outcome instead of keeping it.
        assert ok(client.get("/health"))["gateway"]["pending_workflows"] == 0
        assert 'onex_http_workflows_total{outcome="timed_out"} 1' in client.get("/metrics").text


def test_an_api_key_guards_every_route_but_health_and_the_document(tmp_path: Path) -> None:
    with live_server(tmp_path, api_key="s3cret") as live, live.client() as client:
        for method, path in (("POST", "/stamp"), ("GET", "/metrics"), ("GET", f"/stamp/{'0' * 64}"),
                             ("GET", "/namespace/x"), ("POST", "/hash"), ("GET", "/nowhere")):  # fmt: skip
            response = client.request(method, path, json={"content": "x"})
            assert failed(response, 401, "authorization")["error"]["code"] == "unauthorized"
            assert response.headers["www-authenticate"] == "Bearer"
        failed(client.get("/metrics", headers={"authorization": "Bearer wrong"}), 401)
        failed(client.get("/metrics", headers={"authorization": "Basic s3cret"}), 401)
        assert client.get("/metrics", headers={"authorization": "Bearer s3cret"}).status_code == 200
        data = ok(client.post("/hash", json={"content": "x"}, headers={"authorization": "bearer s3cret"}))
        assert data["hash"] == stamps.hash_bytes(b"x")
        health = ok(client.get("/health"))
        assert "detail" not in health["store"]  # file names only for callers with the key
        assert "detail" in ok(client.get("/health", headers={"authorization": "Bearer s3cret"}))["store"]
        document = client.get("/openapi.json").json()
        assert document["paths"][f"{PREFIX}/stamp"]["post"]["security"] == [{"bearerAuth": []}]
        assert document["paths"][f"{PREFIX}/health"]["get"]["security"] == []
        for probe in ("/health/live", "/health/ready"):
            assert ok(client.get(probe))["status"] in ("live", "ready")
            assert document["paths"][f"{PREFIX}{probe}"]["get"]["security"] == []
        with httpx.Client(base_url=live.url) as root:
            for path in ("/docs", "/docs/init.js", "/docs/openapi.json", "/docs/static/swagger-ui.css"):
                assert root.get(path).status_code == 200, path


def test_health_is_503_while_the_store_is_down(tmp_path: Path) -> None:
    with live_server(tmp_path) as live, live.client() as client:
        ok(client.get("/health"))
        live.call(live.runtime.store.aclose())
        try:
            body = failed(client.get("/health"), 503)
            assert body["data"]["status"] == "degraded"
            assert body["data"]["store"]["status"] == "down"
            assert body["data"]["registry"]["status"] == "unknown"
            assert body["error"]["details"] == [{"component": "store"}]
            failed(client.get(f"/stamp/{'0' * 64}"), 503)
        finally:
            live.call(live.runtime.store.open())
        ok(client.get("/health"))


def _read_to_close(sock: socket.socket) -> bytes:
    """Everything the server sends until it closes the connection (the socket's timeout: it never does)."""
    received = b""
    while chunk := sock.recv(65536):
        received += chunk
    return received


def test_a_connection_without_a_whole_request_in_time_is_closed_and_a_stalled_body_is_408(tmp_path: Path) -> None:
    """Slowloris: a connection that sends nothing, half a head, or half a body is not held for good. The head is
    closed without an answer (there is no request to answer); the body gets 408 in the envelope, then the close."""
    with live_server(tmp_path, read_timeout_s=0.2) as live:
        address = parse_address(live.url.removeprefix("http://"))
        head = f"POST {PREFIX}/hash HTTP/1.1\r\nHost: x\r\n"
        json_body = f"{head}Content-Type: application/json\r\nContent-Length: 100\r\n\r\n" + '{"con'
        upload = f"{head}Content-Type: multipart/form-data; boundary=b\r\nContent-Length: 1000\r\n\r\n--b\r\n"
        sockets = [socket.create_connection(address, timeout=20) for _ in range(4)]
        try:
            idle, half_head, half_json, half_upload = sockets
            half_head.sendall(head.encode())
            half_json.sendall(json_body.encode())
            half_upload.sendall(upload.encode())
            assert _read_to_close(idle) == b""
            assert _read_to_close(half_head) == b""
            for sock in (half_json, half_upload):  # read whole (read_body) and streamed (the multipart reader)
                answer = _read_to_close(sock)
                assert answer.startswith(b"HTTP/1.1 408 "), answer[:200]
                head_part, _, body = answer.partition(b"\r\n\r\n")
                assert b"connection: close" in head_part.lower()
                error = json.loads(body)
                assert (error["status"], error["error"]) == ("error", {"code": "request_timeout", "field": "body"})
        finally:
            for sock in sockets:
                sock.close()
        with live.client() as client:  # a request that arrives whole is answered as ever
            assert ok(client.post("/hash", json={"content": "x"}))["hash"] == stamps.hash_bytes(b"x")


@contextlib.asynccontextmanager
async def served(runtime: Runtime, settings: Settings, **limits: Any) -> AsyncIterator[str]:
    """``serve`` on a free loopback port in this event loop while the block runs; yields the API's base URL. The
    block's end is the shutdown a SIGTERM starts."""
    sock = bind("127.0.0.1:0")
    stop = asyncio.Event()
    ready: asyncio.Future[str] = asyncio.get_running_loop().create_future()
    serving = asyncio.create_task(serve(runtime, settings, sock=sock, stop=stop, ready=ready.set_result, **limits))
    try:
        yield await ready + PREFIX
    finally:
        stop.set()
        try:
            await serving
        finally:
            sock.close()


@pytest.mark.anyio
async def test_a_request_waiting_for_its_workflow_at_shutdown_is_answered_504_with_the_workflows_id(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """No orchestrator: the workflow never completes. The server shuts down while the request waits for it; the
    request is answered (504, its workflow's id, which keeps running) before the grace runs out and uvicorn cancels
    it, which it would answer with a bare 500 and a traceback in the log."""
    settings = Settings.load(environ={}, root=str(ROOT), store=f"sqlite:///{tmp_path}/onex.db").with_(
        heartbeat_interval_s=0
    )
    async with Runtime(settings, nodes=[]) as runtime:
        submitted: asyncio.Future[uuid.UUID | None] = asyncio.get_running_loop().create_future()

        async def requested(envelope: OnexEnvelopeV1) -> None:
            if not submitted.done():
                submitted.set_result(envelope.correlation_id)

        topic = EventCatalog(runtime.contracts.contracts, settings).topic("STAMP_REQUESTED")
        subscription = await runtime.bus.subscribe([topic], "test.requested", handler=requested)
        try:
            async with httpx.AsyncClient(timeout=60) as http:
                async with served(runtime, settings, drain_s=0.0) as url:
                    posting = asyncio.ensure_future(http.post(f"{url}/stamp", json={"content": "x = 1\n"}))
                    cid = await submitted  # the workflow is on the bus: the request waits for its outcome
                response = await posting  # answered while the server shut down (the block's end)
        finally:
            await subscription.aclose()
    body = failed(response, 504)
    assert body["error"]["code"] == "workflow_timeout"
    assert body["data"] == {"workflow_id": str(cid), "state": "processing"}
    assert "shutting down" in body["message"]
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR], caplog.text


@pytest.mark.anyio
async def test_a_store_that_does_not_answer_is_503_in_the_request_time_and_both_outages_say_retry_after(
    tmp_path: Path, postgres_dsn: str
) -> None:
    """A PostgreSQL table locked by another session: the store's reads wait for the lock (its statement timeout is
    a day), not for a failure. The gateway bounds them by the request's time: 503 store_unavailable, with
    Retry-After, as for a bus that refuses a workflow."""
    url = f"{postgres_dsn}&statement_timeout_ms=86400000"
    target = PostgresSettings.from_url(url)
    settings = Settings.load(environ={}, root=str(ROOT), store=url).with_(heartbeat_interval_s=0)
    async with PostgresStore(url) as store:
        await store.upgrade()
        async with (
            httpx.AsyncClient(timeout=60) as http,
            Runtime(settings, store=store, nodes=[]) as runtime,
            served(runtime, settings, timeout_s=0.0) as api,
        ):
            admin = await asyncpg.connect(target.dsn)
            try:
                async with admin.transaction():
                    tables = ", ".join(f"{target.schema}.{t}" for t in (STAMPS.name, AGGREGATE_WINDOWS.name))
                    await admin.execute(f"LOCK TABLE {tables} IN ACCESS EXCLUSIVE MODE")
                    for path in (f"/stamp/{'0' * 64}", "/namespace/t.locked", "/namespace/t.locked/windows"):
                        response = await http.get(api + path)
                        body = failed(response, 503)
                        assert body["error"]["code"] == "store_unavailable", body
                        assert "no answer within 1 s" in body["message"], body
                        assert response.headers["retry-after"] == "5"
            finally:
                await admin.close()
            assert (await http.get(f"{api}/namespace/t.locked")).status_code == 200  # the lock gone, it answers
            await runtime.bus.aclose()
            response = await http.post(f"{api}/stamp", json={"content": "x = 1\n"})
            assert failed(response, 503)["error"]["code"] == "bus_unavailable"
            assert response.headers["retry-after"] == "5"


# --- the pieces, without a server -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("address", "expected"),
    [("127.0.0.1:8053", ("127.0.0.1", 8053)), (":8053", ("127.0.0.1", 8053)), ("[::1]:80", ("::1", 80))],
)
def test_parse_address(address: str, expected: tuple[str, int]) -> None:
    assert parse_address(address) == expected


@pytest.mark.parametrize("address", ["8053", "host:", "host:port", "127.0.0.1:70000"])
def test_parse_address_refuses_what_is_not_host_port(address: str) -> None:
    with pytest.raises(ValueError, match="HOST:PORT"):
        parse_address(address)


@pytest.mark.anyio
async def test_create_app_needs_a_client_that_keeps_stamps(tmp_path: Path) -> None:
    from onex.client import StampClient

    settings = Settings.load(environ={}, root=str(ROOT), store=f"sqlite:///{tmp_path}/onex.db")
    async with Runtime(settings.with_(heartbeat_interval_s=0), nodes=[]) as runtime:
        client = StampClient(runtime.bus, runtime.contracts, settings)
        with pytest.raises(ValueError, match="keep_stamps"):
            create_app(runtime, client, settings)


# --- the CLI -------------------------------------------------------------------------------------------------------


def test_onex_run_http_serves_the_api_until_sigterm(tmp_path: Path) -> None:
    with onex_run_http(tmp_path) as cli, httpx.Client(base_url=cli.url + PREFIX, timeout=30) as client:
        data = ok(client.post("/stamp", json={"content": "cli = 1\n", "file_path": "cli.py"}))
        assert data["hash"] == stamps.hash_bytes(b"cli = 1\n")
        assert ok(client.get("/health"))["status"] == "ok"
    assert "draining..." in cli.log.read_text()
    assert cli.log.read_text().rstrip().endswith("stopped")


def test_onex_run_http_takes_its_limits_from_the_environment(tmp_path: Path) -> None:
    limits = {"ONEX_HTTP_BATCH_LIMIT": "2", "ONEX_HTTP_MAX_BODY": "4096", "ONEX_HTTP_TIMEOUT_S": "0"}
    with onex_run_http(tmp_path, env=limits) as cli, httpx.Client(base_url=cli.url + PREFIX, timeout=30) as client:
        items = [{"content": f"item {i}\n", "file_path": f"i{i}.txt"} for i in range(3)]
        too_many = client.post("/batch", json={"items": items})
        assert too_many.status_code == 422
        assert envelope_of(too_many)["message"] == "items: at most 2 items per batch"
        too_big = client.post("/stamp", json={"content": "x" * 5000})
        assert too_big.status_code == 413, too_big.text
        slow = client.post("/stamp", json={"content": "no time at all\n"})  # a timeout of 0 s: 504, keeps running
        assert slow.status_code == 504, slow.text
        assert envelope_of(slow)["error"]["code"] == "workflow_timeout"


@pytest.mark.parametrize(
    ("variable", "value"),
    [("ONEX_HTTP_TIMEOUT_S", "soon"), ("ONEX_HTTP_BATCH_LIMIT", "0"), ("ONEX_HTTP_MAX_BODY", "1.5")],
)
def test_onex_run_refuses_a_setting_that_is_not_a_number_naming_its_variable(
    tmp_path: Path, variable: str, value: str
) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("ONEX_")} | {variable: value, "COLUMNS": "300"}
    command = [*onex_command(), "--root", str(ROOT), "run", "--store", f"sqlite:///{tmp_path}/onex.db"]
    result = subprocess.run(
        [*command, "--http", "127.0.0.1:0"], capture_output=True, text=True, timeout=60, check=False, env=env
    )
    assert result.returncode == 2, result.stderr
    assert f"({variable}) must be" in result.stderr, result.stderr
    assert repr(value) in result.stderr, result.stderr
    assert "Traceback" not in result.stderr


def test_onex_run_http_refuses_a_bad_address(tmp_path: Path) -> None:
    result = subprocess.run(
        [*onex_command(), "--root", str(ROOT), "run", "--store", f"sqlite:///{tmp_path}/onex.db", "--http", "nope"],
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert result.returncode == 2
    assert "HOST:PORT" in result.stderr


@pytest.mark.parametrize(
    ("args", "says"),
    [
        (["--no-nodes", "--node", "registry", "--http", "127.0.0.1:0", "--bus", "kafka://127.0.0.1:1"], "--node"),
        (["--no-nodes", "--bus", "kafka://127.0.0.1:1"], "--http"),
        (["--no-nodes", "--http", "127.0.0.1:0"], "nobody would do the work"),
    ],
    ids=["with-node", "without-http", "memory-bus"],
)
def test_onex_run_no_nodes_refuses_what_cannot_work_in_one_line(tmp_path: Path, args: list[str], says: str) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("ONEX_")} | {"COLUMNS": "300"}
    command = [*onex_command(), "--root", str(ROOT), "run", "--store", f"sqlite:///{tmp_path}/onex.db", *args]
    result = subprocess.run(command, capture_output=True, text=True, timeout=60, check=False, env=env)
    assert result.returncode == 2, result.stderr
    assert result.stderr.count("\n") == 1, result.stderr
    assert result.stderr.startswith("error: --no-nodes"), result.stderr
    assert says in result.stderr


class _RecordingTransport(asyncio.Transport):
    """A fake connection: what was written, in the writes it came in."""

    def __init__(self) -> None:
        super().__init__()
        self.writes: list[bytes] = []
        self.closed = False

    def write(self, data: bytes | bytearray | memoryview) -> None:
        assert not self.closed, "written after close()"
        self.writes.append(bytes(data))

    def is_closing(self) -> bool:
        return self.closed

    def close(self) -> None:
        self.closed = True

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return default


@pytest.mark.anyio
async def test_a_responses_head_and_body_leave_in_one_write() -> None:
    async def app(scope: Any, receive: Any, send: Any) -> None:
        await send({"type": "http.response.start", "status": 200, "headers": [(b"content-length", b"2")]})
        await send({"type": "http.response.body", "body": b"ok"})

    config = uvicorn.Config(app, http=_HttpProtocol, lifespan="off", log_config=None)
    config.load()
    protocol = _HttpProtocol(config=config, server_state=uvicorn.server.ServerState(), app_state={})
    transport = _RecordingTransport()
    protocol.connection_made(transport)
    for _ in range(2):  # keep-alive: each response of the connection in one write
        protocol.data_received(b"GET / HTTP/1.1\r\nHost: onex\r\n\r\n")
        for _ in range(10):
            await asyncio.sleep(0)
    assert len(transport.writes) == 2, transport.writes
    for write in transport.writes:
        assert write.startswith(b"HTTP/1.1 200 OK\r\n")
        assert write.endswith(b"\r\n\r\nok")


@pytest.mark.anyio
async def test_what_was_written_before_a_connection_closes_is_sent_and_nothing_after() -> None:
    transport = _RecordingTransport()
    coalescing = _CoalescingTransport(transport, asyncio.get_running_loop())
    coalescing.write(b"head,")
    coalescing.write(bytearray(b"body"))
    assert transport.writes == []  # held until the loop's next turn...
    coalescing.close()
    assert transport.writes == [b"head,body"]  # ...or until the connection closes
    assert transport.closed
    coalescing.write(b"late")
    await asyncio.sleep(0)
    assert transport.writes == [b"head,body"]


# --- the answers' JSON ---------------------------------------------------------------------------------------------


@dataclasses.dataclass
class _Point:
    x: int
    when: datetime


def test_answers_are_the_json_the_standard_library_wrote_made_by_orjson() -> None:
    value = {
        "id": uuid.UUID(int=7),
        "at": datetime(2026, 12, 5, 4, 0, 0, 123456, tzinfo=UTC),
        "day": date(2026, 12, 5),
        "tags": {"b", "a"},
        "raw": b"bytes",
        "point": _Point(1, datetime(2026, 12, 5, tzinfo=UTC)),
        "nested": [1, 2.5, None, True, {"k": "v"}],
    }
    standard = json.dumps(value, default=_jsonable, separators=(",", ":")).encode()
    assert dumps(value) == standard  # ASCII text: byte for byte
    assert json.loads(dumps({"text": "héllo ✓"})) == {"text": "héllo ✓"}
    assert dumps({"text": "é"}) == '{"text":"é"}'.encode()  # UTF-8, not escaped
    assert dumps({"x": float("nan")}) == b'{"x":null}'  # the standard library wrote NaN, which is not JSON


@pytest.mark.parametrize(
    "value",
    [{"big": 2**70}, {1: "key that is not a string"}, {"lone": "\ud800"}],
    ids=["beyond 64 bits", "int key", "lone surrogate"],
)
def test_what_orjson_refuses_the_standard_library_writes_as_before(value: dict[Any, Any]) -> None:
    assert dumps(value) == json.dumps(value, default=_jsonable, separators=(",", ":")).encode()


def test_a_stamp_of_text_that_is_not_ascii_is_answered_in_utf8(api: httpx.Client) -> None:
    response = api.post("/stamp", json={"content": "naïve café ✓\n", "file_path": "notes.txt"})
    assert response.status_code == 200, response.text
    assert "naïve café ✓".encode() in response.content
    assert response.json()["data"]["stamped_content"].endswith("naïve café ✓\n")
