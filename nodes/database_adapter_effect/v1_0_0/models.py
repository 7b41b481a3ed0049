"""The database adapter's config model: what ``config:`` of contracts/effects/database_adapter_effect.yaml may say,
typed."""

from __future__ import annotations

from onex.nodes import EffectNode
from pydantic import Field


class ModelDatabaseAdapterConfig(EffectNode.Config):
    """Logging of persisted events, deduplication, and how writes wait out a store outage."""

    log_events: bool = Field(
        False,
        description="Also write every persisted event to event_logs; from the environment, "
        "true/false, yes/no, on/off or 1/0.",
    )
    dedupe_window: int = Field(
        200_000, gt=0, description="How many recently written event ids are remembered to skip redeliveries."
    )
    writers: int = Field(
        2,
        ge=1,
        description="Shares the rows are shared out among (a file's rows always in the same one), so how many "
        "transactions may be in flight at once; at most what the store runs at once (SQLite: 1).",
    )
    split_rows: int = Field(
        1_000,
        ge=1,
        description="With more than one share: from this many rows pending (in shares with no transaction in "
        "flight) each share takes a transaction of its own; fewer go together in one.",
    )
    outage_max_backoff_ms: int = Field(
        2_000,
        gt=0,
        description="While the store is unavailable, held writes are retried with a pause doubling up to this, "
        "in ms (never below the contract's retry backoff).",
    )
    drain_timeout_ms: int = Field(
        5_000,
        ge=0,
        description="Draining while the store is unavailable: how long the writes in hand still wait before "
        "they are left unacknowledged for redelivery, in ms.",
    )
