"""The registry node with a real SQLite store (``onex.testing.Harness``): what it writes when a write fails, a node
that restarts under the same id, the health an introspection keeps, its transitions across registry restarts, and what
it keeps in memory.

Its introspection, heartbeat and staleness cases with a running node are in ``tests/test_runtime.py``.
"""

from __future__ import annotations

import os
import socket
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from onex.exceptions import StoreError
from onex.nodes import EffectNode
from onex.store import WriteBatch
from onex.testing import Harness

from nodes.registry.v1_0_0.node import FORGET_AFTER_S, HISTORY_KEPT, NodeRegistry

pytestmark = pytest.mark.anyio

ROOT = Path(__file__).resolve().parents[2]
NODE = "stopping-1.0.0-elsewhere"
# A node id is name-version-HOSTNAME-PID: a container restarted in place (onex as PID 1) comes back under the same one.
POD = "stamping_effect-1.0.0-pod-a-1"


def introspection(node_id: str = POD, reason: str = "startup") -> dict[str, Any]:
    return {
        "node_id": node_id,
        "node_name": "stamping_effect",
        "node_type": "EFFECT",
        "node_version": "1.0.0",
        "reason": reason,
    }


# A bridge node (omninode_bridge): its introspection and heartbeat as its models (ModelNodeIntrospectionEvent,
# ModelNodeHeartbeatEvent) serialise them: lower-case node type and health, fields of their own, no reason, no name.
BRIDGE = "metadata-stamping-1"


def bridge_introspection() -> dict[str, Any]:
    return {
        "node_id": BRIDGE,
        "node_type": "effect",
        "node_role": None,
        "capabilities": {"hash_generation": {"algorithm": "BLAKE3"}},
        "endpoints": {"health": "http://localhost:8053/health"},
        "metadata": {"version": "1.0.0"},
        "timestamp": "2026-12-07T10:00:00+00:00",
        "correlation_id": None,
        "network_id": None,
        "deployment_id": "dev-001",
        "epoch": 1,
    }


def bridge_heartbeat(health_status: str) -> dict[str, Any]:
    return {
        "node_id": BRIDGE,
        "node_type": "effect",
        "health_status": health_status,
        "uptime_seconds": 12,
        "last_activity_timestamp": "2026-12-07T10:00:00+00:00",
        "active_operations": 0,
        "resource_usage": {},
        "metadata": {"version": "1.0.0"},
        "timestamp": "2026-12-07T10:00:00+00:00",
        "correlation_id": None,
    }


def hosted_registry(h: Harness) -> NodeRegistry:
    registry = h.runtime.node("registry")
    assert isinstance(registry, NodeRegistry)
    return registry


async def send(h: Harness, event_name: str, payload: dict[str, Any]) -> None:
    await h.publish(event_name, payload, partition_key=payload["node_id"])
    await h.settle()


async def stored_health(h: Harness, node_id: str = POD) -> tuple[str, Any]:
    row = {r.node_id: r for r in await h.store.list_registrations()}[node_id]
    return row.health_status, row.metadata.get("health_reason")


