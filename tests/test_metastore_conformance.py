"""The metastore's guarantees, on every store (``tests/fixtures/stores.py``: SQLite and PostgreSQL).

Versioning (a new immutable version per change, rollback as a new version), optimistic concurrency (exactly one of
concurrent writers of a version wins, never a lost update), soft deletion, unique keys among live entities, and
tenant isolation. Nothing here knows which database it talks to.
"""

from __future__ import annotations

import asyncio
import uuid
from typing import Any

import pytest
from onex.exceptions import EntityExists, EntityNotFound, MetastoreInvalid, VersionConflict
from onex.metastore import (
    ConfigCreate,
    FeatureFlag,
    FlagCreate,
    Kind,
    MetadataCreate,
    MetadataEntry,
    MetadataUpdate,
    Metastore,
)
from onex.store import Store

pytestmark = pytest.mark.anyio

A, B = "tenant-a", "tenant-b"


@pytest.fixture
def metastore(store: Store) -> Metastore:
    return Metastore(store)


async def entry(ms: Metastore, key: str = "greeting", tenant: str = A, **fields: Any) -> MetadataEntry:
    return await ms.create_metadata(
        tenant, MetadataCreate(key=key, value=fields.pop("value", "hello"), **fields), actor="ada"
    )


async def test_create_get_update_keep_every_version_with_who_and_what_changed(metastore: Metastore) -> None:
    created = await entry(metastore, tags=["x"], description="first")
    assert (created.version, created.state, created.deleted, created.created_by) == (1, "active", False, "ada")

    updated = await metastore.update_metadata(
        A, created.id, MetadataUpdate(value={"n": 2}), expected_version=1, actor="bob"
    )

    assert (updated.version, updated.value, updated.description, updated.tags) == (2, {"n": 2}, "first", ["x"])
    assert (updated.created_by, updated.updated_by) == ("ada", "bob")
    assert await metastore.get(Kind.METADATA, A, created.id) == updated
    assert await metastore.metadata_by_key(A, "greeting") == updated
    history = await metastore.versions(Kind.METADATA, A, created.id)
    assert history.total == 2
    newest, first = history.items
    assert (newest.version, newest.actor, newest.change, newest.changed_fields) == (2, "bob", "update", ["value"])
    assert (first.version, first.actor, first.change) == (1, "ada", "create")
    assert first.snapshot["value"] == "hello"
    assert newest.snapshot["value"] == {"n": 2}
    assert MetadataEntry.model_validate(newest.snapshot) == updated


async def test_a_change_that_changes_nothing_records_no_changed_field(metastore: Metastore) -> None:
    created = await entry(metastore, value=1)
    await metastore.update_metadata(A, created.id, MetadataUpdate(value=1), expected_version=1, actor="bob")
    await metastore.rollback(Kind.METADATA, A, created.id, 2, expected_version=2, actor="bob")

    history = await metastore.versions(Kind.METADATA, A, created.id)

    every = ["content_type", "deleted", "description", "encrypted", "key", "namespace", "state", "tags", "value"]
    assert [(v.version, v.change, v.changed_fields) for v in history.items] == [
        (3, "rollback", []),
        (2, "update", []),
        (1, "create", every),
    ]


async def test_rollback_writes_a_new_version_equal_to_the_old_one(metastore: Metastore) -> None:
    created = await entry(metastore, value=1)
    for n in (2, 3):
        await metastore.update_metadata(A, created.id, MetadataUpdate(value=n), expected_version=n - 1, actor="ada")

    restored = await metastore.rollback(Kind.METADATA, A, created.id, 1, expected_version=3, actor="bob")

    assert isinstance(restored, MetadataEntry)
    assert (restored.version, restored.value, restored.updated_by) == (4, 1, "bob")
    history = await metastore.versions(Kind.METADATA, A, created.id)
    assert [v.version for v in history.items] == [4, 3, 2, 1]
    assert history.items[0].change == "rollback"
    assert history.items[0].changed_fields == ["value"]
    with pytest.raises(EntityNotFound, match="version 9"):
        await metastore.rollback(Kind.METADATA, A, created.id, 9, expected_version=None, actor="bob")
    with pytest.raises(VersionConflict):
        await metastore.rollback(Kind.METADATA, A, created.id, 2, expected_version=3, actor="bob")


