"""``onex.envelope``: the envelope model, its partitioning key, topic names and dead letters."""

from __future__ import annotations

import json
import uuid
from datetime import UTC, datetime
from typing import Any

import onex.envelope
import pydantic
import pytest
from asyncpg.pgproto.pgproto import UUID as PgUUID
from hypothesis import given
from hypothesis import strategies as st
from onex.envelope import (
    DEAD_LETTER_EVENT,
    NODE_HEARTBEAT,
    NODE_INTROSPECTION,
    TOPIC_CLASSES,
    ModelIntrospectionRequest,
    ModelNodeHeartbeat,
    ModelNodeIntrospection,
    ModelStateTransitions,
    OnexEnvelopeV1,
    Payload,
    dead_letter,
    dlq_topic,
    kebab,
    new_id,
    random_id,
    topic_name,
    typed_reader,
    uuid_text,
)


def envelope(**fields: object) -> OnexEnvelopeV1:
    return OnexEnvelopeV1.model_validate(
        {"event_type": "STAMP_CREATED", "source_node_id": "stamper", "payload": {}} | fields
    )


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("STAMP_CREATED", "stamp-created"),
        ("stampCreated", "stamp-created"),
        ("StampCreated", "stamp-created"),
        ("stamp created", "stamp-created"),
        ("stamp-created", "stamp-created"),
        ("workflowStepV2Done", "workflow-step-v2-done"),
        ("  __NODE_HEARTBEAT__ ", "node-heartbeat"),
    ],
)
def test_kebab(name: str, expected: str) -> None:
    assert kebab(name) == expected


def test_topic_name_follows_env_tenant_onex_class_event_version() -> None:
    assert topic_name("STAMP_CREATED") == "dev.omninode_bridge.onex.evt.stamp-created.v1"
    assert topic_name("stampCreated") == "dev.omninode_bridge.onex.evt.stamp-created.v1"
    assert (
        topic_name("StampRequested", env="prod", tenant="acme", cls="cmd", major=2)
        == "prod.acme.onex.cmd.stamp-requested.v2"
    )


@pytest.mark.parametrize("cls", TOPIC_CLASSES)
def test_topic_name_accepts_every_topic_class(cls: str) -> None:
    assert topic_name("x", cls=cls) == f"dev.omninode_bridge.onex.{cls}.x.v1"


def test_topic_name_rejects_an_unknown_class() -> None:
    with pytest.raises(ValueError, match="'event' is not one of evt, cmd"):
        topic_name("STAMP_CREATED", cls="event")


def test_dead_letters_go_to_the_topic_with_a_dlq_suffix() -> None:
    assert dlq_topic("dev.omninode_bridge.onex.evt.stamp-created.v1") == (
        "dev.omninode_bridge.onex.evt.stamp-created.v1.dlq"
    )


def test_the_key_is_the_partition_key_first() -> None:
    correlation_id = uuid.uuid4()
    assert envelope(partition_key="ns/a", correlation_id=correlation_id).key == "ns/a"


def test_the_key_falls_back_to_the_correlation_id() -> None:
    correlation_id = uuid.uuid4()
    assert envelope(correlation_id=correlation_id).key == str(correlation_id)


def test_the_key_falls_back_to_the_source_node_last() -> None:
    assert envelope().key == "stamper"


def test_an_empty_partition_key_still_counts_as_set() -> None:
    # ``is not None``, not truthiness: "" is a key a caller chose on purpose.
    assert envelope(partition_key="", correlation_id=uuid.uuid4()).key == ""


def test_defaults_fill_identity_and_time() -> None:
    before = datetime.now(UTC)
    first, second = envelope(), envelope()
    assert first.event_id != second.event_id
    assert first.event_timestamp.tzinfo is not None
    assert first.event_timestamp >= before
    assert (first.envelope_version, first.event_version, first.environment) == ("1.0", "1.0", "dev")


def test_json_round_trip_is_lossless() -> None:
    original = envelope(
        correlation_id=uuid.uuid4(),
        causation_id=uuid.uuid4(),
        partition_key="ns",
        region="eu-west-1",
        source_instance="host-1",
        payload={"path": "a/b.py", "size": 3, "tags": ["x", "y"], "nested": {"ok": True, "none": None}},
        metadata={"trace": "abc"},
    )
    data = original.to_json()
    assert isinstance(data, bytes)
    assert json.loads(data)["event_type"] == "STAMP_CREATED"
    assert OnexEnvelopeV1.from_json(data) == original
    assert OnexEnvelopeV1.from_json(data.decode()) == original


