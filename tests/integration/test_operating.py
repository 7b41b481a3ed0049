"""The operator's view of a real deployment: five ``onex run --node NAME --metrics HOST:PORT`` processes on the
tansu broker and PostgreSQL, with JSON logs. ``onex stamp`` submits a few files; then every process's ``/healthz``
and ``/readyz`` answer 200, its ``/metrics`` (parsed with prometheus_client's parser) counts exactly what was sent,
``onex ps -o json`` lists every node and ``onex workflows -o json`` every workflow; threshold+1 malformed records
raise the orchestrator's dead-letter alert (an ERROR line, the metric, DEGRADED in /readyz and ``onex ps``); and
its stderr is JSON lines with the required keys and the lifecycle events, through SIGTERM."""

from __future__ import annotations

import json
import os
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import anyio
import httpx
import pytest
from aiokafka import AIOKafkaProducer
from onex.envelope import topic_name
from prometheus_client.parser import text_string_to_metric_families

from tests.fixtures.deployment import NODES, Deployment, NodeProcess, onex_command, upgrade_schema
from tests.fixtures.postgres import free_port

pytestmark = [pytest.mark.kafka, pytest.mark.postgres, pytest.mark.slow, pytest.mark.anyio]

FILES = 5
DEADLINE_S = 60.0
REQUIRED = {"ts", "level", "logger", "node", "event", "message"}
ALERT_THRESHOLD = 2
# As tests/integration/test_kafka_deployment.py: a killed member leaves fast, fetches do not idle 250 ms a hop.
CONSUMER_QUERY = "session_timeout_ms=2000&heartbeat_interval_ms=200&fetch_max_wait_ms=10"


@pytest.fixture
def deployment(kafka_bootstrap: str, postgres_dsn: str, tmp_path: Path) -> Iterator[Deployment]:
    upgrade_schema(postgres_dsn)
    env = {
        "ONEX_ENV": f"op{uuid.uuid4().hex[:8]}",
        "ONEX_HEARTBEAT_INTERVAL_S": "0.5",
        "ONEX_STAMP_ROOTS": str(tmp_path),
        "ONEX_LOG_FORMAT": "json",
        "ONEX_LOG_SUMMARY_S": "0.5",
        "ONEX_DLQ_ALERT_THRESHOLD": str(ALERT_THRESHOLD),
    }
    with Deployment(
        bus_url=f"kafka://{kafka_bootstrap}?{CONSUMER_QUERY}", store_url=postgres_dsn, logs=tmp_path / "logs", env=env
    ) as deployment:
        yield deployment


def json_lines(proc: NodeProcess) -> list[dict[str, object]]:
    """The process's JSON log lines (the startup table and the ``running`` line are for people, not parsed)."""
    lines = [json.loads(line) for line in proc.output(last=1 << 24).splitlines() if line.startswith("{")]
    for line in lines:
        assert line.keys() >= REQUIRED, line
    return lines


def sample(text: str, name: str, **labels: str) -> float:
    """The value of ``name``'s sample with exactly ``labels`` (0 when there is none)."""
    for family in text_string_to_metric_families(text):
        for found in family.samples:
            if found.name == name and found.labels == labels:
                return found.value
    return 0.0


def counter(text: str, name: str, node: str, event_type: str) -> float:
    return sample(text, name, node=node, event_type=event_type)


async def eventually(check: Callable[[], object], what: str) -> None:
    """Wait (polling, with a generous deadline) until ``check()`` is true."""
    deadline = time.monotonic() + DEADLINE_S
    while not await check():  # type: ignore[misc]
        assert time.monotonic() < deadline, f"not {what} after {DEADLINE_S:g} s"
        await anyio.sleep(0.1)


