"""The reducer's intent: the new aggregate of a namespace, for an effect to persist."""

from __future__ import annotations

from datetime import datetime
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field


class ModelAggregationIntent(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    intent_type: Literal["upsert_bridge_state"] = "upsert_bridge_state"
    target: Literal["bridge_states"] = "bridge_states"
    namespace: str
    version: int
    total_workflows_processed: int
    total_items_aggregated: int
    total_size_bytes: int
    unique_file_hashes: int
    current_fsm_state: str
    by_file_type: dict[str, int] = Field(default_factory=dict)
    size_buckets: dict[str, int] = Field(default_factory=dict)
    windows_closed: int = 0
    aggregated_at: datetime