def test_envelopes_are_frozen() -> None:
    sent = envelope()
    with pytest.raises(pydantic.ValidationError, match="frozen"):
        sent.event_type = "OTHER"  # type: ignore[misc]
    changed = sent.model_copy(update={"event_type": "OTHER"})
    assert (sent.event_type, changed.event_type) == ("STAMP_CREATED", "OTHER")


def test_unknown_fields_are_rejected() -> None:
    with pytest.raises(pydantic.ValidationError, match="extra_forbidden"):
        envelope(colour="blue")
    with pytest.raises(pydantic.ValidationError, match="extra_forbidden"):
        OnexEnvelopeV1.from_json(envelope().model_dump_json()[:-1] + ', "colour": "blue"}')


def test_required_fields_are_required() -> None:
    with pytest.raises(pydantic.ValidationError) as info:
        OnexEnvelopeV1.model_validate({})
    missing = {error["loc"][0] for error in info.value.errors() if error["type"] == "missing"}
    assert missing == {"event_type", "source_node_id", "payload"}


def test_a_dead_letter_carries_the_original_the_error_and_the_attempts() -> None:
    original = envelope(correlation_id=uuid.uuid4(), environment="prod", payload={"path": "a.py"})
    topic = topic_name("STAMP_CREATED")

    letter = dead_letter(original, topic=topic, error=ValueError("bad hash"), attempts=3, group="prod.stamper")

    assert letter.event_type == DEAD_LETTER_EVENT
    assert letter.correlation_id == original.correlation_id
    assert letter.causation_id == original.event_id
    assert letter.environment == "prod"
    assert letter.key == original.key  # lands in the same partition of the .dlq topic as the original did
    assert letter.payload == {
        "original_topic": topic,
        "original": original.model_dump(mode="json"),
        "error_type": "ValueError",
        "error": "bad hash",
        "attempts": 3,
        "group": "prod.stamper",
    }
    assert OnexEnvelopeV1.model_validate(letter.payload["original"]) == original
    assert OnexEnvelopeV1.from_json(letter.to_json()) == letter


def test_a_dead_letter_accepts_an_error_message() -> None:
    letter = dead_letter(envelope(), topic="t", error="timed out", attempts=1)
    assert (letter.payload["error_type"], letter.payload["error"]) == ("Error", "timed out")


def test_an_envelope_built_without_validation_equals_a_validated_one() -> None:
    """``OnexEnvelopeV1.built`` skips validation; what it makes must be indistinguishable from a validated envelope:
    same fields, same order (serialisation follows it), same JSON, same copies."""
    values: dict[str, Any] = {
        "event_id": uuid.uuid4(),
        "event_type": "STAMP_FILE",
        "event_timestamp": datetime(2026, 12, 2, 10, 0, tzinfo=UTC),
        "source_node_id": "node-1",
        "source_service": "orchestrator",
        "source_version": "1.2.3",
        "source_instance": "host-1",
        "correlation_id": uuid.uuid4(),
        "causation_id": None,
        "environment": "prod",
        "region": "eu",
        "partition_key": "k",
        "payload": {"a": 1},
    }
    built = OnexEnvelopeV1.built(**values)
    validated = OnexEnvelopeV1(**values)
    assert built == validated
    assert list(built.__dict__) == list(OnexEnvelopeV1.model_fields)
    assert built.model_dump_json() == validated.model_dump_json()
    assert built.model_dump() == validated.model_dump()
    copied = built.model_copy(update={"partition_key": "other"})
    assert copied.partition_key == "other"
    assert copied.event_id == built.event_id
    assert OnexEnvelopeV1.from_json(built.to_json()) == validated


def test_an_envelope_built_from_a_value_of_the_wrong_type_is_caught_in_tests() -> None:
    # The suite runs with CHECK_BUILT on (tests/conftest.py): a value validation would have coerced is an error.
    with pytest.raises(AssertionError, match=r"fields \['event_id'\]"):
        OnexEnvelopeV1.built(
            event_id=str(uuid.uuid4()),  # type: ignore[arg-type]
            event_type="X",
            event_timestamp=datetime.now(UTC),
            source_node_id="n",
            source_service="s",
            source_version="1.0.0",
            source_instance=None,
            correlation_id=None,
            causation_id=None,
            environment="dev",
            region=None,
            partition_key=None,
            payload={},
        )


