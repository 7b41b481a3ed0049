class NodeGadget:
    pass
