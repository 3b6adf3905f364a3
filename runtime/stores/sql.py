"""What the SQL stores share: the ``Backend`` protocol, opening (``prepare``, migrating with
``schema.py``), the operations the writer applies (the batch algorithm is ``batch.py``) and the
queries, in SQL both SQLite and PostgreSQL accept
(``%s`` placeholders; the SQLite backend turns them into ``?``).

Every function here is blocking and runs in a worker thread with a DB-API connection. What
differs between the databases is the backend's: its ``Dialect`` (data) and the methods of
``Backend`` (hooks), the rest is written once here.
"""

from __future__ import annotations

from contextlib import asynccontextmanager
from typing import Any, AsyncContextManager, AsyncIterator, Callable, Protocol, Sequence

import attrs

from threadline.actors.journal import OpenRun
from threadline.actors.messages import Accepted, Event, ThreadInfo, ThreadKey
from threadline.actors.tree import Node, Placed

from . import schema
from .errors import StoreError, first_line
from .files import FileOp
from .schema import Dialect
from .tokens import USAGE_OF_NODE, UsageOp, node_usage


class SchemaTooNew(StoreError, RuntimeError):
    """The database was written by a newer threadline; this one refuses to touch it."""


@attrs.frozen(slots=True)
class AppendOp:
    events: Sequence[Event]


@attrs.frozen(slots=True)
class EnsureOp:
    key: ThreadKey
    now: float


@attrs.frozen(slots=True)
class DeleteOp:
    key: ThreadKey


# ``FileOp``: an attachment's (``files.py``); ``UsageOp``: a user's tokens (``tokens.py``)
Op = AppendOp | EnsureOp | DeleteOp | FileOp | UsageOp

# The columns of an ``events`` row as ``apply_batch`` hands them to ``insert_events``.
EVENT_COLUMNS = "user_id, thread_id, seq, event, run_id, ts, data"


class Backend(Protocol):
    """A SQL database, seen through blocking calls (each made in a worker thread). A backend
    subclasses it for the methods written here: ``migrate``, and the two row writers of a
    batch, ``insert_events`` and ``update_threads`` (``batch.Rows``), which a backend may write
    its own faster way."""

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
    def is_conflict(self, exc: BaseException) -> bool: ...  # a key the store holds already
    def is_bad_data(self, exc: BaseException) -> bool: ...  # a value it cannot hold

    def claim(self, *, shared: bool) -> AsyncContextManager[None]:
        """Held from before the store is first touched until its connections are closed: a
        second owner is refused here with ``StoreInUse`` (``owner.py``). ``shared``: the
        opener is a cluster node, whose writes are fenced, and shares the store with other
        nodes, never with an exclusive owner."""
        return _no_claim()

    def insert_events(self, cur: Any, rows: list[tuple[Any, ...]]) -> None:
        cur.executemany(f"INSERT INTO events ({EVENT_COLUMNS}) "
                        "VALUES (%s, %s, %s, %s, %s, %s, %s)", rows)

    def update_threads(self, cur: Any, rows: list[tuple[Any, ...]]) -> None:
        """Each row ``(last_seq, updated_at, title, user_id, thread_id)`` into its thread."""
        cur.executemany("UPDATE threads SET last_seq = %s, updated_at = %s, title = %s "
                        "WHERE user_id = %s AND thread_id = %s", rows)

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


@asynccontextmanager
async def _no_claim() -> AsyncIterator[None]:
    yield


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


# -- reads -------------------------------------------------------------------------------------


def get_thread(cur: Any, key: ThreadKey) -> ThreadInfo | None:
    cur.execute("SELECT last_seq, created_at, updated_at FROM threads WHERE user_id = %s AND "
                "thread_id = %s", (key.user_id, key.thread_id))
    row = cur.fetchone()
    return ThreadInfo(key, row[0], row[1], row[2]) if row else None


def run_events(cur: Any, key: ThreadKey, run_id: str, after: int,
               load: Callable[[Any], dict[str, Any]]) -> list[Event]:
    """``Journal.run_events``: the database filters by run (a range of the primary key)."""
    cur.execute("SELECT seq, event, run_id, ts, data FROM events WHERE user_id = %s AND "
                "thread_id = %s AND seq > %s AND run_id = %s ORDER BY seq",
                (key.user_id, key.thread_id, after, run_id))
    return [Event(key, s, e, r, t, load(d)) for s, e, r, t, d in cur.fetchall()]


