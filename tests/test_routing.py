"""Routing (``onex.routing`` and the orchestrator's stamp step): strategies, fallbacks, topics, validation.

The project is the repository's own (its contracts, subcontracts and ``nodes`` package) plus a second stamping
effect, ``stamping_effect_archive`` (the same class under another contract name), with the routing subcontract each
test writes. Which effect stamped a file is the ``source_service`` of its STAMP_CREATED: the effect that really
received the command, so a test passes only if the command went to the routed target's topic.
"""

from __future__ import annotations

import hashlib
import shutil
import textwrap
import uuid
from collections import Counter
from collections.abc import Awaitable, Callable
from pathlib import Path

import pytest
from onex.contracts import RoutingSubcontract, RoutingTarget, load_contracts
from onex.envelope import OnexEnvelopeV1, topic_name
from onex.exceptions import ContractError
from onex.nodes import EffectNode
from onex.routing import Router, service_topic, service_topics
from onex.settings import Settings
from onex.testing import Harness, ManualClock

REPO = Path(__file__).resolve().parent.parent
MAIN, ARCHIVE = "stamping_effect", "stamping_effect_archive"
EFFECTS = ["orchestrator", MAIN, ARCHIVE]
PNG = b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR\x00\x00\x00\x01\x00\x00\x00\x01\x08\x06\x00\x00\x00\x1f\x15\xc4\x89"

pytestmark = pytest.mark.anyio


@pytest.fixture
def project(tmp_path: Path) -> Path:
    """The repository's project with a second stamping effect; ``route(...)`` writes its routing subcontract."""
    return with_archive(tmp_path / "project")


def with_archive(root: Path) -> Path:
    """Make ``root`` the repository's project plus the second stamping effect (the ``project`` fixture)."""
    shutil.copytree(REPO / "contracts", root / "contracts")
    shutil.copytree(REPO / "subcontracts", root / "subcontracts")
    # The repository's nodes package itself (same classes), not a copy imported under an alias.
    (root / "nodes").symlink_to(REPO / "nodes", target_is_directory=True)
    effect = (REPO / "contracts/effects/stamping_effect.yaml").read_text()
    assert "name: stamping_effect\n" in effect
    (root / "contracts/effects/stamping_effect_archive.yaml").write_text(
        effect.replace("name: stamping_effect\n", f"name: {ARCHIVE}\n")
    )
    return root


def route(root: Path, body: str) -> None:
    (root / "subcontracts/routing/stamping.yaml").write_text(
        "subcontract_type: routing\nversion: 1.0.0\n" + textwrap.dedent(body)
    )


def files(directory: Path, names: list[str]) -> list[Path]:
    directory.mkdir(parents=True, exist_ok=True)
    paths = []
    for name in names:
        path = directory / name
        path.write_bytes(PNG if name.endswith(".png") else f"# {name}\n".encode())
        paths.append(path)
    return paths


async def stamp(h: Harness, path: Path, namespace: str = "routing") -> uuid.UUID:
    sent = await h.publish("STAMP_REQUESTED", {"file_path": str(path), "namespace": namespace})
    assert sent.correlation_id is not None
    return sent.correlation_id


def stamped_by(h: Harness) -> dict[uuid.UUID, str]:
    """Which effect stamped each workflow (its STAMP_CREATED's source service); every workflow completed."""
    created: dict[uuid.UUID, str] = {}
    for envelope in h.of("STAMP_CREATED"):
        assert envelope.correlation_id is not None
        created[envelope.correlation_id] = envelope.source_service or ""
    completed = {e.correlation_id for e in h.of("WORKFLOW_COMPLETED")}
    assert set(created) <= completed
    return created


# --- strategies through the running orchestrator -----------------------------------------------------------------


async def test_service_sends_every_command_to_the_first_target(project: Path, tmp_path: Path) -> None:
    # The archive effect first: had the targets been ignored, everything would reach the shipped stamping_effect.
    # (A second target would get nothing under `service`, which validation refuses: the shipped one is a fallback.)
    route(project, f"strategy: service\ntargets:\n  - {{name: a, service: {ARCHIVE}}}\nfallbacks: [{MAIN}]\n")
    async with Harness(EFFECTS, root=project, clock=ManualClock()) as h:
        sent = [await stamp(h, path) for path in files(tmp_path / "f", [f"s{i}.py" for i in range(5)])]
        await h.settle()

        assert stamped_by(h) == dict.fromkeys(sent, ARCHIVE)
        assert not [e for e in h.of("STAMP_CREATED") if e.source_service == MAIN]


