"""``PlainReads`` and ``read_plainly(cls)``: a field of onex's own pydantic models read at the interpreter's plain cost.

pydantic's ``BaseModel`` defines ``__getattr__`` (for private attributes and extra fields), and CPython gives every
class with a ``__getattr__`` anywhere in its MRO the slot function ``slot_tp_getattr_hook`` as its ``tp_getattro``.
So every read of a field, found or not, first looks ``__getattr__`` and ``__getattribute__`` up in the type, then
does the ordinary lookup; and the interpreter's specialised ``LOAD_ATTR`` (which requires the ordinary
``PyObject_GenericGetAttr``) never applies, so each read keeps the generic path. A stamp reads its payloads',
envelopes' and contract models' fields about 260 times: without the hook, 9.5 % fewer instructions a stamp in
``bench/instructions.py``'s ceiling run, and 40 ns a read against 15 (timeit).

For a model with no private attributes and no extra fields, pydantic's ``__getattr__`` is reached only for a name
the model does not have, and then raises ``AttributeError`` with the very text Python's own lookup raises. Every
onex payload, the envelope and the contract models are such models (``extra="forbid"``, no ``_private`` fields). For
them the slot is set back to ``PyObject_GenericGetAttr``, what a class without ``__getattr__`` has: the same
behaviour, the plain cost. CPython sets the slot again itself if ``__getattr__`` or ``__getattribute__`` is ever
assigned on the class or a base.

Nothing is assumed about the interpreter: on CPython, the slot's place in a type object is found (it is where
``object``'s type holds ``PyObject_GenericGetAttr``), and a class is changed only when it holds there what
``BaseModel`` holds (the hook); on another interpreter, or a layout that does not match, classes are left as they are
(slower, the same behaviour). A class that defines ``__getattr__`` or ``__getattribute__`` itself is left alone.
The gain is CPython 3.10's and 3.11's: 3.12 made the hook itself cheaper (cpython#93955), and there the change is
worth a few per cent of a read.

The classes themselves: pydantic's metaclass defines ``__getattr__`` too (a private attribute's default read on the
class), so every read of a model class's own attribute (``Model.built``, ``Model.model_validate``,
``Model.__pydantic_serializer__``) took the hook, and with it ``type.__getattribute__`` called as a method-wrapper: 114
against 49 ns a read, about 24 reads a stamp, 1.1 % of the ceiling run's instructions. ``PlainReads``' metaclass is a
subclass of pydantic's whose slot holds ``type``'s own lookup; a name a class does not have then raises CPython's
``AttributeError`` ("type object 'X' has no attribute 'y'", where pydantic's says "y"), and a class with private
attributes is switched back to pydantic's metaclass as pydantic completes it. A metaclass derived from it gets the hook
again from CPython, and with it any ``__getattr__`` of its own.
"""

from __future__ import annotations

import ctypes
import sys
from typing import Any, Final

from pydantic import BaseModel
from pydantic._internal._model_construction import ModelMetaclass

__all__ = ["PlainReads", "class_reads_plainly", "read_plainly", "reads_plainly"]

_POINTER: Final = ctypes.sizeof(ctypes.c_void_p)


def _locate() -> tuple[int, int, int] | None:
    """(offset of ``tp_getattro`` in a type object, ``PyObject_GenericGetAttr``, ``BaseModel``'s slot), or None
    where this is not CPython or the layout is not the expected one."""
    if sys.implementation.name != "cpython":
        return None
    generic = ctypes.cast(ctypes.pythonapi.PyObject_GenericGetAttr, ctypes.c_void_p).value
    if not generic:
        return None
    # Among the first pointers of `object`'s type object (tp_getattro is the 19th on every CPython 3).
    found = [i for i in range(32) if ctypes.c_void_p.from_address(id(object) + i * _POINTER).value == generic]
    if len(found) != 1:
        return None
    offset = found[0] * _POINTER
    hook = ctypes.c_void_p.from_address(id(BaseModel) + offset).value
    if hook is None or hook == generic:  # BaseModel without __getattr__: nothing to undo
        return None
    return offset, generic, hook


_SLOT: Final = _locate()


def read_plainly(cls: type[BaseModel]) -> bool:
    """Give ``cls`` the plain attribute lookup where that changes nothing but the cost (module docstring); whether
    it has it now."""
    if _SLOT is None or cls.__private_attributes__ or cls.model_config.get("extra") == "allow":
        return reads_plainly(cls)
    for klass in cls.__mro__:
        own = vars(klass)
        if ("__getattr__" in own and klass is not BaseModel) or ("__getattribute__" in own and klass is not object):
            return reads_plainly(cls)
    offset, generic, hook = _SLOT
    slot = ctypes.c_void_p.from_address(id(cls) + offset)
    if slot.value == hook:
        slot.value = generic
        ctypes.pythonapi.PyType_Modified(ctypes.py_object(cls))  # drop what the interpreter cached of the type
    return slot.value == generic


def reads_plainly(cls: type) -> bool:
    """Whether reading an attribute of a ``cls`` instance takes CPython's plain path (False where that cannot be
    told: not CPython)."""
    if _SLOT is None:
        return False
    offset, generic, _ = _SLOT
    return ctypes.c_void_p.from_address(id(cls) + offset).value == generic


# ``type``'s own ``tp_getattro`` (``type_getattro``), which a model class's attribute reads take once its metaclass
# holds it; None where the slot was not located.
_TYPE_LOOKUP: Final = None if _SLOT is None else ctypes.c_void_p.from_address(id(type) + _SLOT[0]).value


def _plain_class_reads(meta: type) -> None:
    """Give the model classes of metaclass ``meta`` (a subclass of pydantic's ``ModelMetaclass``) ``type``'s plain
    lookup of a class's own attributes, where ``meta`` holds the hook (module docstring)."""
    if _SLOT is None:
        return
    offset, _, hook = _SLOT
    slot = ctypes.c_void_p.from_address(id(meta) + offset)
    if slot.value == hook:
        slot.value = _TYPE_LOOKUP
        ctypes.pythonapi.PyType_Modified(ctypes.py_object(meta))


def class_reads_plainly(cls: type) -> bool:
    """Whether reading an attribute of the class ``cls`` itself takes ``type``'s plain path (False where that cannot
    be told: not CPython)."""
    if _SLOT is None:
        return False
    return ctypes.c_void_p.from_address(id(type(cls)) + _SLOT[0]).value == _TYPE_LOOKUP


class _ClassReads(ModelMetaclass):
    """``PlainReads``' metaclass: pydantic's, with ``type``'s plain lookup for the class's own attributes (module
    docstring); a class with private attributes goes back to pydantic's (``PlainReads.__pydantic_init_subclass__``)."""


_plain_class_reads(_ClassReads)


class PlainReads(BaseModel, metaclass=_ClassReads):
    """The base of onex's payloads, envelope and contract models: each subclass gets ``read_plainly`` as pydantic
    completes it, and reads its class's attributes plainly unless it has private attributes."""

    @classmethod
    def __pydantic_init_subclass__(cls, **kwargs: Any) -> None:
        super().__pydantic_init_subclass__(**kwargs)
        read_plainly(cls)
        if cls.__private_attributes__ and type(cls) is _ClassReads:
            # pydantic's metaclass finds a private attribute's default on the class (``Model._secret``); setattr, as
            # mypy does not take an assignment to a class's ``__class__``.
            setattr(cls, "__class__", ModelMetaclass)  # noqa: B010
