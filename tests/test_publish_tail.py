"""``onex publish`` and ``onex tail`` through the real CLI in subprocesses (stdout a pipe): on the tansu broker a
validated envelope is published, keyed as the contract says, and tail prints it as it arrives; on the memory bus
publish hosts the nodes for one event and prints what it caused.

Each Kafka test publishes under an environment of its own (``ONEX_ENV``), so its topics are its own on the shared
broker. Every subprocess is bounded: by ``timeout=`` here, and a tail by its own ``--timeout`` (the one stopped by
Ctrl-C by ``finish()``'s).
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import signal
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient
from onex.envelope import OnexEnvelopeV1

ROOT = Path(__file__).resolve().parents[1]
WORKSHOP = ROOT / "tests" / "projects" / "workshop"
ONEX = Path(sys.executable).with_name("onex")
COMMAND = [str(ONEX)] if ONEX.exists() else [sys.executable, "-m", "onex.cli"]
REQUEST = "STAMP_REQUESTED"
AGGREGATE = "STATE_AGGREGATION_COMPLETED"  # its contract keys it by the payload's namespace
AGGREGATE_PAYLOAD = {
    "namespace": "ns.poked",
    "version": 1,
    "total_workflows_processed": 1,
    "total_items_aggregated": 1,
    "total_size_bytes": 6,
    "unique_file_hashes": 1,
    "current_fsm_state": "active",
    "aggregated_at": "2026-01-01T00:00:00Z",
}


def environ(env: str | None = None) -> dict[str, str]:
    clean = {k: v for k, v in os.environ.items() if not k.startswith("ONEX_")}
    return clean | ({"ONEX_ENV": env} if env else {})


def onex(*args: str, cwd: Path, env: str | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*COMMAND, "--root", str(ROOT), *args],
        cwd=cwd,
        env=environ(env),
        capture_output=True,
        text=True,
        timeout=90,
        check=False,
    )


def topic(env: str, event: str, cls: str = "cmd") -> str:
    kebab = event.lower().replace("_", "-")
    return f"{env}.omninode_bridge.onex.{cls}.{kebab}.v1"


def records(bootstrap: str, name: str) -> list[Any]:
    """Every record of topic ``name`` as it is now, read without a consumer group."""

    async def read() -> list[Any]:
        admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
        await admin.start()
        try:
            described = await admin.describe_topics([name])
        finally:
            await admin.close()
        partitions = [TopicPartition(name, p["partition"]) for t in described for p in t["partitions"]]
        consumer = AIOKafkaConsumer(
            bootstrap_servers=bootstrap, group_id=None, enable_auto_commit=False, auto_offset_reset="earliest"
        )
        await consumer.start()
        try:
            consumer.assign(partitions)
            end = await consumer.end_offsets(partitions)
            for tp, offset in (await consumer.beginning_offsets(partitions)).items():
                consumer.seek(tp, offset)
            found: list[Any] = []
            left = {tp for tp in partitions if end[tp] > 0}
            async with asyncio.timeout(30):
                while left:
                    batch = await consumer.getmany(*left, timeout_ms=500)
                    for got in batch.values():
                        found += got
                    left = {tp for tp in left if await consumer.position(tp) < end[tp]}
            return found
        finally:
            await consumer.stop()

    return asyncio.run(read())


@pytest.fixture
def kafka(kafka_bootstrap: str) -> tuple[str, list[str]]:
    """(an environment of this test's own, the --bus flag of the broker)."""
    return f"poke{uuid.uuid4().hex[:8]}", ["--bus", f"kafka://{kafka_bootstrap}"]


# Runs the command after it with SIGINT at its default disposition, as a terminal starts one (Ctrl-C then raises
# KeyboardInterrupt in it). A test process started as a background job of a non-interactive shell, as a CI runner may
# start the suite, has SIGINT ignored, and a child inherits that: its Ctrl-C would be ignored.
WITH_SIGINT = [
    sys.executable,
    "-c",
    "import os, signal, sys; signal.signal(signal.SIGINT, signal.SIG_DFL); os.execv(sys.argv[1], sys.argv[1:])",
]


class Tail:
    """``onex tail`` running in a subprocess, as from a terminal; ``ready()`` returns once it reads (its first stderr
    line)."""

    def __init__(self, *args: str, cwd: Path, env: str) -> None:
        self.process = subprocess.Popen(
            [*WITH_SIGINT, *COMMAND, "--root", str(ROOT), "tail", *args],
            cwd=cwd,
            env=environ(env),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )

    def ready(self) -> str:
        assert self.process.stderr is not None
        # Bounded: a tail that cannot read the broker gives up within its connect timeout, and says so.
        line = self.process.stderr.readline()
        assert line.startswith("tailing "), line + self.process.stderr.read()
        return line

    def finish(self) -> tuple[int, str, str]:
        out, err = self.process.communicate(timeout=90)
        return self.process.returncode, out, err


@pytest.fixture
def tails() -> Iterator[list[Tail]]:
    started: list[Tail] = []
    yield started
    for t in started:  # a test that failed half-way leaves no tail behind
        if t.process.poll() is None:
            t.process.kill()
            t.process.communicate(timeout=30)


# --- Kafka -------------------------------------------------------------------------------------------------------


@pytest.mark.kafka
def test_publish_validates_the_payload_then_the_broker_has_the_envelope(
    tmp_path: Path, kafka: tuple[str, list[str]], kafka_bootstrap: str
) -> None:
    env, bus = kafka
    cid = uuid.uuid4()
    payload = {"file_path": "a.py", "namespace": "ns.one"}

    sent = onex("publish", REQUEST, json.dumps(payload), *bus, "--key", "k-1", "--correlation-id", str(cid),
                "-o", "json", cwd=tmp_path, env=env)  # fmt: skip

    assert sent.returncode == 0, sent.stderr
    answer = json.loads(sent.stdout)
    assert answer["topic"] == topic(env, REQUEST)
    assert answer["key"] == "k-1"
    [record] = records(kafka_bootstrap, topic(env, REQUEST))
    assert record.key == b"k-1"
    on_wire = OnexEnvelopeV1.from_json(record.value)
    assert str(on_wire.event_id) == answer["event_id"] == answer["envelope"]["event_id"]
    assert on_wire.event_type == REQUEST
    assert on_wire.correlation_id == cid
    assert on_wire.source_service == "onex-cli"
    assert on_wire.environment == env
    assert on_wire.payload == {**answer["envelope"]["payload"], **payload}
    assert on_wire.payload["stamp_type"] == "lightweight"  # the model's default: validated into the model
    assert dict(record.headers)["ce_type"] == REQUEST.encode()

    bad = onex("publish", REQUEST, '{"file_path": "b.py", "stamp_type": "fancy"}', *bus, cwd=tmp_path, env=env)

    assert bad.returncode == 1
    assert "stamp_type" in bad.stderr
    assert bad.stderr.count("\n") == 1, bad.stderr
    assert "Traceback" not in bad.stderr
    assert len(records(kafka_bootstrap, topic(env, REQUEST))) == 1  # nothing published


@pytest.mark.kafka
def test_the_key_is_the_flag_else_the_contracts_payload_field_else_the_correlation_id(
    tmp_path: Path, kafka: tuple[str, list[str]], kafka_bootstrap: str
) -> None:
    env, bus = kafka

    by_field = onex("publish", AGGREGATE, json.dumps(AGGREGATE_PAYLOAD), *bus, "-o", "json", cwd=tmp_path, env=env)
    by_flag = onex("publish", AGGREGATE, json.dumps(AGGREGATE_PAYLOAD), *bus, "--key", "mine", "-o", "json",
                   cwd=tmp_path, env=env)  # fmt: skip
    by_cid = onex("publish", REQUEST, '{"file_path": "a.py"}', *bus, cwd=tmp_path, env=env)

    assert [r.returncode for r in (by_field, by_flag, by_cid)] == [0, 0, 0], by_field.stderr + by_cid.stderr
    keys = {r.key.decode() for r in records(kafka_bootstrap, topic(env, AGGREGATE, "evt"))}
    assert keys == {"ns.poked", "mine"}
    assert json.loads(by_field.stdout)["key"] == "ns.poked"
    # The table output: one "name: value" line each.
    shown = dict(line.split(": ", 1) for line in by_cid.stdout.splitlines())
    [request] = records(kafka_bootstrap, topic(env, REQUEST))
    assert request.key.decode() == shown["key"] == shown["correlation_id"]
    assert str(OnexEnvelopeV1.from_json(request.value).event_id) == shown["event_id"]
    assert shown["topic"] == topic(env, REQUEST)


@pytest.mark.kafka
def test_tail_from_the_beginning_prints_what_publish_sent_as_json_lines(
    tmp_path: Path, kafka: tuple[str, list[str]], tails: list[Tail]
) -> None:
    env, bus = kafka
    before = onex("publish", REQUEST, '{"file_path": "before.py"}', *bus, "-o", "json", cwd=tmp_path, env=env)
    assert before.returncode == 0, before.stderr
    tail = Tail(REQUEST, AGGREGATE, *bus, "--from-beginning", "--max", "2", "--timeout", "60", "-o", "jsonl",
                cwd=tmp_path, env=env)  # fmt: skip
    tails.append(tail)
    assert "from the beginning" in tail.ready()

    after = onex("publish", AGGREGATE, json.dumps(AGGREGATE_PAYLOAD), *bus, "-o", "json", cwd=tmp_path, env=env)
    assert after.returncode == 0, after.stderr

    code, out, err = tail.finish()
    assert code == 0, err
    lines = out.splitlines()
    assert len(lines) == 2
    printed = [json.loads(line) for line in lines]
    assert sorted(e["event_id"] for e in printed) == sorted(json.loads(r.stdout)["event_id"] for r in (before, after))
    by_type = {e["event_type"]: e for e in printed}
    assert by_type[AGGREGATE]["payload"]["namespace"] == "ns.poked"
    assert by_type[AGGREGATE]["partition_key"] == "ns.poked"
    assert by_type[REQUEST] == json.loads(before.stdout)["envelope"]


@pytest.mark.kafka
def test_tail_reads_from_the_end_by_default_one_line_each(
    tmp_path: Path, kafka: tuple[str, list[str]], tails: list[Tail]
) -> None:
    env, bus = kafka
    old = onex("publish", REQUEST, '{"file_path": "old.py"}', *bus, "-o", "json", cwd=tmp_path, env=env)
    assert old.returncode == 0, old.stderr
    tail = Tail(REQUEST, *bus, "--max", "1", "--timeout", "60", cwd=tmp_path, env=env)
    tails.append(tail)
    assert "from the end" in tail.ready()

    new = onex("publish", REQUEST, '{"file_path": "new.py"}', *bus, "--key", "k-new", "-o", "json",
               cwd=tmp_path, env=env)  # fmt: skip
    assert new.returncode == 0, new.stderr

    code, out, err = tail.finish()
    assert code == 0, err
    [line] = out.splitlines()
    sent = json.loads(new.stdout)
    when, event, event_id, key, correlation, payload = line.split(" ", 5)
    assert (event, event_id, key) == (REQUEST, sent["event_id"], "key=k-new")
    assert correlation == f"correlation={sent['correlation_id']}"
    assert json.loads(payload)["file_path"] == "new.py"
    assert when.startswith(sent["envelope"]["event_timestamp"][:10])


def send_in_one_batch(bootstrap: str, name: str, values: list[bytes]) -> None:
    """``values`` to topic ``name`` under one key, sent together: one record batch on one partition."""

    async def send() -> None:
        producer = AIOKafkaProducer(bootstrap_servers=bootstrap, linger_ms=100)
        await producer.start()
        try:
            sent = [await producer.send(name, value, key=b"one-batch") for value in values]
            offsets = [(await future).offset for future in sent]
        finally:
            await producer.stop()
        assert offsets == list(range(offsets[0], offsets[0] + len(values)))

    asyncio.run(send())


@pytest.mark.kafka
def test_tail_from_the_end_skips_the_whole_last_batch_published_before_it(
    tmp_path: Path, kafka: tuple[str, list[str]], kafka_bootstrap: str, tails: list[Tail]
) -> None:
    """tansu gives a partition's end (ListOffsets) as its last batch's first offset plus one: a tail that started there
    printed the rest of that batch as if it had just arrived."""
    env, bus = kafka
    old = onex("publish", REQUEST, '{"file_path": "old.py"}', *bus, "-o", "json", cwd=tmp_path, env=env)
    assert old.returncode == 0, old.stderr
    send_in_one_batch(
        kafka_bootstrap, topic(env, REQUEST), [json.dumps(json.loads(old.stdout)["envelope"]).encode()] * 3
    )
    tail = Tail(REQUEST, *bus, "--max", "1", "--timeout", "60", cwd=tmp_path, env=env)
    tails.append(tail)
    tail.ready()

    new = onex("publish", REQUEST, '{"file_path": "new.py"}', *bus, "-o", "json", cwd=tmp_path, env=env)
    assert new.returncode == 0, new.stderr

    code, out, err = tail.finish()
    assert code == 0, err
    [line] = out.splitlines()
    assert json.loads(new.stdout)["event_id"] in line


@pytest.mark.kafka
def test_tail_stops_cleanly_on_ctrl_c_and_says_when_max_was_not_reached(
    tmp_path: Path, kafka: tuple[str, list[str]], tails: list[Tail]
) -> None:
    env, bus = kafka
    tail = Tail(REQUEST, *bus, cwd=tmp_path, env=env)  # no --timeout: only Ctrl-C ends it, or finish() gives up
    tails.append(tail)
    tail.ready()

    tail.process.send_signal(signal.SIGINT)

    code, out, err = tail.finish()
    assert (code, out) == (0, "")
    assert "Traceback" not in err

    short = onex("tail", REQUEST, *bus, "--max", "1", "--timeout", "0.5", cwd=tmp_path, env=env)
    assert short.returncode == 1
    assert "0 of --max 1 envelope(s) arrived" in short.stderr


# --- usage errors ------------------------------------------------------------------------------------------------


def test_an_unknown_event_is_a_usage_error_naming_the_known_ones(tmp_path: Path) -> None:
    for command in (["publish", "STAMP_REQUESTD", "{}"], ["tail", REQUEST, "STAMP_REQUESTD", "--bus", "kafka://x:1"]):
        result = onex(*command, cwd=tmp_path)

        assert result.returncode == 2, result.stderr
        assert "'STAMP_REQUESTD'" in result.stderr
        assert "did you mean STAMP_REQUESTED" in result.stderr
        assert "WORKFLOW_COMPLETED" in result.stderr  # every known name
        assert result.stderr.count("\n") == 1


@pytest.mark.parametrize(
    ("payload", "said"),
    [('{"file_path": ', "the payload is not JSON"), ('["a.py"]', "must be a JSON object, not list")],
)
def test_a_payload_that_is_no_json_object_is_a_one_line_usage_error(tmp_path: Path, payload: str, said: str) -> None:
    result = onex("publish", REQUEST, payload, cwd=tmp_path)

    assert result.returncode == 2
    assert said in result.stderr
    assert result.stderr.count("\n") == 1


def test_tail_on_the_memory_bus_says_it_needs_a_broker(tmp_path: Path) -> None:
    result = onex("tail", REQUEST, "--bus", "memory://", cwd=tmp_path)

    assert result.returncode == 2
    assert "--bus kafka://HOST:PORT" in result.stderr


# --- the memory bus: a one-shot poke of the nodes hosted in process ----------------------------------------------


def test_publish_on_the_memory_bus_runs_the_graph_and_prints_what_the_event_caused(tmp_path: Path) -> None:
    store = f"sqlite:///{tmp_path / 'onex.db'}"
    payload = {"file_path": "a.py", "content": "x = 1\n"}  # content: nothing on disk is read or written

    result = onex("publish", REQUEST, json.dumps(payload), "--store", store, "-o", "json", cwd=tmp_path)

    assert result.returncode == 0, result.stderr
    answer = json.loads(result.stdout)
    assert answer["settled"] is True
    cid = answer["correlation_id"]
    resulted = answer["resulted"]
    assert {e["event_type"] for e in resulted} >= {"STAMP_FILE", "STAMP_CREATED", "WORKFLOW_COMPLETED"}
    assert all(e["correlation_id"] == cid for e in resulted)
    [completed] = [e for e in resulted if e["event_type"] == "WORKFLOW_COMPLETED"]
    assert completed["payload"]["state"] == "completed"
    assert completed["payload"]["namespace"] == "onex.default"
    assert not (tmp_path / "a.py").exists()
    # The nodes ran on the given store: the workflow is recorded there.
    traced = onex("trace", cid, "--store", store, "-o", "json", cwd=tmp_path)
    assert traced.returncode == 0, traced.stderr
    assert json.loads(traced.stdout)["workflow"]["current_state"] == "completed"

    table = onex("publish", REQUEST, json.dumps(payload), "--store", store, cwd=tmp_path)
    assert table.returncode == 0, table.stderr
    lines = table.stdout.splitlines()
    count = int(next(line for line in lines if line.startswith("resulted: ")).split()[1])
    events = [line.split(" ")[1] for line in lines[-count:]]
    assert "WORKFLOW_COMPLETED" in events


def test_an_inline_schema_payload_is_checked_and_its_events_keyed_by_the_contracts_field(tmp_path: Path) -> None:
    store = f"sqlite:///{tmp_path / 'onex.db'}"

    def publish(event: str, payload: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [*COMMAND, "--root", str(WORKSHOP), "publish", event, payload, "--store", store, "-o", "json"],
            cwd=tmp_path,
            env=environ(),
            capture_output=True,
            text=True,
            timeout=90,
            check=False,
        )

    wrong_type, missing = publish("NOTE", '{"text": 3}'), publish("NOTE", "{}")

    assert (wrong_type.returncode, missing.returncode) == (1, 1)
    assert "NOTE: the payload does not fit: text: 3 is not of type 'string'" in wrong_type.stderr
    assert "'text' is a required property" in missing.stderr

    pulse = publish("PULSE", '{"node_id": "n-7", "active_operations": 11}')

    assert pulse.returncode == 0, pulse.stderr
    resulted = {e["event_type"]: e for e in json.loads(pulse.stdout)["resulted"]}
    assert resulted["ALERT"]["payload"] == {"node_id": "n-7", "level": "warn"}
    assert resulted["ALERT"]["partition_key"] == resulted["RELAYED_PULSE"]["partition_key"] == "n-7"


def test_publish_on_the_memory_bus_fails_when_the_event_is_dead_lettered(tmp_path: Path) -> None:
    store = f"sqlite:///{tmp_path / 'onex.db'}"
    # The workshop's mailer refuses every address at bounce.test, after one attempt.
    result = subprocess.run(
        [*COMMAND, "--root", str(WORKSHOP), "publish", "SEND_MAIL", '{"to": "ann@bounce.test"}', "--store", store],
        cwd=tmp_path,
        env=environ(),
        capture_output=True,
        text=True,
        timeout=90,
        check=False,
    )

    assert result.returncode == 1, result.stdout + result.stderr
    assert result.stderr.splitlines()[-1] == (
        "error: 1 dead letter(s) resulted; the first, from dev.omninode_bridge.onex.cmd.send-mail.v1: "
        "ConnectionError: mail server refused ann@bounce.test"
    )
    lines = result.stdout.splitlines()
    assert "resulted: 1 event(s)" in lines
    assert lines[-1].split(" ")[1] == "DEAD_LETTER"
    assert "Traceback" not in result.stderr


# `onex run`'s text log line: TIMESTAMP LEVEL NODE EVENT: message key=value ... (onex.logs.TextFormatter).
LOG_LINE = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z (?P<level>[A-Z]+) (?P<node>\S+) (?P<event>\w+): ")


def test_the_nodes_a_one_shot_command_hosts_log_as_onex_run_does(tmp_path: Path) -> None:
    # Only `onex run` configured logging: publish's and dlq replay's nodes logged through Python's last resort, a
    # bare message without time, level or event.
    store = f"sqlite:///{tmp_path / 'onex.db'}"

    def workshop(*args: str, log_format: str = "text") -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [*COMMAND, "--root", str(WORKSHOP), *args, "--store", store],
            cwd=tmp_path,
            env=environ() | {"ONEX_LOG_FORMAT": log_format},
            capture_output=True,
            text=True,
            timeout=90,
            check=False,
        )

    published = workshop("publish", "SEND_MAIL", '{"to": "ann@bounce.test"}')
    replayed = workshop("dlq", "replay", "--all", log_format="json")

    assert published.returncode == 1, published.stdout + published.stderr
    [logged, error] = published.stderr.splitlines()
    match = LOG_LINE.match(logged)
    assert match is not None, logged
    assert match.group("level", "node", "event") == ("WARNING", "-", "dead_letter")
    assert "dead-lettered after 1 attempt(s): ConnectionError('mail server refused ann@bounce.test')" in logged
    assert error.startswith("error: 1 dead letter(s) resulted")
    # The replay dead-letters it again, logged as one JSON object a line in that format; no start-up chatter of the
    # nodes it hosts at the default level (warnings, for a command that reports on stdout).
    assert replayed.returncode == 0, replayed.stdout + replayed.stderr
    [line] = [json.loads(line) for line in replayed.stderr.splitlines()]
    assert {key: line[key] for key in ("level", "logger", "event", "event_type")} == {
        "level": "warning",
        "logger": "onex.bus",
        "event": "dead_letter",
        "event_type": "SEND_MAIL",
    }
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z", line["ts"]), line
