"""SQLite: the embedded default store. One file, WAL mode, no server.

``synchronous=FULL`` (the default here) makes every commit durable against power loss as well
as a crash of the process; group commit amortises its fsync. ``?synchronous=normal`` in the
store URL survives a crash of the process (``kill -9``) but not of the machine.

Outages (``is_outage``) are ``sqlite3.DatabaseError`` other than its data and programming
kinds: ``OperationalError`` (disk I/O error, disk full, database locked past the 30 s busy
timeout, read-only, cannot open) and a damaged file (``SQLITE_CORRUPT``, ``SQLITE_NOTADB``);
the connection that met one is replaced. ``IntegrityError``, ``DataError``,
``ProgrammingError``, ``InterfaceError`` (a value it cannot bind) and Python's own
``ValueError`` family (``UnicodeEncodeError`` of a lone surrogate) are about one operation,
and of those only ``DataError``, ``InterfaceError`` and ``ValueError`` are the data's
(``is_bad_data``); ``IntegrityError`` is a conflict with what the store holds
(``is_conflict``: the thread reloads), ``ProgrammingError`` a bug of ours.

At start, a file that cannot be used is said in one line (``explain``): not a database,
damaged, a folder, a missing folder, read-only. The migrating transaction ends with a probe
of every table's and index's first page (``DIALECT.probes``), so damage there is found at
start rather than by the first user.
"""

from __future__ import annotations

import functools
import json
import os
import sqlite3
from contextlib import asynccontextmanager
from typing import Any, AsyncIterator, Callable

from . import owner, schema, sql
from .errors import StoreError
from .schema import Type


def _probe(item: schema.Table | schema.Index) -> str:
    """A query that reads the first page(s) of one table or index. (Every index begins with a
    text column, ``user_id``.)"""
    if isinstance(item, schema.Index):
        return (f"SELECT 1 FROM {item.table} INDEXED BY {item.name} "
                f"WHERE {item.columns[0]} >= '' LIMIT 1")
    return f"SELECT 1 FROM {item.name} LIMIT 1"


DIALECT = schema.Dialect(
    types={Type.TEXT: "TEXT", Type.INTEGER: "INTEGER", Type.BIGINT: "BIGINT",
           Type.SEQ: "INTEGER", Type.REAL: "REAL", Type.JSON: "TEXT", Type.BYTES: "BLOB"},
    table_options=" WITHOUT ROWID",  # rows live in the primary key's b-tree, not beside it
    before_migrating=(),  # ``begin`` (BEGIN IMMEDIATE) already keeps other writers out
    get_version="PRAGMA user_version",
    set_version=("PRAGMA user_version = {version}",),
    probes=tuple(_probe(item) for item in schema.created()),
    data_bytes="length(CAST(data AS BLOB))",  # bytes: length() of TEXT counts characters
    data_field="json_extract({row}.data, '$.{field}')",
)


class _Cursor:
    """A sqlite3 cursor that takes the shared ``%s`` placeholders."""

    __slots__ = ("_cur",)
    _translated: dict[str, str] = {}

    def __init__(self, cur: sqlite3.Cursor) -> None:
        self._cur = cur

    @classmethod
    def _sql(cls, query: str) -> str:
        out = cls._translated.get(query)
        if out is None:
            out = cls._translated[query] = query.replace("%s", "?")
        return out

    def execute(self, query: str, params: Any = ()) -> None:
        self._cur.execute(self._sql(query), params)

    def executemany(self, query: str, rows: Any) -> None:
        self._cur.executemany(self._sql(query), rows)

    @property
    def rowcount(self) -> int:
        return self._cur.rowcount

    def fetchone(self) -> Any:
        return self._cur.fetchone()

    def fetchall(self) -> list[Any]:
        return self._cur.fetchall()


#: The most rows of one multi-row statement (a power of two): 7 parameters each at most, far
#: below SQLite's limit on a statement's parameters (32,766 since 3.32).
ROWS_PER_STATEMENT = 256


def _in_chunks(cur: _Cursor, statement: Callable[[int], str], rows: list[tuple[Any, ...]]) -> None:
    """``rows`` by ``statement(n)`` taking ``n`` rows' parameters, in chunks of a power of two
    rows (130 = 128 + 2): a handful of statement texts, each prepared once and kept in the
    connection's statement cache."""
    start = 0
    while start < len(rows):
        n = min(ROWS_PER_STATEMENT, 1 << ((len(rows) - start).bit_length() - 1))
        cur.execute(statement(n), [v for row in rows[start:start + n] for v in row])
        start += n


@functools.lru_cache(maxsize=16)
def _insert_rows(n: int) -> str:
    return (f"INSERT INTO events ({sql.EVENT_COLUMNS}) VALUES "
            + ", ".join(["(?, ?, ?, ?, ?, ?, ?)"] * n))


@functools.lru_cache(maxsize=16)
def _update_rows(n: int) -> str:
    # A VALUES list's columns are column1, column2...: named by the CTE (SQLite 3.33+).
    return ("WITH v(last_seq, updated_at, title, user_id, thread_id) AS (VALUES "
            + ", ".join(["(?, ?, ?, ?, ?)"] * n) + ") UPDATE threads SET last_seq = v.last_seq, "
            "updated_at = v.updated_at, title = v.title FROM v WHERE threads.user_id = "
            "v.user_id AND threads.thread_id = v.thread_id")


