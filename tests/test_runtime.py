"""Hosting (``onex.runtime``), the public test harness (``onex.testing.Harness``) and the shipped registry node.

Runtime and harness tests host the small nodes of ``tests/projects/workshop``; the registry tests host the
repository's own ``registry`` node (``nodes/registry``), with fake remote nodes played by the test.
"""

from __future__ import annotations

import functools
import gc
import importlib
import sys
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

import pytest
from onex.bus import BusState, MemoryBus
from onex.contracts import ContractSet, load_contracts
from onex.envelope import OnexEnvelopeV1, topic_name
from onex.exceptions import BusError, ContractError
from onex.nodes import Lifecycle
from onex.runtime import SWITCH_INTERVAL_S, Runtime, select, tune_process
from onex.settings import Settings
from onex.testing import Harness

from nodes.registry.v1_0_0.node import NodeRegistry

if TYPE_CHECKING:
    # For annotations only: at run time the workshop's classes are those of its private alias (see below), copies
    # isinstance would not recognise, so the tests cast to them.
    from tests.projects.workshop.nodes.census.v1_0_0.node import NodeCensus
    from tests.projects.workshop.nodes.greeter.v1_1_0.node import NodeGreeter

# See tests/test_nodes.py: the repository's `nodes` package owns the name, the workshop gets a private alias.
importlib.import_module("nodes")

TESTS = Path(__file__).resolve().parent
ROOT = TESTS / "projects" / "workshop"
REPOSITORY = TESTS.parent


@functools.cache
def workshop() -> ContractSet:
    return load_contracts(ROOT, env={})


def settings(tmp_path: Path, **flags: Any) -> Settings:
    return Settings.load(
        environ={}, root=str(ROOT), store=f"sqlite:///{tmp_path}/onex.db", heartbeat_interval_s=0, **flags
    )


# --- selecting ---------------------------------------------------------------------------------------------------


def test_tune_process_raises_the_young_generation_freezes_start_up_and_shortens_the_switch_interval() -> None:
    thresholds, interval = gc.get_threshold(), sys.getswitchinterval()
    try:
        tune_process()
        assert gc.get_threshold() == (100_000, 50, 1_000)
        assert gc.get_freeze_count() > 0
        assert sys.getswitchinterval() == pytest.approx(SWITCH_INTERVAL_S)
        assert SWITCH_INTERVAL_S < 0.005  # CPython's default, which kept SQLite's writer waiting (tune_process)
    finally:
        gc.unfreeze()
        gc.set_threshold(*thresholds)
        sys.setswitchinterval(interval)


def test_select_takes_a_nodes_highest_version_unless_a_version_is_given() -> None:
    [latest] = select(workshop(), ["greeter"])
    [pinned] = select(workshop(), ["greeter"], version="1.0.0")

    assert (latest.name, latest.version) == ("greeter", "1.1.0")
    assert (pinned.name, pinned.version) == ("greeter", "1.0.0")


def test_select_with_an_empty_list_hosts_nothing_and_with_none_every_nodes_highest_version() -> None:
    assert select(workshop(), []) == []
    everything = select(workshop(), None)
    assert sorted((c.name, c.version) for c in everything) == [
        ("assembler", "1.0.0"),
        ("census", "1.0.0"),
        ("greeter", "1.1.0"),
        ("guestbook", "1.0.0"),
        ("mailer", "1.0.0"),
        ("monitor", "1.0.0"),
        ("tally", "1.0.0"),
    ]


def test_select_refuses_a_node_named_twice() -> None:
    with pytest.raises(ValueError, match=r"node 'greeter' named more than once: a process hosts one of each"):
        select(workshop(), ["greeter", "tally", "greeter"])


def test_select_names_what_exists_when_a_node_or_version_does_not() -> None:
    with pytest.raises(LookupError, match=r"no contract named 'nobody' \(known: assembler, census, greeter"):
        select(workshop(), ["nobody"])
    with pytest.raises(LookupError, match=r"'greeter' has no version 9\.9\.9 \(available: 1\.0\.0, 1\.1\.0\)"):
        select(workshop(), ["greeter"], version="9.9.9")


def test_select_orders_the_shipped_nodes_consumers_before_producers() -> None:
    shipped = load_contracts(REPOSITORY, env={})
    chosen = select(shipped, ["orchestrator", "stamping_effect", "registry", "database_adapter_effect", "reducer"])

    assert [c.name for c in chosen] == [
        "database_adapter_effect",
        "registry",
        "reducer",
        "stamping_effect",
        "orchestrator",
    ]


# --- hosting -----------------------------------------------------------------------------------------------------


