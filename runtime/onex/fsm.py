"""Finite-state machines built from FSM subcontracts.

One synchronous ``transitions.Machine`` is built per contract; every workflow or entity is a model attached to
it (``StateMachine.attach``), never a machine of its own. The node serialises triggers per entity, so the
synchronous machine is enough and avoids the atomicity pitfalls of ``AsyncMachine``.

Guards use the three-token grammar ``field operator value`` (``field exists`` takes two) and are evaluated
against the entity's ``context`` mapping with plain comparisons: nothing is ever passed to ``eval``. A ``matches``
pattern is RE2 syntax, run by RE2 (``Pattern``): linear in the value's length whatever the pattern, since the same
guards are the metastore's feature-flag rules, which API clients write. Every
transition becomes a ``TransitionRecord`` handed to the ``on_transition`` callback; the node publishes a handled
batch's records as one ``STATE_TRANSITION`` event, so the store holds an audit log that can be replayed. An entity
that enters one of the subcontract's ``error_states`` from another state is logged at INFO (event
``fsm_error_state``: the entity, the state, the trigger and the ``error`` the trigger carried), once.
"""

from __future__ import annotations

import functools
import logging
import uuid
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from dataclasses import field as _field  # inside Guard, ``field`` is its attribute's name
from datetime import UTC, datetime
from typing import Any

from transitions import Machine, Transition

from onex._frozen import maker, quick_init
from onex.contracts import FsmSubcontract, Pattern, parse_condition
from onex.envelope import derived_at, derived_id
from onex.exceptions import TransitionError
from onex.logs import event

WILDCARD = "*"
_log = logging.getLogger("onex.fsm")
_system_now = functools.partial(datetime.now, UTC)  # a transition's time where no clock is given

# --- guards ----------------------------------------------------------------------------------------------------

_MISSING = object()


def _number(value: Any) -> float:
    return float(value)


def _literal(token: str) -> Any:
    """A guard's value token: numbers, booleans, null, a [list], or a (possibly quoted) string."""
    if token.startswith("[") and token.endswith("]"):
        inner = token[1:-1].strip()
        return [_literal(part.strip()) for part in inner.split(",")] if inner else []
    lowered = token.lower()
    if lowered in ("true", "false"):
        return lowered == "true"
    if lowered in ("null", "none"):
        return None
    try:
        return int(token)
    except ValueError:
        pass
    try:
        return float(token)
    except ValueError:
        return token


def _compare(op: str, actual: Any, expected: Any) -> bool:
    if op in ("equals", "=="):
        return bool(actual == expected or str(actual) == str(expected))
    if op in ("not_equals", "!="):
        return not (actual == expected or str(actual) == str(expected))
    if op in ("greater_than", ">"):
        return _number(actual) > _number(expected)
    if op in ("less_than", "<"):
        return _number(actual) < _number(expected)
    if op == ">=":
        return _number(actual) >= _number(expected)
    if op == "<=":
        return _number(actual) <= _number(expected)
    if op == "min_length":
        return len(actual) >= int(expected)
    if op == "max_length":
        return len(actual) <= int(expected)
    if op == "in":
        return actual in expected if isinstance(expected, list) else str(actual) in str(expected)
    if op == "not_in":
        return actual not in expected if isinstance(expected, list) else str(actual) not in str(expected)
    if op == "contains":
        return expected in actual
    raise ValueError(f"unknown operator {op!r}")  # pragma: no cover - parse_guard rejects it first


@dataclass(frozen=True, slots=True)
class Guard:
    """A parsed guard condition; call it with a context mapping."""

    expression: str
    field: str
    operator: str
    value: Any = None
    pattern: Pattern | None = None  # an operator ``matches``'s value, compiled
    # ``field`` split at its dots, once: derived, never given (so dataclasses.replace(guard, field=...) splits anew).
    path: tuple[str, ...] = _field(init=False, compare=False, repr=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "path", tuple(self.field.split(".")))

    def __call__(self, context: Mapping[str, Any]) -> bool:
        # Guards run on every transition of every workflow: a dict is told apart without the Mapping ABC's check.
        actual: Any = context
        for part in self.path:
            actual = actual.get(part, _MISSING) if type(actual) is dict or isinstance(actual, Mapping) else _MISSING
            if actual is _MISSING:
                break
        if self.operator == "exists":
            return actual is not _MISSING and actual is not None
        if self.operator == "not_exists":
            return actual is _MISSING or actual is None
        if actual is _MISSING:
            return False
        if self.pattern is not None:
            return self.pattern.search(str(actual))
        try:
            return _compare(self.operator, actual, self.value)
        except (TypeError, ValueError):
            # A value of the wrong type (a string compared with >=) fails the guard rather than the workflow.
            return False


