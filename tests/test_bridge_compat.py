"""onex answers the bridge's (omninode_bridge) clients as its MetadataStampingService did (issue 16).

The seed's shapes are written down here once, as fixtures: the example request bodies of its API documentation
(``POST /stamp``, ``/batch``, ``/validate``, ``/validate-protocol``) and the fields its clients read from a stamp
response (``StampResponse``: ``file_hash``, ``stamp_data`` {hash, namespace, timestamp, protocol_version,
file_metadata}, ``op_id``, ``execution_time_ms``, ``event_published``; ``/batch``: ``batch_id``). Each test sends a
seed body to the real app (every shipped node on the memory bus, SQLite) and checks the answer against them, the
rows it stored (the O.N.E. v0.1 columns of migration 0005) and the events it published (METADATA_STAMP_VALIDATED,
METADATA_BATCH_PROCESSED), read off the bus by a subscriber of their topics. Binary uploads get a sidecar stamp,
the bytes unchanged. ``onex stamp`` and ``onex verify --publish`` publish their reports too.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import copy
import json
import re
import stat
import threading
import uuid
from collections.abc import AsyncIterator, Iterator, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
import pytest
from blake3 import blake3
from click.testing import CliRunner
from onex import stamps
from onex.bus import MemoryBus
from onex.cli import main
from onex.client import (
    BATCH_PROCESSED_EVENT,
    STAMP_VALIDATED_EVENT,
    StampClient,
    StampRun,
    publish_verified,
    verify_paths,
)
from onex.contracts import load_contracts
from onex.envelope import OnexEnvelopeV1
from onex.http import PREFIX, create_app
from onex.runtime import Runtime
from onex.settings import Settings
from onex.stores import open_store
from onex.testing import Harness

pytestmark = pytest.mark.anyio

ROOT = Path(__file__).resolve().parents[1]
NODES = ["orchestrator", "stamping_effect", "reducer", "database_adapter_effect", "registry"]
REPORTS = (STAMP_VALIDATED_EVENT, BATCH_PROCESSED_EVENT)
PNG = b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR\x00\x00\x00\x01\xff\xfe\x00"

# --- the seed's shapes -----------------------------------------------------------------------------------------------

# POST /stamp, as the seed's API documentation gives it (its placeholders made concrete).
SEED_STAMP_REQUEST: dict[str, Any] = {
    "content": "Content to be stamped",
    "file_path": "/optional/file/path.txt",
    "options": {"stamp_type": "lightweight", "include_metadata": True, "validate_integrity": True},
    "metadata": {"author": "user123", "purpose": "document_verification"},
    "protocol_version": "1.0",
    "namespace": "omninode.services.metadata",
    "intelligence_data": {"context": "automated_processing", "priority": "high"},
    "version": 1,
    "op_id": "custom-operation-id",
    "metadata_version": "0.1",
}
# The fields the seed's clients read from a stamp answer's data (its StampResponse), and their JSON types.
SEED_STAMP_RESPONSE: dict[str, Any] = {
    "file_hash": str,
    "stamp_data": {
        "hash": str,
        "namespace": str,
        "timestamp": str,
        "protocol_version": str,
        "file_metadata": {"file_type": str, "size": int, "mode": (str, type(None))},
    },
    "op_id": str,
    "execution_time_ms": (int, float),
    "event_published": bool,
}
SEED_BATCH_REQUEST: dict[str, Any] = {
    "items": [
        {
            "id": "item1",
            "content": "First content to stamp",
            "file_path": "/path/to/file1.txt",
            "namespace": "test",
            "metadata": {"type": "document"},
        },
        {"id": "item2", "content": "Second content to stamp", "namespace": "production"},
    ],
    "options": {"stamp_type": "lightweight", "include_metadata": True, "validate_integrity": True},
    "protocol_version": "1.0",
    "namespace": "omninode.services.metadata",
}
SEED_VALIDATE_REQUEST: dict[str, Any] = {
    "content": "Content with stamps to validate",
    "options": {"strict_mode": True, "expected_hash": "a1b2c3d4e5f6789", "check_tampering": True},
    "namespace": "omninode.services.metadata",
}
SEED_PROTOCOL_REQUEST: dict[str, Any] = {
    "content": "Content to validate against protocol",
    "target_protocol": "O.N.E.v0.1",
    "validation_level": "strict",
    "namespace": "omninode.services.metadata",
}

# The fields the seed's clients read from a /hash answer's data (its HashResponse).
SEED_HASH_RESPONSE: dict[str, Any] = {"file_hash": str, "file_size_bytes": int, "execution_time_ms": (int, float)}

# How the seed's stamping engine stamps text, written here from its source (``stamping_engine.py``), apart from
# onex's code: the hash is BLAKE3 of the text with every stamp of its own removed (``lightweight_pattern``,
# ``rich_pattern``), runs of three or more newlines collapsed to two and both ends stripped
# (``_remove_existing_stamps``); a lightweight stamp is prepended with ``,author=`` / ``,v=`` when given, a rich
# block appended after a blank line.
SEED_LIGHTWEIGHT = re.compile(r"# ONEX:uid=([a-zA-Z0-9_-]+),hash=([a-zA-Z0-9]+),ts=([0-9T:\-\+\.]+).*")
SEED_RICH = re.compile(r"<!--\s*ONEX_METADATA_START\s*-->(.*?)<!--\s*ONEX_METADATA_END\s*-->", re.DOTALL)


def seed_hash(text: str) -> str:
    clean = SEED_RICH.sub("", SEED_LIGHTWEIGHT.sub("", text))
    return str(blake3(re.sub(r"\n{3,}", "\n\n", clean).strip().encode("utf-8")).hexdigest())


def seed_stamped(text: str, *, author: str | None = "user123", version: str | None = None) -> str:
    """``text`` with the lightweight stamp the seed prepends."""
    stamp = f"# ONEX:uid={uuid.uuid4()},hash={seed_hash(text)},ts={datetime.now(UTC).isoformat()}"
    if author is not None:
        stamp += f",author={author}"
    if version is not None:
        stamp += f",v={version}"
    return stamp + "\n" + text


def seed_rich_stamped(text: str) -> str:
    """``text`` with the rich block the seed appends."""
    digest, ts = seed_hash(text), datetime.now(UTC).isoformat()
    block = [
        "<!-- ONEX_METADATA_START -->",
        "<!-- ONEX Metadata Stamp",
        f"  uid: {uuid.uuid4()}",
        f"  hash: {digest}",
        f"  timestamp: {ts}",
        "  protocol_version: 1.0",
        "  integrity:",
        "    algorithm: BLAKE3",
        f"    hash: {digest}",
        "-->",
        "<!-- ONEX_METADATA_END -->",
    ]
    return text + "\n\n" + "\n".join(block)


def has_shape(value: Any, shape: Any, where: str = "data") -> None:
    """``value`` has every field of ``shape`` (a dict of fields, or the type(s) a leaf must be)."""
    if isinstance(shape, dict):
        assert isinstance(value, dict), f"{where}: {value!r} is not an object"
        for key, inner in shape.items():
            assert key in value, f"{where}.{key} is missing: {sorted(value)}"
            has_shape(value[key], inner, f"{where}.{key}")
    else:
        assert isinstance(value, shape), f"{where}: {value!r}"
        assert not (shape is int and isinstance(value, bool)), f"{where}: {value!r} is a bool"


def unique(text: str) -> str:
    return f"{text} {uuid.uuid4()}\n"


def seed_stamp(**changes: Any) -> dict[str, Any]:
    body = copy.deepcopy(SEED_STAMP_REQUEST)
    body["content"] = unique(body["content"])  # a fresh document, not one stamped by an earlier test
    body.update(changes)
    return body


# --- the app, in process, and what it publishes ------------------------------------------------------------------


@dataclass
class App:
    http: httpx.AsyncClient
    runtime: Runtime
    reports: dict[str, list[OnexEnvelopeV1]] = field(default_factory=dict)

    async def settle(self) -> None:
        """Every event published so far handled: rows persisted, reports collected."""
        bus = self.runtime.bus
        assert isinstance(bus, MemoryBus)
        await bus.join()

    async def data(self, path: str, body: Mapping[str, Any], status: int = 200) -> dict[str, Any]:
        response = await self.http.post(path, json=body)
        assert response.status_code == status, response.text
        answer: dict[str, Any] = response.json()["data"]
        return answer

    async def stored(self, file_hash: str) -> list[dict[str, Any]]:
        await self.settle()
        response = await self.http.get(f"/stamp/{file_hash}")
        assert response.status_code == 200, response.text
        rows: list[dict[str, Any]] = response.json()["data"]["stamps"]
        return rows


@contextlib.asynccontextmanager
async def app_of(tmp_path: Path, *, env: Mapping[str, str] | None = None, **settings: Any) -> AsyncIterator[App]:
    """``env``: the ``ONEX_*`` variables the contracts are interpolated with (``${ONEX_INTELLIGENCE_URL:}`` ...)."""
    base = Settings.load(environ={}, root=str(ROOT), store=f"sqlite:///{tmp_path}/onex.db")
    config = base.with_(heartbeat_interval_s=0, **settings)
    contracts = load_contracts(ROOT, env=dict(env or {}))
    async with (
        Runtime(config, nodes=NODES, contracts=contracts) as runtime,
        StampClient(runtime.bus, runtime.contracts, config, keep_stamps=True) as client,
    ):
        app = App(httpx.AsyncClient(base_url=f"http://onex{PREFIX}"), runtime)

        async def collect(envelope: OnexEnvelopeV1) -> None:
            app.reports.setdefault(envelope.event_type, []).append(envelope)

        topics = [client.catalog.topic(name) for name in REPORTS]
        await runtime.bus.ensure_topics(topics)
        subscription = await runtime.bus.subscribe(topics, "test.reports", handler=collect)
        transport = httpx.ASGITransport(app=create_app(runtime, client, config))
        async with httpx.AsyncClient(transport=transport, base_url=f"http://onex{PREFIX}", timeout=60) as http:
            app.http = http
            try:
                yield app
            finally:
                await subscription.aclose()


@pytest.fixture
async def app(tmp_path: Path) -> AsyncIterator[App]:
    async with app_of(tmp_path) as running:
        yield running


# --- /stamp ---------------------------------------------------------------------------------------------------------


async def test_the_seeds_stamp_request_is_answered_with_its_response_fields(app: App) -> None:
    body = seed_stamp()
    data = await app.data("/stamp", body)
    has_shape(data, SEED_STAMP_RESPONSE)
    digest = stamps.hash_bytes(body["content"].encode())
    assert data["file_hash"] == data["hash"] == data["stamp_data"]["hash"] == digest
    assert data["op_id"] == data["workflow_id"]  # the operation is the workflow
    assert data["event_published"] is True
    assert data["stamp_data"] == {
        "hash": digest,
        "namespace": "omninode.services.metadata",
        "timestamp": data["stamp"]["ts"],
        "protocol_version": "1.0",
        "file_metadata": {"file_type": "text", "size": len(body["content"].encode()), "mode": None},
    }
    assert data["metadata_version"] == "0.1"
    # The existing fields stay.
    assert data["stamped_content"].endswith(body["content"])
    assert (data["status"], data["stamp_type"], data["file_path"]) == ("stamped", "lightweight", body["file_path"])


async def test_the_seeds_metadata_author_becomes_the_stamps_author(app: App) -> None:
    body = seed_stamp(options={"stamp_type": "rich"}, file_path="doc.md")
    data = await app.data("/stamp", body)
    assert data["stamp"]["author"] == "user123"


@pytest.mark.parametrize(
    ("field_name", "value"), [("protocol_version", "2.0"), ("protocol_version", "one"), ("metadata_version", "7.0")]
)
async def test_a_version_this_server_does_not_speak_is_422_naming_it(app: App, field_name: str, value: str) -> None:
    response = await app.http.post("/stamp", json=seed_stamp(**{field_name: value}))
    assert response.status_code == 422, response.text
    assert response.json()["error"]["field"] == field_name


async def test_a_version_given_as_a_number_is_accepted(app: App) -> None:
    data = await app.data("/stamp", seed_stamp(protocol_version=1.0, metadata_version=0.1))
    assert data["stamp_data"]["protocol_version"] == "1.0"


async def test_the_stored_stamp_carries_the_one_v01_columns_and_restamps_count_up(app: App) -> None:
    path = f"docs/{uuid.uuid4()}.md"
    first = await app.data("/stamp", seed_stamp(file_path=path))
    (row,) = await app.stored(first["file_hash"])
    assert row["op_id"] == first["op_id"]
    assert row["version"] == 1
    assert (row["protocol_version"], row["metadata_version"]) == ("1.0", "0.1")
    assert row["file_metadata"] == {"file_type": first["file_type"], "size": first["file_size"], "mode": None}
    assert row["intelligence_data"] == {}  # no intelligence service configured: the step was skipped
    assert row["updated_at"] is not None
    # The same file, changed: its second version.
    second = await app.data("/stamp", seed_stamp(file_path=path))
    (again,) = await app.stored(second["file_hash"])
    assert (again["version"], again["op_id"]) == (2, second["op_id"])


async def test_new_rows_record_the_settings_versions(tmp_path: Path) -> None:
    async with app_of(tmp_path, protocol_version="1.1", metadata_version="0.1.1") as app:
        data = await app.data("/stamp", seed_stamp())
        assert data["stamp_data"]["protocol_version"] == "1.1"
        (row,) = await app.stored(data["file_hash"])
        assert (row["protocol_version"], row["metadata_version"]) == ("1.1", "0.1.1")


@contextlib.contextmanager
def intelligence_service(answer: Mapping[str, Any]) -> Iterator[str]:
    """A real HTTP service on a free port answering every POST with ``answer`` (the orchestrator's intelligence
    step posts each stamp's hash to it); its URL."""

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            self.rfile.read(int(self.headers.get("content-length") or 0))
            body = json.dumps(answer).encode()
            self.send_response(200)
            self.send_header("content-type", "application/json")
            self.send_header("content-length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args: Any) -> None:  # quiet
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/hash"
    finally:
        server.shutdown()
        server.server_close()
        thread.join()


async def test_what_the_intelligence_step_answers_is_stored_with_the_stamp(tmp_path: Path) -> None:
    answer = SEED_STAMP_REQUEST["intelligence_data"]
    with intelligence_service(answer) as url:
        async with app_of(tmp_path, env={"ONEX_INTELLIGENCE_URL": url}) as app:
            data = await app.data("/stamp", seed_stamp())
            (row,) = await app.stored(data["file_hash"])
    assert row["intelligence_data"] == answer
    assert row["op_id"] == data["op_id"]


# --- binary uploads -------------------------------------------------------------------------------------------------


async def test_a_binary_upload_gets_a_sidecar_and_its_bytes_are_not_changed(app: App) -> None:
    png = PNG + uuid.uuid4().bytes
    response = await app.http.post("/stamp", files={"file": ("pic.png", png)}, data={"namespace": "bin"})
    assert response.status_code == 200, response.text
    data = response.json()["data"]
    assert (data["stamp_type"], data["stamped_content"], data["file_type"]) == ("sidecar", None, "image")
    assert data["file_hash"] == stamps.hash_bytes(png)
    assert data["file_size"] == len(png)
    assert stamps.verify_bytes(png, file_name="pic.png", sidecar=data["sidecar"].encode()).status == "valid"
    (row,) = await app.stored(data["file_hash"])
    assert (row["stamp_type"], row["namespace"], row["file_metadata"]["size"]) == ("sidecar", "bin", len(png))


async def test_base64_content_gets_a_sidecar_too(app: App) -> None:
    blob = PNG + uuid.uuid4().bytes
    body = {"content_base64": base64.b64encode(blob).decode(), "file_path": "x.png"}
    data = await app.data("/stamp", body)
    assert (data["stamp_type"], data["stamped_content"]) == ("sidecar", None)
    assert stamps.verify_bytes(blob, file_name="x.png", sidecar=data["sidecar"].encode()).status == "valid"


@pytest.mark.parametrize(
    ("name", "blob"),
    [
        ("notes.txt", "notes \u00e9\n".encode("utf-16")),  # stamp_content would stamp it in place, in UTF-16
        ("l1.py", b"# coding: latin-1\nx = '\xe9'\n"),  # ...and this in place, in its declared latin-1
    ],
)
async def test_bytes_sent_as_bytes_get_a_sidecar_even_when_they_could_take_a_stamp_in_place(
    app: App, name: str, blob: bytes
) -> None:
    # Bytes come back to no one (stamped_content is text): a stamp written into them would exist nowhere but in its
    # row. So they get a sidecar, returned, whose hash is of the bytes as sent.
    blob += uuid.uuid4().hex.encode("utf-16-le" if name.endswith(".txt") else "ascii")
    data = await app.data("/stamp", {"content_base64": base64.b64encode(blob).decode(), "file_path": name})
    assert (data["stamp_type"], data["stamped_content"]) == ("sidecar", None)
    assert (data["file_hash"], data["file_size"]) == (stamps.hash_bytes(blob), len(blob))
    assert stamps.verify_bytes(blob, file_name=name, sidecar=data["sidecar"].encode()).status == "valid"
    (row,) = await app.stored(data["file_hash"])
    assert row["stamp_type"] == "sidecar"


async def test_a_restamp_reports_the_size_of_the_content_without_its_stamp(app: App) -> None:
    content = f"x = {uuid.uuid4().int}\n"
    first = await app.data("/stamp", {"content": content, "file_path": "s.py"})
    for stamp_type in ("lightweight", "rich"):  # unchanged, then restamped as the other kind
        body = {"content": first["stamped_content"], "file_path": "s.py", "options": {"stamp_type": stamp_type}}
        again = await app.data("/stamp", body)
        assert again["status"] == ("unchanged" if stamp_type == "lightweight" else "stamped")
        assert again["file_size"] == again["stamp_data"]["file_metadata"]["size"] == len(content.encode())


async def test_content_is_reported_as_the_file_type_a_file_of_the_same_bytes_gets(app: App, tmp_path: Path) -> None:
    # UTF-16 text is text, as stamp_file says of such a file, though its head holds NUL bytes (the stamping effect
    # once classified the content again by those bytes alone: "binary").
    text = f"notes {uuid.uuid4()}\n".encode("utf-16")
    (tmp_path / "notes.txt").write_bytes(text)
    expected = stamps.stamp_file(tmp_path / "notes.txt", dry_run=True).file_type
    data = await app.data("/stamp", {"content_base64": base64.b64encode(text).decode(), "file_path": "notes.txt"})
    assert (data["stamp_type"], data["file_type"], expected) == ("sidecar", "text", "text")
    (row,) = await app.stored(data["file_hash"])
    assert row["file_type"] == "text"


@pytest.mark.parametrize(
    ("body", "field_name"),
    [
        ({"content_base64": "not base64!"}, "content_base64"),
        ({"content": "x", "content_base64": "eA=="}, "content"),
        ({"namespace": "ns"}, "content"),
    ],
)
async def test_content_and_content_base64_are_one_or_the_other(app: App, body: dict[str, Any], field_name: str) -> None:
    response = await app.http.post("/stamp", json=body)
    assert response.status_code == 422, response.text
    assert response.json()["error"]["field"] == field_name


# --- /batch ---------------------------------------------------------------------------------------------------------


async def test_the_seeds_batch_gets_a_batch_id_and_publishes_one_batch_processed(app: App) -> None:
    body = copy.deepcopy(SEED_BATCH_REQUEST)
    for item in body["items"]:
        item["content"] = unique(item["content"])
    data = await app.data("/batch", body)
    batch_id = uuid.UUID(data["batch_id"])
    assert data["event_published"] is True
    assert [(i["id"], i["status"]) for i in data["items"]] == [("item1", "success"), ("item2", "success")]
    for item in data["items"]:
        has_shape(item["data"], SEED_STAMP_RESPONSE)
    assert [i["data"]["namespace"] for i in data["items"]] == ["test", "production"]
    await app.settle()
    (event,) = app.reports[BATCH_PROCESSED_EVENT]
    payload = event.payload
    assert (payload.batch_id, payload.total, payload.successful, payload.failed) == (batch_id, 2, 2, 0)
    assert payload.namespace == "*"  # its items name two namespaces
    assert event.partition_key == "*"


async def test_a_batch_counts_its_failures_and_lends_its_namespace_to_items(app: App) -> None:
    never_closed = "---\n" + "key: value\n" * 2000  # front matter too long to place a stamp under: the workflow fails
    items = [{"content": unique("a")}, {"content": 5}, {"content": never_closed, "file_path": "long.md"}]
    response = await app.http.post("/batch", json={"items": items, "namespace": "shared.ns"})
    data = response.json()["data"]
    assert data["items"][0]["data"]["namespace"] == "shared.ns"
    await app.settle()
    (event,) = app.reports[BATCH_PROCESSED_EVENT]
    assert (event.payload.total, event.payload.successful, event.payload.namespace) == (3, 1, "shared.ns")
    assert event.payload.failed == 2
    assert str(event.payload.batch_id) == data["batch_id"]


# --- /validate and /validate-protocol ---------------------------------------------------------------------------


async def test_the_seeds_validate_request_publishes_stamp_validated(app: App) -> None:
    stamped, stamp = stamps.stamp_bytes(unique("checked").encode(), file_name="v.txt")
    body = {**SEED_VALIDATE_REQUEST, "content": stamped.decode(), "file_path": "v.txt"}
    data = await app.data("/validate", body)
    assert data["event_published"] is True
    assert data["summary"]["valid"] == 1
    unstamped = await app.data("/validate", SEED_VALIDATE_REQUEST)
    assert unstamped["summary"]["unstamped"] == 1
    await app.settle()
    first, second = (e.payload for e in app.reports[STAMP_VALIDATED_EVENT])
    assert (first.file_hash, first.validation_result, first.stamps_found) == (stamp.hash, "valid", 1)
    assert (second.validation_result, second.stamps_found) == ("unstamped", 0)
    assert first.namespace == second.namespace == "omninode.services.metadata"
    assert second.file_hash == stamps.hash_bytes(SEED_VALIDATE_REQUEST["content"].encode())


def seed_rich_block(content: bytes, *, protocol_line: str) -> bytes:
    """A rich stamp as the seed writes it: ``protocol_version: 1.0``, which YAML reads as the float 1.0."""
    stamped, _ = stamps.stamp_bytes(content, file_name="p.py", rich=True)
    assert b"# protocol_version: 0.1.0\n" in stamped
    return stamped.replace(b"# protocol_version: 0.1.0\n", f"# {protocol_line}\n".encode())


@pytest.mark.parametrize("line", ["protocol_version: 1.0", "protocol_version: '1.0'", "protocol_version: 1.0.0"])
async def test_validate_protocol_accepts_the_seeds_1_0(app: App, line: str) -> None:
    content = seed_rich_block(b"print(1)\n", protocol_line=line)
    body = {**SEED_PROTOCOL_REQUEST, "content": content.decode(), "file_path": "p.py"}
    data = await app.data("/validate-protocol", body)
    assert data["issues"] == []
    assert data["valid"] is True


async def test_validate_protocol_takes_a_version_as_a_number_and_refuses_others(app: App) -> None:
    content = "x\n"
    stamped, stamp = stamps.stamp_bytes(content.encode(), file_name="p.py", rich=True)
    metadata = {**stamp.fields, "protocol_version": 1.0, "metadata_version": 0.1}
    data = await app.data("/validate-protocol", {"content": content, "file_path": "p.py", "metadata": metadata})
    assert data["issues"] == []
    for bad, code in (("2.0", "unsupported"), ("1.0-beta", "format"), (True, "format")):
        found = await app.data(
            "/validate-protocol", {"content": content, "metadata": {**metadata, "protocol_version": bad}}
        )
        assert {i["field"]: i["code"] for i in found["issues"]}.get("protocol_version") == code, (bad, found)
    assert stamped


# --- /hash ----------------------------------------------------------------------------------------------------------


async def test_hash_answers_the_seeds_fields_for_a_json_body_and_an_upload(app: App) -> None:
    plain = unique("hashed").encode()
    stamped, _ = stamps.stamp_bytes(plain, file_name="h.py")
    json_answer = await app.data("/hash", {"content": stamped.decode(), "file_path": "h.py"})
    response = await app.http.post("/hash", files={"file": ("h.py", stamped)})
    assert response.status_code == 200, response.text
    for data in (json_answer, response.json()["data"]):
        has_shape(data, SEED_HASH_RESPONSE)
        # The hash of the content without its stamp, and the size of what was hashed; onex's fields stay.
        assert data["file_hash"] == data["hash"] == stamps.hash_bytes(plain)
        assert data["file_size_bytes"] == data["size"] == len(plain)
        assert (data["received_bytes"], data["stamp_removed"]) == (len(stamped), True)
        assert data["execution_time_ms"] >= 0


# --- stamps the seed wrote ------------------------------------------------------------------------------------------

SEED_TEXTS = {
    "x.py": "print(1)\n",
    "notes.txt": "Content to be stamped\n",
    "crlf.py": "a = 1\r\nb = 2\r\n",
    "blanks.py": "\n\nx = 1\n\n\n\ny = 2\n\n",
    "both.py": seed_rich_stamped("z = 3\n"),  # the seed's rich block too, which its rule removes as well
}


def test_a_stamp_the_seed_wrote_with_an_author_of_two_words_is_one_stamp_not_two(tmp_path: Path) -> None:
    # The seed writes whatever author the client gave (its pattern reads anything after ts=): "OmniNode Team".
    content = seed_stamped("print(1)\n", author="OmniNode Team").encode()
    path = tmp_path / "x.py"
    path.write_bytes(content)

    assert stamps.verify_file(path).status == "valid"
    assert stamps.stamp_file(path).status == "unchanged"
    assert path.read_bytes() == content  # not a second stamp above it
    path.write_bytes(content + b"more = 2\n")
    restamped = stamps.stamp_file(path)
    assert restamped.status == "stamped"
    assert path.read_bytes().count(b"ONEX:uid=") == 1
    assert restamped.stamp is not None
    assert restamped.stamp.fields["author"] == "OmniNode Team"


@pytest.mark.parametrize("name", sorted(SEED_TEXTS))
def test_a_stamp_the_seed_wrote_verifies_and_a_restamp_leaves_it(tmp_path: Path, name: str) -> None:
    text = SEED_TEXTS[name]
    content = seed_stamped(text, version="1").encode()
    path = tmp_path / name
    path.write_bytes(content)
    digest = stamps.hash_bytes(text.encode())  # onex's: the bytes without the stamp, nothing normalised
    assert seed_hash(text) != digest  # these texts are where the two rules differ
    for result in (stamps.verify_file(path), stamps.verify_bytes(content, file_name=name)):
        assert (result.status, result.expected, result.actual) == ("valid", seed_hash(text), digest)
    # A restamp keeps it as it is: rewritten with onex's hash, the seed would call the file modified.
    assert stamps.stamp_file(path).status == "unchanged"
    assert path.read_bytes() == content
    assert stamps.stamp_bytes(content, file_name=name)[0] is content
    # Changed since, it matches neither rule.
    changed = content + b"more = 4\n"
    path.write_bytes(changed)
    for result in (stamps.verify_file(path), stamps.verify_bytes(changed, file_name=name)):
        assert result.status == "modified"
    # A rich stamp asked for replaces it, with onex's hash.
    path.write_bytes(content)
    rich = stamps.stamp_file(path, rich=True)
    assert (rich.status, rich.stamp and rich.stamp.hash) == ("stamped", digest)
    assert stamps.verify_file(path).status == "valid"


def test_a_large_file_the_seed_stamped_verifies_when_it_is_streamed(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(stamps, "IN_MEMORY_LIMIT", 1024)  # hashed in chunks: the seed's rule reads it again
    text = "row = 1\n" * 4096
    path = tmp_path / "big.py"
    path.write_text(seed_stamped(text))
    assert stamps.IN_MEMORY_LIMIT < path.stat().st_size <= stamps.BRIDGE_LIMIT
    assert stamps.verify_file(path).status == "valid"
    assert stamps.stamp_file(path).status == "unchanged"
    # Past BRIDGE_LIMIT only onex's rule is applied.
    huge = "row = 1\n" * (stamps.BRIDGE_LIMIT // 8)
    path.write_text(seed_stamped(huge))
    assert stamps.verify_file(path).status == "modified"


def test_only_the_seeds_form_is_held_to_the_seeds_rule() -> None:
    # A stamp with the seed's pairs whose hash is neither the seed's nor onex's: modified.
    wrong = re.sub(r"hash=[0-9a-f]{64}", "hash=" + "0" * 64, seed_stamped("print(1)\n"), count=1).encode()
    assert stamps.verify_bytes(wrong, file_name="x.py").status == "modified"
    # onex's own stamps keep onex's rule: content that only gained a newline at its end is modified, though the
    # seed's rule (which strips both ends) would match it.
    stamped, _ = stamps.stamp_bytes(b"x = 1", file_name="x.py")
    assert stamps.verify_bytes(stamped + b"\n", file_name="x.py").status == "modified"
    # So a stamp the seed wrote without pairs, which reads exactly as onex's, is held to onex's rule.
    bare = seed_stamped("print(1)\n", author=None).encode()
    assert stamps.verify_bytes(bare, file_name="x.py").status == "modified"
    # The seed's rule hashes the UTF-8 of text: the same text in latin-1 does not match it.
    latin = seed_stamped("caf\xe9\n").encode("latin-1")
    assert stamps.verify_bytes(latin, file_name="notes.txt").status == "modified"


async def test_the_seeds_stamp_is_valid_to_validate_and_unchanged_by_stamp(app: App) -> None:
    text = unique("seed document")
    content = seed_stamped(text)
    data = await app.data("/validate", {"content": content, "file_path": "seed.txt"})
    assert (data["results"][0]["status"], data["summary"]["valid"]) == ("valid", 1)
    stamped = await app.data("/stamp", seed_stamp(content=content, file_path="seed.txt"))
    assert (stamped["status"], stamped["stamped_content"]) == ("unchanged", content)
    assert stamped["file_hash"] == seed_hash(text)  # the stamp's own hash


def test_onex_verify_calls_the_seeds_stamps_valid(tmp_path: Path) -> None:
    for name, text in SEED_TEXTS.items():
        (tmp_path / name).write_bytes(seed_stamped(text).encode())
    result = run_cli("verify", str(tmp_path))
    assert result.exit_code == 0, result.output


# --- the CLI's reports ----------------------------------------------------------------------------------------------


async def test_onex_stamp_publishes_one_batch_processed_per_run(tmp_path: Path) -> None:
    tree = tmp_path / "tree"
    tree.mkdir()
    for i in range(3):
        (tree / f"f{i}.py").write_text(f"x = {i}\n")
    settings = Settings.load(environ={}, root=str(ROOT), store=f"sqlite:///{tmp_path}/onex.db").with_(
        heartbeat_interval_s=0
    )
    report = await StampRun(settings, load_contracts(ROOT), namespace="cli.ns").run([tree])
    assert report.counts["stamped"] == 3
    assert report.batch_published is True
    assert report.to_dict()["batch_id"] == str(report.batch_id)
    dry = await StampRun(settings, load_contracts(ROOT), dry_run=True).run([tree])
    assert (dry.batch_id, dry.batch_published) == (None, False)  # a dry run changes nothing: no report


async def test_restamping_a_changed_file_adds_its_next_version_and_keeps_its_uid(tmp_path: Path) -> None:
    path = tmp_path / "tree" / "app.py"
    path.parent.mkdir()
    path.write_text("x = 1\n")
    settings = Settings.load(environ={}, root=str(ROOT), store=f"sqlite:///{tmp_path}/onex.db").with_(
        heartbeat_interval_s=0
    )
    hashes = []
    for _ in range(2):
        report = await StampRun(settings, load_contracts(ROOT), namespace="cli.ns").run([path])
        assert report.counts["stamped"] == 1, report.to_dict()
        stamp = stamps.find_stamp(path.read_bytes(), file_name=path.name)
        assert stamp is not None
        hashes.append(stamp.hash)
        path.write_bytes(path.read_bytes() + b"x += 1\n")  # changed: the next run restamps it
    first, second = hashes
    assert first != second
    async with open_store(settings.store_url()) as store:
        rows = [row for digest in hashes for row in await store.get_stamps_by_hash(digest)]
    assert [(row.file_hash, row.version, row.file_path) for row in rows] == [
        (first, 1, str(path)),
        (second, 2, str(path)),
    ]
    assert rows[0].id != rows[1].id
    assert rows[0].stamp_data["uid"] == rows[1].stamp_data["uid"]  # the file keeps its identity
    mode = f"{stat.S_IMODE(path.stat().st_mode):04o}"
    assert [row.file_metadata for row in rows] == [
        {"file_type": rows[0].file_type, "size": row.file_size, "mode": mode} for row in rows
    ]


async def test_verify_publish_sends_one_stamp_validated_per_file(tmp_path: Path) -> None:
    (tmp_path / "ok.py").write_bytes(stamps.stamp_bytes(b"a = 1\n", file_name="ok.py")[0])
    (tmp_path / "plain.py").write_text("b = 2\n")
    settings = Settings.load(environ={}, root=str(ROOT))
    contracts = load_contracts(ROOT)
    report = verify_paths([tmp_path])
    heard: list[OnexEnvelopeV1] = []
    done = asyncio.Event()

    async def collect(envelope: OnexEnvelopeV1) -> None:
        heard.append(envelope)
        if len(heard) == 2:
            done.set()

    async with MemoryBus() as bus:
        from onex.catalog import EventCatalog

        topic = EventCatalog(contracts.contracts, settings).topic(STAMP_VALIDATED_EVENT)
        await bus.ensure_topics([topic])
        await bus.subscribe([topic], "test.verify", handler=collect)
        assert await publish_verified(report, settings, contracts, namespace="verify.ns", bus=bus)
        await asyncio.wait_for(done.wait(), 30)
    got = sorted((Path(e.payload.file_path).name, e.payload.validation_result, e.payload.stamps_found) for e in heard)
    assert got == [("ok.py", "valid", 1), ("plain.py", "unstamped", 0)]
    assert {e.payload.namespace for e in heard} == {"verify.ns"}


def run_cli(*args: str) -> Any:
    return CliRunner().invoke(main, ["--root", str(ROOT), *args], catch_exceptions=False)


def test_onex_verify_publish_on_the_memory_bus_says_nobody_hears_it(tmp_path: Path) -> None:
    (tmp_path / "plain.py").write_text("b = 2\n")
    result = run_cli("verify", "--publish", "--bus", "memory://", str(tmp_path))
    assert result.exit_code == 0, result.output
    assert "die with this process" in result.output
    assert run_cli("verify", "--bus", "memory://", str(tmp_path)).exit_code == 2  # --bus only with --publish


@pytest.mark.kafka
def test_onex_verify_publish_on_kafka_is_what_onex_tail_shows(tmp_path: Path, kafka_bootstrap: str) -> None:
    from tests.test_publish_tail import onex as onex_process

    env = f"bridge{uuid.uuid4().hex[:8]}"  # topics of this test's own
    (tmp_path / "ok.py").write_bytes(stamps.stamp_bytes(b"a = 1\n", file_name="ok.py")[0])
    (tmp_path / "plain.py").write_text("b = 2\n")
    bus = ["--bus", f"kafka://{kafka_bootstrap}"]
    verified = onex_process("verify", str(tmp_path), "--publish", "--namespace", "k.ns", *bus, cwd=tmp_path, env=env)
    assert verified.returncode == 0, verified.stderr
    tailed = onex_process(
        "tail", STAMP_VALIDATED_EVENT, *bus, "--from-beginning", "--max", "2", "--timeout", "60", "-o", "jsonl",
        cwd=tmp_path, env=env,
    )  # fmt: skip
    assert tailed.returncode == 0, tailed.stderr
    payloads = [json.loads(line)["payload"] for line in tailed.stdout.splitlines()]
    got = sorted(
        (Path(p["file_path"]).name, p["validation_result"], p["stamps_found"], p["namespace"]) for p in payloads
    )
    assert got == [("ok.py", "valid", 1, "k.ns"), ("plain.py", "unstamped", 0, "k.ns")]


# --- the bridge's nodes on onex's registry ---------------------------------------------------------------------------

# A bridge node's introspection and heartbeat (its ModelNodeIntrospectionEvent and ModelNodeHeartbeatEvent, as they
# serialise): lower-case node type and health, whole seconds of uptime, fields of their own, no name, no reason.
BRIDGE_NODE = "metadata-stamping-1"
SEED_INTROSPECTION: dict[str, Any] = {
    "node_id": BRIDGE_NODE,
    "node_type": "effect",
    "node_role": None,
    "capabilities": {"hash_generation": {"algorithm": "BLAKE3"}},
    "endpoints": {"health": "http://localhost:8053/health"},
    "metadata": {"version": "1.0.0", "environment": "development"},
    "timestamp": "2026-12-07T10:00:00+00:00",
    "correlation_id": None,
    "network_id": None,
    "deployment_id": "dev-001",
    "epoch": 1,
}
SEED_HEARTBEAT: dict[str, Any] = {
    "node_id": BRIDGE_NODE,
    "node_type": "effect",
    "health_status": "healthy",
    "uptime_seconds": 12,
    "last_activity_timestamp": "2026-12-07T10:00:00+00:00",
    "active_operations": 3,
    "resource_usage": {"cpu_percent": 4.5, "memory_mb": 120.0},
    "metadata": {"version": "1.0.0", "environment": "development"},
    "timestamp": "2026-12-07T10:00:00+00:00",
    "correlation_id": "8cb2bd9b-eff0-4f98-9810-1aa3170ea7fd",
}


async def record_bridge_node(url: str) -> tuple[list[str], dict[str, str]]:
    """The registry hears the bridge node introspect and heartbeat: the errors of what it dead-lettered, and the node
    types it recorded."""
    async with Harness(["registry"], root=ROOT, store_url=url) as h:
        for event_name, payload in [("NODE_INTROSPECTION", SEED_INTROSPECTION), ("NODE_HEARTBEAT", SEED_HEARTBEAT)]:
            await h.publish(event_name, payload, partition_key=BRIDGE_NODE)
            await h.settle()
        return [d.payload["error"] for d in h.dead_letters()], {
            r.node_id: r.node_type for r in await h.store.list_registrations()
        }


def test_the_registry_records_a_bridge_node_and_onex_ps_shows_it(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path}/onex.db"
    dead, recorded = asyncio.run(record_bridge_node(url))  # then the CLI, which runs an event loop of its own
    result = run_cli("ps", "--store", url, "-o", "json")

    assert dead == []
    assert recorded[BRIDGE_NODE] == "EFFECT"
    assert result.exit_code == 0, result.output
    shown = {r["node_id"]: r for r in json.loads(result.output)}[BRIDGE_NODE]
    assert (shown["name"], shown["kind"], shown["version"]) == (BRIDGE_NODE, "EFFECT", "1.0.0")
    assert (shown["recorded_health"], shown["uptime_s"]) == ("HEALTHY", 12.0)
    assert (shown["host"], shown["pid"]) == (None, None)  # it sends neither
