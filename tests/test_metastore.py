"""The metastore's service rules, on a SQLite store (the storage guarantees are in test_metastore_conformance.py):
configuration schemas and secrets, the effective configuration, the flag and configuration lifecycles, flag
evaluation through the cache and its invalidation over the bus, and the effect node that hosts it all.
"""

from __future__ import annotations

import asyncio
import re
import subprocess
import sys
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import anyio
import pytest
from onex.bus import MemoryBus
from onex.clock import ManualClock
from onex.envelope import OnexEnvelopeV1
from onex.exceptions import MetastoreInvalid, TransitionError, VersionConflict
from onex.metastore import (
    EVENTS,
    ConfigCreate,
    ConfigUpdate,
    FlagCreate,
    FlagUpdate,
    Kind,
    MetadataCreate,
    Metastore,
    ModelMetastoreChanged,
    Reason,
    Rollout,
    bucket,
)
from onex.store import Store
from onex.stores import open_store
from onex.testing import Harness

from nodes.metastore_effect.v1_0_0.node import NodeMetastoreEffect

pytestmark = pytest.mark.anyio

ROOT = Path(__file__).resolve().parents[1]
T = "acme"
START = datetime(2030, 1, 1, tzinfo=UTC)
DB_SCHEMA: dict[str, Any] = {
    "type": "object",
    "properties": {
        "host": {"type": "string"},
        "port": {"type": "integer", "minimum": 1},
        "db": {
            "type": "object",
            "properties": {
                "user": {"type": "string"},
                "password": {"type": "string", "x-secret": True},
                "token": {"type": "string", "writeOnly": True},
            },
        },
    },
    "additionalProperties": False,
}
SECRET_REASON = 'a secret: give a reference ({"$secret": "env:NAME"}), never the value'


@pytest.fixture
async def store(tmp_path: Path) -> AsyncIterator[Store]:
    async with open_store(f"sqlite:///{tmp_path / 'onex.db'}") as opened:
        await opened.upgrade()
        yield opened


@pytest.fixture
async def bus() -> AsyncIterator[MemoryBus]:
    async with MemoryBus() as started:
        yield started


@pytest.fixture
def clock() -> ManualClock:
    return ManualClock(start=START.timestamp())


@pytest.fixture
async def metastore(store: Store, bus: MemoryBus, clock: ManualClock) -> AsyncIterator[Metastore]:
    async with Metastore(store, bus, clock=clock) as started:
        yield started


def config(name: str = "db", environment: str = "production", **fields: Any) -> ConfigCreate:
    return ConfigCreate.model_validate(
        {"service_id": "api", "name": name, "environment": environment, "schema": DB_SCHEMA, **fields}
    )


# --- configurations: schema and secrets ---------------------------------------------------------------------------


async def test_values_the_schema_refuses_are_refused_naming_the_field(metastore: Metastore) -> None:
    with pytest.raises(MetastoreInvalid) as raised:
        await metastore.create_config(T, config(values={"host": "h", "port": 0}), actor="ada")
    assert raised.value.path == "values.port"
    assert "minimum" in raised.value.reason

    with pytest.raises(MetastoreInvalid) as unknown:
        await metastore.create_config(T, config(values={"hots": "typo"}), actor="ada")
    assert "hots" in str(unknown.value)

    with pytest.raises(MetastoreInvalid) as schema:
        await metastore.create_config(T, config(schema={"type": "objekt"}), actor="ada")
    assert schema.value.path.startswith("schema")

    created = await metastore.create_config(T, config(values={"port": 5432}), actor="ada")
    with pytest.raises(MetastoreInvalid, match=r"values\.port"):
        await metastore.update_config(T, created.id, ConfigUpdate(values={"port": "x"}), expected_version=1, actor="a")
    assert (await metastore.get(Kind.CONFIG, T, created.id)).version == 1  # nothing written


