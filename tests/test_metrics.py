"""``onex.metrics``: /healthz, /readyz and Prometheus /metrics of a hosting runtime (memory bus, SQLite), read
through the app and parsed with prometheus_client's own parser."""

from __future__ import annotations

import uuid
from collections.abc import Callable, Sequence
from pathlib import Path

import httpx
import pytest
import yaml
from onex.clock import ManualClock
from onex.contracts import Contract, ContractSet, load_contract
from onex.envelope import OnexEnvelopeV1
from onex.metrics import DeadLetterAlert, NodeMeter, create_app, readiness
from onex.nodes import EffectNode
from onex.testing import Harness
from prometheus_client.parser import text_string_to_metric_families

pytestmark = pytest.mark.anyio

ROOT = Path(__file__).resolve().parents[1]


def samples(text: str, name: str) -> dict[tuple[tuple[str, str], ...], float]:
    """``name``'s samples by their sorted labels."""
    found: dict[tuple[tuple[str, str], ...], float] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == name:
                found[tuple(sorted(sample.labels.items()))] = sample.value
    return found


def client_of(h: Harness) -> httpx.AsyncClient:
    return httpx.AsyncClient(transport=httpx.ASGITransport(app=create_app(h.runtime)), base_url="http://onex")


def of_workflow(cid: uuid.UUID | None) -> Callable[[OnexEnvelopeV1], bool]:
    """A ``wait_for`` predicate: an event of the workflow ``cid``."""
    return lambda e: e.correlation_id == cid


async def stamp(h: Harness, paths: Sequence[Path]) -> list[uuid.UUID]:
    cids = []
    for path in paths:
        sent = await h.publish("STAMP_REQUESTED", {"file_path": str(path), "namespace": "ns"})
        assert sent.correlation_id is not None
        cids.append(sent.correlation_id)
    for cid in cids:
        await h.wait_for("WORKFLOW_COMPLETED", of_workflow(cid))
    await h.settle()
    return cids


def test_a_meter_counts_per_event_type_and_files_durations_in_buckets() -> None:
    meter = NodeMeter()
    meter.handled("A", 10, 0.0001)
    meter.handled("A", 1, 100.0)
    meter.failed("B", 2, 0.002)
    assert meter.totals() == (11, 2)
    a = meter.tallies["A"].durations
    assert (a.count, a.counts[0], a.counts[-1]) == (2, 1, 1)


def test_the_dead_letter_alert_rises_above_the_threshold_within_the_window_and_clears_when_it_empties() -> None:
    now = [1000.0]
    alert = DeadLetterAlert(threshold=2, window_s=300, clock=lambda: now[0])
    assert [alert.record() for _ in range(2)] == [False, False]
    assert not alert.raised()
    now[0] += 299
    assert alert.record() is True  # the third within 300 s: above the threshold
    assert alert.raised()
    assert alert.record() is False  # raised once, not again for every further letter
    now[0] += 2  # the first two fell out of the window; two remain
    assert not alert.raised()
    assert alert.record() is True  # three in the window again
    now[0] += 301
    assert not alert.raised()


async def test_metrics_count_what_was_handled_per_node_and_event_type(tmp_path: Path) -> None:
    files = []
    for i in range(3):
        (path := tmp_path / f"f{i}.py").write_text(f"print({i})\n")
        files.append(path)
    async with Harness() as h, client_of(h) as client:
        await stamp(h, files)
        response = await client.get("/metrics")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/plain")
    handled = samples(response.text, "onex_events_handled_total")
    assert handled[(("event_type", "STAMP_REQUESTED"), ("node", "orchestrator"))] == 3
    assert handled[(("event_type", "STAMP_FILE"), ("node", "stamping_effect"))] == 3
    assert (
        samples(response.text, "onex_events_failed_total")[
            (("event_type", "STAMP_REQUESTED"), ("node", "orchestrator"))
        ]
        == 0
    )
    durations = samples(response.text, "onex_handler_duration_seconds_count")
    assert durations[(("event_type", "STAMP_FILE"), ("node", "stamping_effect"))] >= 1
    assert samples(response.text, "onex_in_flight_workflows")[(("node", "orchestrator"),)] == 0
    assert (("node", "stamping_effect"),) in samples(response.text, "onex_circuit_breaker_open")
    assert samples(response.text, "process_resident_memory_bytes")  # the process collector is registered
    hashes = samples(response.text, "onex_blake3_hash_duration_seconds_count")
    assert hashes == {(("node", "stamping_effect"),): 3}
    batches = samples(response.text, "onex_store_batch_rows_count")[()]
    rows = samples(response.text, "onex_store_batch_rows_sum")[()]
    assert batches >= 1
    assert rows >= 3 * 2  # at least a workflow row and a stamp row for each file were committed
    assert samples(response.text, "onex_store_commit_duration_seconds_count")[()] == batches


