"""FSMs from subcontracts: guards without eval, actions, recorded transitions, illegal triggers, Mermaid."""

from __future__ import annotations

import dataclasses
import logging
import uuid
from datetime import UTC, datetime
from types import MappingProxyType

import pytest
from onex.contracts import FsmSubcontract
from onex.envelope import derived_id
from onex.exceptions import TransitionError
from onex.fsm import Entity, StateMachine, TransitionRecord, mermaid, parse_guard

WORKFLOW = FsmSubcontract.model_validate(
    {
        "version": "1.0.0",
        "initial_state": "pending",
        "states": [
            {"state_name": "pending"},
            {"state_name": "processing", "entry_actions": ["entered"], "exit_actions": ["left"]},
            {"state_name": "completed", "is_terminal": True},
            {"state_name": "failed", "is_terminal": True},
        ],
        "transitions": [
            {
                "transition_name": "start",
                "from_state": "pending",
                "to_state": "processing",
                "trigger": "start",
                "actions": ["started"],
            },
            {
                "transition_name": "complete",
                "from_state": "processing",
                "to_state": "completed",
                "trigger": "complete",
                "conditions": [{"expression": "file_hash exists"}, {"expression": "size >= 1"}],
            },
            {"transition_name": "fail", "from_state": "*", "to_state": "failed", "trigger": "fail"},
        ],
        "terminal_states": ["completed", "failed"],
    }
)


class Recorder:
    def __init__(self) -> None:
        self.calls: list[tuple[str, str]] = []
        self.records: list[TransitionRecord] = []

    def action(self, name: str):  # type: ignore[no-untyped-def]
        return lambda entity: self.calls.append((name, entity.entity_id))


@pytest.fixture
def rec() -> Recorder:
    return Recorder()


@pytest.fixture
def machine(rec: Recorder) -> StateMachine:
    return StateMachine(WORKFLOW, entity_type="workflow", actions=rec.action, on_transition=rec.records.append)


def test_entities_share_one_machine_and_start_in_the_initial_state(machine: StateMachine) -> None:
    a, b = machine.attach(Entity("a")), machine.attach(Entity("b"))
    machine.trigger(a, "start")
    assert (a.state, b.state) == ("processing", "pending")


def test_every_transition_is_recorded_in_order_with_its_trigger(machine: StateMachine, rec: Recorder) -> None:
    wf = machine.attach(Entity("wf-1", context={"file_hash": "abc", "size": 3}))
    machine.trigger(wf, "start")
    record = machine.trigger(wf, "complete")
    assert [(r.from_state, r.to_state, r.trigger) for r in rec.records] == [
        ("pending", "processing", "start"),
        ("processing", "completed", "complete"),
    ]
    assert record is wf.history[-1]
    assert record.entity_id == "wf-1"
    assert record.entity_type == "workflow"


def test_a_transition_id_is_derived_from_entity_type_id_salt_and_sequence(machine: StateMachine) -> None:
    # Text parts are encoded by the machine itself (the hot path), anything else by derived_id: the same ids.
    texts = machine.attach(Entity("wf-2", id_salt="salt", context={"file_hash": "abc", "size": 3}))
    typed = machine.attach(Entity(uuid.UUID(int=7)))  # type: ignore[arg-type]  # an id that is no text
    ids = [machine.trigger(texts, "start").id, machine.trigger(typed, "start").id]
    ids.append(machine.trigger(texts, "complete").id)
    assert ids == [
        derived_id("workflow", "wf-2", "salt", 0),
        derived_id("workflow", uuid.UUID(int=7), "", 0),
        derived_id("workflow", "wf-2", "salt", 1),
    ]


def test_a_transition_is_stamped_with_the_time_the_machine_is_given_and_else_the_systems() -> None:
    moments = iter([datetime(2001, 2, 3, 4, 5, 6, 7, tzinfo=UTC), datetime(2001, 2, 3, 4, 5, 8, 9, tzinfo=UTC)])
    given = StateMachine(WORKFLOW, entity_type="workflow", actions=Recorder().action, now=lambda: next(moments))
    wf = given.attach(Entity("wf", context={"file_hash": "h", "size": 1}))
    assert [given.trigger(wf, t).at for t in ("start", "complete")] == [
        datetime(2001, 2, 3, 4, 5, 6, 7, tzinfo=UTC),
        datetime(2001, 2, 3, 4, 5, 8, 9, tzinfo=UTC),
    ]

    system = StateMachine(WORKFLOW, entity_type="workflow", actions=Recorder().action)
    before = datetime.now(UTC)
    at = system.trigger(system.attach(Entity("wf")), "start").at
    assert before <= at <= datetime.now(UTC)
    assert at.tzinfo is UTC