async def greetings(rt: Runtime) -> list[OnexEnvelopeV1]:
    """Subscribe to GREETED on the runtime's bus; the returned list fills as greetings are published."""
    seen: list[OnexEnvelopeV1] = []

    async def record(envelope: OnexEnvelopeV1) -> None:
        seen.append(envelope)

    await rt.bus.subscribe([topic_name("GREETED")], "test.greetings", handler=record)
    return seen


def greet_request(name: str) -> OnexEnvelopeV1:
    return OnexEnvelopeV1(event_type="GREET_REQUESTED", source_node_id="test", payload={"name": name})


@pytest.mark.anyio
@pytest.mark.parametrize(("version", "greeting"), [(None, "hi, ada"), ("1.0.0", "hello, ada")])
async def test_the_runtime_hosts_the_selected_version_of_a_node(
    tmp_path: Path, version: str | None, greeting: str
) -> None:
    async with Runtime(settings(tmp_path), nodes=["greeter"], version=version, contracts=workshop()) as rt:
        seen = await greetings(rt)
        await rt.bus.publish(topic_name("GREET_REQUESTED", cls="cmd"), greet_request("ada"))
        assert isinstance(rt.bus, MemoryBus)
        await rt.bus.join()
        [node] = rt.nodes

    assert node.contract.version == (version or "1.1.0")
    [greeted] = seen
    assert greeted.payload == {"name": "ada", "greeting": greeting}
    assert greeted.source_version == node.contract.version
    assert greeted.partition_key == "ada"


@pytest.mark.anyio
async def test_a_runtime_that_selects_no_nodes_hosts_nothing(tmp_path: Path) -> None:
    async with Runtime(settings(tmp_path), nodes=[], contracts=workshop()) as rt:
        assert rt.nodes == []
        with pytest.raises(LookupError, match="node 'greeter' is not hosted here"):
            rt.node("greeter")


@pytest.mark.anyio
async def test_the_runtime_opens_its_own_bus_and_migrated_store_from_settings_and_closes_them(
    tmp_path: Path,
) -> None:
    async with Runtime(settings(tmp_path), nodes=["greeter"], contracts=workshop()) as rt:
        assert isinstance(rt.bus, MemoryBus)
        assert await rt.store.count("node_registrations") == 0  # migrated: the table exists
        node = rt.node("greeter")
        assert node.lifecycle is Lifecycle.RUNNING

    assert (tmp_path / "onex.db").exists()
    assert node.lifecycle is Lifecycle.STOPPED
    with pytest.raises(BusError):
        await rt.bus.publish(topic_name("GREET_REQUESTED", cls="cmd"), greet_request("late"))


@pytest.mark.anyio
async def test_a_node_whose_stop_raises_leaves_the_others_stopped_and_the_bus_and_store_closed(tmp_path: Path) -> None:
    rt = Runtime(settings(tmp_path), nodes=["greeter", "tally"], contracts=workshop())
    await rt.start()
    failing, other = rt.node("tally"), rt.node("greeter")  # stopped in reverse start order: tally first

    async def broken() -> None:
        raise RuntimeError("on_stop failed")

    failing.on_stop = broken  # type: ignore[method-assign]

    with pytest.raises(RuntimeError, match="on_stop failed"):
        await rt.stop()

    assert other.lifecycle is Lifecycle.STOPPED
    assert rt.bus.state is BusState.CLOSED
    assert "closed" in (await rt.store.health()).detail


@pytest.mark.anyio
async def test_every_hosted_node_subscribes_before_any_node_announces_itself() -> None:
    # census is started last: had the others announced as they started, it would have missed them.
    async with Harness(["monitor", "greeter", "census"], root=ROOT, contracts=workshop()) as h:
        await h.settle()
        census = cast("NodeCensus", h.runtime.node("census"))
        ids = {n.contract.name: n.node_id for n in h.runtime.nodes}

    assert [n for n in ("monitor", "greeter", "census") if n in ids] == ["monitor", "greeter", "census"]
    assert [n.contract.name for n in h.runtime.nodes] == ["monitor", "greeter", "census"]
    assert sorted(census.seen) == sorted((node_id, "startup") for node_id in ids.values())


