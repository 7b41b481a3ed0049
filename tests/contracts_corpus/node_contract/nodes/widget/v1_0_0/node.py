from onex.contracts import Contract
from onex.nodes import ComputeNode


class NodeWidget(ComputeNode):
    @classmethod
    def contract_problems(cls, contract: Contract) -> list[tuple[tuple[str | int, ...], str]]:
        return [] if contract.description.endswith(".") else [(("description",), "end the description with a '.'")]
