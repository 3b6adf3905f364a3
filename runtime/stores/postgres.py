"""PostgreSQL through psycopg 3, for production.

psycopg's async API is asyncio-only, so its blocking API runs in worker threads, batched by
the group committer so that one thread hop carries a whole transaction (``executemany`` runs
in pipeline mode: one round trip for many rows).

Outages (``is_outage``) are ``OperationalError`` (connection lost or refused, server shutting
down, disk full, too many connections, query cancelled), ``InterfaceError`` (the driver's
connection is unusable), ``InternalError`` (the server's own failure, such as a read-only
standby after a failover or corrupted data) and a closed or broken connection. ``DataError``
(a NUL in text, ``\\u0000`` or ``NaN`` in jsonb), ``IntegrityError``, ``ProgrammingError`` and
Python's ``ValueError`` family (``UnicodeEncodeError`` of a lone surrogate) are about one
operation: no backoff. Of those, ``DataError`` and ``ValueError`` are the data's
(``is_bad_data``), ``IntegrityError`` a conflict with what the store holds (``is_conflict``:
the thread reloads), ``ProgrammingError`` a bug of ours.

At start, a server that cannot be used is said in one line (``explain``): unreachable, login
refused, no such database or user; never with the password.
"""

from __future__ import annotations

import re
from contextlib import asynccontextmanager
from typing import Any, AsyncIterator

import psycopg
import trio

from . import schema, sql
from .errors import StoreError, first_line
from .pg_owner import PostgresClaim
from .schema import Type

DIALECT = schema.Dialect(
    types={Type.TEXT: "TEXT", Type.INTEGER: "INTEGER", Type.BIGINT: "BIGINT",
           Type.SEQ: "BIGINT", Type.REAL: "DOUBLE PRECISION", Type.JSON: "JSONB",
           Type.BYTES: "BYTEA"},
    table_options="",
    before_migrating=(
        "SELECT pg_advisory_xact_lock(7405211)",  # one server at a time migrates
        "CREATE TABLE IF NOT EXISTS threadline_schema (version INTEGER NOT NULL)",
    ),
    get_version="SELECT max(version) FROM threadline_schema",
    set_version=("DELETE FROM threadline_schema",
                 "INSERT INTO threadline_schema (version) VALUES ({version})"),
    probes=(),  # the server checks its own pages
    data_bytes="octet_length(data::text)",  # the JSONB as text: what the driver receives
    data_field="({row}.data ->> '{field}')",
)




def stuck_options(seconds: float) -> str:
    """libpq ``options`` that make the server end a transaction, and free its locks, once it
    is stuck for ``seconds``: idle inside the transaction (the client stopped between two
    statements), or one statement running that long (the client stopped in the middle of a
    ``COPY``, which the server waits on as a running statement)."""
    ms = max(1000, int(seconds * 1000))
    return f"-c idle_in_transaction_session_timeout={ms} -c statement_timeout={ms}"


# libpq prefixes what the server said with where it tried: cut that, keep the reason.
_WHERE = re.compile(r'^(connection failed: )?connection to server (at|on socket) "[^"]*"'
                    r'(, port \d+)? failed: ')
_FATAL = re.compile(r"^(FATAL|ERROR):\s+")


