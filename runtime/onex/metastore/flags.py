"""Feature flags: the flag model, its evaluation, and the rollout bucketing function.

A ``FlagSpec`` is the user-editable part of a flag. ``CompiledFlag`` turns one spec into plain closures once (guards
parsed by ``onex.fsm.parse_guard``, every possible answer built in advance), so ``evaluate`` parses nothing and
allocates nothing on its usual paths (a ``matches`` condition allocates the value's UTF-8 bytes and one span: it runs on
RE2, ``onex.contracts.grammar.Pattern``, so that a rule written over the HTTP API cannot make Python's backtracking
``re`` hold the event loop); it answers as an OpenFeature provider does: value, variant, reason, and an error code when
it failed. An error is an answer (reason ERROR, the default value), never an exception. A rule whose pattern RE2 refuses
(back-references, look-around) is refused when the flag is written, as any malformed condition is.

Order of evaluation; the first step that decides wins:

1. ``expires_at <= now``: EXPIRED, default value.
2. The context is not a mapping: ERROR / INVALID_CONTEXT, default value.
3. Overrides: each of ``enabled``, ``variant``, ``rollout`` is taken from the tenant's override if it sets it, else
   from the environment's override, else from the flag (only overrides have a ``variant``).
4. Not enabled: DISABLED, default value.
5. An override's ``variant``: TARGETING_MATCH with that variant for every context (rules and rollout are skipped).
6. Rules in order. A rule matches when all its conditions hold (a condition on an attribute the context lacks does
   not hold; ``not_exists`` does). Without a rollout: TARGETING_MATCH. With one: SPLIT when the context's bucket is
   in, the next rule when it is out, ERROR / TARGETING_KEY_MISSING when the context lacks the stickiness attribute.
7. The rollout: SPLIT when in, DEFAULT (default value) when out, ERROR / TARGETING_KEY_MISSING as above.
8. No rollout: STATIC when the flag has no rules, DEFAULT when it has rules and none matched.

A rule, rollout or override that names a variant serves that variant's value; one that names none serves ``True``
when ``default_value`` is a boolean (an on/off flag) and ``default_value`` otherwise. ``expected_type`` (a JSON type
name) turns a value of another type into ERROR / TYPE_MISMATCH; an unexpected exception while evaluating (a context
mapping that raises) into ERROR / GENERAL; ``compile_flag`` turns a stored spec that no longer validates into a
flag that answers ERROR / PARSE_ERROR.

Bucketing (``bucket``) is SHA-256 of the UTF-8 bytes of ``flag_name + ":" + sticky_value``, the first four bytes of
the digest read as a big-endian unsigned integer, modulo 10,000. A context is in a rollout of ``p`` percent iff
``bucket < ceil(p * 100)`` (``p`` read as a decimal: 12.5 % is buckets 0..1249), so raising ``p`` only ever adds
buckets: whoever had the flag keeps it. SHA-256 because every language's standard library has it (Go, Java,
.NET, Node, browsers' WebCrypto), unlike BLAKE2 or murmur3; the 7,296 of 2**32 values that make the modulo uneven
skew a bucket by 2e-6 of its share.
"""

from __future__ import annotations

import math
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from enum import StrEnum
from hashlib import sha256
from typing import Annotated, Any, Final

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator
from pydantic_core import InitErrorDetails, PydanticCustomError

from onex.contracts import Pattern, parse_condition
from onex.fsm import parse_guard

__all__ = [
    "BUCKETS",
    "FLAG_NAME_PATTERN",
    "JSON_TYPES",
    "CompiledFlag",
    "ErrorCode",
    "FlagSpec",
    "Override",
    "Reason",
    "Resolution",
    "Rollout",
    "TargetingRule",
    "UtcTime",
    "bucket",
    "compile_flag",
    "describe_errors",
    "not_found",
    "threshold",
]

BUCKETS: Final = 10_000
FLAG_NAME_PATTERN: Final = r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}$"


