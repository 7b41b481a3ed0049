"""The metastore's REST API (issue 17), served by the gateway on uvicorn over every node on a MemoryBus and a SQLite
file, driven by a real HTTP client: metadata, feature flags and configurations end to end, the expected version
(If-Match or the body) with 409 on a conflict, 422 naming the field, pagination and filters, ETags, tenant
isolation by API key, the probes at the root, and 50 concurrent updates of which exactly one wins.
"""

from __future__ import annotations

import asyncio
import shutil
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from onex.client import StampClient
from onex.http import create_app
from onex.runtime import Runtime
from onex.settings import Settings

from tests.fixtures.http import LiveServer, live_server, onex_run_http

META = "/api/v1/metadata"
FLAGS = "/api/v1/feature-flags"
CONFIGS = "/api/v1/configurations"
ROOT = Path(__file__).resolve().parents[1]
KEY_A, KEY_B = "key-of-tenant-a", "key-of-tenant-b"


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveServer]:
    with live_server(tmp_path_factory.mktemp("metastore")) as live:
        yield live


@pytest.fixture
def api(server: LiveServer) -> Iterator[httpx.Client]:
    # Each test its own tenant: what one test creates no other test lists.
    tenant = f"t{uuid.uuid4().hex[:12]}"
    with httpx.Client(base_url=server.url, timeout=30, headers={"x-tenant-id": tenant}) as client:
        yield client


def envelope_of(response: httpx.Response) -> dict[str, Any]:
    body: dict[str, Any] = response.json()
    assert set(body) == {"status", "data", "error", "message", "metadata"}, body
    assert body["metadata"]["api_version"] == "v1"
    assert body["metadata"]["request_id"] == response.headers["x-request-id"]
    return body


def ok(response: httpx.Response, status: int = 200) -> Any:
    assert response.status_code == status, response.text
    body = envelope_of(response)
    assert (body["status"], body["error"]) == ("success", None), body
    return body["data"]


def failed(response: httpx.Response, status: int, code: str, field: str | None = None) -> dict[str, Any]:
    assert response.status_code == status, response.text
    body = envelope_of(response)
    assert body["status"] == "error", body
    assert body["error"]["code"] == code, body
    if field is not None:
        assert body["error"]["field"] == field, body
    return body


def create_entry(api: httpx.Client, key: str, value: Any, **fields: Any) -> dict[str, Any]:
    response = api.post(META, json={"key": key, "value": value, **fields})
    entry: dict[str, Any] = ok(response, 201)
    assert response.headers["etag"] == '"1"'
    assert response.headers["location"] == f"{META}/{entry['id']}"
    return entry


# --- metadata --------------------------------------------------------------------------------------------------------


def test_a_metadata_entry_is_created_read_changed_and_its_history_kept(api: httpx.Client) -> None:
    entry = create_entry(api, "db.pool", {"size": 5}, namespace="svc", tags=["db"], description="pool")
    assert (entry["version"], entry["namespace"], entry["key"], entry["value"]) == (1, "svc", "db.pool", {"size": 5})
    assert entry["tenant"] == api.headers["x-tenant-id"]
    assert entry["created_by"] == f"api:{entry['tenant']}"

    got = api.get(f"{META}/{entry['id']}")
    assert ok(got) == entry
    assert got.headers["etag"] == '"1"'
    by_key = api.get(f"{META}/key/db.pool", params={"namespace": "svc"})
    assert ok(by_key)["id"] == entry["id"]
    assert by_key.headers["etag"] == '"1"'
    failed(api.get(f"{META}/key/db.pool"), 404, "not_found")  # the default namespace has none

    changed = api.put(
        f"{META}/{entry['id']}", json={"value": {"size": 8}}, headers={"if-match": '"1"', "x-actor": "alice"}
    )
    assert ok(changed)["version"] == 2
    assert changed.headers["etag"] == '"2"'
    assert ok(changed)["tags"] == ["db"]  # a field left out keeps its value
    assert ok(changed)["updated_by"] == "alice"
    history = ok(api.get(f"{META}/{entry['id']}/versions"))
    assert history["total"] == 2
    assert [(v["version"], v["change"], v["actor"]) for v in history["items"]] == [
        (2, "update", "alice"),
        (1, "create", f"api:{entry['tenant']}"),
    ]
    assert history["items"][0]["changed_fields"] == ["value"]

    rolled = ok(api.post(f"{META}/{entry['id']}/rollback/1", headers={"if-match": "2"}))
    assert (rolled["version"], rolled["value"]) == (3, {"size": 5})
    assert ok(api.get(f"{META}/{entry['id']}/versions", params={"limit": 1}))["items"][0]["change"] == "rollback"

    deleted = ok(api.delete(f"{META}/{entry['id']}", headers={"if-match": '"3"'}))
    assert (deleted["deleted"], deleted["version"]) == (True, 4)
    failed(api.get(f"{META}/{entry['id']}"), 404, "not_found")
    failed(api.put(f"{META}/{entry['id']}", json={"value": 1}), 404, "not_found")
    # Deleting frees the key: a new entry may take it, with a history of its own.
    again = create_entry(api, "db.pool", 1, namespace="svc")
    assert again["id"] != entry["id"]


