"""Cross-process cache invalidation of the metastore on Kafka: two gateways, each the real CLI (``onex run --http
127.0.0.1:PORT --no-nodes --bus kafka://... --store postgresql://...``) in a process of its own, on a tansu broker
and one PostgreSQL schema.

Gateway B evaluates a flag (and so caches it, compiled); the flag is changed through gateway A; B answers with the
new result once it heard A's FLAG_CHANGED on the broker. The poll's deadline (``DEADLINE_S``) is generous for a
loaded machine but well below the cache's TTL (``flag_cache_ttl_s`` in contracts/effects/metastore_effect.yaml, 30
s), so only the event can have told B: the cached flag would otherwise be served until the TTL. The measured time is
printed (``-s``); the issue asks for under a second. SIGTERM then drains both gateways to exit 0.
"""

from __future__ import annotations

import os
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import anyio
import httpx
import pytest
import yaml

from tests.fixtures.deployment import onex_command, spawn_onex, upgrade_schema
from tests.integration.test_gateway_no_nodes import free_ports
from tests.integration.test_http_kafka import (
    CONSUMER_QUERY,
    GatewayProcess,
    isolated_env,
    killed_on_exit,
    sigterm_exits_0,
    wait_ready,
)

pytestmark = [pytest.mark.kafka, pytest.mark.slow, pytest.mark.anyio]

ROOT = Path(__file__).resolve().parents[2]
DEADLINE_S = 10.0
FLAGS = "/api/v1/feature-flags"


def clean_env() -> dict[str, str]:
    """This process's environment without its ONEX_* settings (the child's are the test's)."""
    return {k: v for k, v in os.environ.items() if not k.startswith("ONEX_")}


def cache_ttl_s() -> float:
    contract = yaml.safe_load((ROOT / "contracts" / "effects" / "metastore_effect.yaml").read_text())
    return float(contract["config"]["flag_cache_ttl_s"])


def data(response: httpx.Response, status: int = 200) -> Any:
    assert response.status_code == status, response.text
    body = response.json()
    assert (body["status"], body["error"]) == ("success", None), body
    return body["data"]


async def evaluated_until(
    api: httpx.AsyncClient, ask: dict[str, Any], done: Callable[[dict[str, Any]], bool]
) -> tuple[dict[str, Any], float]:
    """Evaluate ``ask`` through ``api`` back to back until ``done(answer)``: the answer and the seconds it took.
    No pause between requests: each awaits the other process, and the gap between them bounds the measurement."""
    started = time.monotonic()
    while not done(answer := data(await api.post(f"{FLAGS}/evaluate", json=ask))):
        assert time.monotonic() - started < DEADLINE_S, f"still answering {answer} after {DEADLINE_S:g} s"
    return answer, time.monotonic() - started


@pytest.mark.timeout(240)
async def test_a_flag_changed_through_one_gateway_is_evaluated_anew_by_the_other(
    kafka_bootstrap: str, postgres_dsn: str, tmp_path: Path
) -> None:
    assert cache_ttl_s() > DEADLINE_S, "a deadline past the TTL would pass without any invalidation"
    upgrade_schema(postgres_dsn)
    env = isolated_env()
    bus_url = f"kafka://{kafka_bootstrap}?{CONSUMER_QUERY}"
    gateways = []
    for name, port in zip(("a", "b"), free_ports(2), strict=True):
        command = ["run", "--http", f"127.0.0.1:{port}", "--no-nodes", "--bus", bus_url, "--store", postgres_dsn]
        log = tmp_path / f"gateway-{name}.log"
        process = spawn_onex(command, env={**env, "ONEX_INSTANCE": f"gateway-{name}", "COLUMNS": "300"}, log=log)
        gateways.append(GatewayProcess(port, process, log))
    with killed_on_exit(gateways[0]) as a_process, killed_on_exit(gateways[1]) as b_process:
        # Announced once each gateway's metastore has its partitions: from here on it hears every change.
        await wait_ready(a_process)
        await wait_ready(b_process)
        root_a, root_b = (f"http://127.0.0.1:{g.port}" for g in (a_process, b_process))
        tenant = {"x-tenant-id": f"t{uuid.uuid4().hex[:8]}"}
        async with (
            httpx.AsyncClient(base_url=root_a, timeout=30, headers=tenant) as a,
            httpx.AsyncClient(base_url=root_b, timeout=30, headers=tenant) as b,
        ):
            try:
                assert data(await b.get("/health/ready")) == {"status": "ready"}
                body = {"name": "new-checkout", "default_value": "old", "variants": {"on": "new"}}
                flag = data(await a.post(FLAGS, json=body), 201)
                ask = {"flag": "new-checkout", "context": {"user_id": "u1"}}
                for _ in range(2):  # cached by B, compiled, from the first
                    cached = data(await b.post(f"{FLAGS}/evaluate", json=ask))
                    assert (cached["value"], cached["reason"]) == ("old", "DISABLED")
                cached_at = time.monotonic()

                rule = {"conditions": ["user_id equals u1"], "variant": "on"}
                changed = await a.put(f"{FLAGS}/{flag['id']}", json={"enabled": True, "rules": [rule]})
                assert data(changed)["version"] == 2
                seen, measured = await evaluated_until(b, ask, lambda answer: answer["reason"] != "DISABLED")
                assert (seen["value"], seen["variant"], seen["reason"]) == ("new", "on", "TARGETING_MATCH")
                assert time.monotonic() - cached_at < cache_ttl_s()  # so the TTL did not drop it
                print(f"\ngateway B evaluated the change made through gateway A after {measured * 1000:.0f} ms")

                # And B's changes reach A the same way (A has the flag cached now, too).
                assert data(await a.post(f"{FLAGS}/evaluate", json=ask))["reason"] == "TARGETING_MATCH"
                data(await b.post(f"{FLAGS}/{flag['id']}/disable", headers={"if-match": '"2"'}))
                _, back = await evaluated_until(a, ask, lambda answer: answer["reason"] == "DISABLED")
                print(f"gateway A evaluated the change made through gateway B after {back * 1000:.0f} ms")

                # The CLI writes to the same store and announces its change on the same broker.
                cli = await anyio.run_process(
                    [*onex_command(), "meta", "set", "motd", '"hi"', "--tenant", tenant["x-tenant-id"],
                     "--bus", bus_url, "--store", postgres_dsn],
                    env={**clean_env(), **env}, check=False,
                )  # fmt: skip
                assert cli.returncode == 0, cli.stderr.decode()
                assert cli.stderr == b"", cli.stderr.decode()  # a change event that failed to go out is logged there
                assert cli.stdout.decode().startswith("created default/motd"), cli.stdout
                assert data(await b.get("/api/v1/metadata/key/motd"))["value"] == "hi"
            except AssertionError as exc:  # the processes' own account goes with the failure
                raise AssertionError(f"{exc}\n{a_process.output()[-3000:]}\n{b_process.output()[-3000:]}") from exc
        await sigterm_exits_0(a_process)
        await sigterm_exits_0(b_process)
