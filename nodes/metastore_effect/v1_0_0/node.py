"""The metastore effect: hosts ``onex.metastore.Metastore`` on the runtime's store and bus.

The node owns the metastore tables (``migrations/*/0006_metastore.sql``) through the store seam, and its contract
declares what the metastore is made of: the flag lifecycle FSM (``subcontracts/fsm/flag_lifecycle.yaml``), the
configuration lifecycle FSM (``config.configuration_fsm``) and the change events it publishes after each commit.

Writes are calls, not commands on the bus: a change needs its answer (the new version, or a conflict) in the
caller's request, and the conditional update in the database, not a single consumer, is what serialises writers,
so any number of processes may host this node (or a bare ``Metastore``) on one database. ``metastore`` is the
instance a process's other parts (the HTTP gateway) call while the node runs.
"""

from __future__ import annotations

from typing import Any

from onex.metastore import Metastore
from onex.nodes import EffectNode

from .models import ModelMetastoreConfig


class NodeMetastoreEffect(EffectNode):
    config_model = ModelMetastoreConfig
    config: ModelMetastoreConfig
    uses_breaker = False  # its handlers call no breaker: a contract's circuit_breaker is refused
    cached_lookups = {}

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.metastore = Metastore(
            self.store, self.bus, settings=self.settings, clock=self.clock, contract=self.contract
        )

    async def on_start(self) -> None:
        await self.metastore.start()

    async def on_stop(self) -> None:
        await self.metastore.aclose()