def test_a_stale_expected_version_is_409_with_the_current_one_and_nothing_written(api: httpx.Client) -> None:
    entry = create_entry(api, "k", 1)
    ok(api.put(f"{META}/{entry['id']}", json={"value": 2, "expected_version": 1}))
    path = f"{META}/{entry['id']}"
    requests: list[tuple[str, str, dict[str, Any]]] = [
        ("PUT", path, {"json": {"value": 3}, "headers": {"if-match": '"1"'}}),
        ("PUT", path, {"json": {"value": 3, "expected_version": 1}}),
        ("PUT", path, {"json": {"value": 3}, "headers": {"if-match": 'W/"1"'}}),
        ("DELETE", path, {"headers": {"if-match": "1"}}),
        ("POST", f"{path}/rollback/1", {"headers": {"if-match": "1"}}),
    ]
    for method, url, sent in requests:
        response = api.request(method, url, **sent)
        body = failed(response, 409, "version_conflict")
        assert body["data"] == {"current_version": 2}
        assert response.headers["etag"] == '"2"'
    current = ok(api.get(f"{META}/{entry['id']}"))
    assert (current["version"], current["value"]) == (2, 2)
    assert ok(api.get(f"{META}/{entry['id']}/versions"))["total"] == 2
    # If-Match: * (or none) is unconditional.
    assert ok(api.put(f"{META}/{entry['id']}", json={"value": 4}, headers={"if-match": "*"}))["version"] == 3


def test_bad_input_is_422_naming_the_field(api: httpx.Client) -> None:
    entry = create_entry(api, "k", 1)
    failed(api.post(META, json={"value": 1}), 422, "validation_error", "key")
    failed(api.post(META, json={"key": "k2", "content_type": "xml"}), 422, "validation_error", "content_type")
    failed(api.post(META, json={"key": "k2", "colour": 1}), 422, "validation_error", "colour")
    failed(api.post(META, content=b"{not json"), 422, "validation_error", "body")
    failed(api.post(META, content=b"k=v", headers={"content-type": "text/plain"}), 415, "unsupported_media_type")
    failed(api.get(f"{META}/not-a-uuid"), 422, "validation_error", "id")
    failed(api.get(META, params={"limit": 0}), 422, "validation_error", "limit")
    failed(api.get(META, params={"offset": -1}), 422, "validation_error", "offset")
    failed(api.get(f"{META}/{entry['id']}/versions", params={"limit": "x"}), 422, "validation_error", "limit")
    failed(api.post(f"{META}/{entry['id']}/rollback/0"), 422, "validation_error", "version")
    failed(api.put(f"{META}/{entry['id']}", json={"value": 2}, headers={"if-match": "v1"}), 422, "validation_error")
    failed(
        api.put(f"{META}/{entry['id']}", json={"value": 2, "expected_version": 1}, headers={"if-match": '"2"'}),
        422,
        "validation_error",
        "expected_version",
    )
    failed(api.get(META, headers={"x-tenant-id": "no spaces"}), 422, "validation_error", "x-tenant-id")
    failed(api.post(META, json={"key": "k2"}, headers={"x-actor": "a\tb"}), 422, "validation_error", "x-actor")
    # The key of another live entry of the namespace: a conflict, not bad input.
    failed(api.post(META, json={"key": "k", "value": 2}), 409, "conflict")
    assert ok(api.get(f"{META}/{entry['id']}"))["version"] == 1  # nothing above changed it


