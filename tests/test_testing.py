"""``onex.testing``: what a ``Harness.wait_for`` that times out tells the test author, and what the harness records.

The project here is written by the tests into a temporary directory: one node, ``orders``, that accepts an order
through its FSM (``received -> accepted``) and publishes ACCEPTED, and raises on an order of quantity 0. The routed
commands are the routing tests' project (the repository's plus a second stamping effect).
"""

from __future__ import annotations

import asyncio
import os
import re
import subprocess
import sys
import textwrap
import uuid
from pathlib import Path

import pytest
from onex.bus import BusState
from onex.envelope import OnexEnvelopeV1
from onex.exceptions import OnexError
from onex.routing import service_topic
from onex.testing import Harness, ManualClock, WaitTimeout

from tests.test_routing import ARCHIVE, EFFECTS, MAIN, route, with_archive

CONTRACT = """\
contract_version: 2.0.0
name: orders
version: 1.0.0
node_type: COMPUTE
description: Accepts orders; refuses (raises on) an order of quantity 0.
subcontracts:
  fsm:
    subcontract_type: fsm
    version: 1.0.0
    state_machine_name: order
    initial_state: received
    states:
      - {state_name: received}
      - {state_name: accepted, is_terminal: true}
    transitions:
      - {transition_name: accept, from_state: received, to_state: accepted, trigger: accept}
  event_type:
    version: 1.0.0
    consumes:
      - event_name: ORDER
        handler: handle_order
        external: true
        payload_schema:
          type: object
          required: [order_id, quantity]
          properties: {order_id: {type: string}, quantity: {type: integer}}
    publishes:
      - event_name: ACCEPTED
        payload_schema:
          type: object
          required: [order_id]
          properties: {order_id: {type: string}}
resilience:
  retry: {max_attempts: 2, backoff_ms: 0}
"""

NODE = """\
from __future__ import annotations

from onex.fsm import Entity
from onex.nodes import ComputeNode, Event


class NodeOrders(ComputeNode):
    async def handle_order(self, event: Event) -> None:
        if event.payload["quantity"] == 0:
            raise ValueError(f"order {event.payload['order_id']}: quantity 0")
        if event.payload["quantity"] < 0:
            raise ValueError("a negative quantity:\\n  quantities start at 1")  # a message of several lines
        assert self.fsm is not None
        order = self.fsm.attach(Entity(event.payload["order_id"], event.envelope.correlation_id))
        self.fsm.trigger(order, "accept")
        await self.publish("ACCEPTED", {"order_id": order.entity_id}, causation=event.envelope)
"""


@pytest.fixture
def project(tmp_path: Path) -> Path:
    root = tmp_path / "project"
    (root / "contracts" / "computes").mkdir(parents=True)
    (root / "contracts" / "computes" / "orders.yaml").write_text(CONTRACT)
    package = root / "nodes" / "orders" / "v1_0_0"
    package.mkdir(parents=True)
    for init in (root / "nodes", root / "nodes" / "orders", package):
        (init / "__init__.py").write_text("")
    (package / "node.py").write_text(textwrap.dedent(NODE))
    return root


@pytest.mark.anyio
async def test_a_timeout_names_the_handlers_exception_what_arrived_and_the_transitions(project: Path) -> None:
    async with Harness(root=project) as h:
        good = await h.publish("ORDER", {"order_id": "o1", "quantity": 2})
        await h.wait_for("ACCEPTED", lambda e: e.correlation_id == good.correlation_id)
        bad = await h.publish("ORDER", {"order_id": "o2", "quantity": 0})
        await h.settle()  # the dead letter is in; the wait below can only time out
        with pytest.raises(WaitTimeout) as caught:
            await h.wait_for("ACCEPTED", lambda e: e.correlation_id == bad.correlation_id, timeout=0.01)

    message = str(caught.value)
    assert message.splitlines()[0].startswith("waited 0.01 s for ACCEPTED matching <lambda at test_testing.py:")
    # What arrived for the order that was waited for: the ORDER the test sent, and its dead letter.
    arrived = message.split(f"arrived for correlation id {bad.correlation_id} (2 event(s)):\n", 1)[1].splitlines()
    assert arrived[0].endswith(" ORDER from onex.testing")
    assert arrived[1].endswith(" DEAD_LETTER from onex-bus")
    # The handler's exception, with the attempts the contract allows.
    assert (
        f"ORDER correlation id {bad.correlation_id}: ValueError: order o2: quantity 0 (after 2 attempt(s))" in message
    )
    # The FSM transition of the order that went through.
    assert f"orders o1: received -> accepted (accept) correlation id {good.correlation_id}" in message


