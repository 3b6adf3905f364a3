"""Stores: ``open_journal(url)`` for ``memory``, ``sqlite:///PATH`` and ``postgresql://...``;
``open_durable_journal(backend)``, the lifecycle of a ``DurableJournal`` (connect, migrate, run
its writer; at exit, flush and close)."""

from __future__ import annotations

import logging
from contextlib import asynccontextmanager
from typing import AsyncIterator
from urllib.parse import parse_qs, urlsplit

import trio

from threadline.actors.journal import Journal
from threadline.actors.memory_journal import MemoryJournal

from .batch import Fence
from .durable import MAX_BATCH, DurableJournal
from .errors import StoreError
from .owner import StoreInUse
from .sql import Backend, SchemaTooNew, prepare

log = logging.getLogger("threadline.store")

DEFAULT_STORE = "sqlite:///threadline.db"

__all__ = ["DEFAULT_STORE", "MAX_BATCH", "DurableJournal", "SchemaTooNew", "StoreError",
           "StoreInUse", "StoreURLError", "describe_store", "open_durable_journal", "open_journal"]


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
            backend: Backend = SQLiteBackend(path, synchronous=sync)
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


@asynccontextmanager
async def open_durable_journal(backend: Backend, *, readers: int = 4, max_batch: int = MAX_BATCH,
                               fence: Fence | None = None) -> AsyncIterator[DurableJournal]:
    """Claim the store (one owner, or cluster nodes: ``StoreInUse`` otherwise), connect, apply
    migrations, run the writer; on exit, flush what is queued, close the connections and let
    the claim go. A store that cannot be used raises ``StoreError`` (``SchemaTooNew`` for one
    newer than this code), whose message is one line naming the store and the problem."""
    async with backend.claim(shared=fence is not None):  # a second owner is refused here
        journal = DurableJournal(backend, readers=readers, max_batch=max_batch, fence=fence)
        version = await trio.to_thread.run_sync(prepare, backend)
        log.info("%s ready (schema version %d)", backend.name, version)
        try:
            async with trio.open_nursery() as nursery:
                await nursery.start(journal.run_writer)
                try:
                    yield journal
                finally:
                    with trio.CancelScope(shield=True):
                        await journal.flush()
                    nursery.cancel_scope.cancel()
        finally:
            with trio.CancelScope(shield=True):
                await trio.to_thread.run_sync(journal.close_connections)
