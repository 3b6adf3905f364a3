"""What the SQL stores share: the ``Backend`` protocol, opening (``prepare``, migrating with
``schema.py``), the batch algorithm and the queries, in SQL both SQLite and PostgreSQL accept
(``%s`` placeholders; the SQLite backend turns them into ``?``).

Every function here is blocking and runs in a worker thread with a DB-API connection. What
differs between the databases is the backend's: its ``Dialect`` (data) and the methods of
``Backend`` (hooks), the rest is written once here.
"""

from __future__ import annotations

import json
from typing import Any, Callable, Protocol, Sequence

import attrs

from threadline.actors.journal import OpenRun, run_transition
from threadline.actors.messages import Accepted, Event, ThreadInfo, ThreadKey

from . import schema
from .errors import StoreError, first_line
from .schema import Dialect


class SchemaTooNew(StoreError, RuntimeError):
    """The database was written by a newer threadline; this one refuses to touch it."""


@attrs.frozen(slots=True)
class AppendOp:
    events: Sequence[Event]


@attrs.frozen(slots=True)
class EnsureOp:
    key: ThreadKey
    now: float


Op = AppendOp | EnsureOp

# The columns of an ``events`` row as ``apply_batch`` hands them to ``insert_events``.
EVENT_COLUMNS = "user_id, thread_id, seq, event, run_id, ts, data"


class Backend(Protocol):
    """A SQL database, seen through blocking calls (each made in a worker thread). A backend
    subclasses it for the two methods written here, ``migrate`` and ``insert_events``."""

    name: str  # "SQLite PATH", "PostgreSQL HOST:PORT/DB": never a password
    dialect: Dialect

    def connect(self, *, writer: bool) -> Any: ...
    def close(self, conn: Any) -> None: ...
    def cursor(self, conn: Any) -> Any: ...
    def begin(self, conn: Any) -> None: ...
    def commit(self, conn: Any) -> None: ...
    def rollback(self, conn: Any) -> None: ...
    def ping(self, conn: Any) -> None: ...
    def load_data(self, raw: Any) -> dict[str, Any]: ...
    def is_broken(self, conn: Any, exc: BaseException) -> bool: ...  # drop the connection
    def is_outage(self, exc: BaseException) -> bool: ...  # the store failed, not the data
    def explain(self, exc: BaseException) -> str: ...  # why it cannot be opened, plain words

    def insert_events(self, cur: Any, rows: list[tuple[Any, ...]]) -> None:
        cur.executemany(f"INSERT INTO events ({EVENT_COLUMNS}) "
                        "VALUES (%s, %s, %s, %s, %s, %s, %s)", rows)

    def migrate(self, conn: Any) -> int:
        """Apply the migrations above the store's version, and the probes, in one transaction
        on ``conn``; the version it is at. A schema newer than ``schema.VERSION`` is refused
        (``SchemaTooNew``), untouched."""
        dialect = self.dialect
        self.begin(conn)
        try:
            cur = self.cursor(conn)
            for statement in dialect.before_migrating:
                cur.execute(statement)
            cur.execute(dialect.get_version)
            current = cur.fetchone()[0] or 0
            if current > schema.VERSION:
                raise SchemaTooNew(
                    f"{self.name} has schema version {current}, newer than the "
                    f"{schema.VERSION} this threadline knows: it was written by a newer "
                    "threadline. Upgrade threadline, or point it at another store.")
            for migration in schema.MIGRATIONS:
                if migration.version > current:
                    for statement in migration.statements(dialect):
                        cur.execute(statement)
                    for statement in dialect.set_version:
                        cur.execute(statement.format(version=migration.version))
            for probe in dialect.probes:
                cur.execute(probe)
                cur.fetchall()
            self.commit(conn)
        except BaseException:
            try:
                self.rollback(conn)
            except Exception:
                pass  # the error that stopped the migration is the one to tell
            raise
        return schema.VERSION


def prepare(backend: Backend) -> int:
    """Connect and migrate, at start: the schema version. A store that cannot be used raises
    ``StoreError`` (``SchemaTooNew`` for one newer than this code): one line naming the store
    and, in the backend's words, the problem."""
    try:
        conn = backend.connect(writer=True)
        try:
            return backend.migrate(conn)
        finally:
            backend.close(conn)
    except StoreError:
        raise
    except Exception as exc:
        raise StoreError(first_line(f"{backend.name}: {backend.explain(exc)}")) from exc