def test_lists_page_and_filter_by_namespace_and_tag(api: httpx.Client) -> None:
    for index in range(5):
        create_entry(api, f"k{index}", index, namespace="a" if index % 2 else "b", tags=["odd"] if index % 2 else [])
    page = ok(api.get(META, params={"limit": 2}))
    assert (page["total"], page["limit"], page["offset"], len(page["items"])) == (5, 2, 0, 2)
    rest = ok(api.get(META, params={"limit": 2, "offset": 4}))
    assert (rest["total"], len(rest["items"])) == (5, 1)
    seen = [i["key"] for i in ok(api.get(META, params={"limit": 100}))["items"]]
    assert sorted(seen) == [f"k{i}" for i in range(5)]
    assert {i["key"] for i in ok(api.get(META, params={"namespace": "a"}))["items"]} == {"k1", "k3"}
    assert {i["key"] for i in ok(api.get(META, params={"tag": "odd"}))["items"]} == {"k1", "k3"}
    assert ok(api.get(META, params={"namespace": "b", "tag": "odd"}))["total"] == 0


# --- tenants ---------------------------------------------------------------------------------------------------------


def test_a_key_sees_only_its_tenants_entities_and_another_tenants_id_is_404(tmp_path: Path) -> None:
    keys = {"api_keys": f"{KEY_A}=tenant-a,{KEY_B}=tenant-b"}
    with live_server(tmp_path, api_key="old-key", settings=keys) as live:
        a = httpx.Client(base_url=live.url, timeout=30, headers={"authorization": f"Bearer {KEY_A}"})
        b = httpx.Client(base_url=live.url, timeout=30, headers={"authorization": f"Bearer {KEY_B}"})
        old = httpx.Client(base_url=live.url, timeout=30, headers={"authorization": "Bearer old-key"})
        with a, b, old, httpx.Client(base_url=live.url, timeout=30) as anonymous:
            secret = "the value only tenant a may read"
            # X-Tenant-Id cannot pick another tenant when keys decide.
            entry = ok(a.post(META, json={"key": "k", "value": secret}, headers={"x-tenant-id": "tenant-b"}), 201)
            assert entry["tenant"] == "tenant-a"
            flag = ok(a.post(FLAGS, json={"name": "beta", "enabled": True, "default_value": secret}), 201)
            config = ok(a.post(CONFIGS, json={"service_id": "s", "name": "n", "environment": "production"}), 201)
            for path in (f"{META}/{entry['id']}", f"{FLAGS}/{flag['id']}", f"{CONFIGS}/{config['id']}"):
                for response in (
                    b.get(path),
                    b.put(path, json={"description": "mine now"}),
                    b.delete(path),
                    b.get(f"{path}/versions"),
                    b.post(f"{path}/rollback/1"),
                ):
                    body = failed(response, 404, "not_found")
                    assert secret not in response.text
                    assert body["data"] is None
                assert ok(a.get(path))["version"] == 1  # nothing b sent changed it
            failed(b.get(f"{META}/key/k"), 404, "not_found")
            failed(b.get(f"{FLAGS}/name/beta"), 404, "not_found")
            assert ok(b.get(META))["total"] == 0
            assert ok(b.get(FLAGS))["total"] == 0
            assert ok(b.get(f"{CONFIGS}/service/s"))["items"] == []
            unknown = ok(b.post(f"{FLAGS}/evaluate", json={"flag": "beta", "context": {"user_id": "u"}}))
            assert (unknown["reason"], unknown["error_code"], unknown["value"]) == ("ERROR", "FLAG_NOT_FOUND", None)
            assert ok(a.post(f"{FLAGS}/evaluate", json={"flag": "beta"}))["value"] == secret
            # The single ONEX_API_KEY is tenant "default"; no key, or a wrong one, is 401.
            assert ok(old.post(META, json={"key": "k", "value": 1}), 201)["tenant"] == "default"
            failed(anonymous.get(META), 401, "unauthorized")
            failed(anonymous.get(META, headers={"authorization": "Bearer nope"}), 401, "unauthorized")
            assert ok(anonymous.get("/health/live")) == {"status": "live"}  # the probes need no key


def test_without_keys_the_tenant_header_separates_tenants(api: httpx.Client, server: LiveServer) -> None:
    entry = create_entry(api, "k", "mine")
    with httpx.Client(base_url=server.url, timeout=30, headers={"x-tenant-id": "someone-else"}) as other:
        failed(other.get(f"{META}/{entry['id']}"), 404, "not_found")
    with httpx.Client(base_url=server.url, timeout=30) as default:
        failed(default.get(f"{META}/{entry['id']}"), 404, "not_found")


# --- feature flags ---------------------------------------------------------------------------------------------------


