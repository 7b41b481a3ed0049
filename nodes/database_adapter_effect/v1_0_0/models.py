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
        description="Transactions in flight at once, each with its own share of the rows (a file's rows always in "
        "the same one); at most what the store can run at once (SQLite: 1).",
    )
    split_rows: int = Field(
        1_000,
        ge=1,
        description="With more than one writer: rows pending (for writers with none in flight) from which each "
        "writer takes its own share in a transaction of its own; fewer go together in one transaction.",
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