async def test_round_robin_shares_commands_by_weight(project: Path, tmp_path: Path) -> None:
    route(
        project,
        f"""\
        strategy: round_robin
        targets:
          - {{name: m, service: {MAIN}, weight: 3}}
          - {{name: a, service: {ARCHIVE}}}
        """,
    )
    async with Harness(EFFECTS, root=project, clock=ManualClock()) as h:
        for path in files(tmp_path / "f", [f"r{i}.py" for i in range(12)]):
            await stamp(h, path)
        await h.settle()

        # Three in four to the weight-3 target (equal weights would give 6 and 6).
        assert Counter(stamped_by(h).values()) == {MAIN: 9, ARCHIVE: 3}


def expected_hash_target(value: str, targets: list[tuple[str, int]]) -> str:
    """The documented rule: BLAKE2b (8 bytes, big-endian) of the value, modulo the total weight, over the targets."""
    point = int.from_bytes(hashlib.blake2b(value.encode(), digest_size=8).digest(), "big") % sum(w for _, w in targets)
    for service, weight in targets:
        if point < weight:
            return service
        point -= weight
    raise AssertionError


async def test_hash_sends_the_same_key_to_the_same_target_in_every_run(project: Path, tmp_path: Path) -> None:
    route(
        project,
        f"""\
        strategy: hash
        hash_key: namespace
        targets:
          - {{name: m, service: {MAIN}}}
          - {{name: a, service: {ARCHIVE}}}
        """,
    )
    namespaces = [f"team-{i}" for i in range(8)]
    expected = {ns: expected_hash_target(ns, [(MAIN, 1), (ARCHIVE, 1)]) for ns in namespaces}
    assert set(expected.values()) == {MAIN, ARCHIVE}  # the keys reach both: a hash_key ignored sends all to one

    seen: list[dict[str, str]] = []
    for run in range(2):  # two processes in turn: the choice survives a restart (no salted hash, no state)
        async with Harness(EFFECTS, root=project, clock=ManualClock()) as h:
            sent = {}
            for ns in namespaces:
                for path in files(tmp_path / f"run{run}" / ns, ["a.py", "b.py"]):
                    sent[await stamp(h, path, namespace=ns)] = ns
            await h.settle()
            by_namespace: dict[str, set[str]] = {}
            for cid, service in stamped_by(h).items():
                by_namespace.setdefault(sent[cid], set()).add(service)
            assert all(len(services) == 1 for services in by_namespace.values())  # one target per key
            seen.append({ns: services.pop() for ns, services in by_namespace.items()})

    assert seen[0] == seen[1] == expected


async def test_conditional_routes_by_file_type(project: Path, tmp_path: Path) -> None:
    route(
        project,
        f"""\
        strategy: conditional
        targets:
          - {{name: media, service: {ARCHIVE}, condition: "file_type in [image,archive]"}}
          - {{name: rest, service: {MAIN}}}
        """,
    )
    names = ["logo.png", "bundle.zip", "tool.py", "notes.txt", "photo.png"]
    async with Harness(EFFECTS, root=project, clock=ManualClock()) as h:
        sent = {await stamp(h, path): path.name for path in files(tmp_path / "f", names)}
        await h.settle()

        by_name = {sent[cid]: service for cid, service in stamped_by(h).items()}
    assert by_name == {
        "logo.png": ARCHIVE,
        "bundle.zip": ARCHIVE,
        "photo.png": ARCHIVE,
        "tool.py": MAIN,
        "notes.txt": MAIN,
    }


async def test_conditional_without_a_match_goes_to_the_fallback_or_fails_the_step(
    project: Path, tmp_path: Path
) -> None:
    media = f"  - {{name: media, service: {ARCHIVE}, condition: file_type equals image}}\n"
    code = f"  - {{name: code, service: {MAIN}, condition: file_type equals code}}\n"
    route(project, f"strategy: conditional\ntargets:\n{media}{code}")
    async with Harness(EFFECTS, root=project, clock=ManualClock()) as h:
        cid = await stamp(h, files(tmp_path / "f", ["notes.txt"])[0])
        await h.settle()
        [failed] = h.of("WORKFLOW_FAILED")
        assert failed.correlation_id == cid
        assert "no routing target matches" in failed.payload["error"]

    route(project, f"strategy: conditional\ntargets:\n{media}fallbacks: [{MAIN}]\n")
    async with Harness(EFFECTS, root=project, clock=ManualClock()) as h:
        cid = await stamp(h, files(tmp_path / "g", ["tool.py"])[0])
        await h.settle()
        assert stamped_by(h) == {cid: MAIN}


# --- fallbacks: availability as the registry sees it ---------------------------------------------------------------