class Reason(StrEnum):
    """Why an evaluation gave its value (OpenFeature's resolution reasons)."""

    STATIC = "STATIC"
    TARGETING_MATCH = "TARGETING_MATCH"
    SPLIT = "SPLIT"
    DEFAULT = "DEFAULT"
    DISABLED = "DISABLED"
    EXPIRED = "EXPIRED"
    ERROR = "ERROR"


class ErrorCode(StrEnum):
    """What went wrong when the reason is ERROR (OpenFeature's error codes)."""

    FLAG_NOT_FOUND = "FLAG_NOT_FOUND"
    TARGETING_KEY_MISSING = "TARGETING_KEY_MISSING"
    INVALID_CONTEXT = "INVALID_CONTEXT"
    TYPE_MISMATCH = "TYPE_MISMATCH"
    PARSE_ERROR = "PARSE_ERROR"
    GENERAL = "GENERAL"


# --- the model ----------------------------------------------------------------------------------------------------


def _check_guard(expression: str) -> str:
    try:
        parse_guard(expression)
    except ValueError as exc:
        raise PydanticCustomError("guard", "{reason}", {"reason": str(exc)}) from None
    return expression


Condition = Annotated[str, AfterValidator(_check_guard)]
"""A guard of ``onex.fsm``'s three-token grammar: ``field operator value`` or ``field exists``."""


class Rollout(BaseModel):
    """Serve to ``percentage`` percent of contexts, bucketed by the context attribute ``stickiness``."""

    model_config = ConfigDict(extra="forbid")

    percentage: float = Field(ge=0, le=100)
    stickiness: str = "user_id"
    variant: str | None = None

    @field_validator("stickiness")
    @classmethod
    def _dotted(cls, value: str) -> str:
        try:
            parse_condition(f"{value} exists")
        except ValueError:
            reason = f"{value!r} is not an attribute name (a dotted name such as user_id or org.id)"
            raise PydanticCustomError("stickiness", "{reason}", {"reason": reason}) from None
        return value


class TargetingRule(BaseModel):
    """Serve ``variant`` (or a rollout of it) to contexts for which every condition holds."""

    model_config = ConfigDict(extra="forbid")

    conditions: list[Condition] = []
    variant: str | None = None
    rollout: Rollout | None = None


class Override(BaseModel):
    """What a tenant or an environment changes: any field left None keeps what the next level says."""

    model_config = ConfigDict(extra="forbid")

    enabled: bool | None = None
    variant: str | None = None
    rollout: Rollout | None = None

    @model_validator(mode="after")
    def _one_of(self) -> Override:
        if self.variant is not None and self.rollout is not None:
            raise ValueError("set `variant` (every context gets it) or `rollout` (with its own `variant`), not both")
        return self


def _utc(value: datetime) -> datetime:
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value


# A time without a zone is read as UTC, as the store keeps every time.
UtcTime = Annotated[datetime, AfterValidator(_utc)]


class FlagSpec(BaseModel):
    """The user-editable part of a feature flag, validated: variants it names exist, guards parse.

    Errors carry the path of the field at fault (``rules.0.conditions.1``, ``tenant_overrides.acme.variant``), all
    of them at once. Fields not in the model are ignored, so an entity's dump validates as its spec.
    """

    name: str = Field(pattern=FLAG_NAME_PATTERN)
    description: str = ""
    enabled: bool = False
    default_value: Any = False
    variants: dict[str, Any] = {}
    rules: list[TargetingRule] = []
    rollout: Rollout | None = None
    tenant_overrides: dict[str, Override] = {}
    environment_overrides: dict[str, Override] = {}
    expires_at: UtcTime | None = None
    tags: list[str] = []

    @model_validator(mode="after")
    def _variants_exist(self) -> FlagSpec:
        errors: list[InitErrorDetails] = []
        declared = ", ".join(self.variants) or "none"

        def check(variant: str | None, *loc: str | int) -> None:
            if variant is not None and variant not in self.variants:
                reason = f"unknown variant {variant!r}; the flag's variants: {declared}"
                error = PydanticCustomError("unknown_variant", "{reason}", {"reason": reason})
                errors.append(InitErrorDetails(type=error, loc=loc, input=variant))

        def check_rollout(rollout: Rollout | None, *loc: str | int) -> None:
            if rollout is not None:
                check(rollout.variant, *loc, "rollout", "variant")

        for index, rule in enumerate(self.rules):
            check(rule.variant, "rules", index, "variant")
            check_rollout(rule.rollout, "rules", index)
        check_rollout(self.rollout)
        for field_name, overrides in (
            ("tenant_overrides", self.tenant_overrides),
            ("environment_overrides", self.environment_overrides),
        ):
            for key, override in overrides.items():
                check(override.variant, field_name, key, "variant")
                check_rollout(override.rollout, field_name, key)
        if errors:
            raise ValidationError.from_exception_data(type(self).__name__, errors)
        return self


