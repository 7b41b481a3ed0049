"""``quick_init``: a frozen, slotted dataclass built at about half of its usual cost, still frozen.

A frozen dataclass's ``__init__`` sets each field with ``object.__setattr__(self, name, value)`` (its own
``__setattr__`` refuses), a global lookup, an attribute lookup and a call that parses its arguments, for every field.
A stamp builds about a dozen such values on the hot path (its store rows, transition records, layout and stamp
options: about 135 fields). Setting a slot through its own descriptor (``vars(cls)[name].__set__``, bound once) saves
the lookup, not the call: under Valgrind the 200 such calls of a stamp were 4-5 % of what the node graph executes
(about 240 instructions each, against some 20 for an assignment the interpreter specialises).

So ``__init__`` switches the new instance to a twin class for its duration: a subclass that adds nothing to the
layout (CPython checks it at each switch) and has ``object``'s ``__setattr__``, where ``self.name = value`` is the
interpreter's specialised slot store; then back to the class itself. 0.45 against 0.91 us for thirteen fields
(``WorkflowRow``, timeit, best of 5). Where the interpreter refuses the switch (another interpreter), or for an
instance of a subclass, the slots are set through their descriptors, as before.

``maker(cls)`` goes one step further for the hot path: a function generated with the arguments of ``cls`` that makes
the instance as the twin from the start (``twin()``), fills it and switches it to ``cls``, without a class call. A
class call turns keyword arguments into a dict and the dict back into keywords for ``__init__``, then calls the slot
that switches the instance: 0.22 against 0.58 us for a ``StepRow`` built with keywords (timeit), and 4.9 % fewer
instructions a stamp in ``bench/instructions.py``'s ceiling run for the rows and transition records a stamp builds.

Nothing else changes: the class is the same frozen dataclass (equality, hash, repr, ``dataclasses.replace``,
pickling, ``FrozenInstanceError`` on assignment), and its ``__init__`` takes the same arguments, with the same
defaults; ``tests/test_frozen.py`` checks each decorated class against the ``__init__`` dataclasses writes. The twin
is never seen outside ``__init__`` or a maker: nothing else holds the instance until they return.
"""

from __future__ import annotations

import dataclasses
import sys
import textwrap
from collections.abc import Callable
from typing import Any, ParamSpec, TypeVar

__all__ = ["maker", "quick_init", "twin_of"]

T = TypeVar("T")
P = ParamSpec("P")


class _Factory:
    """The default of a field with a ``default_factory`` (call the factory), shown as dataclasses show it."""

    def __repr__(self) -> str:
        return "<factory>"


_FACTORY: Any = _Factory()


_set_class: Any = vars(object)["__class__"].__set__


def twin_of(cls: type[Any]) -> type[Any] | None:
    """A subclass of ``cls`` that adds nothing to its layout and has ``object``'s ``__setattr__``, ``__delattr__`` and
    ``__init__`` (a frozen class's refuse every store; a pydantic model's ``__delattr__`` alone would keep every store
    on the generic path), to which an instance of ``cls`` can be switched and back; None where the interpreter refuses.
    ``quick_init`` builds its values on one, ``onex.envelope`` its models (a twin of ``PlainReads``).

    A subclass rather than a class of its own with the same slots: CPython checks each switch by walking both classes
    up to the first that adds to its base's layout, ``cls`` for both here, so it never compares their slot names, as
    it did for two unrelated classes at every switch (29 tuple comparisons a stamp, 0.8 % of its instructions)."""
    namespace = {
        "__slots__": (),
        "__setattr__": object.__setattr__,
        "__delattr__": object.__delattr__,
        "__init__": object.__init__,  # ``twin()``: an empty instance
        "__module__": cls.__module__,
    }
    twin = type(f"{cls.__name__}Twin", (cls,), namespace)
    probe = object.__new__(cls)
    try:
        _set_class(probe, twin)
        probe.__class__ = cls
    except TypeError:
        return None
    return twin