async def test_of_50_concurrent_updates_of_one_version_exactly_one_wins(metastore: Metastore) -> None:
    created = await entry(metastore, value=0)

    async def update(n: int) -> Any:
        try:
            return await metastore.update_metadata(
                A, created.id, MetadataUpdate(value=n), expected_version=1, actor=f"writer-{n}"
            )
        except VersionConflict as exc:
            return exc

    results = await asyncio.gather(*(update(n) for n in range(1, 51)))

    winners = [r for r in results if isinstance(r, MetadataEntry)]
    conflicts = [r for r in results if isinstance(r, VersionConflict)]
    assert len(winners) == 1
    assert len(conflicts) == 49
    assert all(c.expected == 1 and c.current == 2 for c in conflicts)
    history = await metastore.versions(Kind.METADATA, A, created.id)
    assert [v.version for v in history.items] == [2, 1]
    assert history.items[0].actor == winners[0].updated_by
    assert (await metastore.get(Kind.METADATA, A, created.id)) == winners[0]


async def test_concurrent_updates_without_an_expected_version_all_land(metastore: Metastore) -> None:
    created = await entry(metastore, value=0)

    await asyncio.gather(
        *(
            metastore.update_metadata(A, created.id, MetadataUpdate(value=n), expected_version=None, actor=f"w{n}")
            for n in range(1, 11)
        )
    )

    history = await metastore.versions(Kind.METADATA, A, created.id)
    assert [v.version for v in history.items] == list(range(11, 0, -1))
    assert sorted(v.actor for v in history.items[:-1]) == sorted(f"w{n}" for n in range(1, 11))


async def test_a_long_history_is_read_and_rolled_back_by_index(metastore: Metastore) -> None:
    created = await entry(metastore, value=1)
    await metastore.update_many(
        Kind.METADATA, A, created.id, [{"value": n} for n in range(2, 10_001)], expected_version=1, actor="bulk"
    )

    latest = await metastore.get(Kind.METADATA, A, created.id)
    assert isinstance(latest, MetadataEntry)
    assert (latest.version, latest.value) == (10_000, 10_000)
    page = await metastore.versions(Kind.METADATA, A, created.id, limit=3, offset=4_999)
    assert page.total == 10_000
    assert [(v.version, v.snapshot["value"]) for v in page.items] == [(5_001, 5_001), (5_000, 5_000), (4_999, 4_999)]

    restored = await metastore.rollback(Kind.METADATA, A, created.id, 5_000, expected_version=10_000, actor="ada")

    assert isinstance(restored, MetadataEntry)
    assert (restored.version, restored.value) == (10_001, 5_000)
    assert await metastore.get(Kind.METADATA, A, created.id) == restored


async def test_delete_is_soft_recorded_and_undone_by_a_rollback(metastore: Metastore) -> None:
    created = await entry(metastore)

    deleted = await metastore.delete(Kind.METADATA, A, created.id, expected_version=1, actor="bob")

    assert (deleted.version, deleted.deleted) == (2, True)
    with pytest.raises(EntityNotFound):
        await metastore.get(Kind.METADATA, A, created.id)
    with pytest.raises(EntityNotFound):
        await metastore.metadata_by_key(A, "greeting")
    assert (await metastore.list_metadata(A)).total == 0
    with pytest.raises(EntityNotFound):
        await metastore.delete(Kind.METADATA, A, created.id, expected_version=None, actor="bob")
    history = await metastore.versions(Kind.METADATA, A, created.id)
    assert [(v.version, v.change, v.changed_fields) for v in history.items[:1]] == [(2, "delete", ["deleted"])]

    back = await metastore.rollback(Kind.METADATA, A, created.id, 1, expected_version=2, actor="bob")

    assert (back.version, back.deleted) == (3, False)
    assert await metastore.metadata_by_key(A, "greeting") == back


