"""The orchestrator's config model: what ``config:`` of contracts/orchestrators/orchestrator.yaml may say, typed.

It extends the runtime's ``OrchestratorNode.Config`` (``steps``, ``dedupe_window``) with what this node adds.
"""

from __future__ import annotations

from onex.nodes import OrchestratorNode
from pydantic import Field


class ModelOrchestratorConfig(OrchestratorNode.Config):
    """The stamp workflow's steps and dedupe window, and where the optional ``intelligence`` step posts."""

    intelligence_url: str = Field(
        "", description="The URL the intelligence step posts a stamp's hash to; empty skips the step."
    )