def describe_errors(exc: ValidationError) -> list[str]:
    """One ``path: message`` line per error of a validation (``rules.0.variant: unknown variant 'x'; ...``)."""
    return [f"{'.'.join(str(part) for part in e['loc']) or '(flag)'}: {e['msg']}" for e in exc.errors()]


# --- answers ------------------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Resolution:
    """One evaluation's answer. Immutable: a compiled flag hands out the same instance for the same outcome."""

    flag: str
    value: Any
    variant: str | None
    reason: Reason
    error_code: ErrorCode | None = None
    error_message: str | None = None

    def as_dict(self) -> dict[str, Any]:
        return {
            "flag": self.flag,
            "value": self.value,
            "variant": self.variant,
            "reason": self.reason.value,
            "error_code": None if self.error_code is None else self.error_code.value,
            "error_message": self.error_message,
        }


def not_found(name: str) -> Resolution:
    """The answer for a flag that does not exist: ERROR / FLAG_NOT_FOUND, value None (the caller has the default)."""
    return Resolution(name, None, None, Reason.ERROR, ErrorCode.FLAG_NOT_FOUND, f"no feature flag named {name!r}")


# --- bucketing ----------------------------------------------------------------------------------------------------


def bucket(flag_name: str, sticky_value: str) -> int:
    """The bucket, 0..9999, of a context whose stickiness attribute is ``sticky_value`` for the flag ``flag_name``.

    First 4 bytes, big-endian, of SHA-256(UTF-8(flag_name + ":" + sticky_value)), modulo 10,000.
    """
    return int.from_bytes(sha256(f"{flag_name}:{sticky_value}".encode()).digest()[:4], "big") % BUCKETS


def threshold(percentage: float) -> int:
    """How many buckets (from 0) a rollout of ``percentage`` percent takes: ``ceil(percentage * 100)``.

    Rounded to 6 decimals first, so binary floating point does not add a bucket (0.07 * 100 is 7.000000000000001).
    """
    return math.ceil(round(percentage * 100, 6))


JSON_TYPES: Final[Mapping[str, tuple[type, ...]]] = {
    "boolean": (bool,),
    "string": (str,),
    "number": (int, float),
    "integer": (int,),
    "object": (dict,),
    "array": (list, tuple),
}
"""``expected_type`` names: JSON's types (a bool is not a number, as in JSON)."""


# --- compilation --------------------------------------------------------------------------------------------------

_MISSING: Final = object()
Predicate = Callable[[Mapping[str, Any]], bool]
"""A compiled condition (or all of a rule's conditions): True when it holds for the context."""

_NUMERIC: Final = {
    "greater_than": "__lt__", ">": "__lt__", "less_than": "__gt__", "<": "__gt__", ">=": "__le__", "<=": "__ge__",
}  # fmt: skip
"""``actual OP bound`` as a method of the bound: ``actual > bound`` is ``bound.__lt__(actual)``."""