async def test_a_stopped_heartbeat_whose_write_failed_is_written_when_delivered_again(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    async with Harness(["registry"], root=ROOT, store_url=f"sqlite:///{tmp_path}/onex.db") as h:
        registry = h.runtime.node("registry")
        assert isinstance(registry, NodeRegistry)
        introspection = {"node_id": NODE, "node_name": "stopping", "node_type": "COMPUTE", "node_version": "1.0.0"}
        await h.publish("NODE_INTROSPECTION", introspection, partition_key=NODE)
        await h.settle()

        apply = h.store.apply
        refused: list[WriteBatch] = []

        async def refused_once(batch: WriteBatch) -> None:
            # Not StoreUnavailable (which the registry holds and retries): the batch fails, the bus delivers it again.
            if batch.heartbeats and not refused:
                refused.append(batch)
                raise StoreError("database disk image is malformed")
            await apply(batch)

        monkeypatch.setattr(h.store, "apply", refused_once)
        await h.publish("NODE_HEARTBEAT", {"node_id": NODE, "health_status": "STOPPED"}, partition_key=NODE)
        await h.settle()

        assert len(refused) == 1
        rows = {r.node_id: r.health_status for r in await h.store.list_registrations()}
        assert rows[NODE] == "STOPPED"
        assert registry.known[NODE].state == "deregistered"
        assert h.dead_letters() == []


@pytest.mark.parametrize("back_by", ["NODE_INTROSPECTION", "NODE_HEARTBEAT"])
async def test_a_node_that_stopped_and_comes_back_under_the_same_id_is_alive_again(
    tmp_path: Path, back_by: str
) -> None:
    async with Harness(
        ["registry", "database_adapter_effect"], root=ROOT, store_url=f"sqlite:///{tmp_path}/onex.db"
    ) as h:
        registry = hosted_registry(h)
        await send(h, "NODE_INTROSPECTION", introspection())
        await send(h, "NODE_HEARTBEAT", {"node_id": POD, "health_status": "STOPPED"})
        stopped = (registry.known[POD].state, POD in await registry.alive_nodes())

        # The restarted process introspects at start; its introspection may also reach another replica (or come
        # before its previous life's STOPPED heartbeat), when its heartbeats are what this one hears of it.
        await send(h, back_by, introspection() if back_by == "NODE_INTROSPECTION" else {"node_id": POD})
        await h.settle()

        assert stopped == ("deregistered", False)
        assert registry.known[POD].state == "alive"
        assert POD in registry.alive()
        assert POD in await registry.alive_nodes()
        assert await stored_health(h) == ("HEALTHY", "")
        # The new life's transitions are stored beside the first life's, not dropped as its duplicates.
        moves = [(t.from_state, t.to_state) for t in await h.store.list_transitions(POD)]
        assert sorted(moves) == sorted([("unknown", "alive"), ("alive", "deregistered"), ("unknown", "alive")])


async def test_an_introspection_a_node_answers_keeps_the_health_its_heartbeat_stored(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path}/onex.db"
    async with Harness(["registry"], root=ROOT, store_url=url) as h:
        await send(h, "NODE_INTROSPECTION", introspection())
        await send(h, "NODE_HEARTBEAT", {"node_id": POD, "health_status": "DEGRADED", "health_reason": "circuit open"})
        # Another registry asks every node to introspect: this one answers.
        await send(h, "NODE_INTROSPECTION", introspection(reason="requested"))
        answered = await stored_health(h)
    # This registry restarts and asks every node to introspect: it knows the node only from the store.
    async with Harness(["registry"], root=ROOT, store_url=url) as h:
        await send(h, "NODE_INTROSPECTION", introspection(reason="requested"))
        answered_after_restart = await stored_health(h)
        # A node that starts is a new process: what its previous life heartbeated says nothing of it.
        await send(h, "NODE_INTROSPECTION", introspection(reason="startup"))
        started = await stored_health(h)

    assert answered == ("DEGRADED", "circuit open")
    assert answered_after_restart == ("DEGRADED", "circuit open")
    assert started == ("HEALTHY", "")


@pytest.mark.parametrize(("said", "health"), [("degraded", ("DEGRADED", "")), ("critical", ("UNHEALTHY", "critical"))])
async def test_a_bridge_node_answering_a_request_keeps_the_health_its_heartbeat_stored(
    tmp_path: Path, said: str, health: tuple[str, str]
) -> None:
    async with Harness(["registry"], root=ROOT, store_url=f"sqlite:///{tmp_path}/onex.db") as h:
        await send(h, "NODE_INTROSPECTION", bridge_introspection())
        started = await stored_health(h, BRIDGE)
        await send(h, "NODE_HEARTBEAT", bridge_heartbeat(said))
        heartbeated = await stored_health(h, BRIDGE)
        # A registry asks every node to introspect: the bridge node answers, with no health and no reason.
        await send(h, "NODE_INTROSPECTION", bridge_introspection())
        answered = await stored_health(h, BRIDGE)
        state = hosted_registry(h).known[BRIDGE].state
        await send(h, "NODE_HEARTBEAT", bridge_heartbeat("healthy"))
        recovered = await stored_health(h, BRIDGE)
        row = {r.node_id: r for r in await h.store.list_registrations()}[BRIDGE]
        dead = h.dead_letters()

    assert dead == []
    assert started == ("HEALTHY", "")
    assert heartbeated == answered == health  # not HEALTHY until its next heartbeat
    assert state == "alive"
    assert recovered == ("HEALTHY", "")
    assert (row.node_type, row.node_version, row.metadata["node_name"]) == ("EFFECT", "1.0.0", BRIDGE)


async def test_a_bridge_node_that_went_stale_is_healthy_again_when_it_introspects(tmp_path: Path) -> None:
    async with Harness(["registry"], root=ROOT, store_url=f"sqlite:///{tmp_path}/onex.db") as h:
        registry = hosted_registry(h)
        await send(h, "NODE_INTROSPECTION", bridge_introspection())
        await send(h, "NODE_HEARTBEAT", bridge_heartbeat("degraded"))
        row = {r.node_id: r for r in await h.store.list_registrations()}[BRIDGE]
        assert row.last_heartbeat is not None
        # No heartbeat since: the sweep, run at a time of the test's choosing, marks it stale.
        expired = await registry.expire_stale(now=row.last_heartbeat + timedelta(seconds=registry.stale_after_s + 1))
        await send(h, "NODE_INTROSPECTION", bridge_introspection())  # a new process, or back: STALE says nothing
        back = await stored_health(h, BRIDGE)

    assert BRIDGE in expired
    assert back == ("HEALTHY", "")


async def test_an_onex_node_answering_an_introspection_request_says_its_health_and_where_it_runs(
    tmp_path: Path,
) -> None:
    async with Harness(["registry", "stamping_effect"], root=ROOT, store_url=f"sqlite:///{tmp_path}/onex.db") as h:
        effect = h.runtime.node("stamping_effect")
        assert isinstance(effect, EffectNode)
        await h.settle()
        healthy = await stored_health(h, effect.node_id)
        for _ in range(effect.breaker.failure_threshold):  # its dependency failing: circuit open
            effect.breaker.record_failure()
        await effect.publish_introspection("requested")  # as it answers a registry's request, before any heartbeat
        await h.settle()
        degraded = await stored_health(h, effect.node_id)
        row = {r.node_id: r for r in await h.store.list_registrations()}[effect.node_id]

    assert healthy == ("HEALTHY", "")
    assert degraded == ("DEGRADED", "")  # not HEALTHY until its next heartbeat
    assert (row.metadata["host"], row.metadata["pid"]) == (socket.gethostname(), os.getpid())  # for `onex ps`


async def test_the_transitions_of_a_restarted_registry_are_all_stored(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path}/onex.db"
    for _ in range(2):  # the same registry (same node id), started twice: its nodes' transitions start at seq 0 again
        async with Harness(["registry", "database_adapter_effect"], root=ROOT, store_url=url) as h:
            await send(h, "NODE_INTROSPECTION", introspection())
            await send(h, "NODE_HEARTBEAT", {"node_id": POD, "health_status": "STOPPED"})
            await h.settle()
        async with Harness(["database_adapter_effect"], root=ROOT, store_url=url) as h:
            moves = [(t.from_state, t.to_state) for t in await h.store.list_transitions(POD)]

    assert sorted(moves) == sorted(2 * [("unknown", "alive"), ("alive", "deregistered")])


async def test_heartbeats_of_an_alive_node_are_not_transitions_and_the_registry_forgets_departed_nodes(
    tmp_path: Path,
) -> None:
    async with Harness(
        ["registry", "database_adapter_effect"], root=ROOT, store_url=f"sqlite:///{tmp_path}/onex.db"
    ) as h:
        registry = hosted_registry(h)
        await send(h, "NODE_INTROSPECTION", introspection())
        for _ in range(5):
            await send(h, "NODE_HEARTBEAT", {"node_id": POD})
        node = registry.known[POD]
        after_heartbeats = (len(node.history), node.seq, len(await h.store.list_transitions(POD)))

        for _ in range(HISTORY_KEPT + 2):  # alive -> alive: each a transition, the history kept in memory bounded
            await send(h, "NODE_INTROSPECTION", introspection(reason="requested"))
        introspected = (len(node.history), node.seq)

        await send(h, "NODE_HEARTBEAT", {"node_id": POD, "health_status": "STOPPED"})
        left = registry.known[POD].left_at
        kept = registry.forget(now=left + FORGET_AFTER_S / 2)
        forgotten = registry.forget(now=left + 2 * FORGET_AFTER_S)

        assert after_heartbeats == (1, 1, 1)  # the introspection's unknown -> alive only
        assert introspected == (HISTORY_KEPT, HISTORY_KEPT + 3)
        assert (kept, forgotten) == ([], [POD])
        assert POD not in registry.known
        assert registry.node_id in registry.known  # alive: never forgotten
        assert registry.forget(now=left + 10 * FORGET_AFTER_S) == []