@pytest.mark.anyio
async def test_drain_handles_everything_published_so_far_then_takes_nothing_more(tmp_path: Path) -> None:
    names = [f"guest{i}" for i in range(50)]
    async with Runtime(settings(tmp_path), nodes=["greeter"], contracts=workshop()) as rt:
        seen = await greetings(rt)
        request_topic = topic_name("GREET_REQUESTED", cls="cmd")
        for name in names:
            await rt.bus.publish(request_topic, greet_request(name))

        await rt.drain()
        node = cast("NodeGreeter", rt.node("greeter"))
        drained = sorted(node.greeted)
        lifecycle = node.lifecycle
        await rt.bus.publish(request_topic, greet_request("after drain"))
        assert isinstance(rt.bus, MemoryBus)
        await rt.bus.join()

    assert drained == sorted(names)
    assert sorted(e.payload["name"] for e in seen) == sorted(names)  # what they published was handled too
    assert lifecycle is Lifecycle.DRAINING
    assert "after drain" not in node.greeted


# --- the harness -------------------------------------------------------------------------------------------------


@pytest.mark.anyio
async def test_the_harness_publishes_records_and_waits_for_events() -> None:
    async with Harness(["greeter", "monitor"], root=ROOT, contracts=workshop()) as h:
        request = await h.publish("GREET_REQUESTED", {"name": "ada"})
        await h.publish("GREET_REQUESTED", {"name": "bo"})

        bo = await h.wait_for("GREETED", lambda e: e.payload["name"] == "bo")
        again = await h.wait_for("GREETED", lambda e: e.payload["name"] == "bo")  # already recorded: at once
        first = await h.wait_for("GREETED")
        with pytest.raises(TimeoutError):
            await h.wait_for("GREETED", lambda e: e.payload["name"] == "cy", timeout=0.05)
        await h.settle()

    assert bo.payload == {"name": "bo", "greeting": "hi, bo"}
    assert again is bo
    assert first.payload["name"] in ("ada", "bo")
    assert request.source_node_id == "onex.testing"
    assert request.event_id in {e.event_id for e in h.of("GREET_REQUESTED")}
    names = [name for name, _ in h.events]
    assert names.count("GREET_REQUESTED") == 2
    assert names.count("GREETED") == 2
    assert names.count("NODE_INTROSPECTION") == 2
    assert h.topic("GREETED") == "dev.omninode_bridge.onex.evt.greeted.v1"


@pytest.mark.anyio
async def test_the_harness_lists_dead_letters_and_a_workflows_transitions() -> None:
    async with Harness(["monitor"], root=ROOT, contracts=workshop()) as h:
        cid = uuid.uuid4()
        bad = await h.publish("NOTE", {"text": 1})
        await h.publish("PULSE", {"node_id": "n1", "active_operations": 20}, correlation_id=cid)
        await h.publish("PULSE", {"node_id": "n2"})  # another correlation id
        await h.settle()

    [dead] = h.dead_letters()
    assert dead.causation_id == bad.event_id
    assert [(t["entity_id"], t["to_state"]) for t in h.transitions(cid)] == [("n1", "watching"), ("n1", "alarmed")]
    assert h.transitions(None) == []


@pytest.mark.anyio
async def test_the_harness_records_what_its_nodes_publish_while_they_stop() -> None:
    async with Harness(["monitor", "greeter"], root=ROOT, contracts=workshop()) as h:
        ids = sorted(n.node_id for n in h.runtime.nodes)

    stopped = [e.payload["node_id"] for e in h.of("NODE_HEARTBEAT") if e.payload["health_status"] == "STOPPED"]
    assert sorted(stopped) == ids


@pytest.mark.anyio
async def test_a_harness_whose_node_fails_to_start_raises_and_releases_everything() -> None:
    greeter = workshop().get("greeter", "1.0.0")
    broken = greeter.model_copy(update={"implementation": "nodes.greeter.v1_0_0.node:NoSuchClass"})

    with pytest.raises(ContractError, match="implementation-missing"):
        async with Harness(["greeter"], root=ROOT, contracts=ContractSet(ROOT, [broken])):
            pass  # pragma: no cover
    # A leaked SQLite thread, bus worker or temporary directory warns when collected; warnings are errors here.
    gc.collect()


@pytest.mark.anyio
async def test_a_harness_asked_for_an_unknown_node_raises_and_leaves_nothing_behind() -> None:
    with pytest.raises(LookupError, match="no contract named 'nobody'"):
        Harness(["nobody"], root=ROOT, contracts=workshop())
    gc.collect()


# --- the shipped registry ----------------------------------------------------------------------------------------


@functools.cache
def shipped(**env: str) -> ContractSet:
    return load_contracts(REPOSITORY, env=env)