@pytest.mark.anyio
async def test_a_timeout_reports_on_events_of_the_awaited_name_and_marks_other_dead_letters(project: Path) -> None:
    async with Harness(root=project) as h:
        bad = await h.publish("ORDER", {"order_id": "o1", "quantity": 0})
        await h.settle()
        good = await h.publish("ORDER", {"order_id": "o2", "quantity": 1})
        await h.wait_for("ACCEPTED", lambda e: e.correlation_id == good.correlation_id)
        with pytest.raises(WaitTimeout) as caught:
            await h.wait_for("ACCEPTED", lambda e: e.payload["order_id"] == "o3", timeout=0.01)

    message = str(caught.value)
    # Nothing was sent since the last wait, so the report is on the ACCEPTED that arrived and did not match.
    assert "1 ACCEPTED event(s) arrived but did not match the predicate" in message
    assert f"arrived for correlation id {good.correlation_id} (3 event(s)):" in message
    assert f"ORDER correlation id {bad.correlation_id} (another correlation id): ValueError: order o1" in message


@pytest.mark.anyio
async def test_a_timeout_lists_only_the_last_transitions(project: Path) -> None:
    async with Harness(root=project) as h:
        for n in range(15):
            await h.publish("ORDER", {"order_id": f"o{n}", "quantity": 1})
        await h.settle()
        with pytest.raises(WaitTimeout) as caught:
            await h.wait_for("ACCEPTED", lambda e: e.payload["order_id"] == "o15", timeout=0.01)  # never sent

    lines = str(caught.value).splitlines()
    at = lines.index("FSM transitions: 15, the last:")
    assert lines[at + 1] == "  ... 5 earlier transitions not shown"
    shown = lines[at + 2 :]
    assert len(shown) == 10
    # Partitions are handled side by side, so which ten come last is not fixed; ten distinct ones are.
    orders = {line.split(":")[0].strip() for line in shown}
    assert len(orders) == 10
    assert orders <= {f"orders o{n}" for n in range(15)}
    assert "dead letters: 0" in lines


REPO = Path(__file__).resolve().parents[1]


def readme_harness_example() -> str:
    """The README's Harness example, exactly as written there: the python block that publishes STAMP_REQUESTED."""
    blocks = re.findall(r"^```python\n(.*?)^```$", (REPO / "README.md").read_text(), flags=re.MULTILINE | re.DOTALL)
    [example] = [b for b in blocks if "from onex.testing import Harness" in b and "STAMP_REQUESTED" in b]
    return str(example)


def test_the_readme_harness_example_runs_in_a_fresh_directory_and_touches_no_file(tmp_path: Path) -> None:
    (tmp_path / "example.py").write_text(readme_harness_example())
    # Files a user may have where they try the example: it must leave them as they are.
    for name in ("a.py", "hello.py"):
        (tmp_path / name).write_text("print('mine')\n")
    before = {p.name: p.read_bytes() for p in tmp_path.iterdir()}

    env = {**os.environ, "ONEX_ROOT": str(REPO)}
    done = subprocess.run(
        [sys.executable, "example.py"], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120
    )

    assert done.returncode == 0, done.stderr
    file_hash, stamp, code = done.stdout.splitlines()
    assert stamp.startswith("# ONEX:uid=")
    assert f"hash={file_hash}," in stamp
    assert code == "print('hello')"
    assert {p.name: p.read_bytes() for p in tmp_path.iterdir()} == before


@pytest.mark.anyio
async def test_a_dead_letters_error_is_shown_on_one_line(project: Path) -> None:
    async with Harness(root=project) as h:
        sent = await h.publish("ORDER", {"order_id": "o1", "quantity": -1})
        await h.settle()
        with pytest.raises(WaitTimeout) as caught:
            await h.wait_for("ACCEPTED", timeout=0.01)

    lines = str(caught.value).splitlines()
    at = lines.index("dead letters: 1:")
    assert lines[at + 1] == (
        f"  ORDER correlation id {sent.correlation_id}: ValueError: a negative quantity: quantities start at 1 "
        "(after 2 attempt(s))"
    )
    assert lines[at + 2] == "FSM transitions: 0"