@pytest.mark.parametrize("field", ["password", "token"])  # "x-secret": true and "writeOnly": true
async def test_a_plain_value_in_a_secret_field_is_refused_naming_the_field(metastore: Metastore, field: str) -> None:
    with pytest.raises(MetastoreInvalid) as raised:
        await metastore.create_config(T, config(values={"db": {field: "hunter2"}}), actor="ada")

    assert raised.value.path == f"values.db.{field}"
    assert "hunter2" not in str(raised.value)
    assert await metastore.configs_for_service(T, "api") == []


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ({"type": "string", "x-secret": True, "minLength": 20}, "hunter2"),
        ({"type": "string", "writeOnly": True}, 987654),
        ({"x-secret": True, "allOf": [{"enum": ["a", "b"]}]}, "hunter2"),  # the keyword in a subschema
        ({"anyOf": [{"type": "integer"}, {"x-secret": True, "minLength": 20}]}, "hunter2"),
    ],
)
async def test_no_error_message_quotes_a_plain_value_in_a_secret_field(
    metastore: Metastore, field: dict[str, Any], value: Any
) -> None:
    schema = {"type": "object", "properties": {"pw": field}, "maxProperties": 1}  # a message about them all, too
    for values in ({"pw": value}, {"pw": value, "other": 1}):
        with pytest.raises(MetastoreInvalid) as raised:
            await metastore.create_config(T, config(values=values, schema=schema), actor="ada")

        assert str(value) not in str(raised.value)
        assert (raised.value.path, raised.value.reason) == ("values.pw", SECRET_REASON)


async def test_a_schema_ref_that_points_nowhere_is_refused_naming_it(metastore: Metastore) -> None:
    schema = {"properties": {"db": {"$ref": "#/$defs/databse"}}, "$defs": {"database": {"type": "object"}}}
    await metastore.create_config(T, config(schema=schema), actor="ada")  # no value follows the $ref yet

    with pytest.raises(MetastoreInvalid) as raised:
        await metastore.create_config(T, config("other", values={"db": {}}, schema=schema), actor="ada")

    assert raised.value.path == "schema"
    assert "'#/$defs/databse'" in raised.value.reason