def test_entry_exit_and_transition_actions_call_the_named_methods(machine: StateMachine, rec: Recorder) -> None:
    wf = machine.attach(Entity("wf", context={"file_hash": "h", "size": 1}))
    machine.trigger(wf, "start")
    machine.trigger(wf, "complete")
    assert rec.calls == [("entered", "wf"), ("started", "wf"), ("left", "wf")]


def test_attaching_an_entity_runs_the_initial_states_entry_actions_once_in_order() -> None:
    # transitions runs no on_enter for a model's initial state; a contract's declared entry actions still run.
    fsm = WORKFLOW.model_copy(
        update={
            "states": [
                WORKFLOW.states[0].model_copy(update={"entry_actions": ["opened", "counted"]}),
                *WORKFLOW.states[1:],
            ]
        }
    )
    rec = Recorder()
    machine = StateMachine(fsm, entity_type="workflow", actions=rec.action, on_transition=rec.records.append)
    wf = machine.attach(Entity("wf", context={"file_hash": "h", "size": 1}))
    assert (wf.state, rec.calls, rec.records, wf.seq) == ("pending", [("opened", "wf"), ("counted", "wf")], [], 0)
    machine.trigger(wf, "start")
    assert rec.calls == [("opened", "wf"), ("counted", "wf"), ("entered", "wf"), ("started", "wf")]


def test_an_entry_action_of_the_initial_state_decides_what_the_entity_starts_with() -> None:
    # The action drives behaviour: what it puts in the context is what the first guard reads.
    fsm = WORKFLOW.model_copy(
        update={"states": [WORKFLOW.states[0].model_copy(update={"entry_actions": ["hash"]}), *WORKFLOW.states[1:]]}
    )

    def resolve(name: str):  # type: ignore[no-untyped-def]
        if name == "hash":
            return lambda entity: entity.context.update(file_hash="h", size=1)
        return lambda entity: None

    machine = StateMachine(fsm, entity_type="workflow", actions=resolve)
    wf = machine.attach(Entity("wf"))
    machine.trigger(wf, "start")
    assert machine.trigger(wf, "complete").to_state == "completed"


def with_error_states(*states: str) -> StateMachine:
    fsm = WORKFLOW.model_copy(update={"error_states": list(states)})
    return StateMachine(fsm, entity_type="workflow", actions=Recorder().action)


def error_lines(caplog: pytest.LogCaptureFixture) -> list[tuple[int, str, dict[str, object]]]:
    return [(r.levelno, r.getMessage(), r.onex) for r in caplog.records if r.name == "onex.fsm"]  # type: ignore[attr-defined]


def test_entering_an_error_state_is_logged_once_with_the_error(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="onex.fsm")
    machine = with_error_states("failed")
    cid = uuid.uuid4()
    wf = machine.attach(Entity("wf-1", correlation_id=cid))
    machine.trigger(wf, "start")
    assert error_lines(caplog) == []  # processing is not an error state

    machine.trigger(wf, "fail", error="stamp: disk full")

    [(level, message, fields)] = error_lines(caplog)
    assert level == logging.INFO
    assert message == "workflow wf-1 entered error state failed by fail: stamp: disk full"
    assert fields["event"] == "fsm_error_state"
    assert (fields["state"], fields["trigger"], fields["correlation_id"]) == ("failed", "fail", str(cid))


def test_a_machine_without_error_states_logs_no_failure_and_one_already_in_error_logs_no_second(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, logger="onex.fsm")
    machine = with_error_states()
    machine.trigger(machine.attach(Entity("wf-1")), "fail")
    assert error_lines(caplog) == []

    both = with_error_states("processing", "failed")
    wf = both.attach(Entity("wf-2", context={"error": "from its context"}))
    both.trigger(wf, "start")
    both.trigger(wf, "fail")  # from one error state into another: entered once, logged once
    assert [message for _, message, _ in error_lines(caplog)] == [
        "workflow wf-2 entered error state processing by start: from its context"
    ]


def test_illegal_trigger_names_entity_state_and_trigger(machine: StateMachine) -> None:
    wf = machine.attach(Entity("wf-9"))
    with pytest.raises(TransitionError) as info:
        machine.trigger(wf, "complete")
    assert (info.value.entity_id, info.value.state, info.value.trigger) == ("wf-9", "pending", "complete")
    assert "wf-9" in str(info.value)
    assert "'pending'" in str(info.value)


def test_unknown_trigger_is_a_transition_error(machine: StateMachine) -> None:
    with pytest.raises(TransitionError, match="no such trigger"):
        machine.trigger(machine.attach(Entity("x")), "explode")


