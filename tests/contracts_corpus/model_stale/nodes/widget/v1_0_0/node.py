from onex.nodes import EffectNode


class NodeWidget(EffectNode):
    def handle_widget_ordered(self, payload: dict[str, object]) -> None:
        pass
