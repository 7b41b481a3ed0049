"""``deployment/`` agrees with the project: docker-compose, the Kubernetes manifests, the environment example and the
Dockerfile, read as files (no Docker engine or cluster is needed, nothing is started).

What must hold: every shipped node (its contract) runs as exactly one compose service and one Deployment, as
``onex run --node NAME``, each with two replicas (every node kind survives the loss of one process); the HTTP
gateway runs as a service of its own hosting no node (``onex run --http 0.0.0.0:8053 --no-nodes``), reachable (a
published port, a Service) and probed on the API's /health/live and /health/ready; Redpanda and PostgreSQL are part
of both, and the migration runs before any node or gateway; every ``ONEX_*`` variable handed to the
nodes is a setting onex reads, and the store URL logs in as the user and database the postgres image creates, with
the password the image sets; the image installs the package from the directories it needs and runs ``onex``.
"""

from __future__ import annotations

import json
import shlex
import tomllib
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
import yaml
from onex.cli import run
from onex.contracts import load_contracts
from onex.http import PREFIX, parse_address
from onex.settings import Settings

ROOT = Path(__file__).resolve().parents[1]
DEPLOYMENT = ROOT / "deployment"
# Every node runs two replicas, each set one consumer group (see "Guarantees" in the README).
REPLICAS = dict.fromkeys(["registry", "database_adapter_effect", "reducer", "stamping_effect", "orchestrator"], 2)
INFRASTRUCTURE = {"redpanda": "redpandadata/redpanda:", "postgres": "postgres:"}


# --- reading the files --------------------------------------------------------------------------------------------


def shipped_nodes() -> list[str]:
    """The shipped nodes that consume events, each of which needs processes of its own. A node that consumes none
    (the metastore effect: its work is calls, which the gateway makes on a ``Metastore`` of its own) has none."""
    contracts = load_contracts(ROOT, env={})
    names = [
        name
        for name in contracts.names()
        if (events := contracts.get(name).subcontracts.event_type) and events.consumes
    ]
    assert len(names) >= 5, names  # the five shipped nodes at least: an empty list would make every check vacuous
    return names


def test_only_the_metastore_effect_consumes_nothing() -> None:
    assert sorted(set(load_contracts(ROOT, env={}).names()) - set(shipped_nodes())) == ["metastore_effect"]


def onex_variables() -> set[str]:
    """The ``ONEX_*`` variables ``Settings.load`` reads: one per field, ``ONEX_<FIELD>``."""
    return {f"ONEX_{name.upper()}" for name in Settings.model_fields}


def compose_services() -> dict[str, Any]:
    services: dict[str, Any] = yaml.safe_load((DEPLOYMENT / "docker-compose.yml").read_text())["services"]
    return services


def k8s_documents() -> list[dict[str, Any]]:
    files = sorted((DEPLOYMENT / "k8s").glob("*.yaml"))
    assert files, "no manifests in deployment/k8s/"
    return [doc for file in files for doc in yaml.safe_load_all(file.read_text()) if doc is not None]


def k8s_kind(kind: str) -> dict[str, dict[str, Any]]:
    found: dict[str, dict[str, Any]] = {}
    for doc in k8s_documents():
        if doc["kind"] == kind:
            name = doc["metadata"]["name"]
            assert name not in found, f"two {kind} objects named {name}"
            found[name] = doc
    return found


def env_example() -> dict[str, str]:
    """``deployment/.env.example`` as compose's ``env_file`` reads it: ``KEY=VALUE`` lines, ``#`` comments."""
    values: dict[str, str] = {}
    for number, line in enumerate((DEPLOYMENT / ".env.example").read_text().splitlines(), 1):
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        key, sep, value = line.partition("=")
        assert sep, f".env.example:{number}: not KEY=VALUE: {line!r}"
        assert key not in values, f".env.example:{number}: {key} set twice"
        values[key] = value
    return values


def k8s_secret_values() -> dict[str, str]:
    return dict(k8s_kind("Secret")["onex-env"]["stringData"])


