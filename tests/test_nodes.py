"""Node base classes (``onex.nodes``): lifecycle, handlers bound from the contract, payload validation on consume
and publish, dead letters, FSM transitions, introspection, heartbeats and effect health.

Every node here is a small real class of the test project ``tests/projects/workshop`` hosted on the memory bus.
"""

from __future__ import annotations

import functools
import importlib
import itertools
import uuid
from collections.abc import AsyncIterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

import pytest
from onex.bus import MemoryBus
from onex.clock import ManualClock
from onex.contracts import Contract, ContractSet, load_contract, load_contracts, resolve_implementation
from onex.envelope import DEAD_LETTER_EVENT, ModelNodeHeartbeat, ModelNodeIntrospection, OnexEnvelopeV1, dlq_topic
from onex.exceptions import CircuitOpenError, LifecycleError, OnexError, PayloadError
from onex.nodes import Event, Lifecycle
from onex.resilience import BreakerState
from onex.settings import Settings
from onex.stores import open_store
from onex.testing import Harness

from nodes.models import ModelStampCommand
from nodes.stamping_effect.v1_0_0.node import NodeStampingEffect

if TYPE_CHECKING:
    # For annotations only: at run time the workshop's classes are those of its private alias (see below).
    from tests.projects.workshop.nodes.guestbook.v1_0_0.node import NodeGuestbook
    from tests.projects.workshop.nodes.mailer.v1_0_0.node import NodeMailer
    from tests.projects.workshop.nodes.monitor.v1_0_0.node import NodeMonitor

# The repository's `nodes` package owns the name `nodes` in this process, as it does under `onex run` from the
# repository; the workshop project is then imported under a private alias. Importing it before any test runs keeps
# that true whatever order tests run in (whichever root loads first would otherwise claim the name).
importlib.import_module("nodes")

ROOT = Path(__file__).resolve().parent / "projects" / "workshop"
REPOSITORY = Path(__file__).resolve().parent.parent  # the shipped contracts and nodes


@functools.cache
def workshop() -> ContractSet:
    return load_contracts(ROOT, env={})


def harness(*nodes: str, **settings: Any) -> Harness:
    return Harness(list(nodes), root=ROOT, contracts=workshop(), **settings)


def hosted_monitor(h: Harness) -> NodeMonitor:
    """The hosted monitor as its class, by cast: under the private alias its class is a copy isinstance would miss."""
    return cast("NodeMonitor", h.runtime.node("monitor"))


def pulse(node_id: str = "n1", **fields: Any) -> dict[str, Any]:
    """A PULSE payload (the monitor's PULSE carries an ``onex.envelope.ModelNodeHeartbeat``)."""
    return {"node_id": node_id, **fields}


# --- lifecycle ---------------------------------------------------------------------------------------------------


@pytest.fixture
async def memory_bus() -> AsyncIterator[MemoryBus]:
    async with MemoryBus() as bus:
        yield bus


def monitor(bus: MemoryBus, tmp_path: Path) -> NodeMonitor:
    contract = workshop().get("monitor")
    cls = resolve_implementation(contract, root=ROOT)
    settings = Settings.load(environ={}, root=str(ROOT), heartbeat_interval_s=0, instance="t1")
    return cast(
        "NodeMonitor", cls(contract, bus=bus, store=open_store(f"sqlite:///{tmp_path}/onex.db"), settings=settings)
    )


@pytest.mark.anyio
async def test_a_node_moves_created_starting_running_draining_stopped(memory_bus: MemoryBus, tmp_path: Path) -> None:
    node = monitor(memory_bus, tmp_path)
    assert node.lifecycle is Lifecycle.CREATED

    await node.start()
    assert node.lifecycle is Lifecycle.RUNNING
    await node.drain()
    assert node.lifecycle is Lifecycle.DRAINING
    await node.stop()
    assert node.lifecycle is Lifecycle.STOPPED

    # Each hook ran in the state it belongs to; STARTING is only observable from inside on_start.
    assert node.hooks == [
        ("on_start", Lifecycle.STARTING),
        ("on_drain", Lifecycle.DRAINING),
        ("on_stop", Lifecycle.DRAINING),
    ]


@pytest.mark.anyio
async def test_illegal_lifecycle_moves_raise_lifecycle_error_naming_the_node_and_state(
    memory_bus: MemoryBus, tmp_path: Path
) -> None:
    node = monitor(memory_bus, tmp_path)
    await node.start()
    with pytest.raises(LifecycleError, match=r"^node monitor-1\.0\.0-t1: cannot go from running to starting$"):
        await node.start()

    await node.drain()
    with pytest.raises(LifecycleError, match="cannot go from draining to starting"):
        await node.start()

    await node.stop()
    with pytest.raises(LifecycleError, match="cannot go from stopped to starting"):
        await node.start()
    assert node.lifecycle is Lifecycle.STOPPED


