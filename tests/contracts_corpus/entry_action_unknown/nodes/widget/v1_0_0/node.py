from onex.nodes import EffectNode


class NodeWidget(EffectNode):
    def log_entered(self) -> None:
        pass

    def handle_widget_ordered(self, payload: dict[str, object]) -> None:
        pass
