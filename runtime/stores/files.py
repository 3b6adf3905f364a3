"""Attachments in the SQL stores (``threadline.actors.attachments``; schema migration 5): the
writer's operations on them and the reads, in SQL both databases accept.

Every write goes through the store's one writer, in its group-committed transactions
(``durable.py``), interleaved with the events: on SQLite there is one writer at a time anyway,
and a chunk waits its turn like an event. So that uploads do not stretch other users' commits,
every other operation goes ahead of the chunks queued, and a transaction takes at most
``BATCH_FILE_BYTES`` of chunks (``take``; measured by ``bench/attachments.py``). Invariants:

- A user's bytes (``attachment_usage``) change in the transaction of the chunk or erasure
  that changes them, and a chunk is refused (``LimitReached``, nothing written) when it would
  take them past the quota it carries: the count is the store's, so it holds across the
  user's connections and, on PostgreSQL, across a cluster's nodes (the row is locked by the
  update).
- A record is visible to reads only once ``finished``; erasing an attachment takes its chunks,
  its record and its bytes from the user's count together (``erase``).
- An attachment becomes a thread's once, before the message that names it is stored: a claim
  (``claim``) checks and sets every one of a message's attachments in one operation of the
  one writer, so two threads cannot both take one, and the sweeper no longer counts it unsent.
"""

from __future__ import annotations

from typing import Any, Sequence

import attrs

from threadline.actors.attachments import Attachment
from threadline.actors.errors import LimitReached, NotFound

BATCH_FILE_BYTES = 256 * 1024  # bytes of chunks one transaction writes at most (one chunk)


@attrs.frozen(slots=True)
class FileOp:
    """A write to the user's attachments: ``kind`` is ``begin`` (``args``: name, content
    type, now), ``chunk`` (n, data, quota), ``finish`` (size, sha256), ``abort``, ``claim``
    (thread id, attachment ids: the attachment id is unused), ``sweep`` (now, unsent_ttl,
    upload_ttl: the user id is unused) or ``erase_user``."""

    user_id: str
    attachment_id: str
    kind: str
    args: tuple[Any, ...] = ()

    @property
    def size(self) -> int:
        return len(self.args[1]) if self.kind == "chunk" else 0


def take(pending: Sequence[Any], limit: int) -> tuple[list[Any], list[Any]]:
    """The next transaction's operations (``(op, done)`` pairs) and those left queued: every
    operation but an upload's chunk, in queue order, up to ``limit``; the chunks after them, in
    queue order, up to ``BATCH_FILE_BYTES`` (at least one). An upload has at most one chunk
    queued (it awaits each), so twenty uploads queue twenty chunks: were they taken in turn, a
    message would wait behind them all. Only chunks are passed over: the others keep their
    order, and no operation of an upload is queued before its chunks are stored."""
    batch: list[Any] = []
    rest: list[Any] = []
    chunk_bytes = 0
    for item in pending:
        op = item[0]
        if len(batch) >= limit:
            rest.append(item)
        elif isinstance(op, FileOp) and op.kind == "chunk":
            if chunk_bytes and chunk_bytes + op.size > BATCH_FILE_BYTES:
                rest.append(item)
            else:
                chunk_bytes += op.size
                batch.append(item)
        else:
            batch.append(item)
    return batch, rest


COLUMNS = "user_id, attachment_id, name, content_type, size, sha256, created_at, thread_id"


def _record(row: Sequence[Any]) -> Attachment:
    return Attachment(*row)


def apply(cur: Any, op: FileOp) -> Any:
    """Apply ``op`` in the caller's transaction: its result, or the exception to answer it
    with (the other operations of the transaction go on)."""
    u, a = op.user_id, op.attachment_id
    if op.kind == "begin":
        name, content_type, now = op.args
        cur.execute("INSERT INTO attachments (user_id, attachment_id, name, content_type, "
                    "sha256, size, created_at, thread_id, finished) VALUES (%s, %s, %s, %s, "
                    "'', 0, %s, NULL, 0)", (u, a, name, content_type, now))
        return None
    if op.kind == "chunk":
        n, data, quota = op.args
        cur.execute("SELECT finished FROM attachments WHERE user_id = %s AND attachment_id = %s",
                    (u, a))
        row = cur.fetchone()
        if row is None or row[0]:
            return ValueError(f"no upload {a} under way")
        cur.execute("INSERT INTO attachment_usage (user_id, bytes) VALUES (%s, 0) "
                    "ON CONFLICT DO NOTHING", (u,))
        cur.execute("UPDATE attachment_usage SET bytes = bytes + %s WHERE user_id = %s AND "
                    "bytes + %s <= %s", (len(data), u, len(data), quota))
        if cur.rowcount != 1:
            return LimitReached(f"at most {quota} bytes of attachments a user")
        cur.execute("INSERT INTO attachment_chunks (user_id, attachment_id, n, data) VALUES "
                    "(%s, %s, %s, %s)", (u, a, n, bytes(data)))
        return None
    if op.kind == "finish":
        size, sha256 = op.args
        cur.execute("UPDATE attachments SET finished = 1, size = %s, sha256 = %s WHERE "
                    "user_id = %s AND attachment_id = %s AND finished = 0", (size, sha256, u, a))
        if cur.rowcount != 1:
            return ValueError(f"no upload {a} under way")
        cur.execute(f"SELECT {COLUMNS} FROM attachments WHERE user_id = %s AND "
                    "attachment_id = %s", (u, a))
        return _record(cur.fetchone())
    if op.kind == "claim":
        return claim(cur, u, *op.args)
    if op.kind == "abort":
        return erase(cur, "user_id = %s AND attachment_id = %s AND finished = 0", (u, a))
    if op.kind == "sweep":
        now, unsent_ttl, upload_ttl = op.args
        return erase(cur, "(finished = 1 AND thread_id IS NULL AND created_at < %s) OR "
                     "(finished = 0 AND created_at < %s)",
                     (now - unsent_ttl, now - upload_ttl))
    if op.kind == "erase_user":
        return erase(cur, "user_id = %s", (u,))
    raise ValueError(f"unknown attachment operation {op.kind!r}")