def read(cur: Any, key: ThreadKey, after: int, upto: int | None, limit: int,
         load: Callable[[Any], dict[str, Any]], max_bytes: int | None = None,
         data_bytes: str = "") -> list[Event]:
    """``Journal.read``. With ``max_bytes``, one statement: the sizes of the next ``limit``
    events (``data_bytes``, the dialect's; no data leaves the database), their running sum,
    and the rows up to the last that keeps the sum within ``max_bytes`` (or the first)."""
    bound = upto if upto is not None else 2**62
    where = "user_id = %s AND thread_id = %s AND seq > %s"
    if max_bytes is None:
        cur.execute(f"SELECT seq, event, run_id, ts, data FROM events WHERE {where} AND "
                    "seq <= %s ORDER BY seq LIMIT %s",
                    (key.user_id, key.thread_id, after, bound, limit))
    else:
        cur.execute(
            f"SELECT seq, event, run_id, ts, data FROM events WHERE {where} AND seq <= ("
            " SELECT MAX(seq) FROM ("
            "  SELECT seq, SUM(size) OVER (ORDER BY seq) AS running,"
            "   ROW_NUMBER() OVER (ORDER BY seq) AS n FROM ("
            f"   SELECT seq, {data_bytes} AS size FROM events WHERE {where} AND seq <= %s"
            "   ORDER BY seq LIMIT %s) AS page) AS sums"
            " WHERE running <= %s OR n = 1) ORDER BY seq",
            (key.user_id, key.thread_id, after,
             key.user_id, key.thread_id, after, bound, limit, max_bytes))
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
    cur.execute("SELECT thread_id, last_seq, created_at, updated_at, title FROM threads WHERE "
                "user_id = %s ORDER BY updated_at DESC, thread_id DESC", (user_id,))
    return [ThreadInfo(ThreadKey(user_id, t), s, c, u, title)
            for t, s, c, u, title in cur.fetchall()]


def threads_page(cur: Any, user_id: str, limit: int,
                 before: tuple[float, str] | None) -> list[ThreadInfo]:
    """``Journal.threads_page``: a seek on the index (user_id, updated_at, thread_id) (schema
    migration 3), read backwards; ``limit + 1`` rows at most, whatever the user holds."""
    columns = ("SELECT thread_id, last_seq, created_at, updated_at, title FROM threads "
               "WHERE user_id = %s")
    order = "ORDER BY updated_at DESC, thread_id DESC LIMIT %s"
    if before is None:
        cur.execute(f"{columns} {order}", (user_id, limit + 1))
    else:
        # A row value: both databases seek the index with it (an OR of two ranges they
        # would not).
        cur.execute(f"{columns} AND (updated_at, thread_id) < (%s, %s) {order}",
                    (user_id, before[0], before[1], limit + 1))
    return [ThreadInfo(ThreadKey(user_id, t), s, c, u, title)
            for t, s, c, u, title in cur.fetchall()]


def open_runs(cur: Any, key: ThreadKey | None = None) -> list[OpenRun]:
    """``Journal.open_runs``, each with the message it answers (from its node)."""
    columns = ("SELECT o.user_id, o.thread_id, o.run_id, o.started, o.opened_seq, n.message_id "
               "FROM open_runs o LEFT JOIN turns n ON n.user_id = o.user_id AND "
               "n.thread_id = o.thread_id AND n.run_id = o.run_id")
    if key is not None:
        cur.execute(f"{columns} WHERE o.user_id = %s AND o.thread_id = %s ORDER BY o.opened_seq",
                    (key.user_id, key.thread_id))
    else:
        cur.execute(f"{columns} ORDER BY o.user_id, o.thread_id, o.opened_seq")
    return [OpenRun(ThreadKey(u, t), r, bool(s), q or 0, m or "")
            for u, t, r, s, q, m in cur.fetchall()]



# -- the conversation tree (``threadline.actors.tree``; schema migration 4) ----------------------

NODE = "run_id, message_id, parent, message_seq, seq, started_seq, ended_seq"
NODE_OF_T = ", ".join(f"t.{c}" for c in NODE.split(", "))  # the same, of the table ``t``
_THREAD = "user_id = %s AND thread_id = %s"


def _node(row: Sequence[Any]) -> Node:
    run_id, message_id, parent, message_seq, seq, started, ended = row[:7]
    return Node(run_id, message_id, parent or None, message_seq, seq, started, ended)


def node(cur: Any, key: ThreadKey, run_id: str) -> Node | None:
    """The run's node, with what it reported (``tokens.py``)."""
    cur.execute(f"SELECT {NODE}, {USAGE_OF_NODE} FROM turns WHERE {_THREAD} AND run_id = %s",
                (key.user_id, key.thread_id, run_id))
    row = cur.fetchone()
    return attrs.evolve(_node(row), usage=node_usage(row[7:])) if row else None


