"""Shared pytest configuration. Fixtures for each real component live in tests/fixtures/."""

from __future__ import annotations

import pytest

# The repository's own `nodes` package is imported first, so it owns the name `nodes` in this process whatever order
# tests run in; other project roots (test projects, the broken-contract corpus) get private aliases
# (see onex.contracts). Without this, the first test to load another root would decide.
import nodes  # noqa: F401

pytest_plugins = [
    "tests.fixtures.buses",
    "tests.fixtures.stores",
    "tests.fixtures.kafka",
    "tests.fixtures.postgres",
    "tests.fixtures.redis",
]


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


# Envelopes the runtime builds without validation (``OnexEnvelopeV1.built``) are validated and compared throughout
# the test suite, so code that builds one from a value of the wrong type fails here.
import onex.envelope  # noqa: E402

onex.envelope.CHECK_BUILT = True
