"""The stamping effect's config model: what ``config:`` of contracts/effects/stamping_effect.yaml may say, typed."""

from __future__ import annotations

from onex.nodes import EffectNode
from pydantic import Field


class ModelStampingEffectConfig(EffectNode.Config):
    """Who stamps, and when content is small enough to stamp without a worker thread."""

    author: str = Field("onex", min_length=1, description="The stamp's author when a request names none.")
    thread_offload_bytes: int = Field(
        262_144,
        ge=0,
        description="A batch of in-memory contents each at most this many bytes is stamped on the event loop; "
        "anything larger, or any file, goes to a worker thread. 0 sends everything to the thread.",
    )