def _test(operator: str, value: Any, pattern: Pattern | None) -> Callable[[Any], bool]:
    """The test of one present attribute value, as ``onex.fsm.Guard`` applies it (the tests check they agree).

    May raise TypeError or ValueError for a value of the wrong type: the caller turns that into False.
    """
    if pattern is not None:
        search = pattern.search  # RE2's (onex.contracts.grammar.Pattern): linear in the value, whoever wrote the rule
        return lambda a: search(a if type(a) is str else str(a))
    if operator in ("equals", "=="):
        text = str(value)
        return lambda a: bool(a == value or str(a) == text)
    if operator in ("not_equals", "!="):
        text = str(value)
        return lambda a: not (a == value or str(a) == text)
    if operator in _NUMERIC:
        try:
            compare: Callable[[float], bool] = getattr(float(value), _NUMERIC[operator])
        except (TypeError, ValueError):
            return lambda a: False  # a bound that is no number: Guard's float() fails on every call
        return lambda a: compare(float(a))
    if operator in ("in", "not_in"):
        negate = operator == "not_in"
        if isinstance(value, list):
            members: frozenset[Any] | list[Any]
            try:
                members = frozenset(value)  # a guard's list holds scalars: a set answers as the list would
            except TypeError:
                members = value

            def member(a: Any) -> bool:
                try:
                    return a in members
                except TypeError:  # an unhashable value equals no scalar
                    return False

            return (lambda a: not member(a)) if negate else member
        text = str(value)
        return (lambda a: str(a) not in text) if negate else (lambda a: str(a) in text)
    if operator == "contains":
        return lambda a: value in a
    if operator == "min_length":
        return lambda a: len(a) >= int(value)
    if operator == "max_length":
        return lambda a: len(a) <= int(value)
    raise ValueError(f"unknown operator {operator!r}")  # pragma: no cover - parse_guard refuses it first


def _reader(path: tuple[str, ...], missing: Any) -> Callable[[Mapping[str, Any]], Any]:
    """Reads a dotted attribute path from a context: ``missing`` where a level is absent or not a mapping."""

    def read(context: Mapping[str, Any]) -> Any:
        actual: Any = context
        for part in path:
            actual = actual.get(part, missing) if isinstance(actual, Mapping) else missing
            if actual is missing:
                break
        return actual

    return read


def _condition(expression: str) -> Predicate:
    """A guard as one closure over a context: an absent attribute fails it (``not_exists`` passes)."""
    guard = parse_guard(expression)
    path = tuple(guard.field.split("."))
    key = path[0]
    operator = guard.operator
    if len(path) > 1:
        read = _reader(path, _MISSING)
        if operator == "exists":
            return lambda c: (v := read(c)) is not _MISSING and v is not None
        if operator == "not_exists":
            return lambda c: (v := read(c)) is _MISSING or v is None
    else:
        if operator == "exists":
            return lambda c: c.get(key) is not None
        if operator == "not_exists":
            return lambda c: c.get(key) is None
        read = None
    test = _test(operator, guard.value, guard.pattern)
    if read is not None:

        def nested(context: Mapping[str, Any]) -> bool:
            actual = read(context)
            if actual is _MISSING:
                return False
            try:
                return test(actual)
            except (TypeError, ValueError):  # a value of the wrong type fails the condition, as in onex.fsm
                return False

        return nested
    # One key, the usual case: one closure per operator family, reading and testing in one call.
    if guard.pattern is not None:
        search = guard.pattern.search

        def matches(context: Mapping[str, Any]) -> bool:
            actual = context.get(key, _MISSING)
            if actual is _MISSING:
                return False
            return search(actual if type(actual) is str else str(actual))

        return matches
    if operator in ("equals", "==") and type(guard.value) is str:
        expected = guard.value

        def equals(context: Mapping[str, Any]) -> bool:
            actual = context.get(key, _MISSING)
            if type(actual) is str:  # then str(actual) == expected says no more than actual == expected
                return actual == expected
            if actual is _MISSING:
                return False
            try:
                return bool(actual == expected or str(actual) == expected)
            except (TypeError, ValueError):
                return False

        return equals
    if operator in _NUMERIC:
        try:
            compare: Callable[[float], bool] = getattr(float(guard.value), _NUMERIC[operator])
        except (TypeError, ValueError):
            return lambda context: False  # a bound that is no number fails every value, as Guard's float() does

        def numeric(context: Mapping[str, Any]) -> bool:
            actual = context.get(key, _MISSING)
            if actual is _MISSING:
                return False
            try:
                return compare(float(actual))
            except (TypeError, ValueError):
                return False

        return numeric
    if operator == "in" and isinstance(guard.value, list):
        try:
            members = frozenset(guard.value)
        except TypeError:
            members = None
        if members is not None:
            # _MISSING is in no set of a guard's values, so an absent attribute fails without a test of its own.
            def among(context: Mapping[str, Any]) -> bool:
                try:
                    return context.get(key, _MISSING) in members
                except TypeError:  # unhashable: equals no scalar
                    return False

            return among

    def holds(context: Mapping[str, Any]) -> bool:
        actual = context.get(key, _MISSING)
        if actual is _MISSING:
            return False
        try:
            return test(actual)
        except (TypeError, ValueError):
            return False

    return holds


