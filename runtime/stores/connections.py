"""The connections of one durable store: the writer's, and a pool for reads.

The drivers block (psycopg's async API is asyncio-only), so every call on a connection runs
in a worker thread (``trio.to_thread``); ``DurableJournal`` decides when, this class only how.

Invariants:

- The writer's connection is used by one worker thread at a time: the journal's one writer
  applies one batch at a time. One idle for ``IDLE_PING`` seconds is pinged before a batch: a
  server restarted meanwhile has killed it, and finding out before the batch, with nothing
  written, lets the batch go to a fresh connection instead of failing.
- Reads run in worker threads on a small pool of connections: at most ``readers`` at once (a
  read waits for a slot), so at most ``readers`` connections are pooled. A connection is either
  in the pool or held by exactly one read, never both.
- A broken connection (``Backend.is_broken``) is closed and dropped, never pooled or kept; the
  next use opens a fresh one. A read that finds a pooled connection broken is tried once more
  on a fresh connection (reads are idempotent); a write is not (the journal decides).
- Nothing here retries with backoff or tells an outage from bad data: errors are raised as the
  driver raises them, those of the commit itself with a note (``commit_unknown``): whether the
  transaction was stored is then unknown, and the journal must read back what it holds.
"""

from __future__ import annotations

import time
from typing import Any, Callable, TypeVar

import trio

from .sql import Backend

__all__ = ["COMMIT_UNKNOWN", "Connections", "IDLE_PING", "commit_unknown"]

#: The note on an error raised by the commit itself: the transaction may have been stored
#: (the connection dropped after the server committed, before its answer came back).
COMMIT_UNKNOWN = "threadline: raised by COMMIT; the transaction may be stored"


def commit_unknown(exc: BaseException) -> bool:
    return COMMIT_UNKNOWN in getattr(exc, "__notes__", ())

T = TypeVar("T")

IDLE_PING = 1.0           # seconds idle after which the writer's connection is checked


class Connections:
    """The writer's connection and the readers' pool of ``backend``, opened on first use."""

    def __init__(self, backend: Backend, *, readers: int = 4) -> None:
        self.backend = backend
        self._writer: Any = None
        self._writer_used = 0.0
        self._readers: list[Any] = []
        self._reader_slots = trio.CapacityLimiter(readers)

    # -- the writer's ------------------------------------------------------------------------

    def transaction_sync(self, fn: Callable[..., T], *args: Any) -> T:
        """``fn(cursor, *args)`` in one transaction on the writer's connection, committed.
        Blocks: call it in a worker thread. On any error the transaction is rolled back (and a
        broken connection dropped), and the error raised as it is."""
        backend = self.backend
        conn = self._writer_connection()
        committing = False
        try:
            backend.begin(conn)
            result = fn(backend.cursor(conn), *args)
            committing = True
            backend.commit(conn)
            self._writer_used = time.monotonic()
            return result
        except BaseException as exc:
            if committing and isinstance(exc, Exception):
                exc.add_note(COMMIT_UNKNOWN)
            try:
                backend.rollback(conn)
            except Exception:
                pass
            if backend.is_broken(conn, exc):
                self._writer = None
                backend.close(conn)
            raise

    def _writer_connection(self) -> Any:
        """The writer's connection, pinged first if idle (see the header)."""
        backend = self.backend
        conn = self._writer
        if conn is not None and time.monotonic() - self._writer_used > IDLE_PING:
            try:
                backend.ping(conn)
            except Exception:
                self._writer = None
                backend.close(conn)
                conn = None
        if conn is None:
            conn = self._writer = backend.connect(writer=True)
        return conn

    # -- the readers' ------------------------------------------------------------------------

    async def read(self, fn: Callable[..., T], *args: Any) -> T:
        """``fn(cursor, *args)`` in a worker thread on a pooled connection. Blocks for a slot
        (at most ``readers`` reads at once), then for the thread, which a cancel does not
        abandon; raises what the driver raises."""
        async with self._reader_slots:
            # holder[0]: the connection, as the worker thread leaves it (made, kept, dropped)
            holder = [self._readers.pop() if self._readers else None]
            try:
                return await trio.to_thread.run_sync(self._read_sync, holder, fn, args)
            finally:
                if holder[0] is not None:
                    self._readers.append(holder[0])

    def _read_sync(self, holder: list[Any], fn: Callable[..., T], args: tuple[Any, ...]) -> T:
        backend = self.backend
        for attempt in (1, 2):
            fresh = holder[0] is None
            if fresh:
                holder[0] = backend.connect(writer=False)
            conn = holder[0]
            try:
                return fn(backend.cursor(conn), *args)
            except BaseException as exc:
                if not backend.is_broken(conn, exc):
                    raise
                holder[0] = None
                backend.close(conn)
                if fresh or attempt == 2:
                    raise
                # A pooled connection that a server restart killed: reads are idempotent,
                # so one more try on a fresh connection.
        raise AssertionError("unreachable")

    # -- all ---------------------------------------------------------------------------------

    def close_sync(self) -> None:
        """Close the writer's connection and the pooled ones (errors ignored); the next use
        opens fresh ones. Blocks: call it in a worker thread, or once nothing runs."""
        for conn in [self._writer, *self._readers]:
            if conn is not None:
                try:
                    self.backend.close(conn)
                except Exception:
                    pass
        self._writer, self._readers = None, []