@pytest.mark.anyio
async def test_a_node_that_never_started_may_stop(memory_bus: MemoryBus, tmp_path: Path) -> None:
    node = monitor(memory_bus, tmp_path)
    await node.stop()

    assert node.lifecycle is Lifecycle.STOPPED
    assert node.hooks == [("on_stop", Lifecycle.CREATED)]


@pytest.mark.anyio
async def test_stop_and_drain_are_idempotent(memory_bus: MemoryBus, tmp_path: Path) -> None:
    node = monitor(memory_bus, tmp_path)
    await node.start()
    await node.stop()
    await node.stop()
    await node.drain()

    assert node.lifecycle is Lifecycle.STOPPED
    assert [hook for hook, _ in node.hooks] == ["on_start", "on_drain", "on_stop"]


# --- handlers and payloads ---------------------------------------------------------------------------------------


@pytest.mark.anyio
async def test_a_handler_bound_from_consumes_receives_the_validated_payload_model() -> None:
    async with harness("monitor") as h:
        sent = await h.publish("PULSE", pulse("n1", active_operations="3"))
        await h.settle()
        node = hosted_monitor(h)

    [event] = node.pulses
    assert isinstance(event, Event)
    assert event.envelope.event_id == sent.event_id
    # The model, not the raw dict: the string "3" was validated into an int and defaults were filled in.
    assert event.payload == ModelNodeHeartbeat(node_id="n1", active_operations=3)


@pytest.mark.anyio
async def test_a_batch_handler_receives_a_sequence_of_events_with_validated_models() -> None:
    async with harness("monitor") as h:
        for i in range(3):
            await h.publish("PULSE_BURST", pulse(f"n{i}", active_operations=i), partition_key="burst")
        await h.settle()
        node = hosted_monitor(h)

    assert node.bursts, "the batch handler was never called"
    events = [event for batch in node.bursts for event in batch]
    assert all(isinstance(batch, Sequence) and not isinstance(batch, Event) for batch in node.bursts)
    assert all(isinstance(event, Event) for event in events)
    assert [e.payload for e in events] == [ModelNodeHeartbeat(node_id=f"n{i}", active_operations=i) for i in range(3)]


@pytest.mark.anyio
async def test_a_batch_handlers_calls_take_at_most_the_max_batch_its_contract_gives(tmp_path: Path) -> None:
    contract = workshop().get("monitor")
    events = contract.subcontracts.event_type
    assert events is not None
    consumes = tuple(
        spec.model_copy(update={"max_batch": 2}) if spec.event_name == "PULSE_BURST" else spec
        for spec in events.consumes
    )
    limited = contract.model_copy(
        update={"subcontracts": contract.subcontracts.model_copy(
            update={"event_type": events.model_copy(update={"consumes": consumes})})}
    )  # fmt: skip
    cls = resolve_implementation(limited, root=ROOT)
    settings = Settings.load(environ={}, root=str(ROOT), heartbeat_interval_s=0)
    async with MemoryBus() as bus:
        node = cls(limited, bus=bus, store=open_store(f"sqlite:///{tmp_path}/onex.db"), settings=settings)
        await node.start()
        try:
            bursts = [
                OnexEnvelopeV1(event_type="PULSE_BURST", source_node_id="t", partition_key="b", payload=pulse(f"n{i}"))
                for i in range(5)
            ]
            await bus.publish_many(node.topic("PULSE_BURST"), bursts)  # one partition, all waiting at once
            await bus.join()
        finally:
            await node.stop()

    sizes = [len(batch) for batch in cast("NodeMonitor", node).bursts]
    assert sum(sizes) == 5
    assert max(sizes) == 2  # without max_batch, the bus's 500: one call of five


@pytest.mark.anyio
async def test_an_envelope_carries_its_payload_model_and_a_copy_off_the_wire_is_validated_anew() -> None:
    async with harness("monitor") as h:
        node = hosted_monitor(h)
        codec = node._publications["NODE_HEARTBEAT"].codec
        model = ModelNodeHeartbeat(node_id="n1", active_operations=1)
        envelope = node.envelope("NODE_HEARTBEAT", model)

        # In process the envelope carries the very model, and a consumer gets it without validating it again.
        assert envelope.payload is model
        assert codec.decode(envelope) is model
        # Off the wire (JSON, as from Kafka) the payload is a dict, validated into a new model.
        copy = OnexEnvelopeV1.from_json(envelope.to_json())
        assert copy.payload == {
            "node_id": "n1",
            **{k: v for k, v in model.model_dump(mode="json").items() if k != "node_id"},
        }
        assert codec.decode(copy) == model
        assert codec.decode(copy) is not model
        # A dict given to envelope() is validated into the model; a wrong one is refused, naming the field.
        built = node.envelope("NODE_HEARTBEAT", {"node_id": "n2"})
        assert type(built.payload) is ModelNodeHeartbeat
        with pytest.raises(PayloadError, match="active_operations"):
            node.envelope("NODE_HEARTBEAT", {"node_id": "n2", "active_operations": "lots"})


