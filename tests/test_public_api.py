"""The package's public surface: everything in ``onex.__all__`` exists, and errors share one root."""

from __future__ import annotations

import importlib
import importlib.metadata
import inspect
import pkgutil
import typing

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
    # The gateway's ApiError is its internal control flow (each handler turns it into a response), defined with the
    # envelope it becomes (and re-exported as onex.http.ApiError).
    elsewhere = [
        name for name in found if not name.startswith("onex.exceptions.") and name != "onex.http.models.ApiError"
    ]
    assert elsewhere == []
    assert [name for name, obj in found.items() if not issubclass(obj, onex.OnexError)] == ["onex.http.models.ApiError"]


def _onex_classes(annotation: object, found: set[type]) -> None:
    """The onex classes named anywhere in a type annotation (``list[X] | None`` names X)."""
    if isinstance(annotation, type):
        if annotation.__module__.startswith("onex"):
            found.add(annotation)
        return
    origin = typing.get_origin(annotation)
    if isinstance(origin, type) and origin.__module__.startswith("onex"):
        found.add(origin)
    for argument in typing.get_args(annotation):
        _onex_classes(argument, found)


def test_every_type_a_public_signature_names_is_exported() -> None:
    """Parameters and return types of every public function, and of every public method of every public class,
    name only types a user can import from ``onex``."""
    missing: dict[str, list[str]] = {}
    for name in onex.__all__:
        obj = getattr(onex, name)
        if inspect.isclass(obj):
            members = [
                (f"{name}.{attr}", member)
                for attr, member in inspect.getmembers(obj, inspect.isfunction)
                if (not attr.startswith("_") or attr == "__init__") and member.__module__.startswith("onex")
            ]
        else:
            members = [(name, obj)] if inspect.isfunction(obj) else []
        for where, function in members:
            found: set[type] = set()
            for annotation in typing.get_type_hints(function).values():
                _onex_classes(annotation, found)
            for cls in found:
                if getattr(onex, cls.__name__, None) is not cls:
                    missing.setdefault(f"{cls.__module__}.{cls.__name__}", []).append(where)

    assert missing == {}
    assert "WorkflowRow" in onex.__all__  # the walk reached the store's signatures


def test_the_version_has_one_source() -> None:
    assert importlib.metadata.version("onex") == onex.__version__


def test_an_unavailable_store_is_a_store_error() -> None:
    # Callers that only know StoreError keep catching it; those that care tell the two apart.
    assert issubclass(onex.StoreUnavailable, onex.StoreError)
    assert not issubclass(onex.StoreError, onex.StoreUnavailable)
