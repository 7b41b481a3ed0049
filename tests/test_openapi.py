"""The OpenAPI document against the application it describes: every route the gateway serves is documented (or serves
the documentation), every documented operation is a route the application matches, the document is generated from
the models the handlers are typed with, and its 3.0 copy says the same thing.
"""

from __future__ import annotations

import re
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from jsonschema import Draft202012Validator
from onex.client import StampClient
from onex.http import DOCS, OPERATIONS, PREFIX, create_app, openapi_30, openapi_document
from onex.http.app import Gateway
from onex.http.metastore import MetastoreApi
from onex.http.models import BatchResult, HashResult, StampRequest, StampResult
from onex.http.openapi import DOCUMENTATION_ROUTES, template
from onex.runtime import Runtime
from onex.settings import Settings
from starlette.applications import Starlette
from starlette.routing import Match, Mount, Route

ROOT = Path(__file__).resolve().parents[1]
METHODS = {"get", "put", "post", "delete", "options", "head", "patch", "trace"}


@pytest.fixture(scope="module")
def app(tmp_path_factory: pytest.TempPathFactory) -> Starlette:
    """The gateway's real application, over a runtime that is never started: only its routing is looked at."""
    directory = tmp_path_factory.mktemp("openapi")
    settings = Settings.load(environ={}, root=str(ROOT), store=f"sqlite:///{directory}/onex.db")
    runtime = Runtime(settings)
    client = StampClient(runtime.bus, runtime.contracts, settings, keep_stamps=True)
    return create_app(runtime, client, settings, api_key="k")


def served(app: Starlette) -> set[tuple[str, str]]:
    """(method, path template) of every route the application serves, HEAD aside (Starlette adds it to GET)."""
    found = set()
    for route in app.routes:
        if isinstance(route, Route):
            found |= {(method, template(route.path)) for method in route.methods or () if method != "HEAD"}
        else:
            assert isinstance(route, Mount), route
            assert route.path == f"{DOCS}/static", route  # Swagger UI's files
    return found


def documented(document: dict[str, Any]) -> set[tuple[str, str]]:
    return {(method.upper(), path) for path, item in document["paths"].items() for method in item if method in METHODS}


def test_every_route_is_documented_and_every_documented_operation_is_a_route(app: Starlette) -> None:
    document = openapi_document()
    real = served(app)
    documentation = {(method, path) for method, path in real if path in DOCUMENTATION_ROUTES}
    assert documentation == {("GET", path) for path in DOCUMENTATION_ROUTES}
    assert real - documentation == documented(document)
    # The shape of the API clients know, route by route.
    stamping = {(m, p.removeprefix(PREFIX)) for m, p in documented(document) if p.startswith(PREFIX)}
    assert stamping == {
        ("POST", "/stamp"), ("POST", "/validate"), ("POST", "/hash"), ("GET", "/stamp/{file_hash}"),
        ("POST", "/batch"), ("GET", "/namespace/{namespace}"), ("POST", "/validate-protocol"), ("GET", "/health"),
        ("GET", "/health/live"), ("GET", "/health/ready"), ("GET", "/metrics"),
        ("GET", "/namespace/{namespace}/windows"),
    }  # fmt: skip
    # The metastore's, as issue 17 lists them (and a flag's history and rollback, as for the other two kinds).
    entity = {("GET", "/{id}"), ("PUT", "/{id}"), ("DELETE", "/{id}"), ("GET", "/{id}/versions"),
              ("POST", "/{id}/rollback/{version}")}  # fmt: skip
    assert {(m, p) for m, p in documented(document) if not p.startswith(PREFIX)} == {
        *((m, f"/api/v1/metadata{p}") for m, p in entity),
        ("POST", "/api/v1/metadata"), ("GET", "/api/v1/metadata"), ("GET", "/api/v1/metadata/key/{key}"),
        *((m, f"/api/v1/feature-flags{p}") for m, p in entity),
        ("POST", "/api/v1/feature-flags"), ("GET", "/api/v1/feature-flags"),
        ("GET", "/api/v1/feature-flags/name/{name}"), ("POST", "/api/v1/feature-flags/evaluate"),
        ("POST", "/api/v1/feature-flags/evaluate/bulk"),
        ("POST", "/api/v1/feature-flags/{id}/enable"), ("POST", "/api/v1/feature-flags/{id}/disable"),
        ("POST", "/api/v1/feature-flags/{id}/rollout"),
        *((m, f"/api/v1/configurations{p}") for m, p in entity),
        ("POST", "/api/v1/configurations"), ("GET", "/api/v1/configurations/service/{service_id}"),
        ("GET", "/api/v1/configurations/effective/{service_id}"), ("POST", "/api/v1/configurations/{id}/activate"),
        ("POST", "/api/v1/configurations/{id}/deactivate"),
        ("GET", "/health"), ("GET", "/health/live"), ("GET", "/health/ready"),
    }  # fmt: skip


