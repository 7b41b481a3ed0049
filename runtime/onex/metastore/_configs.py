"""Configuration values: checked against the JSON Schema stored with them, secret references, the effective merge.

Secrets. A value may be a secret reference instead of the secret, ``{"$secret": "RESOLVER:NAME"}`` (an object with
that one key), e.g. ``{"$secret": "env:DB_PASSWORD"}``; only the listed resolvers are accepted (``env``: the
process's environment variable NAME, read when the effective configuration is asked for with
``resolve_secrets=True``). A field whose schema says ``"x-secret": true`` or ``"writeOnly": true`` (the standard
annotation for a value a client sends but never reads back) must hold a reference: a plain value there is refused,
naming the field's path. Both keywords are checked wherever the schema applies them (``properties``, ``items``,
``$ref``, ``allOf`` ...), since they run as validator keywords. A reference stands for a value of whatever type the
schema wants, so the schema's other keywords do not look at it.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable, Iterator, Mapping
from typing import Any, Final

import jsonschema
from jsonschema import Draft202012Validator
from jsonschema.exceptions import ValidationError
from referencing.exceptions import Unresolvable

from onex.exceptions import MetastoreInvalid

__all__ = ["RESOLVERS", "Resolver", "check_values", "is_secret_ref", "merge", "resolve_secrets"]

SECRET_KEY: Final = "$secret"
SECRET_KEYWORDS: Final = ("x-secret", "writeOnly")
Resolver = Callable[[str], str | None]  # NAME -> the secret, None when it is not there


def _env(name: str) -> str | None:
    return os.environ.get(name)


RESOLVERS: Final[Mapping[str, Resolver]] = {"env": _env}


def is_secret_ref(value: Any) -> bool:
    return isinstance(value, dict) and len(value) == 1 and SECRET_KEY in value


def _path(parts: Any) -> str:
    return ".".join(str(p) for p in parts)


def _secret_keyword(validator: Any, marked: Any, instance: Any, schema: Any) -> Iterator[ValidationError]:
    if marked is True and not is_secret_ref(instance):
        yield ValidationError(
            'a secret: give a reference ({"$secret": "env:NAME"}), never the value',
            validator="x-secret",
        )


# jsonschema's extend() is untyped: the class it returns is a Draft202012Validator with two more keywords.
_Checker: Any = jsonschema.validators.extend(  # type: ignore[no-untyped-call]
    Draft202012Validator, dict.fromkeys(SECRET_KEYWORDS, _secret_keyword)
)


def _secret_errors(errors: Iterable[ValidationError]) -> Iterator[ValidationError]:
    """The secret keywords' errors among ``errors`` and the errors under them (``anyOf``, ``oneOf``)."""
    for error in errors:
        if error.validator in SECRET_KEYWORDS:
            yield error
        yield from _secret_errors(error.context or ())


def _nested(a: list[Any], b: list[Any]) -> bool:
    """Whether one of two paths is the other or inside it."""
    return a[: len(b)] == b or b[: len(a)] == a


def _unresolvable(exc: Unresolvable) -> str:
    """The message for a ``$ref`` that resolves to nothing, naming it as the schema spells it (mostly)."""
    anchor = getattr(exc, "anchor", None)  # NoSuchAnchor; jsonschema wraps the error, and forwards its attributes
    ref = f"#{anchor}" if anchor else f"#{exc.ref}" if exc.ref.startswith("/") else exc.ref  # a pointer, or a URI
    return f"$ref {ref!r} resolves to nothing in this schema (other documents are not fetched)"


def _refs(value: Any, path: tuple[str | int, ...] = ()) -> Iterator[tuple[tuple[str | int, ...], Any]]:
    if is_secret_ref(value):
        yield path, value
    elif isinstance(value, dict):
        for key, item in value.items():
            yield from _refs(item, (*path, key))
    elif isinstance(value, list):
        for index, item in enumerate(value):
            yield from _refs(item, (*path, index))


def check_values(values: dict[str, Any], schema: dict[str, Any], resolvers: Mapping[str, Resolver]) -> None:
    """``MetastoreInvalid`` naming the field (``values.db.password``) for the first problem found, in this order:
    a schema that is no JSON Schema, a secret reference to an unknown resolver, a value the schema refuses (a plain
    value in a secret field included; no message quotes a secret field's value) or a ``$ref`` of the schema that
    resolves to nothing (path ``schema``; found only when validation follows it)."""
    try:
        _Checker.check_schema(schema)
    except jsonschema.SchemaError as exc:
        raise MetastoreInvalid(_path(("schema", *exc.absolute_path)), exc.message) from None
    for path, ref in _refs(values):
        target = ref[SECRET_KEY]
        resolver, _, name = target.partition(":") if isinstance(target, str) else ("", "", "")
        if resolver not in resolvers or not name:
            raise MetastoreInvalid(
                _path(("values", *path)),
                f"secret reference {target!r}: expected RESOLVER:NAME with a resolver among {', '.join(resolvers)}",
            )
    try:
        errors = sorted(
            _Checker(schema).iter_errors(values), key=lambda e: (list(map(str, e.absolute_path)), e.message)
        )
    except Unresolvable as exc:  # a $ref is resolved only when validation follows it
        raise MetastoreInvalid("schema", _unresolvable(exc)) from None
    secrets = list(_secret_errors(errors))
    for error in errors:
        # A reference stands for a value of any type; only the secret keywords look at it.
        if is_secret_ref(error.instance) and error.validator not in SECRET_KEYWORDS:
            continue
        # Other keywords' messages quote the value ("'hunter2' is too short"): an error at a secret field, inside one
        # or around one reports the secret keyword's instead (a plain value there is wrong anyway).
        at = list(error.absolute_path)
        shown = next((s for s in secrets if _nested(list(s.absolute_path), at)), error)
        raise MetastoreInvalid(_path(("values", *shown.absolute_path)), shown.message)


def resolve_secrets(values: Any, resolvers: Mapping[str, Resolver], path: tuple[str | int, ...] = ()) -> Any:
    """``values`` with every secret reference replaced by the secret; ``MetastoreInvalid`` naming the field when a
    resolver has nothing under that name."""
    if is_secret_ref(values):
        resolver, _, name = str(values[SECRET_KEY]).partition(":")
        found = resolvers[resolver](name) if resolver in resolvers else None
        if found is None:
            raise MetastoreInvalid(_path(("values", *path)), f"secret {values[SECRET_KEY]!r} is not set")
        return found
    if isinstance(values, dict):
        return {k: resolve_secrets(v, resolvers, (*path, k)) for k, v in values.items()}
    if isinstance(values, list):
        return [resolve_secrets(v, resolvers, (*path, i)) for i, v in enumerate(values)]
    return values


def merge(base: dict[str, Any], over: Mapping[str, Any]) -> dict[str, Any]:
    """Deep merge: objects merge key by key, anything else (lists, scalars, a secret reference) ``over`` replaces."""
    merged = dict(base)
    for key, value in over.items():
        current = merged.get(key)
        if isinstance(current, dict) and isinstance(value, dict) and not is_secret_ref(value):
            merged[key] = merge(current, value)
        else:
            merged[key] = value
    return merged
