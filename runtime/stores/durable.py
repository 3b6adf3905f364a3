"""A durable ``Journal`` over a SQL backend, with group commit.

Writes (appends, thread creation) are queued and awaited; one writer task takes everything
queued and applies it in one transaction, in one worker-thread hop (``trio.to_thread``: the
drivers block, and psycopg's async API is asyncio-only). While that transaction runs, the next
batch gathers, so the batch grows with the load: durability costs a little latency and almost
no throughput. Reads run in worker threads on a small pool of their own connections.

When the store fails, every caller of the failed batch gets ``JournalUnavailable`` (nothing of
the batch is stored: it was one transaction), the broken connection is dropped, and the next
attempts reconnect with a backoff (0.1 s doubling to 5 s), failing fast in between.
"""

from __future__ import annotations

import logging
import time
from contextlib import asynccontextmanager
from typing import Any, AsyncIterator, Callable, Protocol, Sequence, TypeVar

import trio

from actors.errors import JournalUnavailable
from actors.journal import OpenRun
from actors.mailbox import Reply
from actors.messages import Accepted, Event, ThreadInfo, ThreadKey

from . import sql
from .sql import AppendOp, EnsureOp, Op

log = logging.getLogger("threadline.store")
T = TypeVar("T")

MAX_BATCH = 2000          # operations per transaction
IDLE_PING = 1.0           # seconds idle after which the writer checks its connection
BACKOFF_MIN, BACKOFF_MAX = 0.1, 5.0


class Backend(Protocol):
    """A SQL database, seen through blocking calls (each made in a worker thread)."""

    name: str
    errors: tuple[type[BaseException], ...]  # what the driver raises when the store fails

    def connect(self, *, writer: bool) -> Any: ...
    def close(self, conn: Any) -> None: ...
    def migrate(self, conn: Any) -> int: ...
    def cursor(self, conn: Any) -> Any: ...
    def begin(self, conn: Any) -> None: ...
    def commit(self, conn: Any) -> None: ...
    def rollback(self, conn: Any) -> None: ...
    def ping(self, conn: Any) -> None: ...
    def insert_events(self, cur: Any, rows: list[tuple[Any, ...]]) -> None: ...
    def load_data(self, raw: Any) -> dict[str, Any]: ...
    def is_broken(self, conn: Any, exc: BaseException) -> bool: ...


