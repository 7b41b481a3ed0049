"""``onex.client.StampClient``: bounded submission and outcome bookkeeping, on a memory bus with no nodes.

The outcomes are published by hand, as the orchestrator would publish them, so the client is seen on its own.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import anyio
import pytest
from onex.client import OUTCOME_EVENTS, StampClient
from onex.envelope import OnexEnvelopeV1, topic_name
from onex.exceptions import OnexError
from onex.runtime import Runtime
from onex.settings import Settings

pytestmark = pytest.mark.anyio

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture
async def runtime(tmp_path: Path) -> AsyncIterator[Runtime]:
    settings = Settings.load(environ={}, root=str(ROOT), store=f"sqlite:///{tmp_path}/onex.db")
    async with Runtime(settings.with_(heartbeat_interval_s=0), nodes=[]) as rt:
        yield rt


async def complete(runtime: Runtime, cid: uuid.UUID) -> None:
    outcome = OnexEnvelopeV1(
        event_type=OUTCOME_EVENTS[0], source_node_id="test", correlation_id=cid, payload={"state": "completed"}
    )
    await runtime.bus.publish(topic_name(OUTCOME_EVENTS[0]), outcome)


async def test_submit_waits_while_max_pending_workflows_have_no_outcome(runtime: Runtime) -> None:
    async with StampClient(runtime.bus, runtime.contracts, runtime.settings, max_pending=2) as client:
        first = await client.submit({"content": "a", "namespace": "ns"})
        await client.submit({"content": "b", "namespace": "ns"})
        third = asyncio.ensure_future(client.submit({"content": "c", "namespace": "ns"}))
        await anyio.wait_all_tasks_blocked()
        assert not third.done()  # two pending: the third waits
        assert client.pending == 2

        await complete(runtime, first)
        with anyio.fail_after(5):
            await third
        assert client.pending == 2
        assert (await client.outcome(first)).payload == {"state": "completed"}


async def test_forget_drops_what_the_client_kept_of_a_finished_workflow(runtime: Runtime) -> None:
    async with StampClient(runtime.bus, runtime.contracts, runtime.settings) as client:
        cid = await client.submit({"content": "a", "namespace": "ns"})
        await complete(runtime, cid)
        with anyio.fail_after(5):
            await client.outcome(cid)
        client.forget(cid)
        with pytest.raises(OnexError, match="not submitted by this client"):
            await client.outcome(cid)


@pytest.mark.parametrize("bad", [0, -1])
async def test_max_pending_must_be_positive(runtime: Runtime, bad: int) -> None:
    with pytest.raises(ValueError, match="max_pending"):
        StampClient(runtime.bus, runtime.contracts, runtime.settings, max_pending=bad)
