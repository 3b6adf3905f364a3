"""The batch algorithm of the SQL stores: the operations one transaction of the writer applies,
and the writer's cache of thread rows.

Invariants: a batch's effect is that of its operations applied one after another in their order
(rows are gathered and written a statement per table, and a deletion first writes what was
gathered before it); an operation that cannot apply (an append that does not follow its
thread's last seq) is answered with its error and skipped, the others apply. Every function
here is blocking and runs in the writer's worker thread, inside the caller's transaction.
"""

from __future__ import annotations

import json
import threading
from typing import Any, Callable, Collection, Protocol, Sequence

from threadline.actors.journal import TITLE_LENGTH, run_transition
from threadline.actors.messages import USER_MESSAGE, Event, ThreadInfo, ThreadKey

from . import files, tokens
from .files import FileOp
from .tokens import UsageOp
from .sql import AppendOp, DeleteOp, EnsureOp, Op


class Rows(Protocol):
    """How a backend writes a batch's two big row sets (``sql.Backend`` has plain ones)."""

    def insert_events(self, cur: Any, rows: list[tuple[Any, ...]]) -> None: ...
    def update_threads(self, cur: Any, rows: list[tuple[Any, ...]]) -> None: ...


KEYS_PER_QUERY = 400  # (user_id, thread_id) pairs per look-up: well under SQLite's 32,766 params


def dumps(data: dict[str, Any]) -> str:
    return json.dumps(data, separators=(",", ":"), ensure_ascii=False, default=str)


def op_key(op: Op) -> ThreadKey:
    """The thread an operation writes (an attachment's: its user's, with no thread id)."""
    if isinstance(op, (FileOp, UsageOp)):
        return ThreadKey(op.user_id, "")
    return op.events[0].key if isinstance(op, AppendOp) else op.key


def load_threads(cur: Any, keys: list[ThreadKey]) -> dict[ThreadKey, list[Any]]:
    """``{key: [last_seq, created_at, updated_at, title]}`` of those keys that exist."""
    found: dict[ThreadKey, list[Any]] = {}
    for i in range(0, len(keys), KEYS_PER_QUERY):
        chunk = keys[i:i + KEYS_PER_QUERY]
        values = ",".join(["(%s, %s)"] * len(chunk))
        cur.execute(
            f"WITH k(u, t) AS (VALUES {values}) SELECT th.user_id, th.thread_id, th.last_seq, "
            "th.created_at, th.updated_at, th.title FROM threads th JOIN k ON th.user_id = k.u "
            "AND th.thread_id = k.t",
            [x for key in chunk for x in (key.user_id, key.thread_id)])
        for user_id, thread_id, last_seq, created, updated, title in cur.fetchall():
            found[ThreadKey(user_id, thread_id)] = [last_seq, created, updated, title]
    return found


def last_seqs(cur: Any, keys: list[ThreadKey]) -> dict[ThreadKey, int]:
    return {key: row[0] for key, row in load_threads(cur, keys).items()}


class Fence(Protocol):
    """What a cluster node adds to each transaction (``threadline.cluster.fence``)."""

    def check(self, cur: Any, keys: Sequence[ThreadKey]) -> set[ThreadKey]: ...
    def notify(self, cur: Any, keys: Collection[ThreadKey]) -> None: ...
    def keeps(self, key: ThreadKey) -> bool: ...
    def error(self, key: ThreadKey) -> Exception: ...


class ThreadCache:
    """The writer's copy of ``threads`` rows (``[last_seq, created_at, updated_at, title]``), so that a
    batch need not read them back: the journal is the only writer of its store (in a cluster,
    of the shards its node holds: only their rows are kept, see ``committed`` and ``forget``).
    Bounded; an entry missing is read from the store. Rows change only when a batch commits,
    and a thread actor is the only writer of its thread, so readers on the trio side see
    settled rows."""

    def __init__(self, size: int = 250_000, keeps: Callable[[ThreadKey], bool] | None = None
                 ) -> None:
        self.size = size
        self.keeps = keeps  # None: every row (a store with one writer)
        self.rows: dict[ThreadKey, list[Any]] = {}
        self._lock = threading.Lock()  # committed (writer's thread) against forget (trio's)

    def load(self, cur: Any, keys: list[ThreadKey]) -> dict[ThreadKey, list[Any]]:
        """Copies of the rows of ``keys`` that exist (the caller may change them)."""
        rows = self.rows
        missing = [k for k in keys if k not in rows]
        found = load_threads(cur, missing) if missing else {}
        out = {k: list(rows[k]) for k in keys if k in rows}
        out.update(found)
        return out

    def committed(self, state: dict[ThreadKey, list[Any] | None]) -> None:
        """Take the rows of a committed batch (None: the thread was deleted)."""
        keeps = self.keeps
        with self._lock:
            if len(self.rows) + len(state) > self.size:
                self.rows.clear()  # simple and rare: the next batches read back what they need
            for key, row in state.items():
                if row is None or (keeps is not None and not keeps(key)):
                    self.rows.pop(key, None)
                else:
                    self.rows[key] = row

    def forget(self, drop: Callable[[ThreadKey], bool]) -> None:
        """Drop the rows of the keys ``drop`` names (a cluster node, of shards it let go:
        another node may change them now)."""
        with self._lock:
            for key in [k for k in self.rows if drop(k)]:
                del self.rows[key]


