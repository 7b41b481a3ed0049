"""The guestbook: keeps the signatures it receives."""

from __future__ import annotations

from typing import Any

from onex.nodes import ComputeNode, Event

# Relative: under a test root this package is imported under a private alias (see onex.contracts), where an
# absolute `nodes.guestbook` would mean the repository's own nodes package.
from .models import ModelSignature


class NodeGuestbook(ComputeNode):
    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.signatures: list[ModelSignature] = []

    async def handle_signed(self, event: Event) -> None:
        self.signatures.append(event.payload)