def dockerfile() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) of ``deployment/Dockerfile``, continuation lines joined."""
    text = (DEPLOYMENT / "Dockerfile").read_text().replace("\\\n", " ")
    lines = [line.strip() for line in text.splitlines()]
    return [(i.upper(), rest.strip()) for i, _, rest in (line.partition(" ") for line in lines if line[:1] not in "#")]


def node_of(args: object) -> str | None:
    """NAME when ``args`` is ``[run, --node, NAME]``, else None."""
    if isinstance(args, list) and len(args) == 3 and args[:2] == ["run", "--node"]:
        return str(args[2])
    return None


def gateway_port(args: object) -> int | None:
    """The port of ``args`` when they are ``run --http HOST:PORT --no-nodes`` (the gateway alone), else None."""
    if not isinstance(args, list) or args[:1] != ["run"] or "--no-nodes" not in args:
        return None
    # As `onex run` parses them: a flag the command does not have, or a missing value, fails here.
    params = run.make_context("run", [str(a) for a in args[1:]]).params
    assert params["no_nodes"], args
    assert not params["node_names"], args
    return parse_address(params["http_address"])[1]


def pod_containers(doc: Mapping[str, Any], key: str = "containers") -> list[dict[str, Any]]:
    containers: list[dict[str, Any]] = doc["spec"]["template"]["spec"].get(key, [])
    return containers


# --- docker-compose -----------------------------------------------------------------------------------------------


def test_compose_runs_each_shipped_node_as_one_service_with_its_replicas() -> None:
    services = compose_services()
    nodes = shipped_nodes()
    by_node: dict[str, list[str]] = {}
    for name, service in services.items():
        if (node := node_of(service.get("command"))) is not None:
            by_node.setdefault(node, []).append(name)

    assert sorted(by_node) == nodes
    for node, names in by_node.items():
        assert len(names) == 1, f"{node} runs as several services: {names}"
        replicas = services[names[0]].get("deploy", {}).get("replicas", 1)
        assert replicas == REPLICAS.get(node, 1), f"{node}: {replicas} replicas"
    # Nothing else runs beside the nodes, the gateway, the broker, the database and the migration.
    assert set(services) == {*INFRASTRUCTURE, "migrate", "gateway", *(names[0] for names in by_node.values())}


def test_compose_runs_the_gateway_alone_published_and_probed_on_the_api() -> None:
    services = compose_services()
    gateways = {name: s for name, s in services.items() if gateway_port(s.get("command")) is not None}
    assert list(gateways) == ["gateway"], sorted(services)
    gateway = gateways["gateway"]
    port = gateway_port(gateway["command"])
    assert gateway.get("deploy", {}).get("replicas", 1) == 1  # it publishes a host port, which one replica can hold
    assert f"{port}:{port}" in gateway["ports"]
    probe = " ".join(gateway["healthcheck"]["test"])
    assert f"http://127.0.0.1:{port}{PREFIX}/health/ready" in probe


def test_compose_starts_the_nodes_after_the_broker_and_the_migration() -> None:
    services = compose_services()
    for name, prefix in INFRASTRUCTURE.items():
        assert services[name]["image"].startswith(prefix)
        assert services[name]["healthcheck"]["test"], f"{name} has no healthcheck for depends_on to wait on"
    migrate = services["migrate"]
    assert migrate["command"] == ["db", "upgrade"]
    assert migrate["depends_on"] == {"postgres": {"condition": "service_healthy"}}
    for name, service in services.items():
        if node_of(service.get("command")) is not None or gateway_port(service.get("command")) is not None:
            assert service["depends_on"] == {
                "redpanda": {"condition": "service_healthy"},
                "migrate": {"condition": "service_completed_successfully"},
            }, name
            assert service["env_file"] == migrate["env_file"] == ".env", name


# --- Kubernetes ---------------------------------------------------------------------------------------------------


def test_k8s_runs_each_shipped_node_as_one_deployment_with_its_replicas() -> None:
    by_node: dict[str, list[str]] = {}
    for name, doc in k8s_kind("Deployment").items():
        for container in pod_containers(doc):
            # `command` would replace the image's ENTRYPOINT (onex); the node is chosen by the arguments.
            assert container.get("command", ["onex"]) == ["onex"], name
            if (node := node_of(container.get("args"))) is not None:
                by_node.setdefault(node, []).append(name)
                assert doc["spec"]["replicas"] == REPLICAS.get(node, 1), f"{name}: {doc['spec']['replicas']} replicas"

    assert sorted(by_node) == shipped_nodes()
    for node, names in by_node.items():
        assert len(names) == 1, f"{node} runs in several Deployments: {names}"


def test_k8s_runs_the_gateway_alone_behind_a_service_probed_on_the_api() -> None:
    gateways = {
        name: (doc, container)
        for name, doc in k8s_kind("Deployment").items()
        for container in pod_containers(doc)
        if gateway_port(container.get("args")) is not None
    }
    assert len(gateways) == 1, sorted(k8s_kind("Deployment"))
    ((name, (doc, container)),) = gateways.items()
    port = gateway_port(container["args"])
    assert doc["spec"]["replicas"] >= 2, f"{name}: the gateway is stateless; one replica is a single point of failure"
    assert container.get("command", ["onex"]) == ["onex"]
    named = {p["name"]: p["containerPort"] for p in container["ports"]}
    assert named["http"] == port
    probes = {kind: container[kind]["httpGet"] for kind in ("livenessProbe", "readinessProbe", "startupProbe")}
    assert probes == {
        "livenessProbe": {"path": f"{PREFIX}/health/live", "port": "http"},
        "readinessProbe": {"path": f"{PREFIX}/health/ready", "port": "http"},
        "startupProbe": {"path": f"{PREFIX}/health/live", "port": "http"},
    }
    labels = doc["spec"]["template"]["metadata"]["labels"]
    services = [s for s in k8s_kind("Service").values() if s["spec"]["selector"].items() <= labels.items()]
    assert len(services) == 1, f"{name}: no Service (or several) selects the gateway's pods"
    (service_port,) = services[0]["spec"]["ports"]
    assert service_port["targetPort"] in ("http", port)
    assert services[0]["spec"].get("clusterIP") != "None", "the gateway's Service balances over its replicas"


def test_k8s_migrates_the_schema_before_each_node_starts() -> None:
    deployments = k8s_kind("Deployment").items()
    nodes = {
        name: doc
        for name, doc in deployments
        if any(node_of(c.get("args")) or gateway_port(c.get("args")) for c in pod_containers(doc))
    }
    assert len(nodes) == len(shipped_nodes()) + 1  # and the gateway, whose readiness needs a current schema
    for name, doc in nodes.items():
        assert [c.get("args") for c in pod_containers(doc, "initContainers")] == [["db", "upgrade"]], name
        for container in pod_containers(doc) + pod_containers(doc, "initContainers"):
            assert container["envFrom"] == [{"secretRef": {"name": "onex-env"}}], name


def test_k8s_has_redpanda_and_postgres_each_a_statefulset_behind_a_service() -> None:
    sets, services = k8s_kind("StatefulSet"), k8s_kind("Service")
    for name, prefix in INFRASTRUCTURE.items():
        stateful = sets[name]
        (container,) = pod_containers(stateful)
        assert container["image"].startswith(prefix)
        assert container["resources"]["requests"], f"{name} has no resource requests"
        assert container["resources"]["limits"]["memory"], f"{name} has no memory limit"
        service = services[stateful["spec"]["serviceName"]]
        assert service["spec"]["clusterIP"] == "None", f"{name}: a StatefulSet's own Service is headless"
        labels = stateful["spec"]["template"]["metadata"]["labels"]
        assert service["spec"]["selector"].items() <= labels.items(), f"Service {name} does not select its pods"
        assert stateful["spec"]["selector"]["matchLabels"].items() <= labels.items(), name
    # The database keeps its data on a volume claimed per pod, mounted where PGDATA lives.
    postgres = sets["postgres"]
    (claim,) = postgres["spec"]["volumeClaimTemplates"]
    (container,) = pod_containers(postgres)
    mounts = {m["name"]: m["mountPath"] for m in container["volumeMounts"]}
    pgdata = {e["name"]: e["value"] for e in container.get("env", [])}.get("PGDATA", "/var/lib/postgresql/data")
    assert Path(pgdata).is_relative_to(mounts[claim["metadata"]["name"]])


def test_k8s_secret_references_resolve_within_the_set() -> None:
    secrets = k8s_kind("Secret")

    def references(node: object) -> Iterator[str]:
        if isinstance(node, dict):
            if "secretRef" in node:
                yield node["secretRef"]["name"]
            for value in node.values():
                yield from references(value)
        elif isinstance(node, list):
            for value in node:
                yield from references(value)

    names = {name for doc in k8s_documents() for name in references(doc)}
    assert names == {"onex-env"}
    assert names <= secrets.keys()


# --- environment --------------------------------------------------------------------------------------------------


def test_the_secret_example_has_the_keys_of_the_environment_example() -> None:
    assert k8s_secret_values().keys() == env_example().keys()


@pytest.mark.parametrize("source", [env_example, k8s_secret_values], ids=["env-example", "k8s-secret"])
def test_environment_is_read_by_onex_and_logs_in_to_the_database_it_creates(source: Any) -> None:
    env: dict[str, str] = source()
    known = onex_variables()
    assert {"ONEX_BUS", "ONEX_STORE"} <= known  # derived from Settings; if the fields were renamed, this says so

    onex = {key for key in env if key.startswith("ONEX_")}
    assert onex >= {"ONEX_BUS", "ONEX_STORE"}
    assert onex <= known, f"not settings onex reads: {sorted(onex - known)}"

    store = urlsplit(env["ONEX_STORE"])
    assert store.scheme == "postgresql"
    assert (store.username, store.path.lstrip("/")) == (env["POSTGRES_USER"], env["POSTGRES_DB"])
    # The password travels as PGPASSWORD (asyncpg's fallback when the URL has none), equal to the server's.
    assert store.password is None
    assert env["PGPASSWORD"] == env["POSTGRES_PASSWORD"]
    assert (store.hostname, store.port) == ("postgres", 5432)
    bus = urlsplit(env["ONEX_BUS"])
    assert (bus.scheme, bus.hostname, bus.port) == ("kafka", "redpanda", 9092)


def test_the_hosts_in_the_urls_are_the_services_that_serve_them() -> None:
    """redpanda:9092 and postgres:5432 name the compose services and the Kubernetes Services of those images."""
    services, k8s_services = compose_services(), k8s_kind("Service")
    for name in INFRASTRUCTURE:
        assert name in services
    redpanda_args = services["redpanda"]["command"]
    assert "PLAINTEXT://redpanda:9092" in redpanda_args  # what clients are sent to after bootstrapping
    assert {p["port"] for p in k8s_services["redpanda"]["spec"]["ports"]} >= {9092}
    assert {p["port"] for p in k8s_services["postgres"]["spec"]["ports"]} == {5432}


# --- Dockerfile ---------------------------------------------------------------------------------------------------


def test_dockerfile_installs_the_package_with_what_it_reads_and_runs_onex() -> None:
    instructions = dockerfile()
    copied: set[str] = set()
    for instruction, rest in instructions:
        if instruction == "COPY":
            *sources, _ = [arg for arg in shlex.split(rest) if not arg.startswith("--")]
            copied.update(source.rstrip("/") for source in sources)
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text())
    # The wheel's packages (runtime/onex, nodes) come from their top-level directories; contracts and subcontracts are
    # read at run time from ONEX_ROOT; pip needs pyproject.toml and the readme it names.
    packages = {Path(p).parts[0] for p in pyproject["tool"]["hatch"]["build"]["targets"]["wheel"]["packages"]}
    needed = {*packages, "contracts", "subcontracts", "pyproject.toml", pyproject["project"]["readme"]}
    assert {"runtime", "nodes"} <= packages
    assert needed <= copied, f"not copied: {sorted(needed - copied)}"

    settings = dict(instructions)  # the last of each instruction wins, as in Docker
    assert json.loads(settings["ENTRYPOINT"]) == ["onex"]
    env = dict(token.split("=", 1) for i, rest in instructions if i == "ENV" for token in shlex.split(rest))
    assert env["ONEX_ROOT"] == settings["WORKDIR"], "contracts are copied to WORKDIR; ONEX_ROOT must point there"
    assert any(i == "RUN" and "pip install" in rest and " ." in rest for i, rest in instructions)

    # BuildKit's per-Dockerfile ignore file must let through everything the Dockerfile copies.
    ignore = (DEPLOYMENT / "Dockerfile.dockerignore").read_text().splitlines()
    patterns = [line.strip() for line in ignore if line.strip()[:1] not in ("", "#")]
    let_through = {p[1:] for p in patterns if p.startswith("!")}
    assert "*" not in patterns or copied <= let_through, f"ignored yet copied: {sorted(copied - let_through)}"
