from onex.nodes import OrchestratorNode


class NodeWidget(OrchestratorNode):
    pass
