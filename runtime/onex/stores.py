"""``open_store(url)``: the ``Store`` a URL names, ``SqliteStore`` or ``PostgresStore``; ``store_for(settings)``: the
one a process's settings name, as the runtime, the CLI and the harness open it.

The factory lives apart from ``onex.store`` because it imports the backends, and each backend imports
``onex.store`` for the base class and the rows; in one module, the seam and its implementations would import each
other. The backends are imported when asked for, so SQLite never needs the PostgreSQL driver.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from onex.store import Store

if TYPE_CHECKING:
    from onex.settings import Settings

__all__ = ["open_store", "store_for"]


def open_store(url: str, *, sqlite_writer: str = "process", create: bool = True) -> Store:
    """The store for ``url``: ``sqlite:///PATH`` (``sqlite://:memory:`` for a throwaway) or ``postgresql://...``;
    ``sqlite_writer``: where a SQLite file's writes run (``Settings.sqlite_writer``, ``SqliteStore``'s ``writer``);
    ``create=False``: a SQLite file that does not exist is an error, not created (PostgreSQL never creates one)."""
    if url.startswith("sqlite:"):
        from onex._sqlite import SqliteStore

        return SqliteStore(url, writer=sqlite_writer, create=create)
    if url.startswith(("postgresql:", "postgres:")):
        from onex._postgres import PostgresStore  # type: ignore[import-not-found,unused-ignore]

        return PostgresStore(url)  # type: ignore[no-any-return,unused-ignore]
    raise ValueError(f"unsupported store URL {url!r}: expected sqlite:///PATH or postgresql://USER@HOST:PORT/DB")


def store_for(settings: Settings, *, create: bool = True) -> Store:
    """``open_store`` of ``settings.store_url()``, its SQLite file written where ``settings.sqlite_writer`` says."""
    return open_store(settings.store_url(), sqlite_writer=settings.sqlite_writer, create=create)