def concrete(path: str) -> Iterator[str]:
    """Paths a client would send for a documented path template: each parameter filled with a value it accepts."""
    examples = {
        "file_hash": ["0" * 64],
        "namespace": ["team", "team/docs:v1"],
        "id": [str(uuid.UUID(int=7))],
        "version": ["3"],
        "key": ["db.pool", "team/db.pool"],
        "name": ["new-checkout"],
        "service_id": ["billing", "eu/billing"],
    }
    names = re.findall(r"\{(\w+)\}", path)
    if not names:
        yield path
        return
    *others, name = names
    for value in examples[name]:
        filled = path.replace(f"{{{name}}}", value)
        for other in others:  # the first example of each other parameter
            filled = filled.replace(f"{{{other}}}", examples[other][0])
        yield filled


def test_the_application_routes_every_documented_operation_to_its_handler(app: Starlette) -> None:
    for path, item in openapi_document()["paths"].items():
        for method, operation in item.items():
            for sent in concrete(path):
                scope = {"type": "http", "method": method.upper(), "path": sent, "root_path": "", "headers": []}
                matched = [route for route in app.routes if route.matches(scope)[0] is Match.FULL]
                assert len(matched) == 1, (method, sent)
                (op,) = [op for op in OPERATIONS if op.operation_id == operation["operationId"]]
                assert isinstance(matched[0], Route)
                assert matched[0].path == op.route


def test_operation_ids_and_handlers_are_unique_and_each_handler_exists() -> None:
    ids = [op.operation_id for op in OPERATIONS]
    assert sorted(ids) == sorted(
        ["stamp", "validate", "hash", "getStamp", "batch", "getNamespace", "validateProtocol", "health", "live",
         "ready", "metrics", "getNamespaceWindows",
         "createMetadata", "listMetadata", "getMetadataByKey", "getMetadata", "updateMetadata", "deleteMetadata",
         "listMetadataVersions", "rollbackMetadata",
         "createFlag", "listFlags", "evaluateFlag", "evaluateFlags", "getFlagByName", "getFlag", "updateFlag",
         "deleteFlag", "enableFlag", "disableFlag", "setFlagRollout", "listFlagVersions", "rollbackFlag",
         "createConfiguration", "listServiceConfigurations", "getEffectiveConfiguration", "getConfiguration",
         "updateConfiguration", "deleteConfiguration", "activateConfiguration", "deactivateConfiguration",
         "listConfigurationVersions", "rollbackConfiguration",
         "serviceHealth", "serviceLive", "serviceReady"]
    )  # fmt: skip
    assert len({op.handler for op in OPERATIONS}) == len(OPERATIONS)
    assert len({(op.method, op.template) for op in OPERATIONS}) == len(OPERATIONS)
    for op in OPERATIONS:
        owner, _, name = op.handler.rpartition(".")
        assert callable(getattr(MetastoreApi if owner == "metastore" else Gateway, name, None)), op.handler


def refs(node: Any) -> Iterator[str]:
    if isinstance(node, dict):
        for key, value in node.items():
            if key == "$ref":
                yield value
            else:
                yield from refs(value)
    elif isinstance(node, list):
        for value in node:
            yield from refs(value)


@pytest.mark.parametrize("api_key", [False, True])
def test_every_reference_resolves_and_every_schema_is_used_and_valid(api_key: bool) -> None:
    document = openapi_document(api_key=api_key)
    schemas = document["components"]["schemas"]
    used = set(refs(document))
    assert {ref.removeprefix("#/components/schemas/") for ref in used} == set(schemas)
    assert all(ref.startswith("#/components/schemas/") for ref in used)
    for name, schema in schemas.items():
        Draft202012Validator.check_schema(schema)  # raises, naming the keyword, if pydantic wrote something odd
        assert "$defs" not in schema, name  # everything shared is a component


