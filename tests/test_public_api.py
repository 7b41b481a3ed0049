"""The package's public surface: everything in ``onex.__all__`` exists, and errors share one root."""

from __future__ import annotations

import onex
from onex import exceptions


def test_every_name_in_all_is_exported() -> None:
    missing = [name for name in onex.__all__ if not hasattr(onex, name)]
    assert missing == []
    assert sorted(onex.__all__) == onex.__all__


def test_every_public_error_derives_from_onex_error() -> None:
    errors = [obj for name, obj in vars(exceptions).items() if isinstance(obj, type) and name.endswith("Error")]
    assert {e.__name__ for e in errors} >= {"ContractError", "TransitionError", "BusError", "StoreError", "StampError"}
    assert all(issubclass(e, onex.OnexError) for e in errors)
