"""Property-based tests of the metastore's REST API from the OpenAPI document the gateway serves (schemathesis):
whatever an operation's schema allows (and, in the coverage phase, the edges just outside it), no request gets a
server error, and every response matches the status codes and the response schemas the document declares.

Only the operations tagged ``metastore`` (tests/test_http_schemathesis.py fuzzes the stamping API's). Bounded so the
module runs in about a minute: at most ``MAX_EXAMPLES`` generated cases per operation. Generated ids are random, so
most reads and changes of one entity are 404: ``test_a_seeded_entity_survives_fuzzed_changes`` fuzzes the routes of
one entity that exists, in the tenant the generated cases are sent as.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import httpx
import pytest
import schemathesis
from hypothesis import HealthCheck, settings
from onex.http import PREFIX, openapi_document
from schemathesis.checks import not_a_server_error
from schemathesis.core.result import Ok
from schemathesis.specs.openapi.checks import response_schema_conformance, status_code_conformance

from tests.fixtures.http import CliServer, onex_run_http

MAX_EXAMPLES = 15
TENANT = "fuzzed"
CHECKS = [not_a_server_error, status_code_conformance, response_schema_conformance]


@pytest.fixture(scope="module")
def fuzzed_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[CliServer]:
    # The real `onex run --http`, in a process of its own (Hypothesis reseeds this process's `random` per example).
    with onex_run_http(tmp_path_factory.mktemp("metastore-fuzz")) as cli:
        yield cli


@pytest.fixture(scope="module")
def seeded(fuzzed_server: CliServer) -> dict[str, str]:
    """One entity of each kind in tenant ``TENANT``: the ids the fuzzed changes of an entity go to."""
    with httpx.Client(base_url=fuzzed_server.url, timeout=30, headers={"x-tenant-id": TENANT}) as api:
        bodies = {
            "/api/v1/metadata": {"key": "seed", "value": {"a": 1}},
            "/api/v1/feature-flags": {"name": "seed", "variants": {"on": True}},
            "/api/v1/configurations": {"service_id": "seed", "name": "seed", "environment": "staging"},
        }
        ids = {}
        for path, body in bodies.items():
            response = api.post(path, json=body)
            assert response.status_code == 201, response.text
            ids[path] = response.json()["data"]["id"]
        return ids


document = schemathesis.openapi.from_dict(openapi_document())
schema = document.include(tag="metastore")
one_entity = document.include(tag="metastore", path_regex=r"\{id\}")  # filters of one include() all hold


@schema.parametrize()
@settings(max_examples=MAX_EXAMPLES, deadline=None, suppress_health_check=list(HealthCheck))
def test_no_generated_request_gets_a_server_error(case: Any, fuzzed_server: CliServer) -> None:
    case.call_and_validate(base_url=fuzzed_server.url, timeout=30, checks=CHECKS)


@one_entity.parametrize()
@settings(max_examples=MAX_EXAMPLES, deadline=None, suppress_health_check=list(HealthCheck))
def test_a_seeded_entity_survives_fuzzed_changes(case: Any, fuzzed_server: CliServer, seeded: dict[str, str]) -> None:
    prefix = next(p for p in seeded if case.path.startswith(f"{p}/"))
    case.path_parameters = {**(case.path_parameters or {}), "id": seeded[prefix]}
    case.headers = {**(case.headers or {}), "X-Tenant-Id": TENANT}
    case.headers.pop("If-Match", None)  # else nearly every change is a 409 on the version
    case.call_and_validate(base_url=fuzzed_server.url, timeout=30, checks=CHECKS)


def test_the_fuzzed_routes_are_the_served_document_s(fuzzed_server: CliServer) -> None:
    served = schemathesis.openapi.from_url(f"{fuzzed_server.url}{PREFIX}/openapi.json")
    assert served.raw_schema == openapi_document()
    operations = []
    for result in served.include(tag="metastore").get_all_operations():
        assert isinstance(result, Ok), result.err()
        operations.append(result.ok())
    assert len(operations) == 34
    assert {op.path for op in operations} >= {"/api/v1/metadata/{id}", "/health", "/api/v1/feature-flags/evaluate"}