def _all(predicates: tuple[Predicate, ...]) -> Predicate:
    """All of a rule's conditions as one predicate (no conditions: every context)."""
    if not predicates:
        return lambda context: True
    if len(predicates) == 1:
        return predicates[0]
    if len(predicates) == 2:
        first, second = predicates
        return lambda context: first(context) and second(context)

    return lambda context: all(predicate(context) for predicate in predicates)


class _Sticky:
    """Turns a rollout's stickiness attribute into the string hashed, or into the ERROR answer when it cannot."""

    def __init__(self, flag: str, rollout: Rollout, default: Any) -> None:
        self.attribute = rollout.stickiness
        path = tuple(rollout.stickiness.split("."))
        self.key: str | None = path[0] if len(path) == 1 else None
        self.read = _reader(path, None)
        self.missing = Resolution(
            flag, default, None, Reason.ERROR, ErrorCode.TARGETING_KEY_MISSING,
            f"the rollout needs the context attribute {rollout.stickiness!r}",
        )  # fmt: skip
        self.flag = flag
        self.default = default

    def __call__(self, value: Any) -> str | Resolution:
        if value is None or (isinstance(value, str) and not value):
            return self.missing
        if type(value) is str:
            return value
        if isinstance(value, int) and not isinstance(value, bool):
            return str(value)  # decimal, as JSON writes it
        if isinstance(value, uuid.UUID):
            return str(value)  # lower-case, hyphenated
        if isinstance(value, str):
            return str.__str__(value)  # a str subclass hashes as its plain text
        return Resolution(
            self.flag, self.default, None, Reason.ERROR, ErrorCode.INVALID_CONTEXT,
            f"the context attribute {self.attribute!r} is a {type(value).__name__};"
            " a rollout hashes a string, an integer or a UUID",
        )  # fmt: skip


_Split = tuple[str, "str | None", int, Resolution, _Sticky]
"""A compiled rollout: (flag name + ":", the stickiness key (None: dotted, read by the _Sticky), the threshold,
the SPLIT answer, the _Sticky)."""
_Rule = tuple[Predicate, Resolution, "_Split | None"]
"""A compiled rule: (its conditions, its TARGETING_MATCH answer, its rollout)."""
_Plan = tuple["tuple[_Rule, ...] | None", "_Split | None", Resolution]
"""A compiled evaluation of steps 4-8 for one (tenant, environment): (rules, rollout, the answer when neither
decides). Rules None: the last answer is the only one (disabled, or an override's variant)."""


def _in_rollout(split: _Split, context: Mapping[str, Any]) -> Resolution | None:
    """The rollout's answer: SPLIT when in, None when out, an ERROR answer without a usable stickiness value."""
    prefix, key, limit, hit, sticky = split
    value = context.get(key) if key is not None else sticky.read(context)
    if type(value) is not str or not value:
        value = sticky(value)
        if isinstance(value, Resolution):
            return value
    if int.from_bytes(sha256((prefix + value).encode()).digest()[:4], "big") % BUCKETS < limit:
        return hit
    return None