async def test_every_process_serves_probes_and_metrics_and_logs_json_lines(
    deployment: Deployment, kafka_bootstrap: str, postgres_dsn: str, tmp_path: Path
) -> None:
    addresses: dict[str, str] = {}
    procs = []
    for node in NODES:
        addresses[node] = f"127.0.0.1:{free_port()}"
        deployment.env = {**deployment.env, "ONEX_METRICS": addresses[node]}
        procs.append(deployment.spawn(node))
    await deployment.wait_running(procs)

    # A connection idle for uvicorn's keep-alive timeout (5 s, as long as `onex stamp` below may take) is closed by the
    # server; httpx keeps one for 5 s too, and reusing it as it closes fails the request (httpx.ReadError).
    async with httpx.AsyncClient(timeout=10, limits=httpx.Limits(keepalive_expiry=1.0)) as http:

        async def all_ready() -> bool:
            answers = [await http.get(f"http://{addresses[node]}/readyz") for node in NODES]
            return all(a.status_code == 200 for a in answers)

        for node in NODES:
            assert (await http.get(f"http://{addresses[node]}/healthz")).status_code == 200
        await eventually(all_ready, "ready")

        paths = []
        for i in range(FILES):
            (path := tmp_path / f"f{i}.py").write_text(f"print({i})\n")
            paths.append(str(path))
        with anyio.fail_after(DEADLINE_S + 30):
            stamp = await anyio.run_process(
                [*onex_command(), "stamp", *paths, "--bus", deployment.bus_url, "--timeout", str(DEADLINE_S)],
                check=False,
                env={**_base_env(), **deployment.env, "ONEX_STORE": postgres_dsn},
            )
        assert stamp.returncode == 0, (stamp.stdout + stamp.stderr).decode(errors="replace") + deployment.logs_tail()

        expected = {
            ("orchestrator", "STAMP_REQUESTED"): FILES,
            ("stamping_effect", "STAMP_FILE"): FILES,
            ("reducer", "WORKFLOW_COMPLETED"): FILES,
            ("database_adapter_effect", "WORKFLOW_COMPLETED"): FILES,
        }
        scraped: dict[str, str] = {}

        async def counted() -> bool:
            for node in {node for node, _ in expected}:
                scraped[node] = (await http.get(f"http://{addresses[node]}/metrics")).text
            return all(
                counter(scraped[node], "onex_events_handled_total", node, t) == n for (node, t), n in expected.items()
            )

        await eventually(counted, f"counting {expected}")
        for (node, event_type), _ in expected.items():
            assert counter(scraped[node], "onex_events_failed_total", node, event_type) == 0
            assert counter(scraped[node], "onex_handler_duration_seconds_count", node, event_type) >= 1
        lag = [
            s
            for family in text_string_to_metric_families(scraped["orchestrator"])
            for s in family.samples
            if s.name == "onex_consumer_lag"
        ]
        assert lag, "no consumer lag per partition on Kafka"
        assert {s.labels["partition"] for s in lag} >= {"0"}
        assert "process_cpu_seconds_total" in scraped["orchestrator"]
        assert (
            sample(scraped["stamping_effect"], "onex_blake3_hash_duration_seconds_count", node="stamping_effect")
            == FILES
        )
        assert sample(scraped["database_adapter_effect"], "onex_store_batch_rows_count") >= 1

        env = {**_base_env(), **deployment.env, "ONEX_STORE": postgres_dsn}
        listed = await anyio.run_process([*onex_command(), "workflows", "-o", "json"], env=env)
        workflows = json.loads(listed.stdout)
        assert sorted(w["file_path"] for w in workflows) == sorted(paths)
        assert {w["state"] for w in workflows} == {"completed"}

        async def all_listed() -> bool:
            ps = await anyio.run_process([*onex_command(), "ps", "-o", "json"], env=env)
            nodes = {row["node_id"]: row for row in json.loads(ps.stdout)}
            return all(nodes.get(proc.node_id, {}).get("health") == "HEALTHY" for proc in procs)

        await eventually(all_listed, "every node HEALTHY in onex ps")

        # threshold + 1 records the orchestrator cannot read: its dead-letter alert rises.
        orchestrator = deployment.processes["orchestrator"]
        topic = topic_name("STAMP_REQUESTED", env=deployment.env["ONEX_ENV"], cls="cmd")
        producer = AIOKafkaProducer(bootstrap_servers=kafka_bootstrap, acks="all")
        await producer.start()
        try:
            for i in range(ALERT_THRESHOLD + 1):
                await producer.send_and_wait(topic, value=b"not json %d" % i, key=b"poison")
        finally:
            await producer.stop()

        async def alerted() -> bool:
            text = (await http.get(f"http://{addresses['orchestrator']}/metrics")).text
            return sample(text, "onex_dead_letter_alert", node="orchestrator") == 1

        await eventually(alerted, "alerting")
        text = (await http.get(f"http://{addresses['orchestrator']}/metrics")).text
        undecodable = {"node": "orchestrator", "event_type": "UNDECODABLE"}
        assert sample(text, "onex_events_dead_lettered_total", **undecodable) == ALERT_THRESHOLD + 1
        ready = await http.get(f"http://{addresses['orchestrator']}/readyz")
        assert ready.status_code == 200
        assert ready.text.startswith(f"ready (degraded: {orchestrator.node_id}: more than {ALERT_THRESHOLD} dead")

        async def degraded() -> bool:
            ps = await anyio.run_process([*onex_command(), "ps", "-o", "json"], env=env)
            return {r["node_id"]: r["health"] for r in json.loads(ps.stdout)}.get(orchestrator.node_id) == "DEGRADED"

        await eventually(degraded, "the orchestrator DEGRADED in onex ps")

    assert set((await deployment.stop()).values()) == {0}
    alerts = [line for line in json_lines(orchestrator) if line["event"] == "dlq_alert"]
    assert len(alerts) == 1, alerts
    assert alerts[0]["level"] == "error"
    assert alerts[0]["node"] == orchestrator.node_id
    for proc in procs:
        events = [line["event"] for line in json_lines(proc) if line["node"] == proc.node_id]
        for name in ("start", "ready", "draining", "stopped"):
            assert name in events, f"{proc.node}: no {name} line in {events}"
        assert any(line["event"] == "partitions_assigned" for line in json_lines(proc)), proc.node
    summaries = [line for line in json_lines(deployment.processes["orchestrator"]) if line["event"] == "summary"]
    assert summaries, "the orchestrator worked but logged no summary"
    assert {"handled_per_s", "failed", "retried", "dead_lettered", "in_flight", "consumer_lag"} <= summaries[-1].keys()


def _base_env() -> dict[str, str]:
    """This environment without the caller's ONEX_* variables: the child's settings are exactly the test's."""
    return {k: v for k, v in os.environ.items() if not k.startswith("ONEX_")}