@pytest.mark.parametrize(
    ("fields", "path"),
    [
        ({"value": "a\x00b"}, "value"),
        ({"value": {"rows": [1, "\x00"]}}, "value.rows.1"),
        ({"value": {"k\x00": 1}}, "value.k\\u0000"),
        ({"description": "x\x00"}, "description"),
        ({"tags": ["ok", "t\x00"]}, "tags.1"),
    ],
)
async def test_a_text_with_the_nul_character_is_refused_naming_the_field(
    metastore: Metastore, fields: dict[str, Any], path: str
) -> None:
    # PostgreSQL cannot store it: a permanent input error there too, never "the store is unavailable".
    with pytest.raises(MetastoreInvalid) as created:
        await entry(metastore, key="new", **fields)
    existing = await entry(metastore)
    with pytest.raises(MetastoreInvalid) as updated:
        await metastore.update_metadata(A, existing.id, MetadataUpdate(**fields), expected_version=1, actor="ada")
    with pytest.raises(MetastoreInvalid) as flag:
        await metastore.create_flag(A, FlagCreate(name="f", description="\x00"), actor="ada")

    assert (created.value.path, updated.value.path, flag.value.path) == (path, path, "description")
    assert "NUL" in created.value.reason
    assert [e.version for e in (await metastore.list_metadata(A)).items] == [1]  # nothing else written


async def test_keys_are_unique_per_tenant_among_live_entities(metastore: Metastore) -> None:
    first = await entry(metastore)
    with pytest.raises(EntityExists) as raised:
        await entry(metastore)
    assert isinstance(raised.value, MetastoreInvalid)
    assert raised.value.kind == "metadata"
    await entry(metastore, namespace="other")  # another namespace
    await entry(metastore, tenant=B)  # another tenant
    await metastore.delete(Kind.METADATA, A, first.id, expected_version=None, actor="ada")
    again = await entry(metastore)  # the key is free once deleted
    with pytest.raises(EntityExists):  # ... so the deleted one cannot come back under it
        await metastore.rollback(Kind.METADATA, A, first.id, 1, expected_version=None, actor="ada")
    renamed_clash = MetadataUpdate(namespace="other")
    with pytest.raises(EntityExists):
        await metastore.update_metadata(A, again.id, renamed_clash, expected_version=None, actor="ada")

    await metastore.create_flag(A, FlagCreate(name="beta"), actor="ada")
    await metastore.create_flag(B, FlagCreate(name="beta"), actor="ada")
    with pytest.raises(EntityExists):
        await metastore.create_flag(A, FlagCreate(name="beta"), actor="ada")

    def config(environment: str) -> ConfigCreate:
        return ConfigCreate.model_validate({"service_id": "api", "name": "db", "environment": environment})

    await metastore.create_config(A, config("staging"), actor="ada")
    await metastore.create_config(A, config("production"), actor="ada")
    with pytest.raises(EntityExists):
        await metastore.create_config(A, config("staging"), actor="ada")


async def test_another_tenants_entity_is_not_found_never_shown(metastore: Metastore) -> None:
    mine = await entry(metastore, tenant=A)
    flag = await metastore.create_flag(A, FlagCreate(name="secret-feature"), actor="ada")

    for kind, id in ((Kind.METADATA, mine.id), (Kind.FLAG, flag.id)):
        with pytest.raises(EntityNotFound):
            await metastore.get(kind, B, id)
        with pytest.raises(EntityNotFound):
            await metastore.versions(kind, B, id)
        with pytest.raises(EntityNotFound):
            await metastore.rollback(kind, B, id, 1, expected_version=None, actor="eve")
        with pytest.raises(EntityNotFound):
            await metastore.delete(kind, B, id, expected_version=None, actor="eve")
    with pytest.raises(EntityNotFound):
        await metastore.update_metadata(B, mine.id, MetadataUpdate(value="x"), expected_version=1, actor="eve")
    with pytest.raises(EntityNotFound):
        await metastore.metadata_by_key(B, "greeting")
    with pytest.raises(EntityNotFound):
        await metastore.flag_by_name(B, "secret-feature")
    assert (await metastore.list_metadata(B)).items == []
    assert (await metastore.list_flags(B)).items == []
    assert (await metastore.evaluate(B, "secret-feature", {})).error_code == "FLAG_NOT_FOUND"
    assert await metastore.get(Kind.METADATA, A, mine.id) == mine  # untouched
    with pytest.raises(EntityNotFound):
        await metastore.get(Kind.FLAG, A, mine.id)  # the id of another kind
    with pytest.raises(EntityNotFound):
        await metastore.get(Kind.METADATA, A, uuid.uuid4())


