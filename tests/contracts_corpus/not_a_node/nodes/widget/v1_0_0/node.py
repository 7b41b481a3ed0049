"""A node class that forgot its base: the runtime could not build it (NodeWidget() takes no arguments)."""


class NodeWidget:
    def describe(self) -> str:
        return "a widget"