def test_a_flag_is_created_enabled_targeted_rolled_out_and_evaluated(api: httpx.Client) -> None:
    body = {
        "name": "new-checkout",
        "default_value": "old",
        "variants": {"on": "new", "off": "old"},
        "rules": [{"conditions": ["country equals NL"], "variant": "on"}],
        "tags": ["checkout"],
    }
    flag = ok(api.post(FLAGS, json=body), 201)
    assert (flag["state"], flag["enabled"], flag["version"]) == ("draft", False, 1)
    assert ok(api.get(f"{FLAGS}/name/new-checkout"))["id"] == flag["id"]

    def evaluate(context: dict[str, Any]) -> dict[str, Any]:
        answer: dict[str, Any] = ok(api.post(f"{FLAGS}/evaluate", json={"flag": "new-checkout", "context": context}))
        assert set(answer) == {"flag", "value", "variant", "reason", "error_code", "error_message"}
        return answer

    assert evaluate({"country": "NL"})["reason"] == "DISABLED"
    enabled = api.post(f"{FLAGS}/{flag['id']}/enable", headers={"if-match": '"1"'})
    assert (ok(enabled)["state"], ok(enabled)["enabled"], enabled.headers["etag"]) == ("active", True, '"2"')
    matched = evaluate({"country": "NL", "user_id": "u1"})
    assert (matched["value"], matched["variant"], matched["reason"]) == ("new", "on", "TARGETING_MATCH")
    assert evaluate({"country": "DE", "user_id": "u1"})["reason"] in ("DEFAULT", "STATIC")

    rolled = ok(api.post(f"{FLAGS}/{flag['id']}/rollout", json={"percentage": 100, "expected_version": 2}))
    assert (rolled["version"], rolled["rollout"]["percentage"]) == (3, 100)
    everyone = evaluate({"country": "DE", "user_id": "u2"})
    assert everyone["reason"] == "SPLIT"
    failed(api.post(f"{FLAGS}/{flag['id']}/rollout", json={"percentage": 101}), 422, "validation_error", "percentage")
    stale = api.post(f"{FLAGS}/{flag['id']}/rollout", json={"percentage": 5, "expected_version": 2})
    failed(stale, 409, "version_conflict")

    ok(api.post(f"{FLAGS}/{flag['id']}/disable"))
    assert evaluate({"country": "NL", "user_id": "u1"})["reason"] == "DISABLED"
    page = ok(api.get(FLAGS, params={"tag": "checkout"}))
    assert [f["name"] for f in page["items"]] == ["new-checkout"]
    assert ok(api.get(FLAGS, params={"tag": "other"}))["total"] == 0
    history = ok(api.get(f"{FLAGS}/{flag['id']}/versions"))
    assert [v["change"] for v in history["items"]] == ["disable", "rollout", "enable", "create"]
    failed(api.post(FLAGS, json={"name": "bad name!"}), 422, "validation_error", "name")
    unknown_variant = {"name": "x", "rules": [{"conditions": ["a exists"], "variant": "nope"}]}
    failed(api.post(FLAGS, json=unknown_variant), 422, "validation_error")


def test_a_rule_whose_pattern_re2_cannot_run_is_refused_with_422_naming_it(api: httpx.Client) -> None:
    lookahead = {"name": "staff", "rules": [{"conditions": ["email matches ^(?!guest).*@corp$"]}]}
    body = failed(api.post(FLAGS, json=lookahead), 422, "validation_error", "rules.0.conditions.0")
    assert "guard 'email matches ^(?!guest).*@corp$'" in body["message"], body
    assert "is not a regular expression RE2 can run" in body["message"], body
    failed(api.get(f"{FLAGS}/name/staff"), 404, "not_found")  # nothing was stored


@pytest.mark.timeout(60)  # with Python's re the server would hold this evaluation for hours: failing is a timeout
def test_a_catastrophic_rule_written_over_http_is_evaluated_at_once(tmp_path: Path) -> None:
    # The real CLI in a subprocess: a server thread of this process spinning in re would hold the interpreter lock,
    # and neither the client's timeout nor pytest's could fire.
    body = {"name": "redos", "enabled": True, "default_value": False, "rules": [{"conditions": ["a matches (a+)+$"]}]}
    with onex_run_http(tmp_path) as cli, httpx.Client(base_url=cli.url, timeout=10) as api:
        ok(api.post(FLAGS, json=body), 201)
        hostile = ok(api.post(f"{FLAGS}/evaluate", json={"flag": "redos", "context": {"a": "a" * 40 + "!"}}))
        assert (hostile["value"], hostile["reason"]) == (False, "DEFAULT")
        plain = ok(api.post(f"{FLAGS}/evaluate", json={"flag": "redos", "context": {"a": "a" * 40}}))
        assert (plain["value"], plain["reason"]) == (True, "TARGETING_MATCH")