def test_schemas_come_from_the_models_the_handlers_return() -> None:
    schemas = openapi_document(batch_limit=7)["components"]["schemas"]
    # A field of an answer is a key of its TypedDict (mypy holds the handlers to it), and so a documented property.
    for model in (StampResult, BatchResult):
        assert set(schemas[model.__name__]["properties"]) == set(model.__annotations__)
        assert set(schemas[model.__name__]["required"]) == model.__required_keys__
    # /hash answers the bridge's HashResponse fields beside onex's own, as /stamp does its StampResponse's.
    assert set(schemas["HashResult"]["properties"]) == set(HashResult.__annotations__)
    assert {"file_hash", "file_size_bytes", "execution_time_ms"} <= set(HashResult.__annotations__)
    assert set(schemas["StampRequest"]["properties"]) == set(StampRequest.model_fields)
    assert schemas["StampRequest"]["additionalProperties"] is False  # extra="forbid": unknown fields get 422
    # The configured batch limit, and the items the handler validates one by one.
    items = schemas["BatchRequest"]["properties"]["items"]
    assert (items["minItems"], items["maxItems"], items["items"]) == (
        1,
        7,
        {"$ref": "#/components/schemas/StampRequest"},
    )
    assert "Stamp up to 7 items" in openapi_document(batch_limit=7)["paths"][f"{PREFIX}/batch"]["post"]["summary"]


def test_the_key_is_required_by_the_document_exactly_where_the_gateway_requires_it() -> None:
    document = openapi_document(api_key=True)
    assert document["components"]["securitySchemes"] == {"bearerAuth": {"type": "http", "scheme": "bearer"}}
    for op in OPERATIONS:
        operation = document["paths"][op.template][op.method.lower()]
        assert operation["security"] == ([] if op.public else [{"bearerAuth": []}]), op.operation_id
        assert ("401" in operation["responses"]) is not op.public, op.operation_id
    assert {op.path for op in OPERATIONS if op.public} == {"/health", "/health/live", "/health/ready"}
    without = openapi_document()
    assert "securitySchemes" not in without["components"]
    assert not [op for item in without["paths"].values() for op in item.values() if "security" in op]


def test_every_answer_is_the_envelope_but_the_metrics_text() -> None:
    document = openapi_document(api_key=True)
    envelope = {"$ref": "#/components/schemas/Envelope"}
    for path, item in document["paths"].items():
        for operation in item.values():
            for status, response in operation["responses"].items():
                ((media, content),) = response["content"].items()
                if path == f"{PREFIX}/metrics" and status == "200":
                    assert (media, content["schema"]) == ("text/plain", {"type": "string"})
                    continue
                assert media == "application/json"
                schema = content["schema"]
                assert schema == {"$ref": "#/components/schemas/ErrorEnvelope"} or schema["allOf"][0] == envelope
    shape = document["components"]["schemas"]["Envelope"]
    assert set(shape["required"]) == {"status", "data", "error", "message", "metadata"}


def test_the_30_copy_has_the_same_operations() -> None:
    document = openapi_document(api_key=True)
    copy = openapi_30(document)
    assert copy["openapi"] == "3.0.3"
    assert document["openapi"] == "3.1.0"
    assert documented(copy) == documented(document)
    assert copy["components"]["securitySchemes"] == document["components"]["securitySchemes"]
    assert set(copy["components"]["schemas"]) == set(document["components"]["schemas"])
    # A nullable field keeps its constraints: the pattern of a file_path that may be null.
    file_path = copy["components"]["schemas"]["StampRequest"]["properties"]["file_path"]
    assert (file_path["type"], file_path["nullable"], file_path["pattern"]) == (
        "string",
        True,
        r"^[^\x00-\x1f\x7f]{1,1024}$",
    )


def test_a_body_that_stalls_is_408_and_the_gateways_outages_say_when_to_retry() -> None:
    for document in (openapi_document(), openapi_30(openapi_document())):
        for op in OPERATIONS:
            responses = document["paths"][template(op.route)][op.method.lower()]["responses"]
            assert ("408" in responses) is (op.body is not None), op.operation_id  # every route that reads a body
            if op.retry_after:
                assert responses["503"]["headers"]["Retry-After"]["schema"]["type"] == "integer"
        retrying = {op.operation_id for op in OPERATIONS if op.retry_after}
        assert retrying == {"stamp", "batch", "getStamp", "getNamespace", "getNamespaceWindows"}
