"""``onex.logs``: every line has a timestamp, level, node id and event name, as text or one JSON object a line;
retries and dead letters name the event, its type and its workflow; a hosting runtime logs its nodes' lifecycle
and a summary line per node that worked."""

from __future__ import annotations

import io
import json
import logging
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import cast

import anyio
import pytest
from onex.bus import MemoryBus, RetryPolicy
from onex.envelope import OnexEnvelopeV1, topic_name
from onex.logs import configure, event
from onex.settings import Settings
from onex.testing import Harness
from pydantic import ValidationError

REQUIRED = {"ts", "level", "logger", "node", "event", "message"}
TOPIC = topic_name("probe")


@pytest.fixture(autouse=True)
def _levels_restored() -> Iterator[None]:
    """``configure`` sets the root's and onex's levels: put them back for the tests that follow."""
    levels = {name: logging.getLogger(name).level for name in ("", "onex")}
    yield
    for name, level in levels.items():
        logging.getLogger(name).setLevel(level)


@pytest.fixture
def json_lines() -> Iterator[io.StringIO]:
    stream = io.StringIO()
    handler = configure("info", "json", stream=stream)
    yield stream
    logging.getLogger().removeHandler(handler)


def parsed(stream: io.StringIO) -> list[dict[str, object]]:
    lines = [json.loads(line) for line in stream.getvalue().splitlines()]
    for line in lines:
        assert line.keys() >= REQUIRED, line
    return lines


def test_a_json_line_is_one_object_with_the_required_keys_and_the_fields(json_lines: io.StringIO) -> None:
    event(logging.getLogger("onex.test"), logging.INFO, "ready", "consuming", node="n-1.0.0-a", group="dev.n")
    logging.getLogger("onex.test").warning("plain %s", "line")
    first, second = parsed(json_lines)
    assert first["node"] == "n-1.0.0-a"
    assert first["event"] == "ready"
    assert first["level"] == "info"
    assert first["group"] == "dev.n"
    assert str(first["ts"]).endswith("Z")
    assert second == {**second, "event": "log", "node": None, "message": "plain line", "level": "warning"}


def test_the_text_format_puts_node_and_event_after_the_level() -> None:
    stream = io.StringIO()
    handler = configure("info", "text", stream=stream)
    try:
        event(logging.getLogger("onex.test"), logging.INFO, "stopped", "stopped", node="n-1", reason="signal")
    finally:
        logging.getLogger().removeHandler(handler)
    (line,) = stream.getvalue().splitlines()
    stamp, level, node, name, *rest = line.split(" ")
    assert stamp.endswith("Z")
    assert (level, node, name) == ("INFO", "n-1", "stopped:")
    assert rest == ["stopped", "reason=signal"]


def test_a_text_record_is_one_line_whatever_its_message_and_a_traceback_follows_it() -> None:
    """The Kafka bus logs ``undecodable record ...: <pydantic error>``, several lines; a log shipper takes each line
    for a record. The JSON format keeps the message whole."""
    try:
        OnexEnvelopeV1.model_validate({"event_type": "probe"})
    except ValidationError as exc:
        error = exc
    assert len(str(error).splitlines()) > 2
    logger = logging.getLogger("onex.test")
    text, whole = io.StringIO(), io.StringIO()
    handler = configure("info", "text", stream=text)
    try:
        logger.warning("undecodable record %s[%d]@%d: %s", TOPIC, 0, 7, error)
        try:
            raise RuntimeError("boom")
        except RuntimeError:
            logger.exception("handler failed:\n  twice")
    finally:
        logging.getLogger().removeHandler(handler)
    handler = configure("info", "json", stream=whole)
    try:
        logger.warning("undecodable record %s[%d]@%d: %s", TOPIC, 0, 7, error)
    finally:
        logging.getLogger().removeHandler(handler)

    record, failed, *traceback = text.getvalue().splitlines()
    assert record.endswith(f"WARNING - log: undecodable record {TOPIC}[0]@7: {' '.join(str(error).split())}")
    assert failed.endswith("ERROR - log: handler failed: twice")
    assert traceback[0] == "Traceback (most recent call last):"
    assert traceback[-1] == "RuntimeError: boom"
    [line] = parsed(whole)
    assert line["message"] == f"undecodable record {TOPIC}[0]@7: {error}"


