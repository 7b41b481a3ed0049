"""How a node starts on Kafka: the consumer settings every subscription gets, and ``onex run --node registry`` on a
tansu broker with those defaults (no consumer settings in the bus URL).

A group join waits seconds for the broker (on tansu ``max(1 s, session_timeout_ms / 2)``; on Kafka at least
``group.initial.rebalance.delay.ms``), and each member joining a group sends the members before it to join again. So a
node joins all of its groups at once, and says what it waits for: "joining group X for T" for each, then "group X:
assigned N partition(s) of T" once the broker answered.
"""

from __future__ import annotations

import re
import uuid
from pathlib import Path

import pytest
from onex._kafka import KafkaBus

from tests.fixtures.deployment import RUNNING_LINE, Deployment


def test_consumers_default_to_a_six_second_session_with_three_heartbeats_in_it() -> None:
    """6 s is the shortest session Kafka and Redpanda accept by default; the heartbeat interval follows the session
    unless it is set, so a shorter session never outlasts its heartbeats."""
    defaults = KafkaBus("h:1").consumer_kwargs("g")
    longer = KafkaBus("h:1", consumer_options={"session_timeout_ms": 30_000}).consumer_kwargs("g")
    both = KafkaBus.from_url("kafka://h:1?session_timeout_ms=2000&heartbeat_interval_ms=200").consumer_kwargs("g")

    assert (defaults["session_timeout_ms"], defaults["heartbeat_interval_ms"]) == (6_000, 2_000)
    assert (longer["session_timeout_ms"], longer["heartbeat_interval_ms"]) == (30_000, 10_000)
    assert (both["session_timeout_ms"], both["heartbeat_interval_ms"]) == (2_000, 200)


@pytest.mark.kafka
@pytest.mark.slow
@pytest.mark.anyio
async def test_a_node_joins_all_its_groups_at_once_and_logs_what_it_waits_for(
    kafka_bootstrap: str, tmp_path: Path
) -> None:
    deployment = Deployment(
        bus_url=f"kafka://{kafka_bootstrap}",
        store_url=f"sqlite:///{tmp_path / 'onex.db'}",
        logs=tmp_path / "logs",
        env={"ONEX_ENV": f"st{uuid.uuid4().hex[:8]}", "ONEX_HEARTBEAT_INTERVAL_S": "0"},
    )
    with deployment:
        [registry] = await deployment.start(["registry"])
        log = registry.output(last=1 << 20).splitlines()
        assert (await deployment.stop()) == {"registry": 0}, deployment.logs_tail()

    joining = [(i, m.group(1)) for i, line in enumerate(log) if (m := re.search(r"joining group (\S+) for ", line))]
    assigned = [(i, m.group(1)) for i, line in enumerate(log) if (m := re.search(r"group (\S+): assigned \d+ ", line))]
    running = next(i for i, line in enumerate(log) if RUNNING_LINE in line)
    context = "\n".join(log)
    # The registry's handlers and its introspection group: several subscriptions, each joined and then assigned.
    assert len(joining) >= 2, context
    assert sorted(group for _, group in joining) == sorted(group for _, group in assigned), context
    # All at once: every join began before the first assignment came, and the node ran only after the last.
    assert max(i for i, _ in joining) < min(i for i, _ in assigned), context
    assert max(i for i, _ in assigned) < running, context