KEYS_PER_QUERY = 400  # (user_id, thread_id) pairs per look-up: well under SQLite's 32,766 params


def dumps(data: dict[str, Any]) -> str:
    return json.dumps(data, separators=(",", ":"), ensure_ascii=False, default=str)


def _op_key(op: Op) -> ThreadKey:
    return op.key if isinstance(op, EnsureOp) else op.events[0].key


def load_threads(cur: Any, keys: list[ThreadKey]) -> dict[ThreadKey, list[Any]]:
    """``{key: [last_seq, created_at, updated_at]}`` of those keys that exist."""
    found: dict[ThreadKey, list[Any]] = {}
    for i in range(0, len(keys), KEYS_PER_QUERY):
        chunk = keys[i:i + KEYS_PER_QUERY]
        values = ",".join(["(%s, %s)"] * len(chunk))
        cur.execute(
            f"WITH k(u, t) AS (VALUES {values}) SELECT th.user_id, th.thread_id, th.last_seq, "
            "th.created_at, th.updated_at FROM threads th JOIN k ON th.user_id = k.u AND "
            "th.thread_id = k.t",
            [x for key in chunk for x in (key.user_id, key.thread_id)])
        for user_id, thread_id, last_seq, created, updated in cur.fetchall():
            found[ThreadKey(user_id, thread_id)] = [last_seq, created, updated]
    return found


class ThreadCache:
    """The writer's copy of ``threads`` rows (``[last_seq, created_at, updated_at]``), so that a
    batch need not read them back: the journal is the only writer of its store. Bounded; an
    entry missing is read from the store. Rows change only when a batch commits, and a thread
    actor is the only writer of its thread, so readers on the trio side see settled rows."""

    def __init__(self, size: int = 250_000) -> None:
        self.size = size
        self.rows: dict[ThreadKey, list[Any]] = {}

    def load(self, cur: Any, keys: list[ThreadKey]) -> dict[ThreadKey, list[Any]]:
        """Copies of the rows of ``keys`` that exist (the caller may change them)."""
        rows = self.rows
        missing = [k for k in keys if k not in rows]
        found = load_threads(cur, missing) if missing else {}
        out = {k: list(rows[k]) for k in keys if k in rows}
        out.update(found)
        return out

    def committed(self, state: dict[ThreadKey, list[Any]]) -> None:
        """Take the rows of a committed batch."""
        if len(self.rows) + len(state) > self.size:
            self.rows.clear()  # simple and rare: the next batches read back what they need
        self.rows.update(state)