def test_the_level_filters_onex_lines() -> None:
    stream = io.StringIO()
    handler = configure("warning", "json", stream=stream)
    try:
        event(logging.getLogger("onex.test"), logging.INFO, "ready", "consuming")
        event(logging.getLogger("onex.test"), logging.WARNING, "retry", "again")
    finally:
        logging.getLogger().removeHandler(handler)
    assert [line["event"] for line in parsed(stream)] == ["retry"]


def test_settings_refuse_an_unknown_level_or_format() -> None:
    assert Settings.load(environ={"ONEX_LOG_FORMAT": "json", "ONEX_LOG_LEVEL": "debug"}).log_format == "json"
    with pytest.raises(ValueError, match="ONEX_LOG_FORMAT"):
        Settings.load(environ={"ONEX_LOG_FORMAT": "xml"})
    with pytest.raises(ValueError, match="ONEX_LOG_LEVEL"):
        Settings.load(environ={"ONEX_LOG_LEVEL": "chatty"})


@pytest.mark.anyio
async def test_retries_and_dead_letters_name_the_event_its_type_and_its_workflow(json_lines: io.StringIO) -> None:
    bus = MemoryBus()
    await bus.start()
    cid = uuid.uuid4()

    async def failing(envelope: OnexEnvelopeV1) -> None:
        raise RuntimeError("always")

    try:
        await bus.subscribe([TOPIC], "g", handler=failing, retry=RetryPolicy(max_attempts=3, backoff_ms=0))
        sent = OnexEnvelopeV1(event_type="PROBE", source_node_id="test", correlation_id=cid, payload={})
        await bus.publish(TOPIC, sent)
        with anyio.fail_after(10):
            await bus.join()
    finally:
        await bus.aclose()
    lines = [line for line in parsed(json_lines) if line["event"] in ("retry", "dead_letter")]
    assert [line["event"] for line in lines] == ["retry", "retry", "dead_letter"]
    for line in lines:
        assert (line["event_id"], line["event_type"], line["correlation_id"]) == (str(sent.event_id), "PROBE", str(cid))
    assert lines[-1]["attempts"] == 3
    assert bus.retried_by == {("g", "PROBE"): 2}
    assert bus.dead_lettered_by == {("g", "PROBE"): 1}


@pytest.mark.anyio
async def test_a_runtime_logs_each_nodes_lifecycle_and_a_summary_of_its_work(
    json_lines: io.StringIO, tmp_path: Path
) -> None:
    (tmp_path / "a.py").write_text("print('a')\n")
    async with Harness() as h:
        sent = await h.publish("STAMP_REQUESTED", {"file_path": str(tmp_path / "a.py"), "namespace": "ns"})
        await h.wait_for("WORKFLOW_COMPLETED", lambda e: e.correlation_id == sent.correlation_id)
        await h.settle()
        last: dict[str, tuple[int, int]] = {}
        h.runtime.log_summary(last, 1.0)
        once = json_lines.getvalue().count('"summary"')
        h.runtime.log_summary(last, 1.0)  # nothing happened since: no line
        assert json_lines.getvalue().count('"summary"') == once
    lines = parsed(json_lines)
    nodes = {n.node_id for n in h.runtime.nodes}
    for name in ("start", "ready", "draining", "stopped"):
        assert {line["node"] for line in lines if line["event"] == name} == nodes, name
    summaries = {line["node"]: line for line in lines if line["event"] == "summary"}
    orchestrator = next(n.node_id for n in h.runtime.nodes if n.contract.name == "orchestrator")
    assert cast(int, summaries[orchestrator]["handled"]) >= 2  # the request and the stamp's result
    for line in summaries.values():
        assert {"handled_per_s", "failed", "retried", "dead_lettered", "in_flight", "consumer_lag"} <= line.keys()