class CompiledFlag:
    """One flag version compiled for evaluation; build it once per version, share it between threads.

    ``evaluate`` is the hot path: every answer that does not depend on the context is built here, each rule's
    conditions are one closure, and the combinations of overrides are compiled on first use (one per tenant and
    environment the overrides name).
    """

    __slots__ = (
        "_environment_overrides", "_expires_at", "_generic", "_invalid_context", "_overridden", "_plan", "_plans",
        "_rules", "_tenant_overrides", "expired", "name", "spec",
    )  # fmt: skip

    def __init__(self, spec: FlagSpec) -> None:
        self.spec = spec
        self.name = spec.name
        self._expires_at = spec.expires_at
        default = spec.default_value
        self.expired = Resolution(spec.name, default, None, Reason.EXPIRED)
        self._invalid_context = Resolution(
            spec.name, default, None, Reason.ERROR, ErrorCode.INVALID_CONTEXT, "the evaluation context is not a mapping"
        )
        self._rules = [(_all(tuple(_condition(c) for c in rule.conditions)), rule) for rule in spec.rules]
        self._tenant_overrides = spec.tenant_overrides
        self._environment_overrides = spec.environment_overrides
        self._overridden = bool(spec.tenant_overrides or spec.environment_overrides)
        self._plans: dict[tuple[str | None, str | None], _Plan] = {}
        self._plan = self._plan_for(None, None)

    def _value(self, variant: str | None) -> Any:
        if variant is not None:
            return self.spec.variants[variant]
        default = self.spec.default_value
        return True if isinstance(default, bool) else default

    def _answer(self, reason: Reason, variant: str | None) -> Resolution:
        return Resolution(self.name, self._value(variant), variant, reason)

    def _split(self, rollout: Rollout, variant: str | None) -> _Split:
        sticky = _Sticky(self.name, rollout, self.spec.default_value)
        hit = self._answer(Reason.SPLIT, rollout.variant or variant)
        return (self.name + ":", sticky.key, threshold(rollout.percentage), hit, sticky)

    def _plan_for(self, tenant: str | None, environment: str | None) -> _Plan:
        key = (
            tenant if tenant in self._tenant_overrides else None,
            environment if environment in self._environment_overrides else None,
        )
        plan = self._plans.get(key)
        if plan is None:
            plan = self._plans[key] = self._compile(*key)
        return plan

    def _compile(self, tenant: str | None, environment: str | None) -> _Plan:
        """Steps 3-8 of the evaluation (see the module's docstring) for one tenant and environment."""
        spec = self.spec
        layers = [
            override
            for override in (
                None if tenant is None else self._tenant_overrides[tenant],
                None if environment is None else self._environment_overrides[environment],
            )
            if override is not None
        ]
        enabled = next((o.enabled for o in layers if o.enabled is not None), spec.enabled)
        pinned = next((o.variant for o in layers if o.variant is not None), None)
        rollout = next((o.rollout for o in layers if o.rollout is not None), spec.rollout)
        if not enabled:
            return (None, None, Resolution(self.name, spec.default_value, None, Reason.DISABLED))
        if pinned is not None:
            return (None, None, self._answer(Reason.TARGETING_MATCH, pinned))
        rules = tuple(
            (
                predicate,
                self._answer(Reason.TARGETING_MATCH, rule.variant),
                None if rule.rollout is None else self._split(rule.rollout, rule.variant),
            )
            for predicate, rule in self._rules
        )
        split = None if rollout is None else self._split(rollout, None)
        if rules or split:
            return (rules, split, Resolution(self.name, spec.default_value, None, Reason.DEFAULT))
        return (None, None, self._answer(Reason.STATIC, None))

    def evaluate(
        self,
        context: Mapping[str, Any],
        *,
        tenant: str | None = None,
        environment: str | None = None,
        now: datetime | None = None,
        expected_type: str | None = None,
    ) -> Resolution:
        """The flag's answer for ``context`` (see the module's docstring for the order); never raises.

        ``now`` defaults to the current time (a naive one is UTC); ``expected_type`` is a JSON type name
        (``boolean``, ``string``, ``number``, ``integer``, ``object``, ``array``) the value must have.
        """
        try:
            if self._expires_at is not None:
                at = now or datetime.now(UTC)
                if (at if at.tzinfo else at.replace(tzinfo=UTC)) >= self._expires_at:
                    answer = self.expired
                    return answer if expected_type is None else self._typed(answer, expected_type)
            if type(context) is not dict and not isinstance(context, Mapping):
                return self._invalid_context
            if self._overridden and (tenant in self._tenant_overrides or environment in self._environment_overrides):
                rules, split, answer = self._plan_for(tenant, environment)
            else:
                rules, split, answer = self._plan
            if rules is not None:
                for predicate, hit, rule_split in rules:
                    if predicate(context):
                        if rule_split is None:
                            answer = hit
                            break
                        in_rule = _in_rollout(rule_split, context)
                        if in_rule is not None:
                            answer = in_rule
                            break
                else:
                    if split is not None:
                        # _in_rollout, inlined: this is the hot path of a flag being rolled out.
                        prefix, key, limit, in_split, sticky = split
                        value = context.get(key) if key is not None else sticky.read(context)
                        if type(value) is not str or not value:
                            value = sticky(value)
                            if isinstance(value, Resolution):
                                return value
                        if int.from_bytes(sha256((prefix + value).encode()).digest()[:4], "big") % BUCKETS < limit:
                            answer = in_split
        except Exception as exc:  # an answer, not an exception: a provider never throws at its caller
            return Resolution(
                self.name, self.spec.default_value, None, Reason.ERROR, ErrorCode.GENERAL,
                f"evaluation failed: {type(exc).__name__}: {exc}",
            )  # fmt: skip
        return answer if expected_type is None else self._typed(answer, expected_type)

    def _typed(self, answer: Resolution, expected_type: str) -> Resolution:
        """``answer`` if its value has the JSON type ``expected_type``, else ERROR / TYPE_MISMATCH."""
        if answer.reason is Reason.ERROR:
            return answer
        types = JSON_TYPES.get(expected_type)
        if types is None:
            message = f"unknown expected type {expected_type!r}; expected one of {', '.join(JSON_TYPES)}"
        elif isinstance(answer.value, types) and (bool in types or not isinstance(answer.value, bool)):
            return answer
        else:
            message = f"the flag's value is a {type(answer.value).__name__}, not a JSON {expected_type}"
        return Resolution(self.name, self.spec.default_value, None, Reason.ERROR, ErrorCode.TYPE_MISMATCH, message)