@pytest.mark.anyio
async def test_a_payload_that_fails_its_model_is_dead_lettered_at_once_and_the_next_message_is_handled() -> None:
    async with harness("monitor") as h:
        on_dlq: list[OnexEnvelopeV1] = []

        async def record(envelope: OnexEnvelopeV1) -> None:
            on_dlq.append(envelope)

        await h.bus.subscribe([dlq_topic(h.topic("PULSE"))], "test.dlq", handler=record)
        bad = await h.publish("PULSE", pulse("n1", active_operations="lots"))
        good = await h.publish("PULSE", pulse("n2", active_operations=1))
        await h.settle()
        node = hosted_monitor(h)
        retried = h.bus.statistics().retried

    [dead] = h.dead_letters()
    assert dead.event_type == DEAD_LETTER_EVENT
    assert dead.payload["original_topic"] == h.topic("PULSE")
    assert dead.payload["original"]["event_id"] == str(bad.event_id)
    assert dead.payload["error_type"] == "PayloadError"
    assert str(bad.event_id) in dead.payload["error"]
    assert "active_operations" in dead.payload["error"]
    assert dead.payload["attempts"] == 1
    assert dead.causation_id == bad.event_id
    assert [e.event_id for e in on_dlq] == [dead.event_id]  # on `<topic>.dlq` of the topic it came from
    # The contract allows 3 attempts, yet the bad payload was never retried and never reached the handler.
    assert retried == 0
    assert [e.envelope.event_id for e in node.pulses] == [good.event_id]


@pytest.mark.anyio
async def test_a_bad_payload_in_a_batch_is_dead_lettered_and_the_rest_of_the_batch_is_handled() -> None:
    async with harness("monitor") as h:
        await h.publish("PULSE_BURST", pulse("n1"), partition_key="burst")
        bad = await h.publish("PULSE_BURST", {"active_operations": 2}, partition_key="burst")
        await h.publish("PULSE_BURST", pulse("n3"), partition_key="burst")
        await h.settle()
        node = hosted_monitor(h)

    [dead] = h.dead_letters()
    assert dead.payload["original"]["event_id"] == str(bad.event_id)
    assert "node_id" in dead.payload["error"]
    assert [e.payload.node_id for batch in node.bursts for e in batch] == ["n1", "n3"]


@pytest.mark.anyio
async def test_an_inline_payload_schema_validates_what_is_consumed() -> None:
    async with harness("monitor") as h:
        missing = await h.publish("NOTE", {})
        wrong_type = await h.publish("NOTE", {"text": 5})
        await h.publish("NOTE", {"text": "all quiet"})
        await h.settle()
        node = hosted_monitor(h)

    assert node.notes == [{"text": "all quiet"}]
    errors = {d.payload["original"]["event_id"]: d.payload["error"] for d in h.dead_letters()}
    assert errors.keys() == {str(missing.event_id), str(wrong_type.event_id)}
    assert "'text' is a required property" in errors[str(missing.event_id)]
    assert "text: 5 is not of type 'string'" in errors[str(wrong_type.event_id)]


@pytest.mark.anyio
async def test_publishing_an_event_the_contract_does_not_publish_raises() -> None:
    async with harness("monitor") as h:
        node = hosted_monitor(h)
        with pytest.raises(OnexError, match="node monitor does not publish 'GREETED'"):
            await node.publish("GREETED", {"name": "ada", "greeting": "hi"})
        # Consuming an event does not entitle a node to publish it.
        with pytest.raises(OnexError, match="does not publish 'PULSE'"):
            await node.publish("PULSE", pulse())
        await h.settle()

    assert h.of("GREETED") == []
    assert h.of("PULSE") == []