def parse_guard(expression: str) -> Guard:
    """Parse ``field operator value`` (the grammar of ``contracts.parse_condition``); ValueError says why not."""
    try:
        field_name, op, raw = parse_condition(expression)
    except ValueError as exc:
        raise ValueError(f"guard {expression!r}: {exc}") from None
    value = None if raw is None else _literal(raw)
    pattern = Pattern(str(raw)) if op == "matches" else None  # parse_condition compiled it once already
    return Guard(expression, field_name, op, value, pattern)


# --- records and entities ----------------------------------------------------------------------------------------


@quick_init
@dataclass(frozen=True, slots=True)
class TransitionRecord:
    """One transition that happened: published in a STATE_TRANSITION batch and stored in ``fsm_transitions``."""

    id: uuid.UUID
    entity_id: str
    entity_type: str
    from_state: str
    to_state: str
    trigger: str
    correlation_id: uuid.UUID | None
    at: datetime
    data: dict[str, Any]

    def to_model_fields(self) -> dict[str, Any]:
        """The fields of ``onex.envelope.ModelStateTransition``, typed."""
        return {
            "transition_id": self.id,
            "entity_id": self.entity_id,
            "entity_type": self.entity_type,
            "from_state": self.from_state,
            "to_state": self.to_state,
            "trigger": self.trigger,
            "correlation_id": self.correlation_id,
            "at": self.at,
            "data": self.data,
        }

    def to_payload(self) -> dict[str, Any]:
        return {
            "transition_id": str(self.id),
            "entity_id": self.entity_id,
            "entity_type": self.entity_type,
            "from_state": self.from_state,
            "to_state": self.to_state,
            "trigger": self.trigger,
            "correlation_id": str(self.correlation_id) if self.correlation_id else None,
            "at": self.at.isoformat(),
            "data": self.data,
        }


_new_record = maker(TransitionRecord)  # a record, built at about half the cost of the class's call


@dataclass(eq=False)
class Entity:
    """A model attached to a ``StateMachine``: one workflow, one aggregate, one node lifecycle.

    ``state`` is maintained by the machine; ``context`` is what guards read; ``history`` keeps this entity's
    transitions in order. ``seq`` counts every transition the entity has made (a restored entity continues from its
    checkpoint), and a transition's id is derived from (entity type, ``entity_id``, ``id_salt``, ``seq``): redoing a
    transition after a crash gives it the id it had, so the audit log stores it once. An entity whose history may
    start over under the same id (a namespace aggregate reloaded from its totals) sets a fresh ``id_salt``. An entity
    that gives ``id_millis`` (a workflow: the time its version 7 id begins with) has its transitions' ids begin with
    that time (``onex.envelope.derived_at``: from ``ORDERED_SINCE_MS`` on), so that the audit log's index on them grows
    at its end; it must give the same time whenever it is made again, as a workflow restored from its checkpoint does.
    """

    entity_id: str
    correlation_id: uuid.UUID | None = None
    context: dict[str, Any] = field(default_factory=dict)
    history: list[TransitionRecord] = field(default_factory=list)
    state: str = ""
    seq: int = 0
    id_salt: str = ""
    id_millis: int | None = None


ActionResolver = Callable[[str], Callable[[Entity], None]]
"""Maps an action name from the contract to a callable taking the entity (usually a bound node method)."""


@dataclass(frozen=True, slots=True)
class _Action:
    """An action as the ``transitions`` machine calls it (with its event data), keeping the plain callable."""

    action: Callable[[Entity], None]

    def __call__(self, event: Any) -> None:
        self.action(event.model)


@dataclass(frozen=True, slots=True)
class _Check:
    """A guard as the ``transitions`` machine checks it, keeping the parsed guard."""

    guard: Guard

    def __call__(self, event: Any) -> bool:
        return self.guard(event.model.context)


@dataclass(frozen=True, slots=True)
class _Move:
    """One candidate transition of a trigger from one source state, as the machine would carry it out."""

    guards: tuple[Guard, ...]
    dest: str
    exits: tuple[Callable[[Entity], None], ...]  # the source state's exit actions, run before the state changes
    actions: tuple[Callable[[Entity], None], ...]  # the destination's entry actions, then the transition's
    errs: bool  # from a state that is not an error state into one: logged


