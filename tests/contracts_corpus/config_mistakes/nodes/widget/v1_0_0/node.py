from __future__ import annotations

from onex.nodes import EffectNode
from pydantic import Field


class WidgetConfig(EffectNode.Config):
    poll_interval_ms: int = Field(1000, gt=0, description="How often the widget polls, in ms.")
    label: str = Field(description="What the widget calls itself.")


class NodeWidget(EffectNode):
    config_model = WidgetConfig
    config: WidgetConfig