@pytest.mark.anyio
async def test_publishing_a_payload_that_violates_its_model_or_schema_raises_payload_error() -> None:
    async with harness("monitor") as h:
        node = hosted_monitor(h)
        with pytest.raises(PayloadError, match=r"RELAYED_PULSE.*active_operations") as model_error:
            await node.publish("RELAYED_PULSE", pulse("n1", active_operations="lots"))
        with pytest.raises(PayloadError, match="expected ModelNodeHeartbeat, got ModelNodeIntrospection"):
            await node.publish(
                "RELAYED_PULSE",
                ModelNodeIntrospection(node_id="n1", node_name="n", node_type="COMPUTE", node_version="1.0.0"),
            )
        with pytest.raises(PayloadError, match=r"ALERT.*'loud' is not one of"):
            await node.publish("ALERT", {"node_id": "n1", "level": "loud"})
        await h.settle()

    assert model_error.value.event_type == "RELAYED_PULSE"
    assert h.of("RELAYED_PULSE") == []
    assert h.of("ALERT") == []


@pytest.mark.anyio
async def test_partition_key_comes_from_the_payload_field_the_contract_names() -> None:
    async with harness("monitor") as h:
        node = hosted_monitor(h)
        by_contract = await node.publish("RELAYED_PULSE", ModelNodeHeartbeat(node_id="n7"))
        by_schema = await node.publish("ALERT", {"node_id": "n8", "level": "info"})
        explicit = await node.publish("ALERT", {"node_id": "n8", "level": "info"}, partition_key="override")
        await h.settle()

    assert by_contract.partition_key == "n7"
    assert by_schema.partition_key == "n8"
    assert explicit.partition_key == "override"
    assert [e.partition_key for e in h.of("RELAYED_PULSE")] == ["n7"]


@pytest.mark.anyio
async def test_fsm_transitions_caused_by_a_handler_are_published_after_the_handler_returned() -> None:
    async with harness("monitor") as h:
        sent = await h.publish("PULSE", pulse("n1", active_operations=11))
        await h.settle()
        node = hosted_monitor(h)

    # While the handler ran, after its transitions, the bus accepted only what the handler itself published.
    assert node.published_during_handler == [2]  # RELAYED_PULSE and ALERT
    transitions = h.transitions(sent.correlation_id)
    assert [(t["entity_id"], t["from_state"], t["to_state"], t["trigger"]) for t in transitions] == [
        ("n1", "unseen", "watching", "see"),
        ("n1", "watching", "alarmed", "alarm"),
    ]
    assert {t["entity_type"] for t in transitions} == {"monitor"}
    # The guarded transition's entry action ran, and the handler saw the state it led to.
    assert node.alarms == ["n1"]
    [alert] = h.of("ALERT")
    assert alert.payload == {"node_id": "n1", "level": "warn"}


@pytest.mark.anyio
async def test_a_trigger_whose_guard_fails_moves_nothing_and_publishes_no_transition() -> None:
    async with harness("monitor") as h:
        sent = await h.publish("PULSE", pulse("n1", active_operations=1))
        await h.settle()
        node = hosted_monitor(h)

    assert [t["to_state"] for t in h.transitions(sent.correlation_id)] == ["watching"]
    assert node.watched["n1"].state == "watching"
    assert h.of("ALERT") == []


# --- introspection and heartbeats --------------------------------------------------------------------------------


@pytest.mark.anyio
async def test_a_node_publishes_its_introspection_with_capabilities_at_start() -> None:
    async with harness("monitor") as h:
        await h.settle()
        node = hosted_monitor(h)
        [intro] = h.of("NODE_INTROSPECTION")

    assert intro.source_node_id == node.node_id
    assert intro.partition_key == node.node_id
    payload = intro.payload
    assert (payload["node_id"], payload["node_name"], payload["node_type"], payload["node_version"]) == (
        node.node_id,
        "monitor",
        "COMPUTE",
        "1.0.0",
    )
    assert payload["reason"] == "startup"
    assert payload["capabilities"] == {
        "consumes": ["PULSE", "PULSE_BURST", "NOTE"],
        "publishes": ["RELAYED_PULSE", "ALERT"],
        "fsm_states": ["unseen", "watching", "alarmed"],
    }


@pytest.mark.anyio
async def test_a_node_heartbeats_every_interval_and_publishes_stopped_when_it_stops() -> None:
    async with harness("monitor", heartbeat_interval_s=0.05) as h:
        node = hosted_monitor(h)

        def beats() -> list[OnexEnvelopeV1]:
            return [e for e in h.of("NODE_HEARTBEAT") if e.payload["node_id"] == node.node_id]

        await h.wait_for("NODE_HEARTBEAT", lambda _: len(beats()) >= 3, timeout=5)
        periodic = beats()[:3]
        await node.stop()
        await h.settle()
        after_stop = beats()

    assert [b.payload["health_status"] for b in periodic] == ["HEALTHY"] * 3
    stamps = [b.event_timestamp for b in periodic]
    # Periodic, not a burst: consecutive heartbeats are (at least about) one interval apart.
    assert all((later - earlier).total_seconds() >= 0.04 for earlier, later in itertools.pairwise(stamps))
    assert after_stop[-1].payload["health_status"] == "STOPPED"
    assert [b.payload["health_status"] for b in after_stop].count("STOPPED") == 1