def test_a_failing_guard_blocks_the_transition_and_says_which(machine: StateMachine) -> None:
    wf = machine.attach(Entity("wf", context={"file_hash": "h", "size": 0}))
    machine.trigger(wf, "start")
    with pytest.raises(TransitionError, match="guard failed: size >= 1"):
        machine.trigger(wf, "complete")
    assert wf.state == "processing"


def test_wildcard_source_does_not_leave_terminal_states(machine: StateMachine) -> None:
    wf = machine.attach(Entity("wf", context={"file_hash": "h", "size": 1}))
    machine.trigger(wf, "fail")
    assert wf.state == "failed"
    with pytest.raises(TransitionError):
        machine.trigger(wf, "fail")


@pytest.mark.parametrize(
    ("expression", "context", "expected"),
    [
        ("status equals done", {"status": "done"}, True),
        ("status != done", {"status": "done"}, False),
        ("count greater_than 2", {"count": 3}, True),
        ("count <= 2", {"count": 3}, False),
        ("count >= 2", {"count": "not a number"}, False),
        ("items min_length 2", {"items": [1]}, False),
        ("name max_length 3", {"name": "abc"}, True),
        ("kind in [a,b]", {"kind": "b"}, True),
        ("kind not_in [a,b]", {"kind": "c"}, True),
        ("tags contains x", {"tags": ["x", "y"]}, True),
        ("path matches ^src/.*\\.py$", {"path": "src/a.py"}, True),
        ("missing exists", {}, False),
        ("missing not_exists", {}, True),
        ("meta.level equals 3", {"meta": {"level": 3}}, True),
        ("meta.level equals 3", MappingProxyType({"meta": MappingProxyType({"level": 3})}), True),
        ("meta.level exists", {"meta": 3}, False),
        ("flag equals true", {"flag": True}, True),
    ],
)
def test_guard_grammar(expression: str, context: dict[str, object], expected: bool) -> None:
    assert parse_guard(expression)(context) is expected


def test_a_guard_copied_onto_another_field_reads_that_field() -> None:
    # The aggregations' `where` evaluates a guard moved onto its value this way: the path is derived, never copied.
    moved = dataclasses.replace(parse_guard("stamp.size >= 2"), field="value")
    assert (moved({"value": 3}), moved({"stamp": {"size": 3}})) == (True, False)


@pytest.mark.parametrize(
    "expression",
    [
        "status",
        "status equals",
        "a b c d",
        "status like x",
        "_private equals 1",
        "x matches (unclosed",
        "__import__('os') equals 1",
    ],
)
def test_malformed_guards_are_rejected_not_evaluated(expression: str) -> None:
    with pytest.raises(ValueError, match="guard"):
        parse_guard(expression)


# --- matches: RE2, linear in the value -------------------------------------------------------------------------------


@pytest.mark.timeout(10)  # re takes hours on these (time doubles with each character): failing is a timeout
@pytest.mark.parametrize(
    ("pattern", "value", "expected"),
    [
        ("(a+)+$", "a" * 40 + "!", False),
        ("^(a|a)*$", "a" * 40 + "!", False),
        ("(x+x+)+y", "x" * 5000, False),
        ("^(a+)+$", "a" * 100_000, True),
    ],
)
def test_a_catastrophic_pattern_answers_against_a_long_value(pattern: str, value: str, expected: bool) -> None:
    assert parse_guard(f"v matches {pattern}")({"v": value}) is expected


@pytest.mark.parametrize(
    ("pattern", "construct"),
    [("(?=admin)a", "(?="), ("(?!x)y", "(?!"), ("(?<=@)corp", "(?<="), ("(?<!no)pe", "(?<!"), ("(a)\\1", "\\1")],
)
def test_a_pattern_re2_cannot_run_is_refused_at_parse_naming_the_guard(pattern: str, construct: str) -> None:
    expression = f"email matches {pattern}"
    with pytest.raises(ValueError, match="is not a regular expression RE2 can run") as refused:
        parse_guard(expression)
    message = str(refused.value)
    assert message.startswith(f"guard {expression!r}: {pattern!r} is not a regular expression RE2 can run")
    assert construct in message
    assert message.endswith(
        "RE2 has no back-references or look-around, so that matching takes time linear in the value"
    )