class _Unparsable(CompiledFlag):
    """A stored flag whose spec no longer validates: every evaluation answers ERROR / PARSE_ERROR."""

    __slots__ = ("_error",)

    def __init__(self, name: str, default: Any, message: str) -> None:
        super().__init__(FlagSpec(name="unparsable", default_value=default))
        self.name = name
        self._error = Resolution(name, default, None, Reason.ERROR, ErrorCode.PARSE_ERROR, message)

    def evaluate(
        self,
        context: Mapping[str, Any],
        *,
        tenant: str | None = None,
        environment: str | None = None,
        now: datetime | None = None,
        expected_type: str | None = None,
    ) -> Resolution:
        return self._error


def compile_flag(data: FlagSpec | Mapping[str, Any]) -> CompiledFlag:
    """Compile a spec, or a stored flag's fields (extra fields ignored); never raises.

    A mapping that does not validate (a row written by an older version, edited by hand) gives a flag that answers
    ERROR / PARSE_ERROR naming the invalid fields, so one bad flag does not fail a bulk evaluation.
    """
    if isinstance(data, FlagSpec):
        return CompiledFlag(data)
    try:
        return CompiledFlag(FlagSpec.model_validate(data))
    except ValidationError as exc:
        return _Unparsable(str(data.get("name")), data.get("default_value"), "; ".join(describe_errors(exc)))