@pytest.mark.anyio
async def test_without_a_heartbeat_interval_a_node_only_heartbeats_when_it_stops() -> None:
    async with harness("monitor", heartbeat_interval_s=0.0) as h:
        node = hosted_monitor(h)
        await node.stop()
        await h.settle()

    assert [e.payload["health_status"] for e in h.of("NODE_HEARTBEAT")] == ["STOPPED"]


# --- effects -----------------------------------------------------------------------------------------------------


@pytest.mark.anyio
async def test_an_effect_node_is_degraded_while_its_circuit_breaker_is_open() -> None:
    async with harness("mailer") as h:
        mailer = cast("NodeMailer", h.runtime.node("mailer"))
        await h.publish("SEND_MAIL", {"to": "ada@example.test"})
        await h.settle()
        healthy = mailer.health()

        # failure_threshold is 2 in the contract; retries are off, so each bounce is one failure.
        for to in ("x@bounce.test", "y@bounce.test"):
            await h.publish("SEND_MAIL", {"to": to})
        await h.settle()
        degraded = mailer.health()

        await h.publish("SEND_MAIL", {"to": "bo@example.test"})
        await h.settle()
        await mailer.publish_heartbeat()
        await h.settle()

    assert healthy == "HEALTHY"
    assert degraded == "DEGRADED"
    # While open, the breaker refuses without calling the mail server.
    assert mailer.attempts == ["ada@example.test", "x@bounce.test", "y@bounce.test"]
    assert mailer.outbox == ["ada@example.test"]
    errors = [d.payload["error_type"] for d in h.dead_letters()]
    assert errors == ["ConnectionError", "ConnectionError", "CircuitOpenError"]
    beats = [e.payload["health_status"] for e in h.of("NODE_HEARTBEAT") if e.source_node_id == mailer.node_id]
    assert beats[0] == "DEGRADED"


@pytest.mark.anyio
async def test_the_stamping_effect_guards_a_batch_with_its_event_types_own_breaker(
    memory_bus: MemoryBus, tmp_path: Path
) -> None:
    shipped = load_contract(REPOSITORY / "contracts" / "effects" / "stamping_effect.yaml", root=REPOSITORY)
    data = shipped.model_dump(exclude_unset=True)
    [stamp_file] = data["subcontracts"]["event_type"]["consumes"]
    stamp_file["resilience"] = {"circuit_breaker": {"failure_threshold": 1, "reset_timeout_ms": 1_000}}
    contract = Contract.model_validate(data)
    clock = ManualClock()
    settings = Settings.load(environ={}, root=str(REPOSITORY), heartbeat_interval_s=0, stamp_roots=(tmp_path,))
    store = open_store(f"sqlite:///{tmp_path}/onex.db")
    node = NodeStampingEffect(contract, bus=memory_bus, store=store, settings=settings, clock=clock)
    own = node.breaker_for("STAMP_FILE")
    assert own is not node.breaker
    command = ModelStampCommand(workflow_id=uuid.uuid4(), content="hello", namespace="ns")
    envelope = OnexEnvelopeV1(event_type="STAMP_FILE", source_node_id="test", payload=command.model_dump(mode="json"))
    handle = node.handle_stamp_file
    await node.start()
    try:
        own.record_failure()  # its threshold: STAMP_FILE's breaker is open, the node's closed
        with pytest.raises(CircuitOpenError):
            await handle([Event(envelope, command)])
        await clock.advance(1.0)  # half-open: the next batch is its trial
        await handle([Event(envelope, command)])
        assert (own.state, node.breaker.state) == (BreakerState.CLOSED, BreakerState.CLOSED)
    finally:
        await node.stop()


# --- blocked -----------------------------------------------------------------------------------------------------


@pytest.mark.anyio
async def test_a_payload_model_from_the_projects_own_nodes_package_is_used() -> None:
    async with harness("guestbook") as h:
        await h.publish("GUESTBOOK_SIGNED", {"name": "ada", "message": "lovely"})
        await h.settle()
        node = cast("NodeGuestbook", h.runtime.node("guestbook"))

    [signature] = node.signatures
    assert type(signature).__name__ == "ModelSignature"
    assert (signature.name, signature.message) == ("ada", "lovely")