async def test_secret_references_are_kept_and_resolved_only_when_asked(
    metastore: Metastore, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("ONEX_TEST_DB_PASSWORD", "s3cret")
    values = {"host": "db", "db": {"password": {"$secret": "env:ONEX_TEST_DB_PASSWORD"}}}
    await metastore.create_config(T, config(values=values), actor="ada")

    kept = await metastore.effective_config(T, "api", "production")
    resolved = await metastore.effective_config(T, "api", "production", resolve_secrets=True)

    assert kept.values == values
    assert not kept.secrets_resolved
    assert resolved.values == {"host": "db", "db": {"password": "s3cret"}}
    assert resolved.secrets_resolved
    monkeypatch.delenv("ONEX_TEST_DB_PASSWORD")
    with pytest.raises(MetastoreInvalid, match=r"values\.db\.password"):
        await metastore.effective_config(T, "api", "production", resolve_secrets=True)


@pytest.mark.parametrize("reference", ["vault:db/password", "env:", "ONEX_X", 42])
async def test_a_secret_reference_to_an_unlisted_resolver_is_refused(metastore: Metastore, reference: Any) -> None:
    with pytest.raises(MetastoreInvalid) as raised:
        await metastore.create_config(T, config(values={"db": {"password": {"$secret": reference}}}), actor="ada")
    assert raised.value.path == "values.db.password"
    assert "env" in raised.value.reason


# --- the effective configuration ----------------------------------------------------------------------------------


async def test_the_effective_configuration_merges_what_is_active_and_in_effect_now(
    metastore: Metastore, clock: ManualClock
) -> None:
    base = await metastore.create_config(
        T, config("base", values={"host": "db1", "port": 5432, "db": {"user": "app"}}), actor="ada"
    )
    window = await metastore.create_config(
        T,
        config(
            "maintenance",
            values={"host": "db2", "db": {"user": "ops"}},
            effective_from=START + timedelta(hours=1),
            effective_until=START + timedelta(hours=2),
        ),
        actor="ada",
    )
    await metastore.create_config(T, config("staging-only", environment="staging", values={"port": 1}), actor="ada")
    off = await metastore.create_config(T, config("off", values={"port": 9}, active=False), actor="ada")

    now = await metastore.effective_config(T, "api", "production")
    assert now.values == {"host": "db1", "port": 5432, "db": {"user": "app"}}
    assert [s.name for s in now.sources] == ["base"]

    await clock.advance(3600)  # the maintenance window opens: it overrides the standing configuration, key by key
    during = await metastore.effective_config(T, "api", "production")
    assert during.values == {"host": "db2", "port": 5432, "db": {"user": "ops"}}
    assert [(s.id, s.version) for s in during.sources] == [(base.id, 1), (window.id, 1)]

    await clock.advance(3600)  # ... and closes (effective_until is exclusive)
    assert (await metastore.effective_config(T, "api", "production")).values["host"] == "db1"

    await metastore.activate_config(T, off.id, expected_version=1, actor="ada")
    assert (await metastore.effective_config(T, "api", "production")).values["port"] == 9
    assert (await metastore.effective_config(T, "api", "staging")).values == {"port": 1}
    assert (await metastore.effective_config(T, "api", "development")).values == {}
    with pytest.raises(MetastoreInvalid, match="environment"):
        await metastore.effective_config(T, "api", "prod")


async def test_effective_times_without_a_zone_are_utc(metastore: Metastore, clock: ManualClock) -> None:
    await metastore.create_config(T, config("base", values={"port": 1}), actor="ada")
    naive = START.replace(tzinfo=None)
    window = config("window", values={"port": 2}, effective_from=(naive + timedelta(hours=1)).isoformat())
    created = await metastore.create_config(T, window, actor="ada")
    changed = await metastore.update_config(
        T, created.id, ConfigUpdate(effective_until=naive + timedelta(hours=2)), expected_version=1, actor="ada"
    )

    assert (await metastore.effective_config(T, "api", "production")).values == {"port": 1}
    await clock.advance(3600)
    assert (await metastore.effective_config(T, "api", "production")).values == {"port": 2}
    await clock.advance(3600)
    assert (await metastore.effective_config(T, "api", "production")).values == {"port": 1}
    assert (changed.effective_from, changed.effective_until) == (START + timedelta(hours=1), START + timedelta(hours=2))


# --- lifecycles ---------------------------------------------------------------------------------------------------


async def test_a_flag_goes_draft_active_archived_and_refuses_illegal_moves(metastore: Metastore) -> None:
    flag = await metastore.create_flag(T, FlagCreate(name="new-ui"), actor="ada")
    assert (flag.state, flag.enabled) == ("draft", False)

    disabled = await metastore.disable_flag(T, flag.id, expected_version=1, actor="ada")
    assert disabled.state == "draft"
    enabled = await metastore.enable_flag(T, flag.id, expected_version=2, actor="ada")
    assert (enabled.state, enabled.enabled) == ("active", True)
    off = await metastore.update_flag(T, flag.id, FlagUpdate(enabled=False), expected_version=3, actor="ada")
    assert (off.state, off.enabled) == ("active", False)
    archived = await metastore.archive_flag(T, flag.id, expected_version=4, actor="ada")
    assert (archived.state, archived.enabled) == ("archived", False)

    with pytest.raises(TransitionError) as raised:
        await metastore.enable_flag(T, flag.id, expected_version=5, actor="ada")
    assert raised.value.state == "archived"
    assert "archived" in str(raised.value)
    with pytest.raises(TransitionError, match="archived"):
        await metastore.set_rollout(T, flag.id, 50, expected_version=5, actor="ada")
    with pytest.raises(TransitionError, match="archived"):
        await metastore.update_flag(T, flag.id, FlagUpdate(description="x"), expected_version=None, actor="ada")
    history = await metastore.versions(Kind.FLAG, T, flag.id)
    assert [v.change for v in history.items] == ["archive", "update", "enable", "disable", "create"]
    assert (await metastore.evaluate(T, "new-ui", {"user_id": "u"})).reason == Reason.DISABLED


async def test_an_archived_flag_is_disabled_whatever_its_overrides_say(metastore: Metastore) -> None:
    on = {"enabled": True}
    by_tenant = FlagCreate(name="by-tenant", enabled=True, tenant_overrides={T: on})
    by_environment = FlagCreate(name="by-environment", enabled=True, environment_overrides={"production": on})
    for body in (by_tenant, by_environment):
        flag = await metastore.create_flag(T, body, actor="ada")
        assert (await metastore.evaluate(T, body.name, {}, environment="production")).reason == Reason.STATIC

        await metastore.archive_flag(T, flag.id, expected_version=1, actor="ada")

        for environment in (None, "production"):
            answer = await metastore.evaluate(T, body.name, {}, environment=environment)
            assert (answer.value, answer.reason) == (False, Reason.DISABLED), (body.name, environment)


async def test_a_flag_created_enabled_is_active_at_once(metastore: Metastore) -> None:
    flag = await metastore.create_flag(T, FlagCreate(name="on", enabled=True), actor="ada")
    assert flag.state == "active"


async def test_a_configuration_goes_active_inactive_and_refuses_repeating_a_move(metastore: Metastore) -> None:
    created = await metastore.create_config(T, config(), actor="ada")
    assert (created.state, created.active) == ("active", True)
    with pytest.raises(TransitionError) as raised:
        await metastore.activate_config(T, created.id, expected_version=1, actor="ada")
    assert raised.value.state == "active"

    inactive = await metastore.deactivate_config(T, created.id, expected_version=1, actor="ada")
    assert (inactive.state, inactive.active, inactive.version) == ("inactive", False, 2)
    with pytest.raises(TransitionError, match="inactive"):
        await metastore.deactivate_config(T, created.id, expected_version=2, actor="ada")
    with pytest.raises(VersionConflict):
        await metastore.activate_config(T, created.id, expected_version=1, actor="ada")


async def test_set_rollout_validates_the_percentage_and_keeps_stickiness(metastore: Metastore) -> None:
    flag = await metastore.create_flag(
        T, FlagCreate(name="split", enabled=True, rollout=Rollout(percentage=10, stickiness="org")), actor="ada"
    )
    raised = await metastore.set_rollout(T, flag.id, 30, expected_version=1, actor="ada")
    assert raised.rollout == Rollout(percentage=30, stickiness="org")
    with pytest.raises(MetastoreInvalid, match=r"rollout\.percentage"):
        await metastore.set_rollout(T, flag.id, 101, expected_version=2, actor="ada")


# --- evaluation, the cache and its invalidation -------------------------------------------------------------------


async def test_evaluate_answers_for_missing_and_present_flags(metastore: Metastore) -> None:
    missing = await metastore.evaluate(T, "nope", {"user_id": "u1"})
    assert (missing.reason, missing.error_code) == (Reason.ERROR, "FLAG_NOT_FOUND")

    await metastore.create_flag(
        T, FlagCreate(name="color", enabled=True, default_value="red", variants={"b": "blue"}), actor="ada"
    )
    flag = await metastore.flag_by_name(T, "color")
    await metastore.update_flag(
        T,
        flag.id,
        FlagUpdate.model_validate({"rules": [{"conditions": ["plan equals pro"], "variant": "b"}]}),
        expected_version=1,
        actor="ada",
    )

    results = await metastore.evaluate_bulk(T, None, {"user_id": "u1", "plan": "pro"})
    assert {n: (r.value, r.reason) for n, r in results.items()} == {"color": ("blue", Reason.TARGETING_MATCH)}


async def test_a_change_in_one_instance_invalidates_the_other_through_the_bus(
    store: Store, bus: MemoryBus, metastore: Metastore
) -> None:
    flag = await metastore.create_flag(T, FlagCreate(name="checkout"), actor="ada")
    async with Metastore(store, bus) as other:
        heard: asyncio.Queue[ModelMetastoreChanged] = asyncio.Queue()
        other.listeners.append(heard.put_nowait)
        assert (await other.evaluate(T, "checkout", {"user_id": "u"})).reason == Reason.DISABLED
        cached = other.evaluate_cached(T, "checkout", {"user_id": "u"})
        assert cached is not None
        assert cached.reason == Reason.DISABLED

        await metastore.enable_flag(T, flag.id, expected_version=1, actor="ada")

        with anyio.fail_after(10):
            change = await heard.get()
        assert (change.tenant, change.kind, change.id, change.key_or_name, change.version, change.change) == (
            T,
            Kind.FLAG,
            flag.id,
            "checkout",
            2,
            "enable",
        )
        assert other.evaluate_cached(T, "checkout", {"user_id": "u"}) is None  # dropped
        assert (await other.evaluate(T, "checkout", {"user_id": "u"})).reason == Reason.STATIC


async def test_instances_made_in_the_same_millisecond_each_hear_every_change(
    store: Store, bus: MemoryBus, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Each instance has a consumer group of its own. Its name was a time-ordered id's first twelve digits, the
    millisecond alone: two gateways started together shared a group, split its partitions, and each missed the
    other's half of the changes (a cache stale until its TTL)."""
    monkeypatch.setattr("onex.envelope._time_ns", lambda: 1_800_000_000_000_000_000)
    async with Metastore(store, bus) as first, Metastore(store, bus) as second:
        heard: list[list[uuid.UUID]] = [[], []]
        first.listeners.append(lambda change: heard[0].append(change.id))
        second.listeners.append(lambda change: heard[1].append(change.id))
        flags = [(await first.create_flag(T, FlagCreate(name=f"f{i}"), actor="ada")).id for i in range(16)]
        await bus.join()
        assert [sorted(ids) for ids in heard] == [sorted(flags), sorted(flags)]


async def test_the_writing_instance_drops_its_own_cache_at_once(metastore: Metastore) -> None:
    flag = await metastore.create_flag(T, FlagCreate(name="fast"), actor="ada")
    assert (await metastore.evaluate(T, "fast", {})).reason == Reason.DISABLED

    await metastore.update_flag(T, flag.id, FlagUpdate(name="renamed"), expected_version=1, actor="ada")

    assert metastore.evaluate_cached(T, "fast", {}) is None
    assert (await metastore.evaluate(T, "fast", {})).error_code == "FLAG_NOT_FOUND"


async def test_a_cached_flag_expires_after_its_ttl(metastore: Metastore, clock: ManualClock) -> None:
    await metastore.create_flag(T, FlagCreate(name="ttl"), actor="ada")
    await metastore.evaluate(T, "ttl", {})
    assert metastore.evaluate_cached(T, "ttl", {}) is not None

    await clock.advance(metastore.flag_cache_ttl_s)

    assert metastore.evaluate_cached(T, "ttl", {}) is None


async def test_changes_are_published_after_commit_with_the_contracts_event_names(
    metastore: Metastore, bus: MemoryBus
) -> None:
    seen: asyncio.Queue[OnexEnvelopeV1] = asyncio.Queue()

    async def record(envelope: OnexEnvelopeV1) -> None:
        await seen.put(envelope)

    topics = [metastore._publications[name].topic for name in EVENTS.values()]
    subscription = await bus.subscribe(topics, "test.recorder", handler=record, start="latest")
    try:
        entry = await metastore.create_metadata(T, MetadataCreate(namespace="ns", key="k"), actor="ada")
        await metastore.create_config(T, config(), actor="ada")
        events = []
        with anyio.fail_after(10):
            for _ in range(2):
                events.append(await seen.get())
    finally:
        await subscription.aclose()
    by_type = {e.event_type: e for e in events}
    assert set(by_type) == {"METADATA_CHANGED", "CONFIG_CHANGED"}
    metadata = by_type["METADATA_CHANGED"]
    assert metadata.partition_key == str(entry.id)
    assert metadata.payload == ModelMetastoreChanged(
        tenant=T, kind=Kind.METADATA, id=entry.id, key_or_name="ns/k", version=1, change="create"
    )
    assert by_type["CONFIG_CHANGED"].payload["key_or_name"] == "api/db/production"


# --- the effect node ----------------------------------------------------------------------------------------------


async def test_the_effect_node_hosts_a_metastore_whose_changes_reach_the_bus(tmp_path: Path) -> None:
    async with Harness(["metastore_effect"], root=ROOT, store_url=f"sqlite:///{tmp_path / 'h.db'}") as harness:
        node = harness.runtime.node("metastore_effect")
        assert isinstance(node, NodeMetastoreEffect)
        assert node.fsm is not None
        assert node.fsm.fsm.initial_state == "draft"

        flag = await node.metastore.create_flag(T, FlagCreate(name="hosted"), actor="ada")

        event = await harness.wait_for("FLAG_CHANGED", lambda e: e.payload["id"] == flag.id)
        assert event.payload["change"] == "create"
        assert event.payload["tenant"] == T
        assert event.source_node_id == node.metastore.node_id


def test_the_package_exports_what_its_all_names() -> None:
    import onex.metastore

    assert [name for name in onex.metastore.__all__ if not hasattr(onex.metastore, name)] == []
    assert len(set(onex.metastore.__all__)) == len(onex.metastore.__all__)
    assert {"Metastore", "Kind", "MetadataEntry", "FeatureFlag", "Configuration"} <= set(onex.metastore.__all__)


# --- the README's example -------------------------------------------------------------------------------------------


def test_the_readme_example_runs_and_answers_as_the_bucketing_says(tmp_path: Path) -> None:
    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    blocks = re.findall(r"^```python\n(.*?)^```$", readme, flags=re.MULTILINE | re.DOTALL)
    [example] = [b for b in blocks if "from onex.metastore import" in b]
    (tmp_path / "flags.py").write_text(example)

    done = subprocess.run([sys.executable, "flags.py"], cwd=tmp_path, capture_output=True, text=True, timeout=120)

    assert done.returncode == 0, done.stderr
    in_rollout = bucket("new-checkout", "u1") < 2500
    assert done.stdout.splitlines() == [
        "u1 pro True TARGETING_MATCH",
        "u1 free True SPLIT" if in_rollout else "u1 free False DEFAULT",
    ]
    assert (tmp_path / "meta.db").is_file()


def test_a_sqlite_metastore_that_cannot_be_written_is_an_outage_not_an_error(tmp_path: Path) -> None:
    """Read-only (or full) is the store being unavailable, as for the nodes' writes (``_sqlite_exec.unavailable``):
    the API answers 503 with Retry-After, not 500."""
    import sqlite3

    from onex.exceptions import StoreError, StoreUnavailable
    from onex.metastore._sql_sqlite import _fail

    conn = sqlite3.connect(tmp_path / "m.db")
    conn.execute("CREATE TABLE t (x)")
    conn.execute("PRAGMA query_only = ON")
    with pytest.raises(sqlite3.OperationalError) as refused:
        conn.execute("INSERT INTO t VALUES (1)")
    with pytest.raises(sqlite3.OperationalError) as wrong:
        conn.execute("SELECT * FROM nowhere")
    conn.close()
    assert isinstance(_fail(refused.value, "put"), StoreUnavailable)
    assert type(_fail(wrong.value, "put")) is StoreError