async def test_a_target_whose_circuit_is_open_is_passed_over_for_the_fallback(project: Path, tmp_path: Path) -> None:
    route(project, f"strategy: service\ntargets:\n  - {{name: a, service: {ARCHIVE}}}\nfallbacks: [{MAIN}]\n")
    clock = ManualClock()
    paths = files(tmp_path / "f", ["one.py", "two.py", "three.py"])
    async with Harness([*EFFECTS, "registry"], root=project, clock=clock, heartbeat_interval_s=1.0) as h:
        await h.settle()
        first = await stamp(h, paths[0])
        await h.settle()

        archive = h.runtime.node(ARCHIVE)
        assert isinstance(archive, EffectNode)
        for _ in range(archive.breaker.failure_threshold):
            archive.breaker.record_failure()
        await clock.advance(1.0)  # heartbeats: the archive's says DEGRADED, and the registry stores it
        await h.settle()
        second = await stamp(h, paths[1])
        await h.settle()

        # The breaker half-opens after its reset timeout; the next heartbeat says HEALTHY again.
        await clock.advance(archive.breaker.reset_timeout_s)
        await h.settle()
        archive.breaker.record_success()
        await clock.advance(1.0)
        await h.settle()
        third = await stamp(h, paths[2])
        await h.settle()

        assert stamped_by(h) == {first: ARCHIVE, second: MAIN, third: ARCHIVE}


async def test_a_target_with_no_live_instance_is_passed_over_for_the_fallback(project: Path, tmp_path: Path) -> None:
    route(project, f"strategy: service\ntargets:\n  - {{name: a, service: {ARCHIVE}}}\nfallbacks: [{MAIN}]\n")
    clock = ManualClock()
    paths = files(tmp_path / "f", ["one.py", "two.py"])
    async with Harness([*EFFECTS, "registry"], root=project, clock=clock, heartbeat_interval_s=1.0) as h:
        await h.settle()
        first = await stamp(h, paths[0])
        await h.settle()
        await h.runtime.node(ARCHIVE).stop()  # its STOPPED heartbeat deregisters it
        await clock.advance(1.0)
        await h.settle()
        second = await stamp(h, paths[1])
        await h.settle()

        assert stamped_by(h) == {first: ARCHIVE, second: MAIN}


# --- topics --------------------------------------------------------------------------------------------------------


async def test_each_target_reads_a_topic_of_its_own_and_the_first_keeps_the_events(project: Path) -> None:
    route(
        project,
        f"strategy: round_robin\ntargets:\n  - {{name: m, service: {MAIN}}}\n  - {{name: a, service: {ARCHIVE}}}\n",
    )
    settings = Settings.load(environ={}, root=str(project))
    contracts = load_contracts(project, env={})
    plain = topic_name("STAMP_FILE", cls="cmd")

    assert service_topics(contracts, settings) == {ARCHIVE: {"STAMP_FILE": f"{plain}.{ARCHIVE}"}}
    async with Harness(EFFECTS, root=project, clock=ManualClock()) as h:
        seen: dict[str, list[OnexEnvelopeV1]] = {plain: [], service_topic(plain, ARCHIVE): []}

        for topic, envelopes in seen.items():
            await h.bus.subscribe([topic], f"test.{topic}", handler=recorder(envelopes))
        await h.publish("STAMP_REQUESTED", {"content": "x = 1\n", "file_path": "a.py", "namespace": "ns"})
        await h.publish("STAMP_REQUESTED", {"content": "x = 2\n", "file_path": "b.py", "namespace": "ns"})
        await h.settle()

    assert [len(envelopes) for envelopes in seen.values()] == [1, 1]


async def test_a_redelivered_request_resends_its_command_to_the_target_it_was_routed_to(project: Path) -> None:
    route(
        project,
        f"strategy: round_robin\ntargets:\n  - {{name: m, service: {MAIN}}}\n  - {{name: a, service: {ARCHIVE}}}\n",
    )
    plain = topic_name("STAMP_FILE", cls="cmd")
    seen: dict[str, list[OnexEnvelopeV1]] = {plain: [], service_topic(plain, ARCHIVE): []}
    # The orchestrator alone: the step stays running, as when the request's batch was not acknowledged.
    async with Harness(["orchestrator"], root=project, clock=ManualClock()) as h:
        for topic, envelopes in seen.items():
            await h.bus.subscribe([topic], f"test.{topic}", handler=recorder(envelopes))
        sent = await h.publish("STAMP_REQUESTED", {"content": "x = 1\n", "file_path": "a.py", "namespace": "ns"})
        await h.settle()
        await h.bus.publish(h.topic("STAMP_REQUESTED"), sent)  # redelivered: the same record
        await h.settle()

    # Both to the first pick, with the same id: a new pick would have been the other target (round robin's turn).
    assert [len(envelopes) for envelopes in seen.values()] == [2, 0]
    assert len({e.event_id for e in seen[plain]}) == 1


