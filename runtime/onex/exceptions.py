"""Every error onex raises, in one place.

    OnexError
    ├── ContractError        one or more problems in contract files, each with path:line:column
    ├── TransitionError      an illegal FSM trigger: names entity, state and trigger
    ├── BusError             the event bus cannot accept or deliver
    │   └── PayloadError     an envelope or payload fails its schema: names the event id
    ├── StoreError           persistence failed
    │   └── StoreUnavailable the store cannot be reached now (connection, circuit breaker, pool): retry later
    ├── StateError           a node set a state field its state_management subcontract does not keep: names both
    ├── WaitTimeout          Harness.wait_for saw no matching event in time (also a TimeoutError): says what arrived
    ├── StampError           a file cannot be hashed, stamped or verified: names the path
    └── MetastoreError       a metastore request cannot be carried out (onex.metastore)
        ├── EntityNotFound   no such entity for this tenant (another tenant's id too): names kind and id or key
        ├── VersionConflict  the entity is not at the expected version: names kind, id, expected and current
        └── MetastoreInvalid a value is refused: names the field path and why
            └── EntityExists another live entity has the same key: names kind and key

Each carries the context a user needs to act on it; ``str(error)`` is the message to print.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path


class OnexError(Exception):
    """Root of every onex error."""


@dataclass(frozen=True, slots=True)
class ContractIssue:
    """One problem found in a contract file.

    ``code`` is a stable, machine-readable class of problem (``yaml``, ``schema``, ``ref``, ``ref-cycle``,
    ``fsm-unreachable`` ...), so tests and tools can match on it without parsing the message.
    """

    path: str
    line: int
    column: int
    code: str
    message: str

    def __str__(self) -> str:
        return f"{self.path}:{self.line}:{self.column}: {self.message} [{self.code}]"


class ContractError(OnexError):
    """Contracts failed to load or validate; ``issues`` lists every problem found, not just the first."""

    def __init__(self, issues: list[ContractIssue]) -> None:
        self.issues = sorted(issues, key=lambda i: (i.path, i.line, i.column, i.code))
        super().__init__("\n".join(str(i) for i in self.issues))


class TransitionError(OnexError):
    """A trigger that is not allowed from the entity's current state."""

    def __init__(self, entity_id: str, state: str, trigger: str, reason: str = "no such transition") -> None:
        self.entity_id = entity_id
        self.state = state
        self.trigger = trigger
        super().__init__(f"entity {entity_id}: cannot {trigger!r} from state {state!r}: {reason}")


class BusError(OnexError):
    """The event bus cannot accept or deliver a message."""


def error_text(exc: BaseException) -> str:
    """What to print after "cannot ...: ": the exception's message, or its type's name where it has none (a
    ``TimeoutError`` has no text; an exception object itself is always true, so ``exc or ...`` never falls back)."""
    return str(exc) or type(exc).__name__


class PayloadError(BusError):
    """An envelope or its payload does not match the contract; names the event and the offending field."""

    def __init__(self, event_id: str, event_type: str, detail: str) -> None:
        self.event_id = event_id
        self.event_type = event_type
        self.detail = detail
        super().__init__(f"event {event_id} ({event_type}): {detail}")


class StoreError(OnexError):
    """Persistence failed (connection, constraint, migration)."""


class StoreUnavailable(StoreError):
    """The store cannot be reached right now; the same call may well succeed later.

    Connection refused or lost, the server shutting down, the circuit breaker open, the pool exhausted, a database
    file locked by another process. Nothing of the call was written. Unlike other ``StoreError``s (a constraint, a
    value the store refuses, a schema that is not current) this says nothing about the data, so a writer should
    hold on to it and try again rather than give it up.
    """


class StateError(OnexError):
    """A node set a state field its ``state_management`` subcontract does not keep (``onex.state.KeyedState``)."""


class WaitTimeout(OnexError, TimeoutError):
    """``onex.testing.Harness.wait_for`` saw no matching event in time; the message says what arrived instead."""


class StampError(OnexError):
    """A file could not be hashed, stamped or verified."""

    def __init__(self, path: Path | str, message: str) -> None:
        self.path = str(path)
        super().__init__(f"{path}: {message}")


class LifecycleError(OnexError):
    """A node asked to move between lifecycle states that do not follow each other (``created -> starting ->
    running -> draining -> stopped``)."""

    def __init__(self, node_id: str, state: str, target: str) -> None:
        super().__init__(f"node {node_id}: cannot go from {state} to {target}")


class CircuitOpenError(OnexError):
    """Raised instead of calling through while a circuit breaker is open (or half-open with a trial in flight)."""


class MetastoreError(OnexError):
    """A metastore request (``onex.metastore``) cannot be carried out."""


class EntityNotFound(MetastoreError):
    """No live entity of ``kind`` with this id (or key) for the tenant; another tenant's id is not found either."""

    def __init__(self, kind: str, id_or_key: str) -> None:
        self.kind = kind
        self.id_or_key = id_or_key
        super().__init__(f"{kind} {id_or_key} not found")


class VersionConflict(MetastoreError):
    """An update expected the entity at version ``expected``, and it is at ``current``: nothing was written."""

    def __init__(self, kind: str, id: str, expected: int, current: int) -> None:
        self.kind = kind
        self.id = id
        self.expected = expected
        self.current = current
        super().__init__(f"{kind} {id} is at version {current}, not the expected {expected}: nothing was written")


class MetastoreInvalid(MetastoreError):
    """A value is refused; ``path`` names the field (``values.db.password``), ``reason`` says why."""

    def __init__(self, path: str, reason: str) -> None:
        self.path = path
        self.reason = reason
        super().__init__(f"{path}: {reason}" if path else reason)


class EntityExists(MetastoreInvalid):
    """Another live entity of ``kind`` has the same unique key for the tenant (HTTP 409)."""

    def __init__(self, kind: str, key: str) -> None:
        self.kind = kind
        self.key = key
        super().__init__("", f"a {kind} with key {key} exists already")