@pytest.fixture
async def registry_harness(request: pytest.FixtureRequest) -> AsyncIterator[Harness]:
    """The shipped registry and stamping effect, settled after start.

    Indirect parameter ``(heartbeat_interval_s, registry sweep interval in ms)``, by default ``(0.05, 1000)``.
    """
    interval, sweep_ms = getattr(request, "param", (0.05, 1000))
    contracts = shipped(ONEX_REGISTRY_SWEEP_MS=str(sweep_ms))
    async with Harness(
        ["registry", "stamping_effect"], root=REPOSITORY, contracts=contracts, heartbeat_interval_s=interval
    ) as h:
        await h.settle()
        yield h


class RecordingBus(MemoryBus):
    """A memory bus that notes each subscription's group and whether it was asked for as a background one, and the
    groups that asked for a batch handler's call a topic (``join_topics=False``)."""

    def __init__(self) -> None:
        super().__init__()
        self.asked: list[tuple[str, bool]] = []
        self.apart: set[str] = set()

    async def subscribe(self, topics: Any, group: str, **kwargs: Any) -> Any:
        self.asked.append((group, kwargs.get("background", False)))
        if not kwargs.get("join_topics", True):
            self.apart.add(group)
        return await super().subscribe(topics, group, **kwargs)


@pytest.mark.anyio
async def test_control_plane_subscriptions_are_background_ones_and_the_hot_path_is_not(tmp_path: Path) -> None:
    """On Kafka a background consumer polls an idle topic far less often (``KafkaBus.from_url``): every node's answer
    to introspection requests, the registry's heartbeats and introspections and its cache of them are; what a
    workflow waits for is not."""
    config = Settings.load(environ={}, root=str(REPOSITORY), store=f"sqlite:///{tmp_path}/onex.db")
    async with (
        RecordingBus() as bus,
        Runtime(
            config.with_(heartbeat_interval_s=0), nodes=["registry", "orchestrator"], contracts=shipped(), bus=bus
        ) as rt,
    ):
        registry, orchestrator = (rt.node(name).node_id for name in ("registry", "orchestrator"))

    asked = sorted(bus.asked)
    assert asked == sorted(
        [
            (f"{registry}.introspection", True),
            (f"{registry}.cache", True),
            ("dev.registry", True),  # NODE_HEARTBEAT
            ("dev.registry", True),  # NODE_INTROSPECTION
            (f"{orchestrator}.introspection", True),
            ("dev.orchestrator", False),  # requests and step results
        ]
    )


@pytest.mark.anyio
async def test_the_orchestrator_takes_a_topic_a_call_and_the_sinks_join_their_topics(tmp_path: Path) -> None:
    """An orchestrator's requests and results in one call would hold the requests' commands back until the results
    are handled; the database adapter and the reducer, whose output nobody waits on, take every topic in one call."""
    config = Settings.load(environ={}, root=str(REPOSITORY), store=f"sqlite:///{tmp_path}/onex.db")
    nodes = ["orchestrator", "database_adapter_effect", "reducer"]
    async with (
        RecordingBus() as bus,
        Runtime(config.with_(heartbeat_interval_s=0), nodes=nodes, contracts=shipped(), bus=bus),
    ):
        pass

    assert bus.apart == {"dev.orchestrator"}
    assert {"dev.database_adapter_effect", "dev.reducer"} <= {group for group, _ in bus.asked}


def hosted_registry(h: Harness) -> NodeRegistry:
    """The shipped registry as its class (the repository's own `nodes` package, so the very class, not a copy)."""
    registry = h.runtime.node("registry")
    assert isinstance(registry, NodeRegistry)
    return registry


def transition_of(entity_id: str, to_state: str, from_state: str | None = None) -> Any:
    """A predicate: a STATE_TRANSITION event (a batch) holding ``entity_id``'s move to ``to_state``."""
    return lambda e: any(
        t["entity_id"] == entity_id and t["to_state"] == to_state and from_state in (None, t["from_state"])
        for t in e.payload["transitions"]
    )


async def introspect_ghost(h: Harness, node_id: str = "ghost-1.0.0-elsewhere") -> str:
    """Play a node hosted in another process that introspects once and is then never heard of again."""
    await h.publish(
        "NODE_INTROSPECTION",
        {"node_id": node_id, "node_name": "ghost", "node_type": "COMPUTE", "node_version": "1.0.0"},
        partition_key=node_id,
    )
    await h.settle()
    return node_id


@pytest.mark.anyio
async def test_the_registry_lists_the_nodes_that_introspect_and_heartbeat(registry_harness: Harness) -> None:
    h = registry_harness
    registry = hosted_registry(h)
    effect = h.runtime.node("stamping_effect")
    await h.wait_for(
        "NODE_HEARTBEAT", lambda _: sum(e.source_node_id == effect.node_id for e in h.of("NODE_HEARTBEAT")) >= 2
    )
    await h.settle()

    assert registry.alive() == sorted([registry.node_id, effect.node_id])
    rows = {r.node_id: r for r in await h.store.list_registrations()}
    assert rows.keys() == {registry.node_id, effect.node_id}
    assert rows[effect.node_id].health_status == "HEALTHY"
    assert rows[effect.node_id].node_type == "EFFECT"
    assert rows[effect.node_id].capabilities["consumes"] == ["STAMP_FILE"]
    assert rows[effect.node_id].last_heartbeat is not None


