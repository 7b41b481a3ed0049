"""The SQLite store's migrations: the shipped numbered scripts (``migrations/sqlite``), split into statements for
``sqlite3``, and the table that records which were applied (``SqliteStore.upgrade``)."""

from __future__ import annotations

import sqlite3
from typing import Final

from onex import store
from onex.exceptions import StoreError
from onex.store import load_migrations

_MIGRATIONS_DDL: Final = """
CREATE TABLE IF NOT EXISTS schema_migrations (
    version    INTEGER PRIMARY KEY,
    name       TEXT NOT NULL,
    checksum   TEXT NOT NULL,
    applied_at TEXT NOT NULL
)
"""


class Migration(store.Migration):
    """A SQLite migration: the shared numbered script, split into statements for ``sqlite3``."""

    def statements(self) -> list[str]:
        """The statements of the script, one by one (``sqlite3`` executes one statement per call)."""
        statements: list[str] = []
        buffer = ""
        for line in self.sql.splitlines(keepends=True):
            buffer += line
            # complete_statement knows about string literals, comments and CREATE TRIGGER ... END.
            if sqlite3.complete_statement(buffer):
                if _has_code(buffer):
                    statements.append(buffer.strip())
                buffer = ""
        if _has_code(buffer):
            raise StoreError(f"migration {self.name}: the last statement has no terminating semicolon")
        return statements


def _has_code(text: str) -> bool:
    return any(line.strip() and not line.strip().startswith("--") for line in text.splitlines())


def _migrations() -> list[Migration]:
    """The SQLite migrations shipped in the package, by version."""
    return load_migrations("sqlite", Migration)