async def test_readyz_is_503_while_starting_200_while_running_and_503_while_draining() -> None:
    h = Harness(["registry"])
    async with client_of(h) as client:
        before = await client.get("/readyz")
        async with h:
            assert (await client.get("/healthz")).status_code == 200
            running = await client.get("/readyz")
            await h.runtime.drain()
            draining = await client.get("/readyz")
    assert (before.status_code, before.text) == (503, "not ready: starting\n")
    assert (running.status_code, running.text) == (200, "ready\n")
    assert (draining.status_code, draining.text) == (503, "not ready: draining\n")


async def test_an_open_breaker_of_a_consumed_events_own_makes_the_node_unready_and_shows_in_the_gauge() -> None:
    shipped = load_contract(ROOT / "contracts" / "effects" / "stamping_effect.yaml", root=ROOT)
    data = shipped.model_dump(exclude_unset=True)
    [stamp_file] = data["subcontracts"]["event_type"]["consumes"]
    stamp_file["resilience"] = {"circuit_breaker": {"failure_threshold": 1, "reset_timeout_ms": 60_000}}
    contracts = ContractSet(root=ROOT, contracts=[Contract.model_validate(data)])
    async with Harness(["stamping_effect"], root=ROOT, contracts=contracts, clock=ManualClock()) as h:
        effect = h.runtime.node("stamping_effect")
        assert isinstance(effect, EffectNode)
        async with client_of(h) as client:
            closed = (await client.get("/readyz")).status_code, await client.get("/metrics")
            effect.breaker_for("STAMP_FILE").record_failure()  # STAMP_FILE's own breaker opens; the node's stays closed
            ready, metrics = await client.get("/readyz"), await client.get("/metrics")
            health = effect.health()

    assert effect.breakers() == [effect.breaker, effect.breaker_for("STAMP_FILE")]
    assert effect.breaker.state == "closed"
    assert health == "DEGRADED"
    assert closed[0] == 200
    assert samples(closed[1].text, "onex_circuit_breaker_open") == {(("node", "stamping_effect"),): 0}
    assert (ready.status_code, ready.text) == (503, f"not ready: {effect.node_id}: circuit open\n")
    assert samples(metrics.text, "onex_circuit_breaker_open") == {(("node", "stamping_effect"),): 1}


async def test_readyz_is_503_when_the_store_does_not_answer() -> None:
    async with Harness(["registry"]) as h:
        assert await readiness(h.runtime) is None
        await h.store.aclose()
        reason = await readiness(h.runtime)
        await h.store.open()
    assert reason is not None
    assert reason.startswith("store unavailable")


