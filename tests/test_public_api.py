"""The package's public surface: everything in ``onex.__all__`` exists, and errors share one root."""

from __future__ import annotations

import importlib
import importlib.metadata
import inspect
import pkgutil

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


def test_every_exception_the_package_defines_is_in_the_one_error_tree() -> None:
    """No module defines a public exception of its own: each is in ``onex.exceptions``, under ``OnexError``. (A
    module's private signals, ``_Retryable`` and the like, are caught where they are raised.)"""
    found: dict[str, type[BaseException]] = {}
    for info in pkgutil.walk_packages(onex.__path__, "onex."):
        module = importlib.import_module(info.name)
        for _, obj in inspect.getmembers(module, inspect.isclass):
            if issubclass(obj, BaseException) and obj.__module__.startswith("onex") and obj.__name__[0] != "_":
                found[f"{obj.__module__}.{obj.__qualname__}"] = obj
    assert "onex.exceptions.LifecycleError" in found  # the walk saw the modules
    # The gateway's ApiError is its internal control flow (each handler turns it into a response); it moves with the
    # split of onex/http.py.
    elsewhere = [name for name in found if not name.startswith("onex.exceptions.") and name != "onex.http.ApiError"]
    assert elsewhere == []
    assert [name for name, obj in found.items() if not issubclass(obj, onex.OnexError)] == ["onex.http.ApiError"]


def test_the_types_public_signatures_return_are_exported() -> None:
    for name in ("BusStatistics", "StoreHealth", "WorkflowRow", "Payload", "EventCatalog", "TransitionRecord"):
        assert name in onex.__all__, name


def test_the_version_has_one_source() -> None:
    assert importlib.metadata.version("onex") == onex.__version__


def test_an_unavailable_store_is_a_store_error() -> None:
    # Callers that only know StoreError keep catching it; those that care tell the two apart.
    assert issubclass(onex.StoreUnavailable, onex.StoreError)
    assert not issubclass(onex.StoreError, onex.StoreUnavailable)
