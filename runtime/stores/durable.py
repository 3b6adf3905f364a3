"""A durable ``Journal`` over a SQL backend, with group commit.

Writes are checked (``threadline.actors.journal.check_storable``), queued and awaited, or with
``append_nowait`` answered by a callback (a thread actor queues its next event before the last
one is durable). One writer task applies everything queued in one transaction, in one
worker-thread hop (``trio.to_thread``: the drivers block; psycopg's async API is asyncio-only),
and answers the writes in the order they were queued. While it runs the next batch gathers, so
the batch grows with the load. Reads run in worker threads on a pool (``connections.py``).

A failure is one of two kinds, and the backend says which (``Backend.is_outage``):

- an outage (the connection or server gone, the disk full or failing, the database locked):
  every caller of the batch gets ``JournalUnavailable`` (it was one transaction: nothing is
  stored), a broken connection is dropped, and reads and writes fail fast while they retry
  with a backoff (0.1 s doubling to 5 s);
- anything else is one operation's data (a value the driver cannot encode or the database
  refuses, a JSON encoder error): no backoff; the batch is split in halves, each its own
  transaction, until the guilty operation is alone and gets ``Unstorable``: everyone else's
  write is committed. ``check_storable`` refuses the known cases before they are queued; this
  is the net for the rest.

The writer never dies of one batch (any exception but trio's cancellation fails that batch's
callers, and it goes on). Once it ends (cancelled at shutdown), every queued and later write
gets ``JournalUnavailable`` at once: an append is shielded, and must not wait forever.

One concept, the journal over a backend: its methods are the ``Journal`` protocol (events, the
tree, attachments), each a guard and a hop to the writer or the read pool, which share the
outage state; the SQL they run is ``sql.py``, ``batch.py`` and ``files.py``.
"""

from __future__ import annotations

import logging
import time
from typing import Any, Callable, Sequence, TypeVar

import trio

from threadline.actors.errors import JournalUnavailable, NotFound, StoreConflict, Unstorable
from threadline.actors.journal import (Done, OpenRun, check_storable, check_storable_key,
                                       storable_key, unstorable_reason)
from threadline.actors.reply import Reply
from threadline.actors.messages import Accepted, Event, ThreadInfo, ThreadKey
from threadline.actors.attachments import Attachment
from threadline.actors.tree import Node, Placed
from threadline.actors.usage import Usage
from threadline.actors.stats import SECONDS_BUCKETS, SIZE_BUCKETS, Histogram, StoreStatistics

from . import batch, files, sql, tokens
from .connections import Connections, commit_unknown
from .errors import first_line
from .outage import Outage
from .files import FileOp
from .tokens import UsageOp
from .sql import AppendOp, Backend, DeleteOp, EnsureOp, Op

__all__ = ["Backend", "DurableJournal", "MAX_BATCH"]

log = logging.getLogger("threadline.store")
T = TypeVar("T")

MAX_BATCH = 2000          # operations per transaction
Pending = tuple[Op, Done]  # a Reply, or whoever queued with append_nowait


