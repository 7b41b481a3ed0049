"""Malformed records on a Kafka topic a node consumes: each is dead-lettered with its error, and the node moves on.

An orchestrator is hosted on a ``KafkaBus`` (``Runtime(nodes=["orchestrator"])``). A raw aiokafka producer, as any
other client of the broker might, writes to the STAMP_REQUESTED topic one malformed record, then a good request
with the same key (so on the same partition, behind it). Whatever was wrong with the first, it must end in
``<topic>.dlq`` as a ``DEAD_LETTER`` envelope saying what was wrong (and naming the event id when there was an
envelope), and the good request must still start its workflow (its STAMP_FILE command goes out): a poison record does
not block its partition.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import anyio
import pytest
from aiokafka import AIOKafkaProducer
from onex._kafka import KafkaBus
from onex.envelope import DEAD_LETTER_EVENT, OnexEnvelopeV1, dlq_topic, topic_name
from onex.runtime import Runtime
from onex.settings import Settings

from tests.fixtures.kafka import TEST_CONSUMER_OPTIONS

pytestmark = [pytest.mark.kafka, pytest.mark.anyio]

ROOT = Path(__file__).resolve().parents[2]
KEY = b"one-partition"


@dataclass
class Orchestrator:
    """An orchestrator hosted on Kafka, and what the test sees of its output topics."""

    bootstrap: str
    request_topic: str
    namespace: str
    dead_letters: list[OnexEnvelopeV1]
    started: list[OnexEnvelopeV1]
    changed: anyio.Event

    async def produce(self, value: bytes) -> int:
        """Write ``value`` raw to the request topic under KEY; its offset."""
        producer = AIOKafkaProducer(bootstrap_servers=self.bootstrap, acks="all")
        await producer.start()
        try:
            metadata = await producer.send_and_wait(self.request_topic, value=value, key=KEY)
        finally:
            await producer.stop()
        return int(metadata.offset)

    async def until(self, condition: Callable[[], bool], seconds: float = 30.0) -> None:
        with anyio.fail_after(seconds):
            while not condition():
                self.changed = anyio.Event()
                await self.changed.wait()


@pytest.fixture(scope="module")
def anyio_backend() -> str:
    return "asyncio"  # module scope, so that one orchestrator serves every case here


@pytest.fixture(scope="module")
async def orchestrator(kafka_bootstrap: str, tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Orchestrator]:
    env = f"bad{uuid.uuid4().hex[:8]}"
    store = tmp_path_factory.mktemp("malformed") / "onex.db"
    settings = Settings(root=ROOT, env=env, store=f"sqlite:///{store}", heartbeat_interval_s=0)
    request_topic = topic_name("STAMP_REQUESTED", env=env, cls="cmd")
    view = Orchestrator(kafka_bootstrap, request_topic, f"onex.test.{env}", [], [], anyio.Event())

    async def watch(envelope: OnexEnvelopeV1) -> None:
        (view.dead_letters if envelope.event_type == DEAD_LETTER_EVENT else view.started).append(envelope)
        view.changed.set()

    async with KafkaBus(kafka_bootstrap, consumer_options=TEST_CONSUMER_OPTIONS) as bus:
        watched = [dlq_topic(request_topic), topic_name("STAMP_FILE", env=env, cls="cmd")]
        await bus.ensure_topics([request_topic, *watched])
        await bus.subscribe(watched, f"{env}.test-watch", handler=watch)
        async with Runtime(settings, nodes=["orchestrator"], bus=bus):
            yield view


def request(namespace: str, **overrides: Any) -> OnexEnvelopeV1:
    fields: dict[str, Any] = {
        "event_type": "STAMP_REQUESTED",
        "source_node_id": "test-raw-producer",
        "correlation_id": uuid.uuid4(),
        "payload": {"content": "hello\n", "file_path": "hello.txt", "namespace": namespace},
    }
    return OnexEnvelopeV1(**{**fields, **overrides})


@dataclass(frozen=True)
class Malformed:
    """A malformed record, and what its dead letter must say."""

    make: Callable[[str], bytes | OnexEnvelopeV1]
    error_type: str
    error_mentions: str


CASES = {
    "not JSON": Malformed(lambda ns: b"{this is not JSON", "ValidationError", "Invalid JSON"),
    "JSON, not an envelope": Malformed(
        lambda ns: json.dumps({"hello": "world"}).encode(), "ValidationError", "event_type"
    ),
    "payload fails the schema": Malformed(
        lambda ns: request(ns, payload={"namespace": ns, "stamp_type": "gold"}), "PayloadError", "stamp_type"
    ),
    "unknown event type": Malformed(
        lambda ns: request(ns, event_type="STAMP_EXPLODED", payload={"boom": True}), "PayloadError", "STAMP_EXPLODED"
    ),
}


@pytest.mark.parametrize("case", list(CASES))
async def test_a_malformed_request_is_dead_lettered_with_its_error_and_the_next_one_is_handled(
    orchestrator: Orchestrator, case: str
) -> None:
    malformed = CASES[case].make(orchestrator.namespace)
    good = request(orchestrator.namespace)

    raw = malformed if isinstance(malformed, bytes) else malformed.to_json()
    offset = await orchestrator.produce(raw)
    await orchestrator.produce(good.to_json())

    def about_it(letter: OnexEnvelopeV1) -> bool:
        if isinstance(malformed, OnexEnvelopeV1):
            return letter.causation_id == malformed.event_id
        original_offset: object = letter.payload.get("original_offset")
        return original_offset == offset

    # The good request, behind the malformed one on the same partition, starts its workflow...
    await orchestrator.until(lambda: any(e.correlation_id == good.correlation_id for e in orchestrator.started))
    # ...and the malformed one is in <topic>.dlq (published before the good request was committed), saying what was
    # wrong with it.
    await orchestrator.until(lambda: any(about_it(e) for e in orchestrator.dead_letters), seconds=5)
    [letter] = [e for e in orchestrator.dead_letters if about_it(e)]
    payload = letter.payload
    assert payload["original_topic"] == orchestrator.request_topic
    assert payload["error_type"] == CASES[case].error_type
    assert CASES[case].error_mentions in payload["error"]
    if isinstance(malformed, OnexEnvelopeV1):
        # An envelope: carried whole, and named by its event id.
        assert letter.correlation_id == malformed.correlation_id
        assert payload["original"] == malformed.model_dump(mode="json")
        assert payload["attempts"] == 1  # a bad payload is not retried: no retry can fix it
    else:
        # Not an envelope: the raw value, where it was, and no attempt at handling it.
        assert payload["original_raw"] == malformed.decode()
        assert payload["original_raw_encoding"] == "utf-8"
        assert payload["original_key"] == KEY.decode()
        assert payload["attempts"] == 0
