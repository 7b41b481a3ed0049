"""The package's public surface: everything in ``onex.__all__`` exists, and errors share one root."""

from __future__ import annotations

import onex
from onex import exceptions


def test_every_name_in_all_is_exported() -> None:
    missing = [name for name in onex.__all__ if not hasattr(onex, name)]
    assert missing == []
    assert sorted(onex.__all__) == onex.__all__


def test_every_public_error_derives_from_onex_error() -> None:
    errors = [obj for obj in vars(exceptions).values() if isinstance(obj, type) and issubclass(obj, BaseException)]
    assert {e.__name__ for e in errors} >= {
        "ContractError",
        "TransitionError",
        "BusError",
        "StoreError",
        "StoreUnavailable",
        "StampError",
    }
    assert all(issubclass(e, onex.OnexError) for e in errors)
    assert all(e.__name__ in onex.__all__ for e in errors)


def test_an_unavailable_store_is_a_store_error() -> None:
    # Callers that only know StoreError keep catching it; those that care tell the two apart.
    assert issubclass(onex.StoreUnavailable, onex.StoreError)
    assert not issubclass(onex.StoreError, onex.StoreUnavailable)
