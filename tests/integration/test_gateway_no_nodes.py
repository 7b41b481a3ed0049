"""A gateway hosting no node: ``onex run --http 127.0.0.1:PORT --no-nodes`` on a tansu broker, in a process of its
own, while four ``onex run --node NAME`` processes (``Deployment``) run the workflows on a shared PostgreSQL schema.

The gateway submits each stamp request to the broker and hears its outcome from there: nothing in its process could
run the workflow. Checked: POST /stamp answers with the stamped content for both stamp types and the records are
stored; /health lists no hosted node and is ok; /health/ready and the metrics port's /readyz are 200; each request
leaves one JSON ``access`` line carrying the id the response was given; SIGTERM drains every process to exit 0.
"""

from __future__ import annotations

import json
import re
import socket
import time
import uuid
from pathlib import Path
from typing import Any

import anyio
import httpx
import pytest
from onex.http import PREFIX

from tests.fixtures.deployment import Deployment, spawn_onex, upgrade_schema
from tests.fixtures.faults import RestartableBroker
from tests.fixtures.http import served_url
from tests.integration.test_http_kafka import (
    CONSUMER_QUERY,
    WORKFLOW_NODES,
    GatewayProcess,
    check_stored,
    isolated_env,
    killed_on_exit,
    sigterm_exits_0,
    stamp_both_types,
    success,
    wait_ready,
)

pytestmark = [pytest.mark.kafka, pytest.mark.slow, pytest.mark.anyio]


def free_ports(count: int) -> list[int]:
    """``count`` distinct free loopback ports (held open together while chosen, so they differ)."""
    socks = [socket.socket(socket.AF_INET, socket.SOCK_STREAM) for _ in range(count)]
    try:
        for sock in socks:
            sock.bind(("127.0.0.1", 0))
        return [int(sock.getsockname()[1]) for sock in socks]
    finally:
        for sock in socks:
            sock.close()


def access_lines(log: Path) -> list[dict[str, Any]]:
    """The gateway's JSON ``access`` lines (its stderr also holds the CLI's plain banner lines)."""
    lines = [json.loads(line) for line in log.read_text().splitlines() if line.startswith("{")]
    return [line for line in lines if line["event"] == "access"]


