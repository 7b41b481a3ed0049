"""Property-based tests of the HTTP gateway from the OpenAPI document it serves (schemathesis): whatever an
operation's schema allows (and, in the coverage phase, the edges just outside it), no request gets a server error,
and every response matches the status codes and the response schemas the document declares.

Bounded so the whole module runs in well under a minute: at most ``MAX_EXAMPLES`` generated cases per operation.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
import schemathesis
from hypothesis import HealthCheck, settings
from onex.http import PREFIX, openapi_document
from schemathesis.checks import not_a_server_error
from schemathesis.core.result import Ok
from schemathesis.specs.openapi.checks import response_schema_conformance, status_code_conformance

from tests.fixtures.http import CliServer, onex_run_http

MAX_EXAMPLES = 30


@pytest.fixture(scope="module")
def fuzzed_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[CliServer]:
    # The real `onex run --http`, in a process of its own: Hypothesis reseeds the global `random` of this process for
    # every example, and a server sharing it would draw the same "random" ids again and again.
    with onex_run_http(tmp_path_factory.mktemp("fuzz")) as cli:
        yield cli


# The document the server serves with these (default) settings; a test below checks that it is the one served.
# (Loaded eagerly: schemathesis' fixture-based lazy loading touches a pytest attribute pytest 9 no longer has.)
schema = schemathesis.openapi.from_dict(openapi_document())
stamping = schema.exclude(tag="metastore")  # the metastore's routes: tests/test_metastore_schemathesis.py


@stamping.parametrize()
@settings(max_examples=MAX_EXAMPLES, deadline=None, suppress_health_check=list(HealthCheck))
def test_no_generated_request_gets_a_server_error(case: Any, fuzzed_server: CliServer) -> None:
    case.call_and_validate(
        base_url=fuzzed_server.url,
        timeout=30,
        checks=[not_a_server_error, status_code_conformance, response_schema_conformance],
    )


def test_the_fuzzed_document_is_the_served_one_and_valid(fuzzed_server: CliServer) -> None:
    served = schemathesis.openapi.from_url(f"{fuzzed_server.url}{PREFIX}/openapi.json")
    assert served.raw_schema == openapi_document()
    operations = []
    for result in served.get_all_operations():
        assert isinstance(result, Ok), result.err()
        operations.append(result.ok())
    assert len(operations) == 12 + 34  # the stamping API's and the metastore's
