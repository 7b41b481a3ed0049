"""What a contract author runs: ``onex new node`` (a working node from templates or the seed's requirements shape)
and ``onex codegen models`` (payload models from a contract's inline schemas). Registered on the ``onex`` group
(``onex._cli.main``) when ``onex.cli`` is imported; the work itself is in ``onex.scaffold`` and ``onex.codegen``.
"""

from __future__ import annotations

from onex._cli import main


@main.group()
def new() -> None:
    """Create a node: contract, node class, payload models and a test, ready to run."""


# --- onex new node (onex.scaffold) ------------------------------------------------------------------------------


@main.group()
def codegen() -> None:
    """Generate code from contracts."""


# --- onex codegen models (onex.codegen) -------------------------------------------------------------------------