@pytest.mark.timeout(240)
async def test_a_gateway_hosting_no_node_answers_stamps_run_by_the_node_processes(
    kafka_bootstrap: str, postgres_dsn: str, tmp_path: Path
) -> None:
    upgrade_schema(postgres_dsn)
    env = isolated_env()
    namespace = f"onex.nonodes.{env['ONEX_ENV']}"
    bus_url = f"kafka://{kafka_bootstrap}?{CONSUMER_QUERY}"
    node_env = {k: v for k, v in env.items() if k != "ONEX_INSTANCE"}  # Deployment names each instance itself
    with Deployment(bus_url=bus_url, store_url=postgres_dsn, logs=tmp_path / "logs", env=node_env) as deployment:
        nodes = [deployment.spawn(node) for node in WORKFLOW_NODES]
        port, metrics_port = free_ports(2)
        log = tmp_path / "gw.log"
        command = ["run", "--http", f"127.0.0.1:{port}", "--no-nodes", "--metrics", f"127.0.0.1:{metrics_port}"]
        # ONEX_HTTP_TIMEOUT_S: five processes and the broker share two cores here (see test_http_kafka.py).
        gateway_env = {**env, "COLUMNS": "300", "ONEX_LOG_FORMAT": "json", "ONEX_HTTP_TIMEOUT_S": "90"}
        process = spawn_onex(
            [*command, "--bus", bus_url, "--store", postgres_dsn], env=gateway_env, log=log
        )  # fmt: skip
        with killed_on_exit(GatewayProcess(port, process, log)) as gateway:
            await wait_ready(gateway)
            await deployment.wait_running(nodes)
            assert "HTTP gateway only, hosting no node" in log.read_text()
            async with httpx.AsyncClient(base_url=gateway.url, timeout=120) as api:
                try:
                    health = success(await api.get("/health"))
                    assert health["nodes"] == [], health
                    assert health["status"] == "ok", health
                    assert health["bus"] == {"status": "ok", "state": "running", "kind": "kafka"}
                    assert success(await api.get("/health/ready")) == {"status": "ready"}
                    assert success(await api.get("/health/live")) == {"status": "live"}
                    async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{metrics_port}") as probes:
                        assert (await probes.get("/readyz")).text == "ready\n"
                        assert (await probes.get("/healthz")).status_code == 200

                    request_id = f"no-nodes-{uuid.uuid4().hex[:8]}"
                    stamped = await stamp_both_types(api, namespace)
                    traced = await api.post(
                        "/stamp",
                        json={"content": f"traced = 1\n# {uuid.uuid4()}\n", "namespace": namespace},
                        headers={"x-request-id": request_id},
                    )
                    assert success(traced)["state"] == "completed"
                    assert traced.headers["x-request-id"] == request_id
                    await check_stored(api, stamped)
                except AssertionError as exc:  # the processes' own account goes with the failure
                    raise AssertionError(f"{exc}\n{deployment.logs_tail()}\n{log.read_text()[-4000:]}") from exc

            # The access line is written once the response is sent: poll for it briefly.
            deadline = time.monotonic() + 10
            while not any(line["request_id"] == request_id for line in access_lines(log)):
                assert time.monotonic() < deadline, log.read_text()[-4000:]
                await anyio.sleep(0.05)
            (line,) = [line for line in access_lines(log) if line["request_id"] == request_id]
            assert (line["method"], line["path"], line["status"]) == ("POST", f"{PREFIX}/stamp", 200)
            assert (line["level"], line["logger"], line["node"]) == ("info", "onex.http", None)
            assert line["duration_ms"] > 0
            stamps = [line for line in access_lines(log) if line["path"] == f"{PREFIX}/stamp"]
            assert len(stamps) == 3, stamps  # one line per request
            assert all(re.fullmatch(r"[0-9a-f]{32}|no-nodes-[0-9a-f]{8}", s["request_id"]) for s in stamps)

            # The gateway goes first, as a load balancer would take it out; the nodes then drain and stop.
            await sigterm_exits_0(gateway)
            codes = await deployment.stop(timeout=60)
            assert codes == dict.fromkeys(WORKFLOW_NODES, 0), deployment.logs_tail()


@pytest.mark.timeout(180)
def test_a_gateway_whose_broker_is_gone_is_unready_and_does_not_promise_the_workflow_runs(tmp_path: Path) -> None:
    """A running bus whose broker is gone only queues what it publishes: /health/ready says so (a load balancer stops
    sending), and a request that times out is 503 bus_unavailable, not 504 "it keeps running"."""
    store = f"sqlite:///{tmp_path}/onex.db"
    upgrade_schema(store)
    with RestartableBroker() as broker:
        log = tmp_path / "gateway.log"
        command = [
            "run",
            "--http",
            "127.0.0.1:0",
            "--no-nodes",
            "--bus",
            f"kafka://{broker.bootstrap}",
            "--store",
            store,
        ]
        settings = {"ONEX_API_KEY": "k", "ONEX_HTTP_TIMEOUT_S": "2", "COLUMNS": "300"}
        proc = spawn_onex(command, env=settings, log=log)
        try:
            url = served_url(proc, log)
            with httpx.Client(base_url=url + PREFIX, headers={"Authorization": "Bearer k"}, timeout=30) as c:
                assert c.get("/health/ready").status_code == 200, c.get("/health/ready").text

                broker.kill()
                unready = c.get("/health/ready")
                refused = c.post("/stamp", json={"content": "a\n", "file_path": "a.txt"})
                health = c.get("/health").json()["data"]
        finally:
            proc.kill()
            proc.wait()

    assert unready.status_code == 503
    assert "bus unreachable: no Kafka broker answers" in unready.json()["message"]
    assert refused.status_code == 503, refused.text
    body = refused.json()
    assert body["error"]["code"] == "bus_unavailable"
    assert "may not have reached any node" in body["message"]
    assert uuid.UUID(body["data"]["workflow_id"])
    assert refused.headers["retry-after"] == "5"
    assert (health["bus"]["status"], health["bus"]["state"]) == ("down", "running")