class DurableJournal:
    def __init__(self, backend: Backend, *, readers: int = 4, max_batch: int = MAX_BATCH) -> None:
        self.backend = backend
        self.max_batch = max_batch  # 1: one transaction per operation (the benchmark's baseline)
        self._pending: list[tuple[Op, Reply[Any]]] = []
        self._work = trio.Event()
        self._idle = trio.Event()
        self._writer: Any = None
        self._writer_used = 0.0
        self._cache = sql.ThreadCache()
        self._readers: list[Any] = []
        self._reader_slots = trio.CapacityLimiter(readers)
        self._retry_at = 0.0
        self._backoff = BACKOFF_MIN
        self.batches = 0       # transactions committed (for tests and the benchmark)
        self.operations = 0    # operations in them

    # -- the Journal protocol ------------------------------------------------------------------

    async def ensure_thread(self, key: ThreadKey, now: float) -> ThreadInfo:
        # The writer is the store's only writer, so its cache of thread rows is the truth: a
        # reactivation costs no I/O. Otherwise one batched look-up-or-insert for many threads.
        row = self._cache.rows.get(key)
        if row is not None:
            await trio.lowlevel.checkpoint()
            return ThreadInfo(key, row[0], row[1], row[2])
        return await self._submit(EnsureOp(key, now))

    async def append(self, events: Sequence[Event]) -> None:
        if events:
            await self._submit(AppendOp(tuple(events)))

    async def read(self, key: ThreadKey, after: int, upto: int | None = None,
                   limit: int = 1000) -> list[Event]:
        return await self._read(sql.read, key, after, upto, limit, self.backend.load_data)

    async def last_seq(self, key: ThreadKey) -> int:
        return await self._read(sql.last_seq, key)

    async def find_message(self, key: ThreadKey, client_msg_id: str) -> Accepted | None:
        return await self._read(sql.find_message, key, client_msg_id)

    async def threads(self, user_id: str) -> list[ThreadInfo]:
        return await self._read(sql.threads, user_id)

    async def open_runs(self) -> list[OpenRun]:
        return await self._read(sql.open_runs)

    # -- writes: group commit ----------------------------------------------------------------

    async def _submit(self, op: Op) -> Any:
        reply: Reply[Any] = Reply()
        self._pending.append((op, reply))
        self._work.set()
        return await reply.wait()

    async def run_writer(self, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        task_status.started()
        while True:
            if not self._pending:
                self._idle.set()
                await self._work.wait()
                # Woken by the first write; the writers woken by the last commit submit in the
                # same scheduling round: let them, and take them all in one transaction.
                await trio.lowlevel.cancel_shielded_checkpoint()
            self._work = trio.Event()
            self._idle = trio.Event()
            batch = self._pending[:self.max_batch]
            del self._pending[:self.max_batch]
            results = await self._write([op for op, _ in batch])
            for (_, reply), result in zip(batch, results):
                if isinstance(result, BaseException):
                    reply.fail(result)
                else:
                    reply.set(result)

    async def _write(self, ops: list[Op]) -> list[Any]:
        if trio.current_time() < self._retry_at:
            return [self._unavailable()] * len(ops)
        try:
            results = await trio.to_thread.run_sync(self._write_sync, ops)
        except self.backend.errors as exc:
            self._failed(exc)
            return [self._unavailable(exc)] * len(ops)
        self._recovered()
        self.batches += 1
        self.operations += len(ops)
        return results

    def _write_sync(self, ops: list[Op]) -> list[Any]:
        backend = self.backend
        conn = self._writer_connection()
        try:
            backend.begin(conn)
            results, rows = sql.apply_batch(backend.cursor(conn), ops, self._cache,
                                            backend.insert_events)
            backend.commit(conn)
            self._cache.committed(rows)
            self._writer_used = time.monotonic()
            return results
        except BaseException as exc:
            try:
                backend.rollback(conn)
            except Exception:
                pass
            if backend.is_broken(conn, exc):
                self._writer = None
                backend.close(conn)
            raise

    def _writer_connection(self) -> Any:
        """The writer's connection. One idle for a while is pinged first: a server restarted
        meanwhile has killed it, and finding out before the batch, with nothing written,
        lets the batch go to a fresh connection instead of failing."""
        backend = self.backend
        conn = self._writer
        if conn is not None and time.monotonic() - self._writer_used > IDLE_PING:
            try:
                backend.ping(conn)
            except backend.errors:
                self._writer = None
                backend.close(conn)
                conn = None
        if conn is None:
            conn = self._writer = backend.connect(writer=True)
        return conn

    # -- reads -------------------------------------------------------------------------------

    async def _read(self, fn: Callable[..., T], *args: Any) -> T:
        if trio.current_time() < self._retry_at:
            raise self._unavailable()
        async with self._reader_slots:
            # holder[0]: the connection, as the worker thread leaves it (made, kept, dropped)
            holder = [self._readers.pop() if self._readers else None]
            try:
                result = await trio.to_thread.run_sync(self._read_sync, holder, fn, args)
            except self.backend.errors as exc:
                self._failed(exc)
                raise self._unavailable(exc) from exc
            finally:
                if holder[0] is not None:
                    self._readers.append(holder[0])
        self._recovered()
        return result

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

    # -- failure and recovery ----------------------------------------------------------------

    def _failed(self, exc: BaseException) -> None:
        if self._retry_at == 0.0:
            log.error("%s failed: %s; retrying with backoff", self.backend.name, exc)
        self._retry_at = trio.current_time() + self._backoff
        self._backoff = min(self._backoff * 2, BACKOFF_MAX)

    def _recovered(self) -> None:
        if self._retry_at:
            log.warning("%s is back", self.backend.name)
        self._retry_at = 0.0
        self._backoff = BACKOFF_MIN

    def _unavailable(self, exc: BaseException | None = None) -> JournalUnavailable:
        detail = f": {str(exc).strip().splitlines()[0]}" if exc is not None and str(exc) else ""
        return JournalUnavailable(f"{self.backend.name} unavailable{detail}")

    async def flush(self, timeout: float = 10.0) -> None:
        """Wait until every queued write has been applied (or failed)."""
        with trio.move_on_after(timeout):
            while self._pending:
                await self._idle.wait()

    def close_connections(self) -> None:
        for conn in [self._writer, *self._readers]:
            if conn is not None:
                try:
                    self.backend.close(conn)
                except Exception:
                    pass
        self._writer, self._readers = None, []


@asynccontextmanager
async def open_durable_journal(backend: Backend, *, readers: int = 4,
                               max_batch: int = MAX_BATCH) -> AsyncIterator[DurableJournal]:
    """Connect, apply migrations (``SchemaTooNew`` if the store is newer than this code), run
    the writer; on exit, flush what is queued and close the connections."""
    journal = DurableJournal(backend, readers=readers, max_batch=max_batch)

    def prepare() -> int:
        conn = backend.connect(writer=True)
        try:
            return backend.migrate(conn)
        finally:
            backend.close(conn)

    version = await trio.to_thread.run_sync(prepare)
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
        await trio.to_thread.run_sync(journal.close_connections)
