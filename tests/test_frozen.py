"""``onex._frozen.quick_init``: each class it is applied to is built as the ``__init__`` dataclasses writes would build
it (same arguments, order, defaults and fresh default factories), and stays a frozen dataclass; a class it does not
fit is refused; ``maker(cls)`` builds the same values without a class call."""

from __future__ import annotations

import dataclasses
import importlib
import pickle
import pkgutil
import typing
from typing import Any

import onex
import onex._frozen
import pytest
from onex._frozen import maker, quick_init


def decorated() -> list[type[Any]]:
    found: dict[str, type[Any]] = {}
    for module in pkgutil.walk_packages(onex.__path__, "onex."):
        for value in vars(importlib.import_module(module.name)).values():
            init = getattr(value, "__init__", None)
            code = getattr(init, "__code__", None)
            if isinstance(value, type) and code is not None and code.co_filename.startswith("<onex._frozen"):
                found[f"{value.__module__}.{value.__qualname__}"] = value
    return [found[name] for name in sorted(found)]


CLASSES = decorated()


def test_the_hot_paths_value_types_are_built_by_quick_init() -> None:
    names = {cls.__name__ for cls in CLASSES}
    expected = {"WorkflowRow", "StepRow", "StampRow", "TransitionRow", "TransitionRecord", "Layout", "Sniff", "Stamp"}
    assert expected <= names, expected - names
    assert {"_Options", "StampedContent", "DeadLetterRow", "NodeStateRow"} <= names


@pytest.mark.parametrize("cls", CLASSES, ids=lambda cls: cls.__name__)
def test_a_class_is_built_as_its_dataclass_would_be(cls: type[Any]) -> None:
    fields = dataclasses.fields(cls)
    values = [f"value {i}" for i in range(len(fields))]
    by_position = cls(*values)
    by_name = cls(**{f.name: v for f, v in zip(fields, values, strict=True)})
    assert [getattr(by_position, f.name) for f in fields] == values
    assert by_position == by_name
    assert hash(by_position) == hash(by_name)
    assert repr(by_position) == repr(by_name)
    hints = typing.get_type_hints(cls.__init__)  # its annotations resolve in the class's module, as before
    assert list(hints) == [*(f.name for f in fields), "return"]

    required = [f for f in fields if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING]
    minimal = cls(*values[: len(required)])
    first, second = cls(*values[: len(required)]), minimal
    for f in fields[len(required) :]:
        if f.default is not dataclasses.MISSING:
            assert getattr(minimal, f.name) == f.default
        else:
            assert getattr(first, f.name) == f.default_factory()  # type: ignore[operator]
            assert getattr(first, f.name) is not getattr(second, f.name)  # a fresh one each time, never shared

    with pytest.raises(dataclasses.FrozenInstanceError):
        setattr(by_position, fields[0].name, "changed")
    changed = dataclasses.replace(by_position, **{fields[-1].name: "changed"})
    assert getattr(changed, fields[-1].name) == "changed"
    assert getattr(changed, fields[0].name) == values[0]
    assert pickle.loads(pickle.dumps(by_position)) == by_position
    assert type(by_position) is cls  # back from its twin

    with pytest.raises(TypeError):
        cls(*values, "one too many")
    with pytest.raises(TypeError):
        cls(*values, unknown="x")
    if required:
        with pytest.raises(TypeError):
            cls(*values[: len(required) - 1])


@pytest.mark.parametrize("cls", CLASSES, ids=lambda cls: cls.__name__)
def test_a_class_is_built_on_its_twin(cls: type[Any]) -> None:
    init = cls.__init__
    closure = dict(zip(init.__code__.co_freevars, (cell.cell_contents for cell in init.__closure__), strict=True))
    twin = closure["_twin"]  # a KeyError: the __init__ sets the slots through their descriptors
    # A subclass adding nothing to the layout, so that CPython's check of a switch compares no slot names ...
    assert twin.__bases__ == (cls,)
    assert twin.__slots__ == ()
    assert twin.__basicsize__ == cls.__basicsize__
    # ... whose stores are the interpreter's own (the frozen class's __setattr__ and __delattr__ refuse them)
    assert twin.__setattr__ is object.__setattr__
    assert twin.__delattr__ is object.__delattr__


@pytest.mark.parametrize("cls", CLASSES, ids=lambda cls: cls.__name__)
def test_a_maker_builds_what_the_class_builds(cls: type[Any]) -> None:
    """``maker(cls)`` takes the arguments ``cls`` takes and builds the same value, of the class itself, by position
    or by name, with the defaults and a fresh default factory each time."""
    make: Any = maker(cls)
    assert make is not cls  # every shipped class has a twin, so a maker of its own
    fields = dataclasses.fields(cls)
    values = [f"value {i}" for i in range(len(fields))]
    made = make(*values)
    assert type(made) is cls
    assert made == cls(*values)
    assert make(**{f.name: v for f, v in zip(fields, values, strict=True)}) == made
    required = [f for f in fields if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING]
    first, second = make(*values[: len(required)]), make(*values[: len(required)])
    assert first == cls(*values[: len(required)])
    for f in fields[len(required) :]:
        if f.default_factory is not dataclasses.MISSING:
            assert getattr(first, f.name) is not getattr(second, f.name)
    with pytest.raises(dataclasses.FrozenInstanceError):
        setattr(made, fields[0].name, "changed")
    with pytest.raises(TypeError):
        make(*values, "one too many")


def test_a_maker_is_the_class_where_there_is_no_twin_and_only_for_quick_init_classes(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(onex._frozen, "twin_of", lambda cls: None)

    @quick_init
    @dataclasses.dataclass(frozen=True, slots=True)
    class Lone:
        a: int

    assert maker(Lone) is Lone
    assert maker(Lone)(1) == Lone(1)

    @dataclasses.dataclass(frozen=True, slots=True)
    class Plain:
        a: int

    with pytest.raises(TypeError, match="not a quick_init class"):
        maker(Plain)


def test_a_subclass_is_built_as_itself() -> None:
    @quick_init
    @dataclasses.dataclass(frozen=True, slots=True)
    class Base:
        a: int
        b: list[int] = dataclasses.field(default_factory=list)

    class Sub(Base):
        pass

    made = Sub(1)
    assert type(made) is Sub
    assert (made.a, made.b) == (1, [])
    assert type(Base(2)) is Base


def test_a_class_it_does_not_fit_is_refused() -> None:
    @dataclasses.dataclass(slots=True)
    class Mutable:
        a: int

    @dataclasses.dataclass(frozen=True)
    class Unslotted:
        a: int

    @dataclasses.dataclass(frozen=True, slots=True)
    class PostInit:
        a: int

        def __post_init__(self) -> None:
            pass

    @dataclasses.dataclass(frozen=True, slots=True)
    class Derived:
        a: int
        b: int = dataclasses.field(init=False, default=0)

    @dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
    class KeywordOnly:
        a: int

    for cls in (Mutable, Unslotted, PostInit, Derived, KeywordOnly, int):
        with pytest.raises(TypeError, match="quick_init"):
            quick_init(cls)