@pytest.mark.anyio
async def test_a_predicate_that_raises_fails_its_wait_and_leaves_the_record_as_it_was(project: Path) -> None:
    async with Harness(root=project) as h:
        await h.publish("ORDER", {"order_id": "o1", "quantity": 1})
        # The wait is registered before ACCEPTED arrives (publish returned without handing over to the bus's
        # workers), so the predicate first sees it in the harness's recorder.
        with pytest.raises(KeyError, match="missing"):
            await h.wait_for("ACCEPTED", lambda e: e.payload["missing"] == 1, timeout=30)
        await h.settle()

        assert len(h.of("ACCEPTED")) == 1
        assert h.dead_letters() == []


@pytest.mark.anyio
async def test_commands_routed_to_a_services_own_topic_are_recorded_and_so_are_their_dead_letters(
    tmp_path: Path,
) -> None:
    root = with_archive(tmp_path / "routed")
    route(
        root,
        f"strategy: round_robin\ntargets:\n  - {{name: m, service: {MAIN}}}\n  - {{name: a, service: {ARCHIVE}}}\n",
    )
    async with Harness(EFFECTS, root=root, clock=ManualClock()) as h:
        sent = [
            await h.publish("STAMP_REQUESTED", {"content": f"x = {n}\n", "file_path": f"{n}.py", "namespace": "ns"})
            for n in range(2)
        ]
        await h.settle()
        # Round robin: the second command went to the archive effect, on that service's own topic (recorded in
        # either order: the two topics are handled side by side).
        assert {e.correlation_id for e in h.of("STAMP_FILE")} == {s.correlation_id for s in sent}
        assert len(h.of("STAMP_FILE")) == 2

        bad = OnexEnvelopeV1(
            event_type="STAMP_FILE", source_node_id="test", correlation_id=uuid.uuid4(), payload={"garbage": 1}
        )
        await h.bus.publish(service_topic(h.topic("STAMP_FILE"), ARCHIVE), bad)
        await h.settle()

        assert [(d.correlation_id, d.payload["original"]["event_type"]) for d in h.dead_letters()] == [
            (bad.correlation_id, "STAMP_FILE")
        ]


@pytest.mark.anyio
async def test_a_node_whose_stop_raises_still_leaves_the_bus_and_the_store_closed(project: Path) -> None:
    node = project / "nodes" / "orders" / "v1_0_0" / "node.py"
    node.write_text(
        node.read_text() + "\n    async def on_stop(self) -> None:\n        raise RuntimeError('on_stop failed')\n"
    )
    h = Harness(root=project)
    before = asyncio.all_tasks()

    async def use() -> None:
        async with h:
            sent = await h.publish("ORDER", {"order_id": "o1", "quantity": 1})
            await h.wait_for("ACCEPTED", lambda e: e.correlation_id == sent.correlation_id)

    with pytest.raises(RuntimeError, match="on_stop failed"):
        await use()

    assert h.bus.state is BusState.CLOSED
    health = await h.store.health()
    assert (health.status, "closed" in health.detail) == ("down", True)
    assert [t.get_name() for t in asyncio.all_tasks() - before if t.get_name().startswith("onex-bus")] == []


@pytest.mark.anyio
async def test_of_and_wait_for_refuse_a_name_no_contract_declares(project: Path) -> None:
    async with Harness(root=project) as h:
        await h.publish("ORDER", {"order_id": "o1", "quantity": 0})
        await h.settle()

        with pytest.raises(
            OnexError, match=r"^'ACCEPTD' is not an event of the contracts under .*ACCEPTED, DEAD_LETTER"
        ):
            h.of("ACCEPTD")
        with pytest.raises(OnexError, match=r"^'ACCEPTD' is not an event of the contracts under "):
            await h.wait_for("ACCEPTD", timeout=30)
        # DEAD_LETTER is no contract's event, and is recorded all the same.
        assert len(h.of("DEAD_LETTER")) == 1
        assert (await h.wait_for("DEAD_LETTER")).payload["original"]["event_type"] == "ORDER"
