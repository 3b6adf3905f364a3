"""Stores: ``open_journal(url)`` for ``memory``, ``sqlite:///PATH`` and ``postgresql://...``."""

from __future__ import annotations

from contextlib import asynccontextmanager
from typing import AsyncIterator
from urllib.parse import parse_qs, urlsplit

from threadline.actors.journal import Journal
from threadline.actors.memory_journal import MemoryJournal

from .durable import DurableJournal, open_durable_journal
from .errors import StoreError
from .sql import SchemaTooNew

DEFAULT_STORE = "sqlite:///threadline.db"

__all__ = ["DEFAULT_STORE", "DurableJournal", "SchemaTooNew", "StoreError", "StoreURLError", "describe_store",
           "open_journal"]


class StoreURLError(StoreError, ValueError):
    """A store URL that names no store this threadline has."""


def describe_store(url: str) -> str:
    """The URL without a password, for logs."""
    try:
        parts = urlsplit(url)
        parts.port  # raises on a port that is not a number
    except ValueError:
        return f"{url.partition(':')[0]}://(a URL that does not parse)"
    if parts.password:
        netloc = parts.netloc.replace(f":{parts.password}@", ":***@")
        return parts._replace(netloc=netloc).geturl()
    return url


@asynccontextmanager
async def open_journal(url: str = DEFAULT_STORE) -> AsyncIterator[Journal]:
    """Open the store a URL names:

    - ``memory``: nothing survives the process;
    - ``sqlite:///relative/path.db``, ``sqlite:////absolute/path.db``, with an optional
      ``?synchronous=normal`` (default ``full``);
    - ``postgresql://user:password@host:port/dbname`` (any libpq connection URI).

    A store that cannot be used raises ``StoreError`` (``StoreURLError``, ``SchemaTooNew``),
    one line naming the store and the problem, never a password.
    """
    if url in ("memory", "memory:"):
        yield MemoryJournal()
        return
    parts = urlsplit(url)
    if parts.scheme == "sqlite":
        from .sqlite import SQLiteBackend

        path = parts.path[1:] if parts.path.startswith("/") else parts.path
        if not path:
            raise StoreURLError("sqlite store URL needs a path: sqlite:///threadline.db")
        sync = parse_qs(parts.query).get("synchronous", ["full"])[0]
        try:
            backend = SQLiteBackend(path, synchronous=sync)
        except ValueError as exc:
            raise StoreURLError(f"{url}: {exc}") from None
        async with open_durable_journal(backend) as journal:
            yield journal
    elif parts.scheme in ("postgresql", "postgres"):
        import psycopg

        from .postgres import PostgresBackend

        try:
            backend = PostgresBackend(url)
        except psycopg.Error:
            # Not the driver's words: they may quote the URL, password and all.
            raise StoreURLError(f"{describe_store(url)}: not a valid PostgreSQL URL") from None
        async with open_durable_journal(backend) as journal:
            yield journal
    else:
        raise StoreURLError(f"unknown store {url!r}: use memory, sqlite:///PATH or "
                            "postgresql://...")
