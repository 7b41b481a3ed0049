"""Routing across processes on a real broker: the orchestrator and the shipped stamping effect in one runtime, the
second stamping effect in another, each on a ``KafkaBus`` of its own. The second runtime finds the topic it reads
(``<stamp-file topic>.stamping_effect_archive``) from the contracts alone, as ``onex run --node`` does.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable
from pathlib import Path

import anyio
import pytest
from onex._kafka import KafkaBus
from onex.envelope import OnexEnvelopeV1, topic_name
from onex.runtime import Runtime
from onex.settings import Settings

from tests.fixtures.kafka import TEST_CONSUMER_OPTIONS
from tests.test_routing import ARCHIVE, MAIN, project, route

pytestmark = [pytest.mark.kafka, pytest.mark.anyio]

__all__ = ["project"]  # the fixture, imported for this module's tests


async def test_round_robin_reaches_an_effect_in_another_process_on_its_own_topic(
    kafka_bootstrap: str, project: Path, tmp_path: Path
) -> None:
    route(
        project,
        f"strategy: round_robin\ntargets:\n  - {{name: m, service: {MAIN}}}\n  - {{name: a, service: {ARCHIVE}}}\n",
    )
    env = f"route{uuid.uuid4().hex[:8]}"

    def settings(name: str) -> Settings:
        return Settings(root=project, env=env, store=f"sqlite:///{tmp_path}/{name}.db", heartbeat_interval_s=0)

    created: list[OnexEnvelopeV1] = []
    changed = anyio.Event()

    async def watch(envelope: OnexEnvelopeV1) -> None:
        nonlocal changed
        created.append(envelope)
        changed.set()

    async def until(condition: Callable[[], bool]) -> None:
        nonlocal changed
        with anyio.fail_after(60):
            while not condition():
                changed = anyio.Event()
                await changed.wait()

    def bus() -> KafkaBus:
        return KafkaBus(kafka_bootstrap, consumer_options=TEST_CONSUMER_OPTIONS)

    request_topic = topic_name("STAMP_REQUESTED", env=env, cls="cmd")
    async with bus() as first, bus() as second:
        created_topic = topic_name("STAMP_CREATED", env=env)
        await first.ensure_topics([created_topic, request_topic])
        await first.subscribe([created_topic], f"{env}.test-watch", handler=watch)
        async with (
            Runtime(settings("archive"), nodes=[ARCHIVE], bus=second),
            Runtime(settings("main"), nodes=["orchestrator", MAIN], bus=first),
        ):
            for i in range(4):
                request = OnexEnvelopeV1(
                    event_type="STAMP_REQUESTED",
                    source_node_id="test",
                    correlation_id=uuid.uuid4(),
                    payload={"content": f"x = {i}\n", "file_path": f"f{i}.py", "namespace": env},
                )
                await first.publish(request_topic, request)
            await until(lambda: len({e.correlation_id for e in created}) >= 4)

    # Four workflows, two stamped by each effect, none by both: each effect saw only the commands meant for it.
    by_service = {
        service: {e.correlation_id for e in created if e.source_service == service} for service in (MAIN, ARCHIVE)
    }
    assert [len(workflows) for workflows in by_service.values()] == [2, 2]
    assert not by_service[MAIN] & by_service[ARCHIVE]