class StateMachine:
    """The machine of one FSM subcontract, shared by all entities of one node.

    The contract is turned into a ``transitions.Machine`` (which checks it: unknown states, duplicate names), and
    triggers fire through a table compiled from that machine's events and states: for each (trigger, state) the
    candidate transitions in the machine's order, each with its guards, destination and actions in the order
    ``Transition.execute`` runs them (exit actions of the source, the state change, entry actions of the
    destination, the transition's own actions), and the first candidate whose guards pass wins, as in
    ``Event._process``. Firing a trigger through the library costs ~25 microseconds (event data, callback
    resolution, debug logging) and a workflow fires two or three, which made the machine the largest single cost
    of a stamp; the table does the same in ~2. ``tests/test_fsm.py`` fires random trigger sequences through both
    and checks they agree.
    """

    def __init__(
        self,
        fsm: FsmSubcontract,
        *,
        entity_type: str,
        actions: ActionResolver | None = None,
        on_transition: Callable[[TransitionRecord], None] | None = None,
        now: Callable[[], datetime] = _system_now,
    ) -> None:
        self.fsm = fsm
        self._now = now  # a transition's time: its node's clock (``Clock.now``), so a test's ManualClock rules it too
        self.entity_type = entity_type
        self._type_text = entity_type.encode()  # the first part of every transition id (``_record``)
        self._on_transition = on_transition
        self.terminal_states = terminal_states(fsm)
        self.error_states = frozenset(fsm.error_states)
        resolve = actions or _no_actions
        self._guards: dict[str, tuple[Guard, ...]] = {}
        states = [
            {
                "name": s.state_name,
                "on_enter": [_Action(resolve(a)) for a in s.entry_actions],
                "on_exit": [_Action(resolve(a)) for a in s.exit_actions],
            }
            for s in fsm.states
        ]
        transitions = []
        for t in fsm.transitions:
            guards = tuple(parse_guard(c.expression) for c in t.conditions if c.required)
            transitions.append(
                {
                    "trigger": t.trigger,
                    "source": expand_sources(fsm, t.from_state),
                    "dest": t.to_state,
                    "conditions": [_Check(g) for g in guards],
                    "after": [_Action(resolve(a)) for a in t.actions],
                }
            )
            self._guards[t.trigger] = self._guards.get(t.trigger, ()) + guards
        self.machine = Machine(
            model=None,
            states=states,
            transitions=transitions,
            initial=fsm.initial_state,
            auto_transitions=False,
            send_event=True,
            model_attribute="state",
        )
        self._table = self._compile(self.machine, self.error_states)
        self._initial_actions = tuple(
            c.action for c in self.machine.get_state(fsm.initial_state).on_enter if isinstance(c, _Action)
        )
        self.triggers: frozenset[str] = frozenset(t.trigger for t in fsm.transitions)

    @staticmethod
    def _compile(machine: Machine, errors: frozenset[str]) -> dict[str, dict[str, tuple[_Move, ...]]]:
        """The (trigger -> state -> candidate moves) table of ``machine``, whose callbacks are all ours; a move from
        a state not in ``errors`` into one is marked to be logged."""

        def plain(callbacks: Iterable[object]) -> tuple[Callable[[Entity], None], ...]:
            return tuple(c.action for c in callbacks if isinstance(c, _Action))

        def move(source: str, transition: Transition) -> _Move:
            dest = transition.dest
            assert dest is not None  # every transition of a contract names its destination
            return _Move(
                guards=tuple(c.func.guard for c in transition.conditions if isinstance(c.func, _Check)),
                dest=dest,
                exits=plain(machine.get_state(source).on_exit),
                actions=plain(machine.get_state(dest).on_enter) + plain(transition.after),
                errs=dest in errors and source not in errors,
            )

        return {
            name: {
                source: tuple(move(source, t) for t in candidates) for source, candidates in event.transitions.items()
            }
            for name, event in machine.events.items()
        }

    def attach(self, entity: Entity) -> Entity:
        """Attach ``entity`` in the initial state and run that state's ``entry_actions``, in their order.

        The entity enters the initial state here, so the actions the contract declares for entering it run, once;
        ``transitions`` runs none when it adds a model (only a transition's destination's), which would leave them
        declared and never called. An entity restored from a checkpoint entered its state before and is not attached
        again. The machine holds no reference to its entities.
        """
        entity.state = self.fsm.initial_state
        for action in self._initial_actions:
            action(entity)
        return entity

    def detach(self, entity: Entity) -> None:
        """Forget ``entity`` (a no-op kept for symmetry: the machine holds no reference to attached entities)."""

    def is_terminal(self, entity: Entity) -> bool:
        return entity.state in self.terminal_states

    def trigger(self, entity: Entity, trigger: str, **data: Any) -> TransitionRecord:
        """Fire ``trigger`` on ``entity``; returns the record, or raises TransitionError naming entity and state."""
        sources = self._table.get(trigger)
        if sources is None:
            raise TransitionError(entity.entity_id, entity.state, trigger, "the machine has no such trigger")
        source = entity.state
        candidates = sources.get(source)
        if candidates is None:
            raise TransitionError(entity.entity_id, source, trigger)
        context = entity.context
        for move in candidates:
            for guard in move.guards:
                if not guard(context):
                    break
            else:
                for action in move.exits:
                    action(entity)
                entity.state = move.dest
                for action in move.actions:
                    action(entity)
                if move.errs:
                    self._erred(entity, move.dest, trigger, data)
                return self._record(entity, source, move.dest, trigger, data)
        failed = [g.expression for g in self._guards.get(trigger, ()) if not g(context)]
        raise TransitionError(entity.entity_id, source, trigger, f"guard failed: {'; '.join(failed)}")

    def _erred(self, entity: Entity, state: str, trigger: str, data: dict[str, Any]) -> None:
        error = data.get("error", entity.context.get("error"))
        event(
            _log,
            logging.INFO,  # an outcome, not a fault of the runtime: `onex run` shows it, a one-shot command does not
            "fsm_error_state",
            f"{self.entity_type} {entity.entity_id} entered error state {state} by {trigger}"
            + ("" if error is None else f": {error}"),
            entity_type=self.entity_type,
            entity_id=str(entity.entity_id),
            state=state,
            trigger=trigger,
            correlation_id=None if entity.correlation_id is None else str(entity.correlation_id),
            error=None if error is None else str(error),
        )

    def _record(self, entity: Entity, source: str, dest: str, trigger: str, data: dict[str, Any]) -> TransitionRecord:
        entity_id, salt, millis = entity.entity_id, entity.id_salt, entity.id_millis
        if type(entity_id) is str and type(salt) is str:  # always, for the shipped entities: encoded here, once
            key = b"\x1f".join((self._type_text, entity_id.encode(), salt.encode(), b"%d" % entity.seq))
            id_ = derived_at(millis, key)
        else:
            id_ = derived_id(self.entity_type, entity_id, salt, entity.seq)
        record = _new_record(
            id=id_,
            entity_id=entity.entity_id,
            entity_type=self.entity_type,
            from_state=source,
            to_state=dest,
            trigger=trigger,
            correlation_id=entity.correlation_id,
            at=self._now(),
            data=data,
        )
        entity.seq += 1
        entity.history.append(record)
        if self._on_transition is not None:
            self._on_transition(record)
        return record

    def mermaid(self) -> str:
        """The machine as a Mermaid ``stateDiagram-v2``."""
        return mermaid(self.fsm)