class Result(Payload):
    name: str
    elapsed_ms: float | None = None
    data: dict[str, Any] = pydantic.Field(default_factory=dict)


def test_a_payload_built_equals_the_validated_one() -> None:
    built = Result.built(name="stamp", elapsed_ms=1.5, data={"a": [1]})
    validated = Result(name="stamp", elapsed_ms=1.5, data={"a": [1]})
    assert built == validated
    assert built.model_dump_json() == validated.model_dump_json()
    assert built.model_fields_set == validated.model_fields_set
    assert built["name"] == "stamp"


def test_built_models_are_filled_as_a_twin_whose_stores_are_the_interpreters_own(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """``_assemble`` fills a model as ``_ModelTwin`` (no ``__setattr__`` or ``__delattr__`` of its own, so that a
    store on it is the interpreter's specialised one: pydantic's ``__delattr__`` alone would make every store go
    through ``__setattr__`` again), then makes it the model's class: what comes out is the model, frozen as ever."""
    twin = onex.envelope._ModelTwin
    assert twin.__setattr__ is object.__setattr__
    assert twin.__delattr__ is object.__delattr__
    assert twin.__basicsize__ == Result.__basicsize__ == OnexEnvelopeV1.__basicsize__
    monkeypatch.setattr(onex.envelope, "_set_dict", None)  # the descriptors' path would fail: not taken
    built = Result.built(name="stamp", elapsed_ms=None, data={})
    assert type(built) is Result
    with pytest.raises(pydantic.ValidationError, match="frozen"):
        built.name = "other"  # type: ignore[misc]
    fields = envelope(payload=built).__dict__
    made = OnexEnvelopeV1.built(
        **{k: v for k, v in fields.items() if k not in ("envelope_version", "event_version", "metadata")}
    )
    assert type(made) is OnexEnvelopeV1
    assert made.payload is built


class Slotted(Payload):
    """A payload whose layout is not the twin's: it adds a slot of its own."""

    __slots__ = ("note",)
    name: str


def test_a_model_of_another_layout_is_built_through_its_slots_descriptors() -> None:
    assert Slotted.__basicsize__ != onex.envelope._ModelTwin.__basicsize__
    built = Slotted.built(name="x")
    assert type(built) is Slotted
    assert built == Slotted(name="x")
    assert built.model_dump_json() == '{"name":"x"}'


@given(text=st.text(), number=st.floats(allow_nan=False) | st.none(), extra=st.dictionaries(st.text(), st.integers()))
def test_to_json_and_to_jsonable_are_what_pydantic_dumps(
    text: str, number: float | None, extra: dict[str, int]
) -> None:
    """``to_json`` / ``to_jsonable`` call the serializer without ``model_dump_json`` / ``model_dump``'s wrapper: the
    same bytes, the same values, for a typed payload and for a dict."""
    payload = Result(name=text, elapsed_ms=number, data=extra)
    assert payload.to_jsonable() == payload.model_dump(mode="json")
    assert payload.to_jsonable(exclude_none=True) == payload.model_dump(mode="json", exclude_none=True)
    for carried in (payload, payload.model_dump(mode="json")):
        made = envelope(payload=carried, partition_key=text)
        assert made.to_json() == made.model_dump_json().encode()


def test_built_models_share_one_fields_set_that_copies_and_assignments_do_not_change() -> None:
    """Built instances of a frozen model share one ``__pydantic_fields_set__`` (an allocation less per model on the
    hot path); pydantic must never add to it in place, or one envelope's copy would change what the others say
    was set."""
    first, second = Result.built(name="a", elapsed_ms=None, data={}), Result.built(name="b", elapsed_ms=None, data={})
    assert first.__pydantic_fields_set__ is second.__pydantic_fields_set__
    values: dict[str, Any] = {"event_id": uuid.uuid4(), "event_type": "X", "event_timestamp": datetime.now(UTC)}
    rest: dict[str, Any] = {
        "source_node_id": "n",
        "source_service": "s",
        "source_version": "1.0.0",
        "source_instance": None,
    }
    more: dict[str, Any] = {
        "correlation_id": None,
        "causation_id": None,
        "environment": "dev",
        "region": None,
        "partition_key": None,
    }
    built = OnexEnvelopeV1.built(**values, **rest, **more, payload=first)
    other = OnexEnvelopeV1.built(**values, **rest, **more, payload=second)
    copied = built.model_copy(update={"event_version": "2.0"})  # a field built() leaves unset
    assert "event_version" in copied.model_fields_set
    assert "event_version" not in other.model_fields_set
    assert "event_version" not in built.model_dump(exclude_unset=True)

    class Loose(Payload):  # not frozen: each instance keeps a set of its own, as pydantic would give it
        model_config = pydantic.ConfigDict(frozen=False)
        name: str

    one, two = Loose.built(name="a"), Loose.built(name="b")
    assert one.model_fields_set == two.model_fields_set == {"name"}
    assert one.__pydantic_fields_set__ is not two.__pydantic_fields_set__


@pytest.mark.parametrize(
    ("fields", "wrong"),
    [
        ({"name": "stamp", "data": {}}, r"Result.built: fields \['name', 'data'\], declared"),  # one left out
        ({"elapsed_ms": 1.0, "name": "stamp", "data": {}}, r"Result.built: fields \['elapsed_ms'"),  # out of order
        (
            {"name": "stamp", "elapsed_ms": "1.0", "data": {}},
            r"fields \['elapsed_ms'\] differ",
        ),  # coerced by validation
        ({"name": "stamp", "elapsed_ms": 1, "data": {}}, r"fields \['elapsed_ms'\] differ"),  # an int, not a float
    ],
)
def test_a_payload_built_from_fields_that_would_not_validate_the_same_is_caught_in_tests(
    fields: dict[str, Any], wrong: str
) -> None:
    with pytest.raises(AssertionError, match=wrong):
        Result.built(**fields)


class Thing(pydantic.BaseModel):
    model_config = pydantic.ConfigDict(frozen=True, extra="forbid")
    n: int
    at: datetime
    id: uuid.UUID


def test_a_typed_reader_validates_the_payload_into_its_model_in_the_parse_and_reads_the_rest_as_before() -> None:
    read = typed_reader("THING", Thing)
    at, thing_id = datetime(2026, 12, 3, 12, 0, tzinfo=UTC), uuid.uuid4()
    fits = envelope(event_type="THING", payload={"n": 1, "at": at.isoformat(), "id": str(thing_id)})

    typed = read(fits.to_json())

    # A plain envelope (equal to the one read the generic way but for its payload), its payload the model itself.
    assert type(typed) is OnexEnvelopeV1
    assert typed.payload == Thing(n=1, at=at, id=thing_id)
    assert typed.model_copy(update={"payload": fits.payload}) == OnexEnvelopeV1.from_json(fits.to_json())
    assert read(typed.to_json()) == typed
    # What does not fit comes back as from_json reads it: the consuming codec reports the bad field as before.
    for other in (
        envelope(event_type="THING", payload={"n": "one", "at": at.isoformat(), "id": str(thing_id)}),
        envelope(event_type="THING", payload={"n": 1, "at": at.isoformat(), "id": str(thing_id), "x": 2}),
        envelope(event_type="OTHER", payload={"n": 1, "at": at.isoformat(), "id": str(thing_id)}),
    ):
        assert read(other.to_json()) == OnexEnvelopeV1.from_json(other.to_json())
        assert type(read(other.to_json()).payload) is dict
    # What is no envelope raises what from_json raises, so the bus dead-letters it as before.
    for garbage in (b"not json", b'{"hello": "world"}', b"[]"):
        with pytest.raises(pydantic.ValidationError) as typed_error:
            read(garbage)
        with pytest.raises(pydantic.ValidationError) as generic_error:
            OnexEnvelopeV1.from_json(garbage)
        assert str(typed_error.value) == str(generic_error.value)


def test_new_ids_are_version_7_and_ordered_by_the_millisecond_they_were_made_in(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    at = [1_764_763_200_123_456_789]  # ns
    monkeypatch.setattr(onex.envelope, "_time_ns", lambda: at[0])
    first, same_millisecond = new_id(), new_id()
    at[0] += 1_000_000
    later = new_id()

    assert [i.version for i in (first, same_millisecond, later)] == [7, 7, 7]
    assert {i.variant for i in (first, same_millisecond, later)} == {uuid.RFC_4122}
    assert first.int >> 80 == same_millisecond.int >> 80 == 1_764_763_200_123  # the Unix time in milliseconds
    assert first != same_millisecond  # the rest is random
    # Later ids sort after earlier ones, as UUIDs and as the text SQLite compares.
    assert later > max(first, same_millisecond)
    assert str(later) > max(str(first), str(same_millisecond))


def test_random_ids_are_version_4() -> None:
    ids = {random_id() for _ in range(100)}
    assert len(ids) == 100
    assert {(i.version, i.variant) for i in ids} == {(4, uuid.RFC_4122)}


@given(st.uuids() | st.builds(uuid.UUID, int=st.integers(0, 2**128 - 1)))
def test_uuid_text_is_the_uuids_str(value: uuid.UUID) -> None:
    assert uuid_text(value) == str(value)


def test_uuid_text_of_the_ids_onex_makes_and_of_uuid_subclasses_is_their_str() -> None:
    class Subclass(uuid.UUID):
        pass

    made = [new_id(), random_id(), onex.envelope.derived_id("a", 1), uuid.UUID(int=0)]
    subclasses = [Subclass(int=7), PgUUID(str(new_id()))]  # asyncpg returns its own UUID type, which orjson refuses
    for value in made + subclasses:
        assert uuid_text(value) == str(value)


# --- the control payloads of the bridge's nodes (omninode_bridge ModelNodeIntrospectionEvent, ModelNodeHeartbeatEvent,
# as they serialise: model_dump(mode="json")) ---------------------------------------------------------------------

BRIDGE_INTROSPECTION: dict[str, Any] = {
    "node_id": "metadata-stamping-1",
    "node_type": "effect",
    "node_role": None,
    "capabilities": {"hash_generation": {"algorithm": "BLAKE3"}},
    "endpoints": {"health": "http://localhost:8053/health"},
    "metadata": {"version": "1.0.0", "environment": "production"},
    "timestamp": "2026-12-07T10:00:00+00:00",
    "correlation_id": None,
    "network_id": None,
    "deployment_id": "dev-001",
    "epoch": 1,
}
BRIDGE_HEARTBEAT: dict[str, Any] = {
    "node_id": "metadata-stamping-1",
    "node_type": "effect",
    "health_status": "healthy",
    "uptime_seconds": 12,
    "last_activity_timestamp": "2026-12-07T10:00:00+00:00",
    "active_operations": 2,
    "resource_usage": {"cpu_percent": 4.5},
    "metadata": {"version": "1.0.0"},
    "timestamp": "2026-12-07T10:00:00+00:00",
    "correlation_id": None,
}
# What an onex node sends (Node.publish_introspection, Node.publish_heartbeat): every field, upper case.
ONEX_INTROSPECTION: dict[str, Any] = {
    "node_id": "stamping_effect-1.0.0-host-7",
    "node_name": "stamping_effect",
    "node_type": "EFFECT",
    "node_version": "1.0.0",
    "capabilities": {"consumes": ["STAMP_REQUESTED"]},
    "endpoints": {"bus": "memory://"},
    "metadata": {"version": "9.9.9", "name": "other", "health_status": "DEGRADED", "health_reason": "circuit open"},
    "reason": "requested",
}
ONEX_HEARTBEAT: dict[str, Any] = {
    "node_id": "stamping_effect-1.0.0-host-7",
    "node_type": "EFFECT",
    "node_version": "1.0.0",
    "health_status": "DEGRADED",
    "uptime_seconds": 12.5,
    "active_operations": 1,
    "health_reason": "circuit open",
}


@pytest.mark.parametrize("read", ["dict", "json"])
def test_a_bridge_nodes_introspection_is_read_in_onex_words(read: str) -> None:
    sent = json.loads(json.dumps(BRIDGE_INTROSPECTION))
    info = (
        ModelNodeIntrospection.model_validate(sent)
        if read == "dict"
        else ModelNodeIntrospection.model_validate_json(json.dumps(sent))
    )

    assert info.to_jsonable() == {
        "node_id": "metadata-stamping-1",
        "node_name": "metadata-stamping-1",  # no name in its metadata: its node id
        "node_type": "EFFECT",
        "node_version": "1.0.0",  # its metadata's version
        "capabilities": {"hash_generation": {"algorithm": "BLAKE3"}},
        "endpoints": {"health": "http://localhost:8053/health"},
        "metadata": {"version": "1.0.0", "environment": "production"},
        "reason": "",  # it says none: neither "startup" nor an answer
    }
    assert sent == BRIDGE_INTROSPECTION  # the dict read (an envelope's payload) is not changed


def test_a_bridge_introspection_of_the_four_fields_the_reference_lists_takes_a_name_from_its_metadata() -> None:
    info = ModelNodeIntrospection.model_validate(
        {"node_id": "n-1", "node_type": "Orchestrator", "metadata": {"name": "bridge_orchestrator"}}
    )
    assert (info.node_name, info.node_type, info.node_version) == ("bridge_orchestrator", "ORCHESTRATOR", "")
    assert ModelNodeIntrospection.model_validate({"node_id": "n-1", "node_type": "compute"}).node_name == "n-1"


@pytest.mark.parametrize("read", ["dict", "json"])
def test_a_bridge_nodes_heartbeat_is_read_in_onex_words(read: str) -> None:
    sent = json.loads(json.dumps(BRIDGE_HEARTBEAT))
    beat = (
        ModelNodeHeartbeat.model_validate(sent)
        if read == "dict"
        else ModelNodeHeartbeat.model_validate_json(json.dumps(sent))
    )

    assert beat.to_jsonable() == {
        "node_id": "metadata-stamping-1",
        "node_type": "EFFECT",
        "node_version": "",
        "health_status": "HEALTHY",
        "uptime_seconds": 12.0,
        "active_operations": 2,
        "health_reason": "",
    }
    assert sent == BRIDGE_HEARTBEAT


@pytest.mark.parametrize(
    ("said", "status", "reason"),
    [
        ("healthy", "HEALTHY", ""),
        ("Degraded", "DEGRADED", ""),
        ("unhealthy", "UNHEALTHY", ""),
        ("critical", "UNHEALTHY", "critical"),  # the bridge's words onex has none of: the nearest, and the word kept
        ("recovering", "DEGRADED", "recovering"),
        ("stopped", "STOPPED", ""),
    ],
)
def test_a_heartbeats_health_status_is_read_whatever_its_case(said: str, status: str, reason: str) -> None:
    beat = ModelNodeHeartbeat.model_validate({"node_id": "n-1", "health_status": said})
    assert (beat.health_status, beat.health_reason) == (status, reason)


def test_a_health_status_no_one_says_is_still_refused() -> None:
    with pytest.raises(pydantic.ValidationError, match="health_status"):
        ModelNodeHeartbeat.model_validate({"node_id": "n-1", "health_status": "sleepy"})


@pytest.mark.parametrize(
    ("model", "sent"), [(ModelNodeIntrospection, ONEX_INTROSPECTION), (ModelNodeHeartbeat, ONEX_HEARTBEAT)]
)
def test_what_an_onex_node_sends_is_read_as_it_was_sent(model: type[Payload], sent: dict[str, Any]) -> None:
    # Its own name and version win over its metadata's; its metadata health is left to the registry.
    assert model.model_validate(sent).to_jsonable() == sent
    assert model.model_validate_json(json.dumps(sent)).to_jsonable() == sent


def test_typed_readers_of_the_control_topics_read_the_bridges_payloads() -> None:
    readers: list[tuple[str, type[Payload], dict[str, Any]]] = [
        (NODE_INTROSPECTION, ModelNodeIntrospection, BRIDGE_INTROSPECTION),
        (NODE_HEARTBEAT, ModelNodeHeartbeat, BRIDGE_HEARTBEAT),
    ]
    for event_type, model, payload in readers:
        data = envelope(event_type=event_type, payload=payload).to_json()
        read = typed_reader(event_type, model)(data)
        assert type(read.payload) is model
        assert read.payload["node_type"] == "EFFECT"


def test_only_the_two_control_payloads_ignore_unknown_fields() -> None:
    with pytest.raises(pydantic.ValidationError, match="extra_forbidden"):
        ModelIntrospectionRequest.model_validate({"requested_by": "registry-1", "colour": "blue"})
    with pytest.raises(pydantic.ValidationError, match="extra_forbidden"):
        ModelStateTransitions.model_validate({"transitions": [], "colour": "blue"})
    ignoring = {
        cls.__name__
        for name, cls in vars(onex.envelope).items()
        if isinstance(cls, type)
        and issubclass(cls, Payload)
        and cls.model_config.get("extra") != "forbid"
        and not name.startswith("_")  # their private base (_BridgeWords)
    }
    assert ignoring == {"ModelNodeIntrospection", "ModelNodeHeartbeat"}