class PostgresBackend(sql.Backend):
    dialect = DIALECT

    def __init__(self, dsn: str, *, connect_timeout: float = 5.0,
                 writer_stuck_after: float | None = None,
                 application_name: str | None = None) -> None:
        self.dsn = dsn
        self.connect_timeout = connect_timeout
        # A cluster node's writer holds lease rows FOR SHARE in every transaction: one left
        # open by a paused process would keep other nodes from taking those shards, so the
        # server ends a transaction stuck that long (seconds; see ``stuck_options``).
        self.writer_stuck_after = writer_stuck_after
        self.application_name = application_name  # a cluster node's: others may end its
                                                  # transactions once its leases expired
        info = psycopg.conninfo.conninfo_to_dict(dsn)
        self.name = f"PostgreSQL {info.get('host', '')}:{info.get('port', 5432)}/{info.get('dbname', '')}"

    def connect(self, *, writer: bool) -> psycopg.Connection:
        extra: dict[str, Any] = {}
        if self.application_name is not None:
            extra["application_name"] = self.application_name
        if writer and self.writer_stuck_after is not None:
            extra["options"] = stuck_options(self.writer_stuck_after)
        return psycopg.connect(self.dsn, autocommit=not writer,
                               connect_timeout=max(1, int(self.connect_timeout)), **extra)

    def close(self, conn: psycopg.Connection) -> None:
        conn.close()

    @asynccontextmanager
    async def claim(self, *, shared: bool) -> AsyncIterator[None]:
        """The store's advisory lock, taken and kept (``pg_owner.py``): exclusive for a server
        without ``--cluster``, shared for cluster nodes."""
        claim = PostgresClaim(self.name, self._claim_connection, shared=shared)
        try:
            await claim.take()
        except psycopg.Error as exc:
            raise StoreError(first_line(f"{self.name}: {self.explain(exc)}")) from None
        try:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(claim.keep)
                try:
                    yield
                finally:
                    nursery.cancel_scope.cancel()
        finally:
            with trio.CancelScope(shield=True):
                await claim.let_go()

    def _claim_connection(self) -> psycopg.Connection:
        return psycopg.connect(self.dsn, autocommit=True,
                               connect_timeout=max(1, int(self.connect_timeout)))

    def cursor(self, conn: psycopg.Connection) -> psycopg.Cursor[Any]:
        return conn.cursor()

    def begin(self, conn: psycopg.Connection) -> None:
        pass  # psycopg opens a transaction at the first statement (autocommit is off)

    def commit(self, conn: psycopg.Connection) -> None:
        conn.commit()

    def rollback(self, conn: psycopg.Connection) -> None:
        if not conn.closed:
            conn.rollback()

    def insert_events(self, cur: psycopg.Cursor[Any], rows: list[tuple[Any, ...]]) -> None:
        """COPY: one stream for the whole batch, several times faster than INSERTs for it."""
        with cur.copy(f"COPY events ({sql.EVENT_COLUMNS}) FROM STDIN") as copy:
            for row in rows:
                copy.write_row(row)

    def ping(self, conn: psycopg.Connection) -> None:
        conn.execute("SELECT 1")
        conn.rollback()

    def load_data(self, raw: Any) -> dict[str, Any]:
        return raw  # JSONB arrives parsed

    def is_outage(self, exc: BaseException) -> bool:
        return isinstance(exc, (psycopg.OperationalError, psycopg.InterfaceError,
                                psycopg.InternalError))

    def is_conflict(self, exc: BaseException) -> bool:
        return isinstance(exc, psycopg.IntegrityError)

    def is_bad_data(self, exc: BaseException) -> bool:
        return isinstance(exc, psycopg.DataError) or (
            isinstance(exc, ValueError) and not isinstance(exc, psycopg.Error))

    def is_broken(self, conn: psycopg.Connection, exc: BaseException) -> bool:
        return conn.closed or conn.broken or isinstance(exc, psycopg.OperationalError)

    def explain(self, exc: BaseException) -> str:
        """Why the server cannot be used, in plain words, for ``StoreError``."""
        text = str(exc).strip()
        reason = _FATAL.sub("", _WHERE.sub("", text.splitlines()[0] if text else "")).strip()
        low = reason.lower()
        if "connection refused" in low:
            return "unreachable (connection refused)"
        if "timeout expired" in low or "timed out" in low:
            return "unreachable (timed out)"
        if "failed to resolve host" in low or "could not translate host name" in low:
            return "unreachable (unknown host)"
        if "no such file or directory" in low:
            return "unreachable (no server on that socket)"
        if "no route to host" in low or "network is unreachable" in low:
            return f"unreachable ({reason})"
        if "password authentication failed" in low:
            return f"login refused: wrong password ({reason})"
        if "no password supplied" in low:
            return "login refused: a password is needed and none was given"
        match = re.match(r'(database|role) "(.*)" does not exist', reason)
        if match:
            kind = "database" if match[1] == "database" else "user"
            return f"{kind} {match[2]} does not exist"
        return reason or type(exc).__name__