def apply_batch(cur: Any, ops: Sequence[Op], cache: ThreadCache,
                insert: Callable[[Any, list[tuple[Any, ...]]], None],
                ) -> tuple[list[Any], dict[ThreadKey, list[Any]]]:
    """Apply ``ops`` in the caller's transaction, events by ``insert`` (the backend's
    ``insert_events``). Returns one result per op (a ``ThreadInfo``
    for an ensure, None for an append, or a ``ValueError`` for an append that does not follow
    its thread's last seq: it is skipped, the others are applied), and the thread rows to give
    ``cache.committed`` once the transaction commits."""
    keys = list({_op_key(op): None for op in ops})
    state = cache.load(cur, keys)
    new_threads: list[tuple[Any, ...]] = []
    events: list[tuple[Any, ...]] = []
    client_ids: list[tuple[Any, ...]] = []
    runs_opened: list[tuple[Any, ...]] = []
    runs_started: list[tuple[Any, ...]] = []
    runs_closed: list[tuple[Any, ...]] = []
    touched: set[ThreadKey] = set()
    results: list[Any] = []
    for op in ops:
        key = _op_key(op)
        row = state.get(key)
        if isinstance(op, EnsureOp):
            if row is None:
                row = state[key] = [0, op.now, op.now]
                new_threads.append((key.user_id, key.thread_id, op.now, op.now))
            results.append(ThreadInfo(key, row[0], row[1], row[2]))
            continue
        if row is None:
            results.append(ValueError(f"unknown thread {key}"))
            continue
        expected = row[0]
        if any(ev.key != key or ev.seq != expected + i + 1 for i, ev in enumerate(op.events)):
            results.append(ValueError(f"events of {key} do not follow seq {expected}"))
            continue
        for ev in op.events:
            u, t = key.user_id, key.thread_id
            events.append((u, t, ev.seq, ev.event, ev.run_id, ev.ts, dumps(ev.data)))
            transition = run_transition(ev)
            if transition == "open":
                runs_opened.append((u, t, ev.run_id, ev.seq))
                cid = ev.data.get("client_msg_id")
                if cid is not None:
                    client_ids.append((u, t, cid, ev.data["message_id"], ev.run_id, ev.seq))
            elif transition == "start":
                runs_started.append((u, t, ev.run_id))
            elif transition == "close":
                runs_closed.append((u, t, ev.run_id))
        row[0] = op.events[-1].seq
        row[2] = max(row[2], op.events[-1].ts)
        touched.add(key)
        results.append(None)
    if new_threads:
        cur.executemany("INSERT INTO threads (user_id, thread_id, last_seq, created_at, "
                        "updated_at) VALUES (%s, %s, 0, %s, %s) ON CONFLICT DO NOTHING",
                        new_threads)
    if events:
        insert(cur, events)
    if client_ids:
        cur.executemany("INSERT INTO client_ids (user_id, thread_id, client_msg_id, message_id, "
                        "run_id, seq) VALUES (%s, %s, %s, %s, %s, %s) ON CONFLICT DO NOTHING",
                        client_ids)
    if runs_opened:
        cur.executemany("INSERT INTO open_runs (user_id, thread_id, run_id, started, "
                        "opened_seq) VALUES (%s, %s, %s, 0, %s) ON CONFLICT DO NOTHING",
                        runs_opened)
    if runs_started:
        cur.executemany("UPDATE open_runs SET started = 1 WHERE user_id = %s AND "
                        "thread_id = %s AND run_id = %s", runs_started)
    if runs_closed:
        cur.executemany("DELETE FROM open_runs WHERE user_id = %s AND thread_id = %s AND "
                        "run_id = %s", runs_closed)
    if touched:
        cur.executemany("UPDATE threads SET last_seq = %s, updated_at = %s WHERE user_id = %s "
                        "AND thread_id = %s",
                        [(state[k][0], state[k][2], k.user_id, k.thread_id) for k in touched])
    return results, state


# -- reads -------------------------------------------------------------------------------------


def get_thread(cur: Any, key: ThreadKey) -> ThreadInfo | None:
    cur.execute("SELECT last_seq, created_at, updated_at FROM threads WHERE user_id = %s AND "
                "thread_id = %s", (key.user_id, key.thread_id))
    row = cur.fetchone()
    return ThreadInfo(key, row[0], row[1], row[2]) if row else None


def read(cur: Any, key: ThreadKey, after: int, upto: int | None, limit: int,
         load: Callable[[Any], dict[str, Any]]) -> list[Event]:
    bound = upto if upto is not None else 2**62
    cur.execute("SELECT seq, event, run_id, ts, data FROM events WHERE user_id = %s AND "
                "thread_id = %s AND seq > %s AND seq <= %s ORDER BY seq LIMIT %s",
                (key.user_id, key.thread_id, after, bound, limit))
    return [Event(key, seq, name, run_id, ts, load(data))
            for seq, name, run_id, ts, data in cur.fetchall()]


def last_seq(cur: Any, key: ThreadKey) -> int:
    info = get_thread(cur, key)
    return info.last_seq if info is not None else 0


def find_message(cur: Any, key: ThreadKey, client_msg_id: str) -> Accepted | None:
    cur.execute("SELECT message_id, run_id, seq FROM client_ids WHERE user_id = %s AND "
                "thread_id = %s AND client_msg_id = %s", (key.user_id, key.thread_id,
                                                           client_msg_id))
    row = cur.fetchone()
    return Accepted(key, row[0], row[1], row[2]) if row else None


def threads(cur: Any, user_id: str) -> list[ThreadInfo]:
    cur.execute("SELECT thread_id, last_seq, created_at, updated_at FROM threads WHERE "
                "user_id = %s ORDER BY updated_at DESC, thread_id DESC", (user_id,))
    return [ThreadInfo(ThreadKey(user_id, t), s, c, u) for t, s, c, u in cur.fetchall()]


def open_runs(cur: Any) -> list[OpenRun]:
    cur.execute("SELECT user_id, thread_id, run_id, started FROM open_runs "
                "ORDER BY user_id, thread_id, opened_seq")
    return [OpenRun(ThreadKey(u, t), r, bool(s)) for u, t, r, s in cur.fetchall()]

