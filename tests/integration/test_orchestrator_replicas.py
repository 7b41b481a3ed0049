"""Two orchestrator replicas on a real broker, each owning half of the partitions, and requests keyed otherwise than
by their workflow id (``onex publish --key``, a producer's own key): every workflow completes.

A workflow's results are keyed by its id, so they reach the replica owning that id's partition; a request that came
on another partition used to start its workflow on the replica owning that one, which never heard the results: the
step timed out, twice, and the workflow failed though its content was stamped.
"""

from __future__ import annotations

import contextlib
import itertools
import uuid
from pathlib import Path

import anyio
import pytest
from onex._kafka import KafkaBus
from onex.envelope import OnexEnvelopeV1, topic_name
from onex.runtime import Runtime
from onex.settings import Settings

from tests.fixtures.kafka import TEST_CONSUMER_OPTIONS

pytestmark = [pytest.mark.kafka, pytest.mark.anyio]

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.timeout(180)
async def test_requests_keyed_otherwise_complete_on_two_orchestrator_replicas(
    kafka_bootstrap: str, tmp_path: Path
) -> None:
    env = f"keyed{uuid.uuid4().hex[:8]}"
    settings = Settings(
        root=ROOT, env=env, store=f"sqlite:///{tmp_path}/onex.db", heartbeat_interval_s=0, stamp_timeout_ms=2_000
    )
    outcomes: dict[uuid.UUID, str] = {}
    heard = anyio.Event()

    async def watch(envelope: OnexEnvelopeV1) -> None:
        nonlocal heard
        assert envelope.correlation_id is not None
        outcomes[envelope.correlation_id] = envelope.event_type
        heard.set()

    def bus() -> KafkaBus:
        return KafkaBus(kafka_bootstrap, consumer_options=TEST_CONSUMER_OPTIONS)

    request_topic = topic_name("STAMP_REQUESTED", env=env, cls="cmd")
    finished = [topic_name(name, env=env) for name in ("WORKFLOW_COMPLETED", "WORKFLOW_FAILED")]
    async with bus() as client, contextlib.AsyncExitStack() as stack:
        await client.ensure_topics([request_topic, *finished])
        await client.subscribe(finished, f"{env}.test-watch", handler=watch)
        await stack.enter_async_context(
            Runtime(settings, nodes=["stamping_effect"], bus=await stack.enter_async_context(bus()))
        )
        for replica in ("a", "b"):  # the second joins the first's group: each owns two of the four partitions
            await stack.enter_async_context(
                # An instance of its own, as a replica in another process has: node ids (and the groups named
                # after them, a node's introspection group) differ.
                Runtime(
                    settings.with_(instance=replica), nodes=["orchestrator"], bus=await stack.enter_async_context(bus())
                )
            )
        # Workflow ids on every partition, all their requests on the one partition "tenant-a" names.
        cids: dict[int, uuid.UUID] = {}
        for cid in (uuid.uuid4() for _ in itertools.count()):
            cids.setdefault(client.partition_of(request_topic, str(cid)), cid)
            if len(cids) == client.partitions:
                break
        for i, cid in enumerate(cids.values()):
            request = OnexEnvelopeV1(
                event_type="STAMP_REQUESTED",
                source_node_id="test",
                correlation_id=cid,
                partition_key="tenant-a",
                payload={"content": f"x = {i}\n", "file_path": f"f{i}.py", "namespace": env},
            )
            await client.publish(request_topic, request)
        await client.flush()

        with anyio.fail_after(120):
            while len(outcomes) < len(cids):
                heard = anyio.Event()
                await heard.wait()

    assert outcomes == dict.fromkeys(cids.values(), "WORKFLOW_COMPLETED")