def erase(cur: Any, where: str, params: Sequence[Any]) -> int:
    """Erase the attachments ``where`` selects: chunks, records, and their bytes from their
    users' counts; how many."""
    cur.execute(f"SELECT user_id, attachment_id FROM attachments WHERE {where}", tuple(params))
    found = cur.fetchall()
    for u, a in found:
        cur.execute("UPDATE attachment_usage SET bytes = bytes - (SELECT COALESCE(SUM(length("
                    "data)), 0) FROM attachment_chunks WHERE user_id = %s AND attachment_id = "
                    "%s) WHERE user_id = %s", (u, a, u))
        cur.execute("DELETE FROM attachment_chunks WHERE user_id = %s AND attachment_id = %s",
                    (u, a))
        cur.execute("DELETE FROM attachments WHERE user_id = %s AND attachment_id = %s", (u, a))
    return len(found)


def claim(cur: Any, user_id: str, thread_id: str, ids: Sequence[str]) -> Any:
    """Make the user's finished attachments ``ids`` the thread's, all or none: their records,
    or ``NotFound`` (none changed) when one is missing, unfinished or another thread's. The
    update re-checks each row it changes (``thread_id IS NULL``), so of two claims of one
    attachment at once (two nodes' writers) one changes it and the other sees it taken."""
    records = []
    for a in ids:
        cur.execute(f"SELECT {COLUMNS} FROM attachments WHERE user_id = %s AND "
                    "attachment_id = %s AND finished = 1", (user_id, a))
        row = cur.fetchone()
        if row is None or row[7] not in (None, thread_id):
            return NotFound(f"no attachment {a} for this thread")
        records.append(_record(row))
    taken: list[str] = []
    for record in records:
        if record.thread_id is not None:
            continue
        cur.execute("UPDATE attachments SET thread_id = %s WHERE user_id = %s AND "
                    "attachment_id = %s AND thread_id IS NULL",
                    (thread_id, user_id, record.attachment_id))
        if cur.rowcount != 1:  # taken meanwhile: give back what this claim took
            for a in taken:
                cur.execute("UPDATE attachments SET thread_id = NULL WHERE user_id = %s AND "
                            "attachment_id = %s", (user_id, a))
            return NotFound(f"no attachment {record.attachment_id} for this thread")
        taken.append(record.attachment_id)
    return [attrs.evolve(r, thread_id=thread_id) for r in records]


# -- reads ---------------------------------------------------------------------------------------

def attachment(cur: Any, user_id: str, attachment_id: str) -> Attachment | None:
    cur.execute(f"SELECT {COLUMNS} FROM attachments WHERE user_id = %s AND attachment_id = %s "
                "AND finished = 1", (user_id, attachment_id))
    row = cur.fetchone()
    return _record(row) if row else None


def chunks(cur: Any, user_id: str, attachment_id: str, first: int, count: int) -> list[bytes]:
    cur.execute("SELECT c.data FROM attachment_chunks c JOIN attachments a ON a.user_id = "
                "c.user_id AND a.attachment_id = c.attachment_id WHERE c.user_id = %s AND "
                "c.attachment_id = %s AND a.finished = 1 AND c.n >= %s AND c.n < %s ORDER BY "
                "c.n", (user_id, attachment_id, first, first + count))
    return [bytes(row[0]) for row in cur.fetchall()]


def total_bytes(cur: Any) -> int:
    cur.execute("SELECT COALESCE(SUM(bytes), 0) FROM attachment_usage")
    return int(cur.fetchone()[0])


def user_bytes(cur: Any, user_id: str) -> int:
    cur.execute("SELECT bytes FROM attachment_usage WHERE user_id = %s", (user_id,))
    row = cur.fetchone()
    return int(row[0]) if row else 0
