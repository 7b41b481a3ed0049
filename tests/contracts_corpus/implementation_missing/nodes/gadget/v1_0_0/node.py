from onex.nodes import EffectNode


class NodeGadget(EffectNode):
    pass
