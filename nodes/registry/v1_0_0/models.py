"""The registry's config model: what ``config:`` of contracts/registries/registry.yaml may say, typed."""

from __future__ import annotations

from onex.nodes import RegistryNode
from pydantic import Field


class ModelRegistryConfig(RegistryNode.Config):
    """How the registry decides staleness and how often it looks."""

    stale_after_missed_heartbeats: int = Field(
        3,
        ge=0,
        description="A node whose last heartbeat is older than this many heartbeat intervals is marked stale; "
        "0 never marks a node stale (no sweeper runs).",
    )
    sweep_interval_ms: int = Field(1000, gt=0, description="How often the sweeper looks for stale nodes, in ms.")
