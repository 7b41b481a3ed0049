from typing import Any

from onex.nodes import ReducerNode


class NodeWidget(ReducerNode):
    def team_of(self, record: Any) -> str:
        return "core"