def recorder(envelopes: list[OnexEnvelopeV1]) -> Callable[[OnexEnvelopeV1], Awaitable[None]]:
    async def record(envelope: OnexEnvelopeV1) -> None:
        envelopes.append(envelope)

    return record


def test_the_shipped_routing_keeps_the_default_deployment_on_the_events_topic() -> None:
    contracts = load_contracts(REPO, env={})
    assert service_topics(contracts, Settings.load(environ={}, root=str(REPO))) == {}
    routing = contracts.get("orchestrator").subcontracts.routing
    router = Router(routing, default_service="stamping_effect")
    assert (router.strategy, router.default_service, router.fallbacks) == ("service", MAIN, ())
    assert router.topic("t", MAIN) == "t"


# --- the router on its own ------------------------------------------------------------------------------------------


def routing(**fields: object) -> RoutingSubcontract:
    return RoutingSubcontract.model_validate({"version": "1.0.0", **fields})


def test_round_robin_spreads_a_weighted_cycle() -> None:
    router = Router(
        routing(
            strategy="round_robin", targets=[{"name": "a", "service": "A", "weight": 3}, {"name": "b", "service": "B"}]
        ),
        default_service="A",
    )
    picks = [router.choose({}) for _ in range(8)]
    assert [p.service for p in picks if p is not None] == ["A", "A", "B", "A"] * 2


def test_an_unavailable_pick_goes_to_the_first_available_fallback_else_stays() -> None:
    router = Router(
        routing(targets=[{"name": "a", "service": "A"}], fallbacks=["F1", "F2"]),
        default_service="A",
    )
    route_ = router.choose({}, lambda service: service == "F2")
    assert route_ is not None
    assert (route_.service, route_.fallback) == ("F2", True)
    stays = router.choose({}, lambda service: False)
    assert stays is not None
    assert (stays.service, stays.fallback) == ("A", False)


def test_without_a_routing_the_router_sends_to_the_default_service() -> None:
    router = Router(None, default_service="stamping_effect")
    assert router.choose({}) == router.choose({"file_type": "image"})
    assert router.targets == (RoutingTarget(name="stamping_effect", service="stamping_effect"),)


# --- validation ------------------------------------------------------------------------------------------------------


def test_validate_reports_unknown_services_and_bad_conditions_with_their_positions(project: Path) -> None:
    route(
        project,
        """\
        strategy: conditional
        targets:
          - {name: media, service: stamping_effect_images, condition: "file_type in [image, archive]"}
          - {name: rest, service: stamping_effect}
        fallbacks: [stamping_effect, nowhere]
        """,
    )
    with pytest.raises(ContractError) as raised:
        load_contracts(project, env={})

    found = sorted(f"{i.path}:{i.line}:{i.column}: {i.code}" for i in raised.value.issues)
    assert found == [
        # The second effect consumes STAMP_FILE, which the routing does not send it: it would read the first target's.
        "contracts/effects/stamping_effect_archive.yaml:16:21: routing-service",
        "subcontracts/routing/stamping.yaml:5:28: routing-service",
        "subcontracts/routing/stamping.yaml:5:63: routing-condition",
        "subcontracts/routing/stamping.yaml:7:30: routing-service",
    ]
    messages = " ".join(i.message for i in raised.value.issues)
    assert "'stamping_effect_images'" in messages
    assert "'nowhere'" in messages
    assert "three tokens" in messages


def test_a_strategy_without_what_it_needs_or_with_what_it_ignores_is_reported(project: Path) -> None:
    route(project, f"strategy: round_robin\nhash_key: namespace\ntargets:\n  - {{name: m, service: {MAIN}}}\n")
    (project / "contracts/effects/stamping_effect_archive.yaml").unlink()
    with pytest.raises(ContractError) as raised:
        load_contracts(project, env={})

    assert [(i.path, i.line, i.column, i.code) for i in raised.value.issues] == [
        ("subcontracts/routing/stamping.yaml", 4, 11, "routing-strategy")
    ]
    assert "only read by strategy hash" in raised.value.issues[0].message


def test_the_documented_example_is_valid_and_routes_as_documented(project: Path) -> None:
    reference = (REPO / "docs/contracts.md").read_text()
    section = reference.split("## routing", 1)[1]
    example = section.split("```yaml\n", 1)[1].split("```", 1)[0]
    (project / "subcontracts/routing/stamping.yaml").write_text(example)

    routing = load_contracts(project, env={}).get("orchestrator").subcontracts.routing
    router = Router(routing, default_service=MAIN)
    picks = {
        name: router.choose({"file_type": file_type}, lambda service: True)
        for name, file_type in [("logo.png", "image"), ("tool.py", "code")]
    }
    assert {name: pick.service for name, pick in picks.items() if pick is not None} == {
        "logo.png": ARCHIVE,
        "tool.py": MAIN,
    }