def test_matches_searches_as_re_does_for_the_patterns_re2_shares_with_it() -> None:
    import re

    import re2  # type: ignore[import-untyped]  # google-re2 ships no annotations

    patterns = ["^src/.*\\.py$", "@example\\.com$", "(?i)^café", "b+", "^$", "[0-9]{3}-[0-9]{4}", "é.x", "^\\S+$"]
    values = ["src/a.py", "src/a.pyc", "x@example.com", "CAFÉ au lait", "café", "abbbc", "", "555-1234", "éax", "a b"]
    values += ["\udfffx", "日本 bb"]  # a lone surrogate (JSON may carry one) and text beyond ASCII
    for pattern in patterns:
        guard = parse_guard(f"v matches {pattern}")
        for value in values:
            expected = re.search(pattern, value) is not None
            assert guard({"v": value}) is expected, (pattern, value)
            if "\udfff" not in value:  # the wrapper's own search encodes strictly
                assert (re2.search(pattern, value) is not None) is expected, (pattern, value)
    assert parse_guard("v matches ^4")({"v": 42}) is True  # a value that is no text is matched as its str()


def test_mermaid_draws_states_transitions_guards_and_terminals() -> None:
    text = mermaid(WORKFLOW)
    assert text.startswith("stateDiagram-v2\n")
    assert "    [*] --> pending" in text
    assert "    pending --> processing: start" in text
    assert "    processing --> completed: complete [file_hash exists and size >= 1]" in text
    assert "    pending --> failed: fail" in text
    assert "    processing --> failed: fail" in text
    assert "completed --> failed" not in text
    assert "    completed --> [*]" in text
    assert "    failed --> [*]" in text


BRANCHING = FsmSubcontract.model_validate(
    {
        "version": "1.0.0",
        "initial_state": "idle",
        "states": [
            {"state_name": "idle", "exit_actions": ["leave_idle"]},
            {"state_name": "busy", "entry_actions": ["enter_busy"], "exit_actions": ["leave_busy"]},
            {"state_name": "large", "entry_actions": ["enter_large"]},
            {"state_name": "done", "is_terminal": True},
        ],
        "transitions": [
            # Two candidates for one (trigger, state): the first whose guards pass wins.
            {
                "transition_name": "big",
                "from_state": "idle",
                "to_state": "large",
                "trigger": "go",
                "conditions": [{"expression": "size > 10"}],
                "actions": ["went_big"],
            },
            {
                "transition_name": "small",
                "from_state": "idle",
                "to_state": "busy",
                "trigger": "go",
                "conditions": [{"expression": "size exists"}],
                "actions": ["went"],
            },
            {"transition_name": "again", "from_state": "busy", "to_state": "busy", "trigger": "go"},
            {"transition_name": "back", "from_state": ["busy", "large"], "to_state": "idle", "trigger": "reset"},
            {
                "transition_name": "finish",
                "from_state": "*",
                "to_state": "done",
                "trigger": "finish",
                "conditions": [{"expression": "ok == true"}],
            },
        ],
    }
)


@pytest.mark.parametrize("fsm", [WORKFLOW, BRANCHING], ids=["workflow", "branching"])
def test_the_compiled_table_agrees_with_the_transitions_library(fsm: FsmSubcontract) -> None:
    """Random trigger sequences fired through the table and through the library's own events end alike."""
    import random

    from transitions import MachineError

    calls: list[tuple[str, str, str]] = []  # (action, entity, the entity's state when it ran)

    def action(name: str):  # type: ignore[no-untyped-def]
        return lambda entity: calls.append((name, entity.entity_id[:-1], entity.state))

    machine = StateMachine(fsm, entity_type="thing", actions=action)
    rng = random.Random(7)
    triggers = [*sorted(machine.triggers), "nonsense"]
    compiled_moves = library_moves = 0
    for run in range(200):
        fast, slow = machine.attach(Entity(f"e{run}a")), machine.attach(Entity(f"e{run}b"))
        for _ in range(6):
            context = {
                k: v
                for k, v in (
                    ("size", rng.choice([None, 3, 30])),
                    ("ok", rng.choice([True, False])),
                    ("file_hash", rng.choice([None, "h"])),
                )
                if v is not None
            }
            fast.context = slow.context = context
            trigger = rng.choice(triggers)
            del calls[:]
            try:
                machine.trigger(fast, trigger, n=1)
                fast_moved = True
            except TransitionError:
                fast_moved = False
            fast_calls, calls[:] = [(n, e, s) for n, e, s in calls], []
            event = machine.machine.events.get(trigger)
            try:
                slow_moved = bool(event and event.trigger(slow, n=1))
            except MachineError:
                slow_moved = False
            assert (fast_moved, fast.state, fast_calls) == (slow_moved, slow.state, calls), (run, trigger, context)
            compiled_moves += fast_moved
            library_moves += slow_moved
    assert compiled_moves == library_moves > 100  # the sequences did move, through guards and reflexive moves alike
    assert all(r.to_state for r in fast.history)