def test_bulk_evaluation_answers_every_flag_named_or_all(api: httpx.Client) -> None:
    qa_off = {"qa": {"enabled": False}}
    for name, enabled in (("a", True), ("b", False)):
        body = {"name": name, "enabled": enabled, "default_value": name, "environment_overrides": qa_off}
        ok(api.post(FLAGS, json=body), 201)
    every = ok(api.post(f"{FLAGS}/evaluate/bulk", json={"context": {"user_id": "u"}}))["flags"]
    assert set(every) == {"a", "b"}
    assert (every["a"]["reason"], every["b"]["reason"]) == ("STATIC", "DISABLED")
    in_qa = ok(api.post(f"{FLAGS}/evaluate/bulk", json={"context": {}, "environment": "qa"}))["flags"]
    assert (in_qa["a"]["reason"], in_qa["b"]["reason"]) == ("DISABLED", "DISABLED")
    assert ok(api.post(f"{FLAGS}/evaluate", json={"flag": "a", "environment": "qa"}))["reason"] == "DISABLED"
    named = ok(api.post(f"{FLAGS}/evaluate/bulk", json={"flags": ["a", "nope"], "context": {}}))["flags"]
    assert set(named) == {"a", "nope"}
    assert (named["nope"]["reason"], named["nope"]["error_code"]) == ("ERROR", "FLAG_NOT_FOUND")
    failed(api.post(f"{FLAGS}/evaluate/bulk", json={"flags": "a"}), 422, "validation_error", "flags")
    moon = {"flag": "a", "environment": "the moon"}
    failed(api.post(f"{FLAGS}/evaluate", json=moon), 422, "validation_error", "environment")


# --- configurations --------------------------------------------------------------------------------------------------


def test_configurations_are_checked_against_their_schema_merged_and_rolled_back(api: httpx.Client) -> None:
    schema = {
        "type": "object",
        "properties": {"pool": {"type": "integer", "minimum": 1}, "password": {"x-secret": True}},
    }
    base = {"service_id": "billing", "environment": "production", "schema": schema}
    first = ok(api.post(CONFIGS, json={**base, "name": "base", "values": {"pool": 5}}), 201)
    assert (first["schema"], first["state"]) == (schema, "active")
    refused = failed(api.post(CONFIGS, json={**base, "name": "bad", "values": {"pool": 0}}), 422, "validation_error")
    assert "pool" in refused["message"]
    secret = failed(
        api.post(CONFIGS, json={**base, "name": "leak", "values": {"password": "hunter2"}}), 422, "validation_error"
    )
    assert "password" in secret["message"]
    assert "hunter2" not in secret["message"]
    ref = {"$secret": "env:BILLING_DB_PASSWORD"}
    second = ok(api.post(CONFIGS, json={**base, "name": "override", "values": {"pool": 9, "password": ref}}), 201)

    effective = ok(api.get(f"{CONFIGS}/effective/billing", params={"environment": "production"}))
    assert effective["values"] == {"pool": 9, "password": ref}  # the reference, never the secret
    assert [s["name"] for s in effective["sources"]] == ["base", "override"]
    failed(api.get(f"{CONFIGS}/effective/billing"), 422, "validation_error", "environment")

    ok(api.post(f"{CONFIGS}/{second['id']}/deactivate", headers={"if-match": '"1"'}))
    again = failed(api.post(f"{CONFIGS}/{second['id']}/deactivate"), 409, "invalid_state")
    assert "inactive" in again["message"]  # the FSM names the state it refused the trigger in
    assert ok(api.get(f"{CONFIGS}/effective/billing", params={"environment": "production"}))["values"] == {"pool": 5}
    listed = ok(api.get(f"{CONFIGS}/service/billing", params={"environment": "production"}))
    assert {c["name"] for c in listed["items"]} == {"base", "override"}
    assert ok(api.get(f"{CONFIGS}/service/billing", params={"environment": "staging"}))["items"] == []

    changed = ok(api.put(f"{CONFIGS}/{first['id']}", json={"values": {"pool": 7}}, headers={"if-match": '"1"'}))
    assert changed["version"] == 2
    failed(api.put(f"{CONFIGS}/{first['id']}", json={"values": {"pool": -1}}), 422, "validation_error")
    back = ok(api.post(f"{CONFIGS}/{first['id']}/rollback/1"))
    assert (back["version"], back["values"]) == (3, {"pool": 5})
    assert [v["change"] for v in ok(api.get(f"{CONFIGS}/{first['id']}/versions"))["items"]] == [
        "rollback",
        "update",
        "create",
    ]
    ok(api.post(f"{CONFIGS}/{second['id']}/activate"))
    assert ok(api.delete(f"{CONFIGS}/{second['id']}"))["deleted"] is True
    failed(api.get(f"{CONFIGS}/{second['id']}"), 404, "not_found")