class _Writes:
    """The rows a batch writes, gathered to be written a statement per table (``flush``)."""

    def __init__(self) -> None:
        self.threads: list[tuple[Any, ...]] = []
        self.events: list[tuple[Any, ...]] = []
        self.client_ids: list[tuple[Any, ...]] = []
        # Open runs, netted within the batch: a run opened here is inserted already started if
        # it starts here, and not at all if it also closes here; a start before a close here
        # is dropped (the close deletes the row). One statement less per turn, or three.
        self.runs_opened: dict[tuple[str, str, str], list[Any]] = {}
        self.runs_started: dict[tuple[str, str, str], tuple[Any, ...]] = {}
        self.runs_closed: list[tuple[Any, ...]] = []
        # The tree's nodes (``turns``): made by a message or a regenerate (netted with their
        # start and end when those are in the batch too), else a start or an end updated.
        self.nodes: dict[tuple[str, str, str], list[Any]] = {}
        self.answers: dict[tuple[str, str, str], list[Any]] = {}
        # A node made earlier: its start and end, ``[started_seq, ended_seq]`` (None: not in
        # this batch), written by one update a node.
        self.node_updates: dict[tuple[str, str, str], list[Any]] = {}
        self.touched: set[ThreadKey] = set()

    def add_events(self, key: ThreadKey, events: Sequence[Event], row: list[Any]) -> None:
        """Gather ``events`` of thread ``key``, whose cached row is ``row`` (its title is
        set here, by its first message)."""
        u, t = key.user_id, key.thread_id
        for ev in events:
            self.events.append((u, t, ev.seq, ev.event, ev.run_id, ev.ts, dumps(ev.data)))
            transition = run_transition(ev)
            if transition is None:
                continue
            run = (u, t, ev.run_id)
            if transition == "open":
                self.runs_opened[run] = [u, t, ev.run_id, 0, ev.seq]
                data = ev.data
                cid = data.get("client_msg_id")
                if cid is not None:
                    self.client_ids.append((u, t, cid, data["message_id"], ev.run_id, ev.seq))
                if ev.event == USER_MESSAGE:
                    self.nodes[run] = [u, t, ev.run_id, str(data.get("message_id", "")),
                                       data.get("parent") or "", ev.seq, ev.seq, None, None]
                    if row[3] is None:
                        row[3] = str(data.get("text", ""))[:TITLE_LENGTH]
                else:  # a regenerate: the rest of the node is its message's, in the store
                    self.answers[run] = [ev.run_id, ev.seq, None, None, u, t,
                                         str(data.get("message_id", ""))]
            elif transition == "start":
                self._node_at(run, 7, 2, 0, ev.seq)
                opened = self.runs_opened.get(run)
                if opened is not None:
                    opened[3] = 1
                else:
                    self.runs_started[run] = run
            else:
                self._node_at(run, 8, 3, 1, ev.seq)
                if self.runs_opened.pop(run, None) is None:  # close of a run opened earlier
                    self.runs_started.pop(run, None)
                    self.runs_closed.append(run)
        self.touched.add(key)

    def _node_at(self, run: tuple[str, str, str], at: int, answer_at: int, update_at: int,
                 seq: int) -> None:
        """A node's start (``update_at`` 0) or end (1): into its row if it is made in this
        batch, else into the one update of the node."""
        made = self.nodes.get(run) or self.answers.get(run)
        if made is not None:
            made[at if run in self.nodes else answer_at] = seq
        else:
            self.node_updates.setdefault(run, [None, None])[update_at] = seq

    def flush(self, cur: Any, state: dict[ThreadKey, list[Any] | None], out: Rows) -> None:
        """Write what was gathered, in the caller's transaction (once: then drop it)."""
        if self.threads:
            cur.executemany("INSERT INTO threads (user_id, thread_id, last_seq, created_at, "
                            "updated_at) VALUES (%s, %s, 0, %s, %s) ON CONFLICT DO NOTHING",
                            self.threads)
        if self.events:
            out.insert_events(cur, self.events)
        if self.client_ids:
            cur.executemany("INSERT INTO client_ids (user_id, thread_id, client_msg_id, "
                            "message_id, run_id, seq) VALUES (%s, %s, %s, %s, %s, %s) "
                            "ON CONFLICT DO NOTHING", self.client_ids)
        if self.runs_opened:
            cur.executemany("INSERT INTO open_runs (user_id, thread_id, run_id, started, "
                            "opened_seq) VALUES (%s, %s, %s, %s, %s) ON CONFLICT DO NOTHING",
                            [tuple(r) for r in self.runs_opened.values()])
        if self.runs_started:
            cur.executemany("UPDATE open_runs SET started = 1 WHERE user_id = %s AND "
                            "thread_id = %s AND run_id = %s", list(self.runs_started.values()))
        if self.runs_closed:
            cur.executemany("DELETE FROM open_runs WHERE user_id = %s AND thread_id = %s AND "
                            "run_id = %s", self.runs_closed)
        if self.nodes:
            cur.executemany("INSERT INTO turns (user_id, thread_id, run_id, message_id, parent, "
                            "message_seq, seq, started_seq, ended_seq) VALUES (%s, %s, %s, %s, "
                            "%s, %s, %s, %s, %s) ON CONFLICT DO NOTHING",
                            [tuple(n) for n in self.nodes.values()])
        if self.answers:  # after the messages: one stored in this batch is found
            cur.executemany("INSERT INTO turns (user_id, thread_id, run_id, message_id, parent, "
                            "message_seq, seq, started_seq, ended_seq) SELECT user_id, "
                            "thread_id, %s, message_id, parent, message_seq, %s, %s, %s FROM "
                            "turns WHERE user_id = %s AND thread_id = %s AND message_id = %s "
                            "AND seq = message_seq ON CONFLICT DO NOTHING",
                            [tuple(a) for a in self.answers.values()])
        if self.node_updates:
            cur.executemany("UPDATE turns SET started_seq = COALESCE(%s, started_seq), "
                            "ended_seq = COALESCE(%s, ended_seq) WHERE user_id = %s AND "
                            "thread_id = %s AND run_id = %s",
                            [(*seqs, *run) for run, seqs in self.node_updates.items()])
        rows = [(row[0], row[2], row[3], k.user_id, k.thread_id) for k in self.touched
                if (row := state.get(k)) is not None]
        if rows:
            out.update_threads(cur, rows)