@pytest.mark.anyio
@pytest.mark.parametrize("registry_harness", [(10.0, 1000)], indirect=True)
async def test_expire_stale_marks_nodes_without_a_recent_heartbeat_stale(registry_harness: Harness) -> None:
    h = registry_harness
    registry = hosted_registry(h)
    ghost = await introspect_ghost(h)
    assert ghost in registry.alive()

    await h.settle()
    heard = {r.node_id: r.last_heartbeat for r in await h.store.list_registrations()}

    # Stale after 3 missed heartbeats of 10 s each: not now, but 31 s from now (decided on the stored heartbeats).
    now = datetime.now(UTC)
    assert await registry.expire_stale(now=now) == []
    expired = await registry.expire_stale(now=now + timedelta(seconds=31))

    assert sorted(expired) == sorted([ghost, *(n.node_id for n in h.runtime.nodes)])
    assert registry.known[ghost].state == "stale"
    assert registry.known[ghost].history[-1].from_state == "alive"
    assert registry.alive() == []
    assert await registry.expire_stale(now=now + timedelta(seconds=62)) == []  # already stale: nothing to expire
    rows = {r.node_id: r for r in await h.store.list_registrations()}
    assert {node_id: row.health_status for node_id, row in rows.items()} == dict.fromkeys(expired, "STALE")
    # Marking a node stale is not a heartbeat: last_heartbeat still holds the time of the last one.
    assert {node_id: row.last_heartbeat for node_id, row in rows.items()} == heard


@pytest.mark.anyio
@pytest.mark.parametrize("registry_harness", [(0.1, 20)], indirect=True)
async def test_the_registry_sweeper_marks_a_silent_node_stale_in_the_store_and_a_heartbeat_revives_it(
    registry_harness: Harness,
) -> None:
    h = registry_harness
    registry = hosted_registry(h)
    ghost = await introspect_ghost(h)

    # Heartbeats every 100 ms, stale after 3 missed ones, swept every 20 ms: the ghost goes stale within a second.
    await h.wait_for("STATE_TRANSITION", transition_of(ghost, "stale"), timeout=5)
    await h.settle()
    stale_rows = {r.node_id: r.health_status for r in await h.store.list_registrations()}
    alive_while_stale = registry.alive()

    await h.publish("NODE_HEARTBEAT", {"node_id": ghost, "health_status": "HEALTHY"}, partition_key=ghost)
    await h.wait_for("STATE_TRANSITION", transition_of(ghost, "alive", from_state="stale"))
    await h.settle()

    assert stale_rows[ghost] == "STALE"
    assert stale_rows[h.runtime.node("stamping_effect").node_id] == "HEALTHY"  # it kept heartbeating
    assert ghost not in alive_while_stale
    assert ghost in registry.alive()
    assert {r.node_id: r.health_status for r in await h.store.list_registrations()}[ghost] == "HEALTHY"


@pytest.mark.anyio
async def test_a_stopped_heartbeat_deregisters_the_node(registry_harness: Harness) -> None:
    h = registry_harness
    registry = hosted_registry(h)
    effect = h.runtime.node("stamping_effect")

    await effect.stop()
    await h.wait_for("STATE_TRANSITION", transition_of(effect.node_id, "deregistered"), timeout=5)
    await h.settle()

    assert registry.known[effect.node_id].state == "deregistered"
    assert registry.alive() == [registry.node_id]
    rows = {r.node_id: r.health_status for r in await h.store.list_registrations()}
    assert rows[effect.node_id] == "STOPPED"

    # A redelivered STOPPED heartbeat changes nothing; a heartbeat under the same id afterwards is the node back (a
    # process restarted in place, same HOSTNAME and PID): a new life (tests/integration/test_registry.py).
    await h.publish(
        "NODE_HEARTBEAT", {"node_id": effect.node_id, "health_status": "STOPPED"}, partition_key=effect.node_id
    )
    await h.settle()
    assert registry.alive() == [registry.node_id]
    await h.publish("NODE_HEARTBEAT", {"node_id": effect.node_id}, partition_key=effect.node_id)
    await h.settle()
    assert registry.alive() == sorted([registry.node_id, effect.node_id])
