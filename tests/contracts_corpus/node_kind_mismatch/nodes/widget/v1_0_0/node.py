from onex.nodes import ComputeNode


class NodeWidget(ComputeNode):
    """A compute node under a contract that says EFFECT."""