def _no_actions(name: str) -> Callable[[Entity], None]:
    raise LookupError(f"action {name!r} named in the FSM but no node is bound to carry it out")


def terminal_states(fsm: FsmSubcontract) -> frozenset[str]:
    return frozenset(fsm.terminal_states) | {s.state_name for s in fsm.states if s.is_terminal}


def expand_sources(fsm: FsmSubcontract, from_state: str | tuple[str, ...]) -> list[str]:
    """The source states of a transition; ``'*'`` means every non-terminal state (terminal states absorb)."""
    sources = [from_state] if isinstance(from_state, str) else list(from_state)
    if WILDCARD not in sources:
        return sources
    terminal = terminal_states(fsm)
    return [s.state_name for s in fsm.states if s.state_name not in terminal]


def mermaid(fsm: FsmSubcontract) -> str:
    """Render an FSM subcontract as Mermaid ``stateDiagram-v2`` text (states, triggers, guards, terminals)."""
    lines = ["stateDiagram-v2"]
    terminal = terminal_states(fsm)
    for state in fsm.states:
        if state.description:
            lines.append(f"    {state.state_name}: {state.state_name} - {state.description}")
    lines.append(f"    [*] --> {fsm.initial_state}")
    for t in fsm.transitions:
        label = t.trigger
        if t.conditions:
            label += " [" + " and ".join(c.expression for c in t.conditions) + "]"
        for source in expand_sources(fsm, t.from_state):
            lines.append(f"    {source} --> {t.to_state}: {label}")
    lines.extend(f"    {s.state_name} --> [*]" for s in fsm.states if s.state_name in terminal)
    return "\n".join(lines) + "\n"