def quick_init(cls: type[T]) -> type[T]:
    """Replace the ``__init__`` of ``cls`` (a ``@dataclass(frozen=True, slots=True)``) by one that sets its slots
    on a twin class (module docstring). ``TypeError`` for a class it does not fit: not frozen, not slotted, a
    ``__post_init__``, a field left out of ``__init__`` or keyword-only (these would need the rest of what
    dataclasses' own ``__init__`` does)."""
    params = getattr(cls, "__dataclass_params__", None)
    if params is None or not params.frozen or "__slots__" not in cls.__dict__:
        raise TypeError(f"quick_init: {cls.__name__} is not a frozen, slotted dataclass")
    if hasattr(cls, "__post_init__"):
        raise TypeError(f"quick_init: {cls.__name__} has a __post_init__")
    twin = twin_of(cls)
    scope: dict[str, Any] = {"_FACTORY": _FACTORY, "_cls": cls, "_twin": twin, "_set_class": _set_class}
    arguments: list[str] = []
    factories: list[str] = []
    stores: list[str] = []  # self.name = name, on the twin
    sets: list[str] = []  # through the slot's descriptor
    for index, field in enumerate(dataclasses.fields(cls)):  # type: ignore[arg-type]
        if not field.init or field.kw_only:
            raise TypeError(f"quick_init: {cls.__name__}.{field.name} is not a positional __init__ argument")
        name = field.name
        scope[f"_set{index}"] = cls.__dict__[name].__set__
        if field.default is not dataclasses.MISSING:
            scope[f"_default{index}"] = field.default
            arguments.append(f"{name}=_default{index}")
        elif field.default_factory is not dataclasses.MISSING:
            scope[f"_factory{index}"] = field.default_factory
            arguments.append(f"{name}=_FACTORY")
            factories.append(f"if {name} is _FACTORY:\n    {name} = _factory{index}()\n")
        else:
            arguments.append(name)
        stores.append(f"    self.{name} = {name}\n")
        sets.append(f"_set{index}(self, {name})\n")
    make = ""  # maker(cls): builds on the twin from the start
    if twin is None or not stores:
        body = "".join(factories) + "".join(sets)
    else:
        body = (
            "".join(factories)
            + "if type(self) is _cls:\n    _set_class(self, _twin)\n"
            + "".join(stores)
            + "    self.__class__ = _cls\nelse:\n"
            + "".join("    " + line for line in sets)
        )
        make = "".join(factories) + "self = _twin()\n" + "".join(line[4:] for line in stores)
        make += "self.__class__ = _cls\nreturn self\n"
    # As dataclasses do: the setters and defaults are the closure of a factory, so the function's globals are its
    # module's and its annotations (strings, under ``from __future__ import annotations``) resolve there.
    inner = textwrap.indent(body, "        ") or "        pass\n"
    source = f"def define({', '.join(scope)}):\n    def __init__(self, {', '.join(arguments)}):\n{inner}"
    if make:
        source += (
            f"    def make({', '.join(arguments)}):\n{textwrap.indent(make, '        ')}    return __init__, make\n"
        )
    else:
        source += "    return __init__, _cls\n"
    made: dict[str, Any] = {}
    exec(compile(source, f"<onex._frozen {cls.__qualname__}>", "exec"), sys.modules[cls.__module__].__dict__, made)
    init, make_one = made["define"](**scope)
    init.__qualname__ = f"{cls.__qualname__}.__init__"
    init.__module__ = cls.__module__
    if make_one is not cls:
        make_one.__qualname__ = f"maker({cls.__qualname__})"
        make_one.__module__ = cls.__module__
    _MAKERS[cls] = make_one
    init.__annotations__ = {field.name: field.type for field in dataclasses.fields(cls)} | {"return": None}  # type: ignore[arg-type]
    cls.__init__ = init  # type: ignore[method-assign]
    return cls


_MAKERS: dict[type[Any], Callable[..., Any]] = {}


def maker(cls: Callable[P, T]) -> Callable[P, T]:
    """A function that builds an instance of ``cls`` (a ``quick_init`` class) from the arguments ``cls(...)`` takes,
    checked alike by mypy, at about half the cost of the call on the hot path: no class call (which turns keyword
    arguments into a dict, and the dict back into keywords for ``__init__``, about 2,000 instructions), the instance
    made as its twin (``twin()``) and switched to ``cls`` once filled. ``cls`` itself where it has no twin."""
    try:
        return _MAKERS[cls]  # type: ignore[index]
    except KeyError:
        raise TypeError(f"maker: {cls!r} is not a quick_init class") from None