# --- concurrency -----------------------------------------------------------------------------------------------------


def test_50_concurrent_updates_with_the_same_expected_version_one_wins(api: httpx.Client, server: LiveServer) -> None:
    entry = create_entry(api, "contended", 0)

    async def race() -> list[httpx.Response]:
        limits = httpx.Limits(max_connections=50)
        async with httpx.AsyncClient(base_url=server.url, timeout=60, limits=limits, headers=api.headers) as client:
            # Every request is sent before any is answered: all 50 connections are opened first.
            return list(
                await asyncio.gather(
                    *(
                        client.put(f"{META}/{entry['id']}", json={"value": n}, headers={"if-match": '"1"'})
                        for n in range(1, 51)
                    )
                )
            )

    responses = asyncio.run(race())
    statuses = sorted(r.status_code for r in responses)
    assert statuses == [200] + [409] * 49, statuses
    (winner,) = [r for r in responses if r.status_code == 200]
    for response in responses:
        if response.status_code == 409:
            assert envelope_of(response)["data"] == {"current_version": 2}
    history = ok(api.get(f"{META}/{entry['id']}/versions"))
    assert history["total"] == 2
    assert history["items"][0]["snapshot"]["value"] == ok(winner)["value"]
    assert ok(api.get(f"{META}/{entry['id']}"))["value"] == ok(winner)["value"]


# --- the probes ------------------------------------------------------------------------------------------------------


def test_the_probes_at_the_root(api: httpx.Client) -> None:
    health = ok(api.get("/health"))
    assert health == {
        "status": "ok",
        "bus": {"status": "ok", "state": "running"},
        "store": {"status": "ok"},
        "metastore": {"status": "ok"},
    }
    assert ok(api.get("/health/live")) == {"status": "live"}
    assert ok(api.get("/health/ready")) == {"status": "ready"}


# --- a project without the metastore -------------------------------------------------------------------------------


def test_a_project_without_the_metastore_contract_answers_503_on_its_routes(tmp_path: Path) -> None:
    """A project of its own (no contracts/effects/metastore_effect.yaml) still serves the stamping API."""
    project = tmp_path / "project"
    for folder in ("contracts", "subcontracts"):
        shutil.copytree(ROOT / folder, project / folder)
    (project / "contracts" / "effects" / "metastore_effect.yaml").unlink()
    (project / "nodes").symlink_to(ROOT / "nodes")
    settings = Settings.load(environ={}, root=str(project), store=f"sqlite:///{tmp_path}/onex.db")
    runtime = Runtime(settings, nodes=[])
    client = StampClient(runtime.bus, runtime.contracts, settings, keep_stamps=True)
    app = create_app(runtime, client, settings)

    async def ask() -> list[httpx.Response]:
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://gateway") as api:
            return [await api.post(META, json={"key": "k"}), await api.get("/health/live")]

    absent, live = asyncio.run(ask())
    body = failed(absent, 503, "metastore_unavailable")
    assert "metastore_effect.yaml" in body["message"]
    assert ok(live) == {"status": "live"}


def test_a_store_that_cannot_answer_is_503_saying_when_to_retry(tmp_path: Path) -> None:
    with live_server(tmp_path) as live, httpx.Client(base_url=live.url, timeout=30) as api:
        ok(api.post(META, json={"key": "before", "value": 1}), 201)
        live.call(live.runtime.store.aclose())  # closed: every call is a StoreError
        try:
            refused = api.post(META, json={"key": "after", "value": 2})
        finally:
            live.call(live.runtime.store.open())

    failed(refused, 503, "store_unavailable")
    assert refused.headers["retry-after"] == "5"