def message_node(cur: Any, key: ThreadKey, message_id: str) -> Node | None:
    """The node of the run that came with the message (its first: ``seq = message_seq``)."""
    cur.execute(f"SELECT {NODE} FROM turns WHERE {_THREAD} AND message_id = %s "
                "ORDER BY seq LIMIT 1", (key.user_id, key.thread_id, message_id))
    row = cur.fetchone()
    return _node(row) if row else None


def newest_node(cur: Any, key: ThreadKey) -> Node | None:
    cur.execute(f"SELECT {NODE} FROM turns WHERE {_THREAD} ORDER BY seq DESC LIMIT 1",
                (key.user_id, key.thread_id))
    row = cur.fetchone()
    return _node(row) if row else None


def branch(cur: Any, key: ThreadKey, run_id: str, limit: int) -> list[Node]:
    """``Journal.branch``: a recursive walk of parents, each step a primary-key look-up."""
    cur.execute(
        f"WITH RECURSIVE path({NODE}, depth) AS ("
        f" SELECT {NODE}, 1 FROM turns WHERE {_THREAD} AND run_id = %s"
        f" UNION ALL SELECT {NODE_OF_T}, p.depth + 1 FROM path p JOIN turns t"
        "  ON t.user_id = %s AND t.thread_id = %s AND t.run_id = p.parent"
        "  WHERE p.depth < %s AND p.parent <> ''"
        f") SELECT {NODE} FROM path ORDER BY depth",
        (key.user_id, key.thread_id, run_id, key.user_id, key.thread_id, limit))
    return [_node(row) for row in cur.fetchall()]


NODES_PER_QUERY = 32  # nodes read by one statement of ``node_events``


def node_events(cur: Any, key: ThreadKey, nodes: Sequence[Node],
                load: Callable[[Any], dict[str, Any]]) -> list[Event]:
    """``Journal.node_events``: each node's user_message by primary key, and each ended run's
    own events by a range of the primary key (``tree``: they lie between its start and end;
    from its first event, for a run ended with no start stored). One ``UNION ALL`` of those
    look-ups per ``NODES_PER_QUERY`` nodes: each part is a seek that both planners take as
    written (a join of the nodes with ``events`` was planned as a scan of the thread), and the
    statement's text depends only on how many nodes it reads (an open run's range is empty)."""
    columns = ("SELECT seq, event, run_id, ts, data FROM events WHERE user_id = %s AND "
               "thread_id = %s")
    u, t = key.user_id, key.thread_id
    rows: dict[int, Any] = {}
    for i in range(0, len(nodes), NODES_PER_QUERY):
        chunk = nodes[i:i + NODES_PER_QUERY]
        params: list[Any] = []
        for n in chunk:
            ended = n.ended_seq is not None
            params += [u, t, n.message_seq, u, t, (n.started_seq or n.seq) if ended else 0,
                       n.ended_seq if ended else -1, n.run_id]
        cur.execute(" UNION ALL ".join(
            [f"{columns} AND seq = %s UNION ALL {columns} AND seq >= %s AND seq <= %s AND "
             "run_id = %s"] * len(chunk)), params)
        for row in cur.fetchall():
            rows[row[0]] = row  # a message two nodes share, once
    return [Event(key, seq, name, run_id, ts, load(data))
            for seq, name, run_id, ts, data in (rows[s] for s in sorted(rows))]


def turns(cur: Any, key: ThreadKey, after: int, limit: int) -> list[Placed]:
    """``Journal.turns``: a page of nodes by ``turns_by_seq``, each with its places among its
    siblings, counted on ``turns_by_parent`` and ``turns_by_message``."""
    same = "s.user_id = t.user_id AND s.thread_id = t.thread_id"
    messages = f"{same} AND s.parent = t.parent AND s.seq = s.message_seq"
    answers = f"{same} AND s.message_id = t.message_id"
    cur.execute(
        f"SELECT {NODE_OF_T},"
        f" (SELECT COUNT(*) FROM turns s WHERE {messages} AND s.message_seq < t.message_seq),"
        f" (SELECT COUNT(*) FROM turns s WHERE {messages}),"
        f" (SELECT COUNT(*) FROM turns s WHERE {answers} AND s.seq < t.seq),"
        f" (SELECT COUNT(*) FROM turns s WHERE {answers})"
        " FROM turns t WHERE t.user_id = %s AND t.thread_id = %s AND t.seq > %s"
        " ORDER BY t.seq LIMIT %s", (key.user_id, key.thread_id, after, limit))
    return [Placed(_node(row), *row[7:]) for row in cur.fetchall()]
