"""The registry node with a real SQLite store (``onex.testing.Harness``): what it writes when a write fails.

Its introspection, heartbeat and staleness cases with a running node are in ``tests/test_runtime.py``.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from onex.exceptions import StoreError
from onex.store import WriteBatch
from onex.testing import Harness

from nodes.registry.v1_0_0.node import NodeRegistry

pytestmark = pytest.mark.anyio

ROOT = Path(__file__).resolve().parents[2]
NODE = "stopping-1.0.0-elsewhere"


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