class DurableJournal:
    """The ``Journal`` contract over ``backend``; ``run_writer`` must run (see
    ``threadline.stores.open_durable_journal``). The figures below are for ``/metrics``."""

    def __init__(self, backend: Backend, *, readers: int = 4, max_batch: int = MAX_BATCH,
                 fence: batch.Fence | None = None) -> None:
        self.backend = backend
        self.fence = fence  # a cluster node's (``threadline.cluster.fence``), else None
        self.max_batch = max_batch  # 1: one transaction per operation (the benchmark's baseline)
        self._pending: list[Pending] = []
        self._inflight: list[Pending] = []
        self._closed = False
        self._work = trio.Event()
        self._idle = trio.Event()
        self._cache = batch.ThreadCache(keeps=fence.keeps if fence is not None else None)
        self._connections = Connections(backend, readers=readers)
        self._outage = Outage(backend.name)
        # Figures kept as things happen (``StoreStatistics`` says what each counts).
        self.batches = self.operations = self.rejected = 0
        self.commit_seconds, self.batch_size = Histogram(SECONDS_BUCKETS), Histogram(SIZE_BUCKETS)

    # -- the Journal protocol ------------------------------------------------------------------

    async def ensure_thread(self, key: ThreadKey, now: float) -> ThreadInfo:
        # The writer is the store's only writer, so its cache of thread rows is the truth once
        # nothing is queued: a reactivation costs no I/O. Otherwise one batched
        # look-up-or-insert for many threads, answered after the writes queued before it.
        row = self._cache.rows.get(key)
        if row is not None and not (self._pending or self._inflight):
            await trio.lowlevel.checkpoint()
            return ThreadInfo(key, row[0], row[1], row[2])
        try:
            check_storable_key(key)
        except Unstorable:
            await self._refused()
            raise
        return await self._submit(EnsureOp(key, now))

    async def append(self, events: Sequence[Event]) -> None:
        if not events:
            return
        try:
            check_storable(events)
        except Unstorable:
            await self._refused()
            raise
        await self._submit(AppendOp(tuple(events)))

    def append_nowait(self, events: Sequence[Event], done: Done) -> None:
        if self._closed:
            done.fail(JournalUnavailable(f"{self.backend.name} is closed"))
            return
        try:
            check_storable(events)
        except Unstorable as exc:
            self.rejected += 1
            done.fail(exc)
            return
        self._pending.append((AppendOp(tuple(events)), done))
        self._work.set()

    # A key or client_msg_id that no store can hold was never stored: reading it answers
    # "nothing" without asking the store (PostgreSQL would refuse the parameter).

    async def run_events(self, key: ThreadKey, run_id: str, after: int = 0) -> list[Event]:
        if not storable_key(key) or unstorable_reason(run_id) is not None:
            return await _nothing([])
        return await self.read_with(sql.run_events, key, run_id, after,
                                    self.backend.load_data)

    async def read(self, key: ThreadKey, after: int, upto: int | None = None,
                   limit: int = 1000, max_bytes: int | None = None) -> list[Event]:
        if not storable_key(key):
            return await _nothing([])
        return await self.read_with(sql.read, key, after, upto, limit, self.backend.load_data,
                                    max_bytes, self.backend.dialect.data_bytes)

    async def last_seq(self, key: ThreadKey) -> int:
        return await self.read_with(sql.last_seq, key) if storable_key(key) else await _nothing(0)

    async def find_message(self, key: ThreadKey, client_msg_id: str) -> Accepted | None:
        if not storable_key(key) or unstorable_reason(client_msg_id) is not None:
            return await _nothing(None)
        return await self.read_with(sql.find_message, key, client_msg_id)

    async def threads(self, user_id: str) -> list[ThreadInfo]:
        if unstorable_reason(user_id) is not None:
            return await _nothing([])
        return await self.read_with(sql.threads, user_id)

    async def threads_page(self, user_id: str, limit: int,
                           before: tuple[float, str] | None = None) -> list[ThreadInfo]:
        if unstorable_reason(user_id) is not None or (
                before is not None and unstorable_reason(before[1]) is not None):
            return await _nothing([])  # no thread id sorts there that could be stored
        return await self.read_with(sql.threads_page, user_id, limit, before)

    async def thread_info(self, key: ThreadKey) -> ThreadInfo | None:
        if not storable_key(key):
            return await _nothing(None)
        return await self.read_with(sql.get_thread, key)

    async def delete_thread(self, key: ThreadKey) -> bool:
        # Through the writer: after the writes queued before it, and out of its cache.
        if not storable_key(key):
            return await _nothing(False)
        return await self._submit(DeleteOp(key))

    async def last_seqs(self, keys: list[ThreadKey]) -> dict[ThreadKey, int]:
        """The last seq of each of ``keys`` that exists, in one look-up per 400 keys (a cluster
        node's poll of the threads it follows; not part of the ``Journal`` protocol)."""
        return await self.read_with(batch.last_seqs, [k for k in keys if storable_key(k)])

    async def open_runs(self, key: ThreadKey | None = None) -> list[OpenRun]:
        return await self.read_with(sql.open_runs, key)

    # -- the conversation tree: ids a store could never hold were never stored ------------------

    async def node(self, key: ThreadKey, run_id: str) -> Node | None:
        if not storable_key(key) or unstorable_reason(run_id) is not None:
            return await _nothing(None)
        return await self.read_with(sql.node, key, run_id)

    async def message_node(self, key: ThreadKey, message_id: str) -> Node | None:
        if not storable_key(key) or unstorable_reason(message_id) is not None:
            return await _nothing(None)
        return await self.read_with(sql.message_node, key, message_id)

    async def newest_node(self, key: ThreadKey) -> Node | None:
        if not storable_key(key):
            return await _nothing(None)
        return await self.read_with(sql.newest_node, key)

    async def branch(self, key: ThreadKey, run_id: str, limit: int) -> list[Node]:
        if not storable_key(key) or unstorable_reason(run_id) is not None or limit <= 0:
            return await _nothing([])
        return await self.read_with(sql.branch, key, run_id, limit)

    async def node_events(self, key: ThreadKey, nodes: Sequence[Node]) -> list[Event]:
        if not storable_key(key):
            return await _nothing([])
        return await self.read_with(sql.node_events, key, list(nodes), self.backend.load_data)

    async def turns(self, key: ThreadKey, after: int, limit: int) -> list[Placed]:
        if not storable_key(key) or limit <= 0:
            return await _nothing([])
        return await self.read_with(sql.turns, key, after, limit)

    # -- attachments (``files.py``): writes through the writer, reads on the read pool ----------

    async def begin_upload(self, user_id: str, attachment_id: str, name: str,
                           content_type: str, now: float) -> None:
        await self._submit(FileOp(user_id, attachment_id, "begin", (name, content_type, now)))

    async def write_chunk(self, user_id: str, attachment_id: str, n: int, data: bytes,
                          quota: int) -> None:
        await self._submit(FileOp(user_id, attachment_id, "chunk", (n, bytes(data), quota)))

    async def finish_upload(self, user_id: str, attachment_id: str, size: int,
                            sha256: str) -> Attachment:
        return await self._submit(FileOp(user_id, attachment_id, "finish", (size, sha256)))

    async def abort_upload(self, user_id: str, attachment_id: str) -> None:
        await self._submit(FileOp(user_id, attachment_id, "abort"))

    async def claim_attachments(self, user_id: str, thread_id: str,
                                attachment_ids: Sequence[str]) -> list[Attachment]:
        if unstorable_reason(user_id + thread_id + "".join(attachment_ids)) is not None:
            await self._refused()
            raise NotFound("no such attachment for this thread")
        return await self._submit(FileOp(user_id, "", "claim",
                                         (thread_id, tuple(attachment_ids))))

    async def attachment(self, user_id: str, attachment_id: str) -> Attachment | None:
        if unstorable_reason(user_id + attachment_id) is not None:
            return await _nothing(None)
        return await self.read_with(files.attachment, user_id, attachment_id)

    async def attachment_chunks(self, user_id: str, attachment_id: str, first: int,
                                count: int) -> list[bytes]:
        if unstorable_reason(user_id + attachment_id) is not None:
            return await _nothing([])
        return await self.read_with(files.chunks, user_id, attachment_id, first, count)

    async def attachment_bytes(self, user_id: str) -> int:
        if unstorable_reason(user_id) is not None:
            return await _nothing(0)
        return await self.read_with(files.user_bytes, user_id)

    async def stored_attachment_bytes(self) -> int:
        return await self.read_with(files.total_bytes)

    async def sweep_attachments(self, now: float, unsent_ttl: float,
                                upload_ttl: float) -> int:
        return await self._submit(FileOp("", "", "sweep", (now, unsent_ttl, upload_ttl)))

    async def delete_user_attachments(self, user_id: str) -> int:
        return await self._submit(FileOp(user_id, "", "erase_user"))

    # -- tokens (``tokens.py``): a report through the writer, totals on the read pool -----------

    async def record_usage(self, key: ThreadKey, run_id: str, day: str, month: str,
                           usage: Usage) -> None:
        if not storable_key(key) or unstorable_reason(run_id + (usage.model or "")):
            raise Unstorable("a usage report the store cannot hold")
        await self._submit(UsageOp(key.user_id, key.thread_id, "record", run_id,
                                   (day, month), usage))

    async def usage_totals(self, user_id: str, day: str, month: str) -> tuple[Usage, Usage]:
        if unstorable_reason(user_id) is not None:
            return await _nothing((Usage(), Usage()))
        return await self.read_with(tokens.totals, user_id, day, month)

    async def delete_user_usage(self, user_id: str) -> None:
        if unstorable_reason(user_id) is None:
            await self._submit(UsageOp(user_id, kind="erase_user"))

    async def read_with(self, fn: Callable[..., T], *args: Any) -> T:
        """``fn(cursor, *args)`` (a blocking read: the queries here, a cluster node's batched
        feed reads) in a worker thread on the read pool. An outage raises ``JournalUnavailable``
        (and starts the backoff); any other error is raised as it is, without backoff."""
        if self._outage.waiting():
            raise self._outage.unavailable()
        try:
            result = await self._connections.read(fn, *args)
        except Exception as exc:
            if not self.backend.is_outage(exc):
                raise
            self._outage.failed(exc)
            raise self._outage.unavailable(exc) from exc
        self._outage.recovered()
        return result

    # -- writes: group commit ----------------------------------------------------------------

    async def _refused(self) -> None:
        self.rejected += 1
        await trio.lowlevel.checkpoint()

    async def _submit(self, op: Op) -> Any:
        if self._closed:
            await trio.lowlevel.checkpoint()
            raise JournalUnavailable(f"{self.backend.name} is closed")
        reply: Reply[Any] = Reply()
        self._pending.append((op, reply))
        self._work.set()
        return await reply.wait()

    async def run_writer(self, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """The one writer: runs until cancelled; then fails what is queued (see the header)."""
        task_status.started()
        try:
            while True:
                if not self._pending:
                    self._idle.set()
                    await self._work.wait()
                    # Woken by the first write; the writers woken by the last commit submit in
                    # the same scheduling round: let them, and take them all in one transaction.
                    await trio.lowlevel.cancel_shielded_checkpoint()
                self._work = trio.Event()
                self._idle = trio.Event()
                batch, self._pending = files.take(self._pending, self.max_batch)
                self._inflight = batch
                try:
                    await self._apply(batch)
                except Exception as exc:  # a bug of ours: it fails this batch, not the store
                    log.exception("%s: a batch failed", self.backend.name)
                    for _, reply in batch:
                        reply.fail(self._outage.unavailable(exc))
                self._inflight = []
        finally:
            self._closed = True
            closed = JournalUnavailable(f"{self.backend.name} is closed")
            for _, reply in [*self._inflight, *self._pending]:
                reply.fail(closed)  # a no-op for those already answered
            self._inflight, self._pending = [], []
            self._idle.set()

    async def _apply(self, batch: list[Pending]) -> None:
        """Apply ``batch`` in one transaction and answer each caller; on an error that is not
        an outage, in two halves, recursively (at most ``2 * len(batch) - 1`` transactions,
        about ``2 * log2(len(batch))`` for one bad operation among good ones)."""
        if self._outage.waiting():
            for _, reply in batch:
                reply.fail(self._outage.unavailable())
            return
        try:
            results, seconds = await trio.to_thread.run_sync(
                self._write_sync, [op for op, _ in batch])
        except Exception as exc:
            if self.backend.is_outage(exc):
                self._outage.failed(exc)
                if commit_unknown(exc):
                    # The commit's answer is what was lost: the batch may be stored after all.
                    # Its threads' rows are read back before they are written again, and each
                    # thread reloads what the store holds (``StoreConflict``).
                    self._forget(batch)
                    for _, reply in batch:
                        lost = StoreConflict("the store's answer to a commit was lost; the "
                                             "write may be stored")
                        lost.__cause__ = exc
                        reply.fail(lost)
                    return
                for _, reply in batch:
                    reply.fail(self._outage.unavailable(exc))
            elif len(batch) == 1:
                self._reject(batch[0], exc)
            else:
                half = len(batch) // 2
                await self._apply(batch[:half])
                await self._apply(batch[half:])
            return
        self._outage.recovered()
        self.batches += 1
        self.operations += len(batch)
        self.commit_seconds.observe(seconds)
        self.batch_size.observe(len(batch))
        for (_, reply), result in zip(batch, results):
            if isinstance(result, BaseException):
                reply.fail(result)
            else:
                reply.set(result)

    def _forget(self, items: list[Pending]) -> None:
        keys = {batch.op_key(op) for op, _ in items}
        self._cache.forget(keys.__contains__)

    def _reject(self, item: Pending, exc: Exception) -> None:
        """One operation the store refused on its own. A conflict (a key the store holds
        already: another writer, a lost commit answer) is the server's, not the client's:
        ``StoreConflict``, and the thread's cached row is dropped, so the thread reloads what
        the store holds. Bad data is ``Unstorable``; anything else is a bug of ours."""
        op, reply = item
        self.rejected += 1
        key = batch.op_key(op)
        kind, what = type(exc).__name__, first_line(exc)[:200]
        # The key and the error's first line: never the data, which may be anything a user sent.
        error: Exception
        if self.backend.is_conflict(exc):
            self._forget([item])
            log.warning("%s: a write of %s conflicts with what the store holds (%s: %s); the "
                        "thread reloads from the store", self.backend.name, key, kind, what)
            error = StoreConflict("the store's copy of this thread changed under this server; "
                                  "the thread reloads it: send again (a client_msg_id makes "
                                  "that safe)")
        elif self.backend.is_bad_data(exc):
            log.warning("%s refused a write of %s: %s: %s", self.backend.name, key, kind, what)
            error = Unstorable(f"the store refused this data ({kind})")
        else:
            log.error("%s failed a write of %s: %s: %s", self.backend.name, key, kind, what)
            error = JournalUnavailable(f"the store failed this write ({kind})")
        error.__cause__ = exc
        reply.fail(error)

    def _write_sync(self, ops: list[Op]) -> tuple[list[Any], float]:
        """One transaction, in a worker thread: the results, and the seconds it took."""
        started = time.perf_counter()
        results, rows = self._connections.transaction_sync(
            batch.apply_batch, ops, self._cache, self.backend, self.fence)
        self._cache.committed(rows)
        return results, time.perf_counter() - started

    async def flush(self, timeout: float = 10.0) -> None:
        """Wait (at most ``timeout`` seconds) until every queued write has been answered."""
        with trio.move_on_after(timeout):
            while self._pending or not self._idle.is_set():
                await self._idle.wait()

    def forget(self, drop: Callable[[ThreadKey], bool]) -> None:
        """Drop the cached rows of the threads ``drop`` names (a cluster node's shards let
        go). Blocks only while a commit updates the cache."""
        self._cache.forget(drop)

    @property
    def outages(self) -> int:
        return self._outage.count

    def statistics(self) -> StoreStatistics:
        return StoreStatistics(self.batches, self.operations, self.outages, self.rejected,
                               self.commit_seconds, self.batch_size)

    def close_connections(self) -> None:
        """Close the store's connections (``Connections.close_sync``: blocks)."""
        self._connections.close_sync()


async def _nothing(value: T) -> T:
    await trio.lowlevel.checkpoint()
    return value
