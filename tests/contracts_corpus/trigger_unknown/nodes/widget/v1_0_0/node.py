from typing import Any

from onex.nodes import EffectNode

FINISH = "finsh"


class NodeWidget(EffectNode):
    def begin(self, entity: Any) -> None:
        self.fsm.trigger(entity, "strat")  # type: ignore[union-attr]

    def end(self, entity: Any, ok: bool) -> None:
        self.fsm.trigger(entity, "finish" if ok else "abort")  # type: ignore[union-attr]
        self.fsm.trigger(entity, trigger=FINISH)  # type: ignore[union-attr]

    def fine(self, entity: Any, trigger: str) -> None:
        FINISH = trigger  # shadows the module's constant: not checked
        self.fsm.trigger(entity, FINISH)  # type: ignore[union-attr]
        self.fsm.trigger(entity, "start")  # type: ignore[union-attr]
