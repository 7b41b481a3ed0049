"""The reducer's config model: what ``config:`` of contracts/reducers/reducer.yaml may say, typed."""

from __future__ import annotations

from onex.nodes import ReducerNode
from pydantic import Field


class ModelReducerConfig(ReducerNode.Config):
    """How often windows are flushed, how many workflows are remembered, and when the store is reconciled."""

    flush_interval_ms: int = Field(500, gt=0, description="How often due windows are flushed, in ms.")
    window_items: int = Field(
        5000, gt=0, description="A namespace's totals are published as an intent after this many stamps ..."
    )
    window_ms: int = Field(500, gt=0, description="... or this many ms after the first one, whichever comes first.")
    dedupe_window: int = Field(
        200_000,
        gt=0,
        description="How many recently counted workflows are remembered in memory, sparing a store read when one "
        "is redelivered.",
    )
    reconcile_after_ms: int = Field(
        10_000,
        ge=0,
        description="On a broker, how long after a partition assignment the reducer looks in the store for finished "
        "workflows its aggregates left out, in ms.",
    )