class SQLiteBackend(sql.Backend):
    dialect = DIALECT

    def __init__(self, path: str, *, synchronous: str = "FULL") -> None:
        if synchronous.upper() not in ("FULL", "NORMAL", "EXTRA"):
            raise ValueError("synchronous must be full, normal or extra")
        self.path = path
        self.synchronous = synchronous.upper()
        self.name = f"SQLite {path}"

    def connect(self, *, writer: bool) -> sqlite3.Connection:
        # isolation_level=None: we issue BEGIN/COMMIT ourselves. check_same_thread=False: a
        # connection moves between worker threads, never used by two at once.
        conn = sqlite3.connect(self.path, timeout=30, isolation_level=None,
                               check_same_thread=False)
        try:
            conn.execute("PRAGMA journal_mode=WAL")
            conn.execute(f"PRAGMA synchronous={self.synchronous}")
        except BaseException:
            conn.close()  # a file that is no database (or cannot take the WAL) stays unopened
            raise
        return conn

    def close(self, conn: sqlite3.Connection) -> None:
        conn.close()

    @asynccontextmanager
    async def claim(self, *, shared: bool) -> AsyncIterator[None]:
        """The store's lock (``owner.py``): one process at a time opens this file (SQLite
        has no cluster mode: ``shared`` changes nothing)."""
        try:
            fd = owner.acquire(self.path, self.name)
        except OSError as exc:  # no folder, a read-only one: in the words of a failed open
            raise StoreError(f"{self.name}: {self.explain(exc)}") from None
        try:
            yield
        finally:
            owner.release(fd)

    def cursor(self, conn: sqlite3.Connection) -> _Cursor:
        return _Cursor(conn.cursor())

    def insert_events(self, cur: _Cursor, rows: list[tuple[Any, ...]]) -> None:
        """A batch's events in statements of up to ``ROWS_PER_STATEMENT`` rows each, not one
        statement run per row: Python's sqlite3 lets go of the GIL for every step of a
        statement and must win it back from the event loop's thread after each, which made
        a batch of 130 events wait 10 ms for the GIL against 4 ms of work (measured under
        the latency benchmark's load)."""
        _in_chunks(cur, _insert_rows, rows)

    def update_threads(self, cur: _Cursor, rows: list[tuple[Any, ...]]) -> None:
        """The batch's thread rows in multi-row ``UPDATE ... FROM (VALUES ...)`` statements,
        in chunks as the events are, for the same reason: a streaming batch touches every
        thread that streams, hundreds of them."""
        if sqlite3.sqlite_version_info < (3, 33):  # no UPDATE ... FROM before 3.33
            super().update_threads(cur, rows)
        else:
            _in_chunks(cur, _update_rows, rows)

    def begin(self, conn: sqlite3.Connection) -> None:
        conn.execute("BEGIN IMMEDIATE")

    def commit(self, conn: sqlite3.Connection) -> None:
        conn.execute("COMMIT")

    def rollback(self, conn: sqlite3.Connection) -> None:
        if conn.in_transaction:
            conn.execute("ROLLBACK")

    def ping(self, conn: sqlite3.Connection) -> None:
        pass

    def load_data(self, raw: Any) -> dict[str, Any]:
        return json.loads(raw)

    def is_outage(self, exc: BaseException) -> bool:
        return isinstance(exc, sqlite3.DatabaseError) and not isinstance(
            exc, (sqlite3.IntegrityError, sqlite3.DataError, sqlite3.ProgrammingError))

    def is_conflict(self, exc: BaseException) -> bool:
        return isinstance(exc, sqlite3.IntegrityError)

    def is_bad_data(self, exc: BaseException) -> bool:
        return isinstance(exc, (sqlite3.DataError, sqlite3.InterfaceError)) or (
            isinstance(exc, ValueError) and not isinstance(exc, sqlite3.Error))

    def is_broken(self, conn: sqlite3.Connection, exc: BaseException) -> bool:
        # Reopening is cheap, and finds the file again if it was replaced or remounted.
        return self.is_outage(exc)

    def explain(self, exc: BaseException) -> str:
        """What is wrong with the file, in plain words, for ``StoreError``."""
        path = self.path
        folder = os.path.dirname(path) or "."
        code = getattr(exc, "sqlite_errorname", None) or ""
        if os.path.isdir(path):
            return "is a folder, not a file"
        if not os.path.isdir(folder):
            return (f"{folder} is not a folder" if os.path.exists(folder)
                    else f"folder {folder} does not exist")
        if code == "SQLITE_NOTADB":
            return "not a SQLite database (file is damaged or of another kind)"
        if code == "SQLITE_CORRUPT":
            return "the database is damaged (database disk image is malformed)"
        if code == "SQLITE_READONLY" or (os.path.exists(path) and not os.access(path, os.W_OK)):
            return "read-only (cannot write to the file)"
        if not os.access(folder, os.W_OK):
            return (f"read-only (cannot write to folder {folder}, where SQLite keeps the "
                    "file's -wal and -shm files)")
        if code == "SQLITE_FULL":
            return "disk full"
        if code.startswith("SQLITE_IOERR"):
            return f"disk I/O error ({exc})"
        if code in ("SQLITE_BUSY", "SQLITE_LOCKED"):
            return "locked by another process (one server per store)"
        return f"cannot be used ({type(exc).__name__}: {exc})"