async def test_another_tenants_configuration_is_neither_found_nor_merged(metastore: Metastore) -> None:
    body = ConfigCreate.model_validate(
        {"service_id": "api", "name": "db", "environment": "staging", "values": {"password": {"$secret": "env:PW"}}}
    )
    mine = await metastore.create_config(A, body, actor="ada")

    with pytest.raises(EntityNotFound):
        await metastore.get(Kind.CONFIG, B, mine.id)
    with pytest.raises(EntityNotFound):
        await metastore.activate_config(B, mine.id, expected_version=None, actor="eve")
    theirs = await metastore.effective_config(B, "api", "staging")
    assert (theirs.values, theirs.sources) == ({}, [])
    assert (await metastore.effective_config(A, "api", "staging")).values == {"password": {"$secret": "env:PW"}}


async def test_a_rollback_restores_a_flags_lifecycle_state_with_its_spec(metastore: Metastore) -> None:
    flag = await metastore.create_flag(A, FlagCreate(name="dark-mode", description="v1"), actor="ada")
    await metastore.enable_flag(A, flag.id, expected_version=1, actor="ada")
    archived = await metastore.archive_flag(A, flag.id, expected_version=2, actor="ada")
    assert archived.state == "archived"

    restored = await metastore.rollback(Kind.FLAG, A, flag.id, 2, expected_version=3, actor="ada")

    assert isinstance(restored, FeatureFlag)
    assert (restored.version, restored.state, restored.enabled) == (4, "active", True)
    assert (await metastore.evaluate(A, "dark-mode", {})).value is True
    history = await metastore.versions(Kind.FLAG, A, flag.id)
    assert history.items[0].changed_fields == ["enabled", "state"]


async def test_lists_filter_by_namespace_and_tag_and_page(metastore: Metastore) -> None:
    for n in range(5):
        await entry(metastore, key=f"k{n}", namespace="even" if n % 2 == 0 else "odd", tags=[f"t{n}", "all"])
    await entry(metastore, key="tagged-like", tags=["t1x"])  # a tag that merely starts like another

    page = await metastore.list_metadata(A, namespace="even", limit=2)
    assert (page.total, [e.key for e in page.items]) == (3, ["k0", "k2"])
    assert [e.key for e in (await metastore.list_metadata(A, namespace="even", limit=2, offset=2)).items] == ["k4"]
    assert [e.key for e in (await metastore.list_metadata(A, tag="t1")).items] == ["k1"]
    assert (await metastore.list_metadata(A, tag="all")).total == 5
    assert (await metastore.list_metadata(A)).total == 6
    with pytest.raises(MetastoreInvalid, match="limit"):
        await metastore.list_metadata(A, limit=0)


async def test_configurations_of_a_service_are_listed_by_environment(metastore: Metastore) -> None:
    for environment in ("development", "production"):
        body = ConfigCreate.model_validate(
            {"service_id": "api", "name": "db", "environment": environment, "values": {"host": environment}}
        )
        await metastore.create_config(A, body, actor="ada")

    assert [c.environment for c in await metastore.configs_for_service(A, "api")] == ["development", "production"]
    production = await metastore.configs_for_service(A, "api", environment="production")
    assert [c.values for c in production] == [{"host": "production"}]
    assert await metastore.configs_for_service(B, "api") == []
