"""The event envelope (``OnexEnvelopeV1``) and topic naming.

Topic names follow ``{env}.{tenant}.onex.{class}.{event-name-kebab}.v{major}``; dead letters go to ``<topic>.dlq``.
The Kafka key of an envelope is its ``partition_key``, else its ``correlation_id``, else ``source_node_id``.
"""

from __future__ import annotations

import functools
import os
import random
import re
import time
import uuid
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any, Final, Literal, Self, TypeVar

import orjson
from blake3 import blake3
from pydantic import BaseModel, ConfigDict, Field, ValidationError, create_model, model_validator

from onex._frozen import twin_of
from onex._model_reads import PlainReads

TopicClass = Literal["evt", "cmd", "qrs", "dlt", "rty", "aud", "met"]
TOPIC_CLASSES: tuple[str, ...] = ("evt", "cmd", "qrs", "dlt", "rty", "aud", "met")
DEAD_LETTER_EVENT = "DEAD_LETTER"
UNDECODABLE = "UNDECODABLE"  # the event type a dead letter names for a record that was no envelope

_KEBAB_RE = re.compile(r"[^a-z0-9]+")


def _now() -> datetime:
    return datetime.now(UTC)


_VERSION_MASK = ~((0xF000 << 64) | (0xC000 << 48))
_VERSION_BITS = (0x4000 << 64) | (0x8000 << 48)
_DERIVED_BITS = (0x8000 << 64) | (0x8000 << 48)  # version 8 ("custom", RFC 9562): ids computed, not drawn

# The generator of every id that is not derived: a private instance, so that ``random.seed()`` anywhere in the
# process (Hypothesis reseeds the global generator for every example; so do many libraries) cannot make ids repeat,
# seeded from the OS, and seeded again in a forked child, which would otherwise repeat its parent's sequence.
_ids = random.Random(os.urandom(32))
os.register_at_fork(after_in_child=lambda: _ids.seed(os.urandom(32)))


ModelT = TypeVar("ModelT", bound=BaseModel)

_new_object = object.__new__
# The slots of a UUID, set through their own descriptors: what object.__setattr__ (which UUID's __setattr__ refuses)
# would do, without looking the name up on every call. (A UUID cannot be made as a twin class, as ``_assemble`` makes
# a model: CPython's layout check refuses a switch between classes whose ``__slots__`` name ``__weakref__`` among
# others.)
_set_uuid_int = vars(uuid.UUID)["int"].__set__
_set_uuid_safety = vars(uuid.UUID)["is_safe"].__set__
_UNKNOWN_SAFETY = uuid.SafeUUID.unknown


def _uuid(value: int) -> uuid.UUID:
    """``uuid.UUID(int=value)`` for a value whose version and variant bits are already set, without the checks and
    conversions of ``UUID.__init__`` (a third of the cost of an id on the hot path)."""
    made = _new_object(uuid.UUID)
    _set_uuid_int(made, value)
    _set_uuid_safety(made, _UNKNOWN_SAFETY)
    return made


_dumps = orjson.dumps


def uuid_text(value: uuid.UUID) -> str:
    """``str(value)``: a UUID's canonical text (lower-case hex, hyphenated), at about 40 % of its cost (``UUID.__str__``
    formats in Python, orjson in C). A stamp formats about seven: entity ids, partition keys, record headers. orjson
    takes ``uuid.UUID`` itself only: a subclass (asyncpg returns its own) is formatted by ``str``."""
    return _dumps(value)[1:-1].decode() if type(value) is uuid.UUID else str(value)


IdSource = Callable[[], uuid.UUID]
"""Where ids that are not derived come from: ``new_id`` by default; ``Runtime(ids=...)`` and ``Harness(ids=...)``
take another (``onex.testing.SequentialIds`` makes them predictable)."""


_V7_BITS = (0x7000 << 64) | (0x8000 << 48)
_time_ns = time.time_ns  # read through the module, so a test can set the time


