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
"""

from __future__ import annotations

import ctypes
import sys
from typing import Any, Final

from pydantic import BaseModel

__all__ = ["PlainReads", "read_plainly", "reads_plainly"]

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


class PlainReads(BaseModel):
    """The base of onex's payloads, envelope and contract models: each subclass gets ``read_plainly`` as pydantic
    completes it."""

    @classmethod
    def __pydantic_init_subclass__(cls, **kwargs: Any) -> None:
        super().__pydantic_init_subclass__(**kwargs)
        read_plainly(cls)
