"""SQLite: the embedded default store. One file, WAL mode, no server.

``synchronous=FULL`` (the default here) makes every commit durable against power loss as well
as a crash of the process; group commit amortises its fsync. ``?synchronous=normal`` in the
store URL survives a crash of the process (``kill -9``) but not of the machine.
"""

from __future__ import annotations

import json
import sqlite3
from typing import Any

from . import sql

MIGRATIONS: list[tuple[int, list[str]]] = [
    (1, [
        "CREATE TABLE threads (user_id TEXT NOT NULL, thread_id TEXT NOT NULL, "
        "last_seq INTEGER NOT NULL, created_at REAL NOT NULL, updated_at REAL NOT NULL, "
        "PRIMARY KEY (user_id, thread_id)) WITHOUT ROWID",
        "CREATE INDEX threads_by_update ON threads (user_id, updated_at)",
        "CREATE TABLE events (user_id TEXT NOT NULL, thread_id TEXT NOT NULL, "
        "seq INTEGER NOT NULL, event TEXT NOT NULL, run_id TEXT, ts REAL NOT NULL, "
        "data TEXT NOT NULL, PRIMARY KEY (user_id, thread_id, seq)) WITHOUT ROWID",
        "CREATE TABLE client_ids (user_id TEXT NOT NULL, thread_id TEXT NOT NULL, "
        "client_msg_id TEXT NOT NULL, message_id TEXT NOT NULL, run_id TEXT NOT NULL, "
        "seq INTEGER NOT NULL, PRIMARY KEY (user_id, thread_id, client_msg_id)) WITHOUT ROWID",
        "CREATE TABLE open_runs (user_id TEXT NOT NULL, thread_id TEXT NOT NULL, "
        "run_id TEXT NOT NULL, started INTEGER NOT NULL, opened_seq BIGINT NOT NULL, "
        "PRIMARY KEY (user_id, thread_id, run_id)) WITHOUT ROWID",
    ]),
]


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

    def fetchone(self) -> Any:
        return self._cur.fetchone()

    def fetchall(self) -> list[Any]:
        return self._cur.fetchall()


class SQLiteBackend:
    errors = (sqlite3.Error,)

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
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute(f"PRAGMA synchronous={self.synchronous}")
        return conn

    def close(self, conn: sqlite3.Connection) -> None:
        conn.close()

    def migrate(self, conn: sqlite3.Connection) -> int:
        current = conn.execute("PRAGMA user_version").fetchone()[0]
        conn.execute("BEGIN IMMEDIATE")
        try:
            version = sql.migrate(_Cursor(conn.cursor()), current, MIGRATIONS,
                                  lambda v: conn.execute(f"PRAGMA user_version = {int(v)}"),
                                  self.name)
            conn.execute("COMMIT")
        except BaseException:
            conn.execute("ROLLBACK")
            raise
        return version

    def cursor(self, conn: sqlite3.Connection) -> _Cursor:
        return _Cursor(conn.cursor())

    def begin(self, conn: sqlite3.Connection) -> None:
        conn.execute("BEGIN IMMEDIATE")

    def commit(self, conn: sqlite3.Connection) -> None:
        conn.execute("COMMIT")

    def rollback(self, conn: sqlite3.Connection) -> None:
        if conn.in_transaction:
            conn.execute("ROLLBACK")

    def ping(self, conn: sqlite3.Connection) -> None:
        pass

    insert_events = staticmethod(sql.insert_events)

    def load_data(self, raw: Any) -> dict[str, Any]:
        return json.loads(raw)

    def is_broken(self, conn: sqlite3.Connection, exc: BaseException) -> bool:
        return False  # a file does not go away like a server; keep the connection