def new_id() -> uuid.UUID:
    """A time-ordered (version 7, RFC 9562) UUID for ids that are not derived from another event: the Unix time in
    milliseconds, then 74 random bits.

    Time-ordered so that the indexes keyed by a workflow's id (its row, its steps, its transitions) grow at their end,
    as their rows are written, instead of at random places: with random ids each row dirtied index pages of its own,
    and ``bench/e2e.py`` wrote twice the bytes per stamp. The random bits come from a private generator rather
    than ``os.urandom`` per id: ids must be unique, not unguessable, and this avoids a system call per event on the hot
    path.
    """
    return _uuid(((((_time_ns() // 1_000_000) << 80) | _ids.getrandbits(80)) & _VERSION_MASK) | _V7_BITS)


def random_id() -> uuid.UUID:
    """A random (version 4) UUID from the same generator, for an id that says nothing of when it was made (the uid a
    stamp writes into a file)."""
    return _uuid((_ids.getrandbits(128) & _VERSION_MASK) | _VERSION_BITS)


def derived_from(data: bytes) -> uuid.UUID:
    """``derived_id(*parts)`` for ``data``, the parts encoded as it encodes them (a UUID's 16 bytes, anything else
    its text) and joined by ``b"\\x1f"``: for a caller on the hot path that knows its parts' types and encodes them
    itself, without ``derived_id``'s test of each part."""
    return _uuid((int.from_bytes(blake3(data).digest(16)) & _VERSION_MASK) | _DERIVED_BITS)


# Ids derived from a time before this one (2026-12-06T18:00:00Z) are derived as onex derived them before it ordered
# ids that key stored rows by time (``derived_at``), so that a workflow or a stamp stored then keeps its ids.
ORDERED_SINCE_MS: Final = 1_796_580_000_000


def derived_at(millis: int | None, data: bytes) -> uuid.UUID:
    """``derived_from(data)`` ordered by time: its first 48 bits are ``millis`` (a Unix time in milliseconds), where a
    version 7 id keeps its time, the rest BLAKE3's of ``data``; computing it again from the same two gives the same id.
    For an id that keys a stored row (a transition's, a stamp's): rows derived from one time go next to each other in
    the indexes keyed by their id, which grow at their end as ``new_id``'s do, where an id of hash bits alone puts
    each row on an index page of its own (README, "Design decisions"). ``millis`` None or before
    ``ORDERED_SINCE_MS``: ``derived_from(data)``, the id earlier versions derived."""
    if millis is None or millis < ORDERED_SINCE_MS:
        return derived_from(data)
    return _uuid((((millis << 80) | int.from_bytes(blake3(data).digest(10))) & _VERSION_MASK) | _DERIVED_BITS)


def millis_of(value: uuid.UUID) -> int | None:
    """The Unix time in milliseconds a version 7 id (``new_id``'s) begins with; None for an id of any other version."""
    bits = value.int
    return bits >> 80 if (bits >> 76) & 0xF == 7 else None


def derived_id(*parts: object) -> uuid.UUID:
    """A UUID computed from ``parts`` (BLAKE3 of their bytes: a UUID's 16, anything else its text), so computing it
    again gives the same id.

    An event produced while handling event E gets ``derived_id(E.event_id, node name, event name, index)``: handling
    E again after a crash produces the same ids, and every consumer's dedup by event id makes the replay a no-op.
    """
    # Off the hot path now (per batch of transitions, per id without a constant tail): the callers per stamp encode
    # their parts themselves (derived_from) or their tail once (derived_after).
    return derived_from(b"\x1f".join([p.int.to_bytes(16) if type(p) is uuid.UUID else str(p).encode() for p in parts]))


@functools.lru_cache(maxsize=1024)
def id_tail(*parts: object) -> bytes:
    """The parts of a derived id after its first, encoded once, for a caller whose first part (an event's or a
    workflow's id) varies and whose tail (a node's name, an event's name, an index) does not: ``derived_after(first,
    id_tail(*rest))`` is ``derived_id(first, *rest)`` at about two thirds of its cost."""
    return b"".join([b"\x1f" + (p.int.to_bytes(16) if type(p) is uuid.UUID else str(p).encode()) for p in parts])


def derived_after(first: uuid.UUID, tail: bytes) -> uuid.UUID:
    """``derived_id(first, *rest)`` for ``tail = id_tail(*rest)``."""
    return _uuid((int.from_bytes(blake3(first.int.to_bytes(16) + tail).digest(16)) & _VERSION_MASK) | _DERIVED_BITS)


# The slots of a pydantic model, set through their own descriptors: what object.__setattr__ (which a model's
# __setattr__ refuses or checks) would do, for a model whose layout is not ``_ModelTwin``'s.
_set_dict = vars(BaseModel)["__dict__"].__set__
_set_fields_set = vars(BaseModel)["__pydantic_fields_set__"].__set__
_set_extra = vars(BaseModel)["__pydantic_extra__"].__set__
_set_private = vars(BaseModel)["__pydantic_private__"].__set__
# Every model built below (``BaseModel``'s four slots and the ``__weakref__`` that ``PlainReads`` adds) is filled as
# this twin (``onex._frozen.twin_of``): a fieldless ``PlainReads`` with ``object``'s ``__setattr__``, ``__delattr__``
# and ``__init__``, never used as a model; None where the interpreter refuses the switch.
_ModelTwin: Any = twin_of(PlainReads)


CHECK_BUILT = False
"""When True, every envelope made with ``OnexEnvelopeV1.built`` is also validated and compared (the test suite turns
it on), so code that builds one from a value of the wrong type fails its tests instead of shipping an envelope that
would not validate on the other side of Kafka."""


def _assemble(cls: type[ModelT], fields: dict[str, Any], given: set[str]) -> ModelT:
    """An instance of ``cls`` holding ``fields`` (every field, in declaration order), as ``model_construct`` makes
    one but without its per-field Python loop: made as ``_ModelTwin`` (``cls``'s layout, no ``__setattr__``), its
    four slots stored the interpreter's specialised way, then switched to ``cls``; where ``cls``'s layout is not the
    twin's (a subclass that adds slots), through the slots' descriptors instead."""
    try:
        made: Any = _ModelTwin()  # TypeError too where there is no twin (None)
        made.__dict__ = fields
        made.__pydantic_fields_set__ = given
        made.__pydantic_extra__ = None
        made.__pydantic_private__ = None
        made.__class__ = cls
    except TypeError:
        made = _new_object(cls)
        _set_dict(made, fields)
        _set_fields_set(made, given)
        _set_extra(made, None)
        _set_private(made, None)
    if CHECK_BUILT:
        validated = cls.model_validate({k: v for k, v in fields.items() if k in given})
        expected = validated.__dict__
        # Equal is not enough: 1 == 1.0, and would serialise as "1", not "1.0".
        wrong = sorted(
            k
            for k in expected.keys() | fields.keys()
            if expected.get(k) != fields.get(k) or type(expected.get(k)) is not type(fields.get(k))
        )
        if wrong:
            raise AssertionError(f"{cls.__name__}.built: fields {wrong} differ from their validated values")
    return made  # type: ignore[no-any-return]


# The ``__pydantic_fields_set__`` that every built instance of a frozen class shares: pydantic adds to an instance's
# set only in ``__setattr__``, which a frozen model refuses, and ``model_copy`` copies the set before it adds to it. A
# set per instance was an allocation the garbage collector tracked, for each of the dozen models a stamp builds.
_shared_fields_set: dict[type[BaseModel], set[str]] = {}


def _fields_set(cls: type[BaseModel]) -> set[str]:
    """Every field of ``cls``: the set its built instances share from now on when it is frozen, else a set of the
    instance's own."""
    names = set(cls.model_fields)
    if cls.model_config.get("frozen"):
        _shared_fields_set[cls] = names
    return names


class Payload(PlainReads):
    """Base of the payload models onex and its shipped nodes define: frozen (one object is shared by every in-process
    consumer of an event), no unknown fields, and readable as the dict it is on the wire: ``payload["state"]`` and
    ``payload.get("error")`` read the field, so code reading an envelope's payload works whether the envelope was
    built in this process (a model) or came off Kafka and was not decoded (a dict)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    def __getitem__(self, name: str) -> Any:
        try:
            return getattr(self, name)
        except AttributeError:
            raise KeyError(name) from None

    def get(self, name: str, default: Any = None) -> Any:
        return getattr(self, name, default)

    def to_jsonable(self, *, exclude_none: bool = False) -> dict[str, Any]:
        """``model_dump(mode="json", exclude_none=...)``, from the serializer itself (half the cost: no argument
        handling in Python): for a checkpoint, which keeps a payload as JSON values."""
        return self.__pydantic_serializer__.to_python(  # type: ignore[no-any-return]
            self, mode="json", exclude_none=exclude_none
        )

    @classmethod
    def built(cls, /, **fields: Any) -> Self:
        """An instance from values the runtime holds typed already (fields of validated models, values it computed),
        made without validation, as ``OnexEnvelopeV1.built`` makes an envelope: at about 40 % of the cost of
        ``cls(...)``. Every field is given, in the order the class declares them (the order they serialise in); a
        payload from outside a process is validated instead. With ``CHECK_BUILT`` (the test suite) both are checked,
        and the instance is validated and compared.

        ``cls`` is positional-only: CPython matches each keyword of a call against the parameters that can be given by
        keyword, first by identity, then, for one that matches none (every field here), by comparing the strings: 83
        comparisons a stamp, 0.9 % of its instructions, before."""
        if CHECK_BUILT and list(fields) != list(cls.model_fields):
            raise AssertionError(f"{cls.__name__}.built: fields {list(fields)}, declared {list(cls.model_fields)}")
        return _assemble(cls, fields, _shared_fields_set.get(cls) or _fields_set(cls))


class OnexEnvelopeV1(PlainReads):
    """One event on the bus. Immutable: derive a new one with ``model_copy(update=...)``.

    ``payload`` is typed inside a process: an envelope a node builds carries its payload model itself (validated once,
    when it was built), and every in-process consumer expecting that model gets that very object. It is serialised
    only where bytes are needed (Kafka, the store, HTTP); an envelope read from bytes carries the payload as a dict,
    which the consuming node validates into its model (``onex.nodes.PayloadCodec``). Schema-less events carry dicts.
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    envelope_version: str = "1.0"
    event_id: uuid.UUID = Field(default_factory=new_id)
    event_type: str
    event_version: str = "1.0"
    event_timestamp: datetime = Field(default_factory=_now)
    source_node_id: str
    source_service: str = "onex"
    source_version: str = "1.0.0"
    source_instance: str | None = None
    correlation_id: uuid.UUID | None = None
    causation_id: uuid.UUID | None = None
    environment: str = "dev"
    region: str | None = None
    partition_key: str | None = None
    payload: Any  # a Payload (pydantic) model in-process, a dict off the wire; see the class docstring
    metadata: dict[str, Any] = Field(default_factory=dict)

    @property
    def key(self) -> str:
        """The partitioning key: ``partition_key``, else ``correlation_id``, else ``source_node_id``."""
        if self.partition_key is not None:
            return self.partition_key
        if self.correlation_id is not None:
            return uuid_text(self.correlation_id)
        return self.source_node_id

    @classmethod
    def built(
        cls,
        *,
        event_id: uuid.UUID,
        event_type: str,
        event_timestamp: datetime,
        source_node_id: str,
        source_service: str,
        source_version: str,
        source_instance: str | None,
        correlation_id: uuid.UUID | None,
        causation_id: uuid.UUID | None,
        environment: str,
        region: str | None,
        partition_key: str | None,
        payload: Any,
    ) -> OnexEnvelopeV1:
        """An envelope the runtime builds from values it already holds typed (a validated payload model, ids it
        made): constructed without validation, at two thirds of the cost of ``OnexEnvelopeV1(...)``. Anything from
        outside a process (Kafka, HTTP, a user's dict) goes through validation instead.

        The dict below lists every field in declaration order (serialisation follows it);
        ``tests/test_envelope.py`` checks that it stays equal to a validated construction.
        """
        return _assemble(
            cls,
            {
                "envelope_version": "1.0",
                "event_id": event_id,
                "event_type": event_type,
                "event_version": "1.0",
                "event_timestamp": event_timestamp,
                "source_node_id": source_node_id,
                "source_service": source_service,
                "source_version": source_version,
                "source_instance": source_instance,
                "correlation_id": correlation_id,
                "causation_id": causation_id,
                "environment": environment,
                "region": region,
                "partition_key": partition_key,
                "payload": payload,
                "metadata": {},
            },
            _BUILT_SET,
        )

    def to_json(self) -> bytes:
        """``model_dump_json().encode()``, from the serializer itself: the same bytes without the wrapper's argument
        handling and the str in between (2.8 against 4.4 us for an envelope of 1 KiB content)."""
        return self.__pydantic_serializer__.to_json(self)

    @classmethod
    def from_json(cls, data: bytes | str) -> OnexEnvelopeV1:
        """An envelope from its JSON; ``ValidationError`` when it is none (a payload must be a JSON object)."""
        envelope = cls.model_validate_json(data)
        if not isinstance(envelope.payload, dict):
            raise ValidationError.from_exception_data(
                cls.__name__,
                [{"type": "dict_type", "loc": ("payload",), "input": envelope.payload}],
            )
        return envelope


_BUILT_FIELDS = frozenset(OnexEnvelopeV1.model_fields) - {"envelope_version", "event_version"}
# Every built envelope's fields set, shared: the envelope is frozen (see _shared_fields_set).
_BUILT_SET = set(_BUILT_FIELDS)

Reader = Callable[[bytes], OnexEnvelopeV1]
"""How a consumer turns a record's bytes into an envelope: ``OnexEnvelopeV1.from_json``, or a ``typed_reader``."""


@functools.cache
def _typed_envelope(model: type[BaseModel]) -> type[OnexEnvelopeV1]:
    return create_model(  # type: ignore[no-any-return,call-overload,unused-ignore]
        f"OnexEnvelopeV1[{model.__name__}]", __base__=OnexEnvelopeV1, payload=(model, ...)
    )


def typed_reader(event_type: str, model: type[BaseModel]) -> Reader:
    """A reader for a topic that carries ``event_type`` with payloads of ``model``: the payload is validated into the
    model inside the envelope's JSON parse (one pass, no dict in between), so the consuming node's codec finds its
    model and does not validate again. A record that does not fit (another event type, a payload that is not valid)
    is read by ``OnexEnvelopeV1.from_json`` as any other, and so reported exactly as before: the codec names its
    first bad field, or the bus dead-letters what is no envelope."""
    typed = _typed_envelope(model)

    def read(data: bytes) -> OnexEnvelopeV1:
        try:
            parsed = typed.model_validate_json(data)
        except ValidationError:
            return OnexEnvelopeV1.from_json(data)
        if parsed.event_type != event_type:
            return OnexEnvelopeV1.from_json(data)
        return _assemble(OnexEnvelopeV1, parsed.__dict__, parsed.__pydantic_fields_set__)

    return read


def kebab(name: str) -> str:
    """``STAMP_CREATED`` / ``stampCreated`` / ``stamp created`` -> ``stamp-created``."""
    name = re.sub(r"(?<=[a-z0-9])(?=[A-Z])", "-", name)
    return _KEBAB_RE.sub("-", name.lower()).strip("-")


def topic_name(
    event_name: str, *, env: str = "dev", tenant: str = "omninode_bridge", cls: str = "evt", major: int = 1
) -> str:
    """The topic an event is published on, e.g. ``dev.omninode_bridge.onex.evt.stamp-created.v1``."""
    if cls not in TOPIC_CLASSES:
        raise ValueError(f"topic class {cls!r} is not one of {', '.join(TOPIC_CLASSES)}")
    return f"{env}.{tenant}.onex.{cls}.{kebab(event_name)}.v{major}"


def dlq_topic(topic: str) -> str:
    """The dead-letter topic of ``topic``."""
    return f"{topic}.dlq"


def dead_letter(
    original: OnexEnvelopeV1,
    *,
    topic: str,
    error: BaseException | str,
    attempts: int,
    group: str | None = None,
    source_node_id: str = "onex-bus",
) -> OnexEnvelopeV1:
    """The envelope published to ``<topic>.dlq`` for a message that could not be handled.

    Carries the original envelope whole, the error (type and message), the number of attempts made and the consumer
    group that gave up on it.
    """
    if isinstance(error, BaseException):
        error_type, message = type(error).__name__, str(error)
    else:
        error_type, message = "Error", error
    return OnexEnvelopeV1(
        event_type=DEAD_LETTER_EVENT,
        source_node_id=source_node_id,
        correlation_id=original.correlation_id,
        causation_id=original.event_id,
        environment=original.environment,
        partition_key=original.key,
        payload={
            "original_topic": topic,
            "original": original.model_dump(mode="json"),
            "error_type": error_type,
            "error": message,
            "attempts": attempts,
            "group": group,
        },
    )


# --- payloads of the events the runtime publishes on behalf of every node ------------------------------------------

NODE_INTROSPECTION = "NODE_INTROSPECTION"
NODE_HEARTBEAT = "NODE_HEARTBEAT"
REGISTRY_REQUEST_INTROSPECTION = "REGISTRY_REQUEST_INTROSPECTION"
STATE_TRANSITION = "STATE_TRANSITION"
CONTROL_EVENTS: frozenset[str] = frozenset({NODE_INTROSPECTION, NODE_HEARTBEAT, REGISTRY_REQUEST_INTROSPECTION})
"""The control plane: a subscription taking nothing else is a background one (``EventBus.subscribe``), since no
workflow waits for these."""
RUNTIME_EVENTS: dict[str, str] = {
    # event name -> topic class; every hosted node publishes these, whatever its contract declares
    NODE_INTROSPECTION: "evt",
    NODE_HEARTBEAT: "evt",
    STATE_TRANSITION: "aud",
}


# The health statuses of the bridge's heartbeats (omninode_bridge ``EnumNodeHealthStatus``: healthy, degraded,
# unhealthy, critical, recovering, lower case) that onex has no word of its own for, as the nearest one it has.
_BRIDGE_HEALTH: Final = {"CRITICAL": "UNHEALTHY", "RECOVERING": "DEGRADED"}


def _upper(data: dict[str, Any], name: str) -> str | None:
    """``data[name]`` upper case where it is a string that is not already (the bridge's lower-case node types and
    health statuses), else None: nothing to change."""
    value = data.get(name)
    if not isinstance(value, str) or value.isupper() or (upper := value.upper()) == value:
        return None
    return upper


class _BridgeWords(Payload):
    """A control payload a bridge node sends too: fields of its own are ignored rather than refused, its lower-case
    ``node_type`` is read upper case, and ``_bridge_changes`` says what else of its words become onex's. An onex
    node's payload (every field given, upper case) goes through unchanged."""

    model_config = ConfigDict(extra="ignore")  # only here: every other payload refuses what it does not know

    @model_validator(mode="before")
    @classmethod
    def _bridge_fields(cls, data: Any) -> Any:
        if not isinstance(data, dict):
            return data
        changes = cls._bridge_changes(data)
        if (node_type := _upper(data, "node_type")) is not None:
            changes["node_type"] = node_type
        return {**data, **changes} if changes else data  # a copy: the dict may be an envelope's payload

    @classmethod
    def _bridge_changes(cls, data: dict[str, Any]) -> dict[str, Any]:
        return {}


class ModelNodeIntrospection(_BridgeWords):
    """A node's introspection. An onex node (``Node.publish_introspection``) sends every field, its node type upper
    case and its health in ``metadata``. A bridge node (omninode_bridge's ``ModelNodeIntrospectionEvent``) sends
    ``node_id``, ``node_type`` (lower case), ``capabilities``, ``endpoints`` and ``metadata``, and fields of its own
    (``timestamp``, ``correlation_id``, ``node_role``, ``network_id``, ...), which are ignored rather than refused: its
    node type is read upper case, its name is its metadata's ``node_name`` (or ``name``), else its node id, its version
    its metadata's ``node_version`` (or ``version``), else "", and its ``reason`` is "" (it sends none: the registry
    cannot tell its start from its answer to a request, and keeps the health its last heartbeat stored)."""

    node_id: str
    node_name: str = ""
    node_type: str
    node_version: str = ""
    capabilities: dict[str, Any] = Field(default_factory=dict)
    endpoints: dict[str, Any] = Field(default_factory=dict)
    metadata: dict[str, Any] = Field(default_factory=dict)
    reason: str = ""  # onex's nodes always say ("startup", "requested"); the bridge's never do

    @classmethod
    def _bridge_changes(cls, data: dict[str, Any]) -> dict[str, Any]:
        changes: dict[str, Any] = {}
        metadata = data.get("metadata")
        said = metadata if isinstance(metadata, dict) else {}
        if "node_name" not in data:
            name = said.get("node_name") or said.get("name")
            changes["node_name"] = name if isinstance(name, str) and name else data.get("node_id")
        if "node_version" not in data:
            version = said.get("node_version") or said.get("version")
            changes["node_version"] = version if isinstance(version, str) else ""
        return changes


class ModelNodeHeartbeat(_BridgeWords):
    """A node's heartbeat. A bridge node's (omninode_bridge's ``ModelNodeHeartbeatEvent``) gives its node type and
    health status lower case, read upper case here (its ``critical`` as UNHEALTHY and ``recovering`` as DEGRADED, the
    word it said kept as the health reason), its uptime as whole seconds, and fields of its own
    (``last_activity_timestamp``, ``resource_usage``, ``metadata``, ``timestamp``, ``correlation_id``), ignored."""

    node_id: str
    node_type: str = ""
    node_version: str = ""
    health_status: Literal["HEALTHY", "DEGRADED", "UNHEALTHY", "DRAINING", "STOPPED"] = "HEALTHY"
    uptime_seconds: float = 0.0
    active_operations: int = 0
    # Why the node is DEGRADED (dead-letter alert, breached performance objectives: Node.degraded_reasons), or "".
    health_reason: str = ""

    @classmethod
    def _bridge_changes(cls, data: dict[str, Any]) -> dict[str, Any]:
        changes: dict[str, Any] = {}
        status = data.get("health_status")
        if isinstance(status, str):
            upper = status.upper()
            if upper in _BRIDGE_HEALTH:
                changes["health_status"] = _BRIDGE_HEALTH[upper]
                if not data.get("health_reason"):
                    changes["health_reason"] = status.lower()
            elif upper != status:
                changes["health_status"] = upper
        return changes


class ModelIntrospectionRequest(Payload):
    requested_by: str
    reason: str = "registry-startup"


class ModelStateTransition(Payload):
    transition_id: uuid.UUID
    entity_id: str
    entity_type: str
    from_state: str
    to_state: str
    trigger: str
    correlation_id: uuid.UUID | None = None
    at: datetime
    data: dict[str, Any] = Field(default_factory=dict)


class ModelStateTransitions(Payload):
    """The payload of a STATE_TRANSITION event: the transitions one handler batch of one node made, in order."""

    transitions: tuple[ModelStateTransition, ...]
