"""Shared pytest configuration. Fixtures for each real component live in tests/fixtures/."""

from __future__ import annotations

import pytest

pytest_plugins = [
    "tests.fixtures.buses",
    "tests.fixtures.stores",
    "tests.fixtures.kafka",
    "tests.fixtures.postgres",
]


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"