def test_every_node_and_the_gateway_in_the_deployment_files_is_probed() -> None:
    """Nodes on the metrics port's /healthz and /readyz; the gateway (hosting no node) on the API's own probes, which
    also see its bus. Every process serves /metrics on 9464 either way."""
    deployment = Path(__file__).resolve().parents[1] / "deployment"
    compose = yaml.safe_load((deployment / "docker-compose.yml").read_text())["services"]
    processes = {name: s for name, s in compose.items() if (s.get("command") or [None])[0] == "run"}
    gateways = {name for name, s in processes.items() if "--no-nodes" in s["command"]}
    assert len(processes) - len(gateways) >= 5
    assert gateways == {"gateway"}, processes
    for name, service in processes.items():
        assert service["environment"]["ONEX_METRICS"] == "0.0.0.0:9464", name
        probe = " ".join(service["healthcheck"]["test"])
        if name in gateways:
            assert "http://127.0.0.1:8053/api/v1/metadata-stamping/health/ready" in probe, name
            assert service["command"][:3] == ["run", "--http", "0.0.0.0:8053"], name
        else:
            assert "http://127.0.0.1:9464/readyz" in probe, name
    docs = [d for d in yaml.safe_load_all((deployment / "k8s" / "onex.yaml").read_text()) if d]
    containers = [
        c
        for d in docs
        if d["kind"] == "Deployment"
        for c in d["spec"]["template"]["spec"]["containers"]
        if c.get("args", [None])[0] == "run"
    ]
    k8s_gateways = [c for c in containers if "--no-nodes" in c["args"]]
    assert len(containers) - len(k8s_gateways) >= 5
    assert len(k8s_gateways) == 1, [c["name"] for c in containers]
    for c in containers:
        assert {"name": "ONEX_METRICS", "value": "0.0.0.0:9464"} in c["env"], c["name"]
        assert {"name": "metrics", "containerPort": 9464} in c["ports"], c["name"]
        if c in k8s_gateways:
            assert {"name": "http", "containerPort": 8053} in c["ports"], c["name"]
            live = {"path": "/api/v1/metadata-stamping/health/live", "port": "http"}
            assert c["livenessProbe"]["httpGet"] == live == c["startupProbe"]["httpGet"], c["name"]
            assert c["readinessProbe"]["httpGet"] == {"path": "/api/v1/metadata-stamping/health/ready", "port": "http"}
        else:
            assert c["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "metrics"}, c["name"]
            assert c["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "metrics"}, c["name"]


async def test_a_dead_letter_is_counted_for_the_node_and_event_type_that_gave_up_on_it() -> None:
    async with Harness(["orchestrator"]) as h, client_of(h) as client:
        bad = OnexEnvelopeV1(event_type="STAMP_REQUESTED", source_node_id="test", payload={"no": "file_path"})
        await h.bus.publish(h.topic("STAMP_REQUESTED"), bad)
        await h.settle()
        text = (await client.get("/metrics")).text
    dead = samples(text, "onex_events_dead_lettered_total")
    assert dead == {(("event_type", "STAMP_REQUESTED"), ("node", "orchestrator")): 1}


async def test_a_message_dropped_under_dead_letter_false_is_counted_for_its_node_and_event_type() -> None:
    # How a bus drops and counts is in the bus conformance suite; here: /metrics reports what the bus counted.
    async with Harness(["orchestrator"]) as h, client_of(h) as client:
        h.bus._dropped_one(h.runtime.node("orchestrator").group, "STAMP_REQUESTED")
        h.bus._dropped_one("some.other.group", "STAMP_REQUESTED")
        text = (await client.get("/metrics")).text
    dropped = samples(text, "onex_events_dropped_total")
    assert dropped == {(("event_type", "STAMP_REQUESTED"), ("node", "orchestrator")): 1}


async def test_more_dead_letters_than_the_threshold_raise_the_alert_in_logs_metrics_heartbeat_and_readyz(
    caplog: pytest.LogCaptureFixture,
) -> None:
    async with Harness(["registry", "orchestrator"], dlq_alert_threshold=2) as h, client_of(h) as client:
        orchestrator = h.runtime.node("orchestrator")
        for i in range(2):
            bad = OnexEnvelopeV1(event_type="STAMP_REQUESTED", source_node_id="test", payload={"no": i})
            await h.bus.publish(h.topic("STAMP_REQUESTED"), bad)
        await h.settle()
        assert orchestrator.health() == "HEALTHY"
        assert (await client.get("/readyz")).text == "ready\n"
        with caplog.at_level("ERROR", logger="onex.runtime"):
            bad = OnexEnvelopeV1(event_type="STAMP_REQUESTED", source_node_id="test", payload={"no": 2})
            await h.bus.publish(h.topic("STAMP_REQUESTED"), bad)
            await h.settle()
        alerts = [r for r in caplog.records if getattr(r, "onex", {}).get("event") == "dlq_alert"]
        assert len(alerts) == 1
        assert alerts[0].onex["node"] == orchestrator.node_id  # type: ignore[attr-defined]
        assert orchestrator.health() == "DEGRADED"
        ready = await client.get("/readyz")
        assert ready.status_code == 200
        assert ready.text.startswith(f"ready (degraded: {orchestrator.node_id}: more than 2 dead letters")
        text = (await client.get("/metrics")).text
        assert samples(text, "onex_dead_letter_alert") == {(("node", "orchestrator"),): 1, (("node", "registry"),): 0}
        # The DEGRADED heartbeat went out at once: the registry recorded it.
        records = {r.node_id: r for r in await h.store.list_registrations()}
        assert records[orchestrator.node_id].health_status == "DEGRADED"