#: A deletion erases a thread from every table (``threads`` last: its row is the thread).
DELETES = tuple(f"DELETE FROM {table} WHERE user_id = %s AND thread_id = %s"
                for table in ("events", "client_ids", "open_runs", "turns", "threads"))


def apply_batch(cur: Any, ops: Sequence[Op], cache: ThreadCache, out: Rows,
                fence: Fence | None = None,
                ) -> tuple[list[Any], dict[ThreadKey, list[Any] | None]]:
    """Apply ``ops`` in the caller's transaction, the events and the threads' rows written by
    ``out`` (the backend). Returns one result per op (a ``ThreadInfo`` for an ensure, None for an
    append, or a ``ValueError`` for an append that does not follow its thread's last seq: it is
    skipped, the others are applied; for a delete, whether the thread existed), and the thread
    rows to give ``cache.committed`` once the transaction commits (None: deleted). Rows are
    gathered and written a statement per table; a delete first writes what was gathered, so
    the batch's effect is that of its ops in their order. With a ``fence`` (a cluster node),
    the ops on threads it refuses fail with its error and write nothing, and the threads
    written are announced by one ``fence.notify``."""
    keys = list({op_key(op): None for op in ops if not isinstance(op, (FileOp, UsageOp))})
    fenced = fence.check(cur, keys) if fence is not None else set()
    state: dict[ThreadKey, list[Any] | None] = dict(
        cache.load(cur, [k for k in keys if k not in fenced] if fenced else keys))
    writes = _Writes()
    results: list[Any] = []
    changed: set[ThreadKey] = set()
    for op in ops:
        if isinstance(op, FileOp):  # a user's attachments: no thread, no fence
            if op.kind in ("abort", "sweep", "erase_user"):
                writes.flush(cur, state, out)  # what was gathered before it, first
                writes = _Writes()
            results.append(files.apply(cur, op))
            continue
        if isinstance(op, UsageOp):  # a user's tokens: their node is stored already
            tokens.apply(cur, op)
            results.append(None)
            continue
        key = op_key(op)
        row = state.get(key)
        if key in fenced:
            results.append(fence.error(key))  # type: ignore[union-attr]
        elif isinstance(op, EnsureOp):
            if row is None:
                row = state[key] = [0, op.now, op.now, None]
                writes.threads.append((key.user_id, key.thread_id, op.now, op.now))
            results.append(ThreadInfo(key, row[0], row[1], row[2]))
        elif isinstance(op, DeleteOp):
            writes.flush(cur, state, out)
            writes = _Writes()
            files.erase(cur, "user_id = %s AND thread_id = %s", (key.user_id, key.thread_id))
            for statement in DELETES:
                cur.execute(statement, (key.user_id, key.thread_id))
            state[key] = None
            changed.add(key)
            results.append(row is not None)
        elif row is None:
            results.append(ValueError(f"unknown thread {key}"))
        elif any(ev.key != key or ev.seq != row[0] + i + 1 for i, ev in enumerate(op.events)):
            results.append(ValueError(f"events of {key} do not follow seq {row[0]}"))
        else:
            writes.add_events(key, op.events, row)
            changed.add(key)
            row[0] = op.events[-1].seq
            row[2] = max(row[2], op.events[-1].ts)
            results.append(None)
    writes.flush(cur, state, out)
    if fence is not None:
        fence.notify(cur, changed)
    return results, state
