"""One owner per PostgreSQL store: an advisory lock held on a connection of its own, for as
long as the store is open (``PostgresBackend.claim``; the SQLite store's is ``owner.py``).

Exclusive for a server without ``--cluster`` (one per store), shared for cluster nodes (whose
writes are fenced, so that they may share it), never both: a second owner is refused with
``StoreInUse`` before it reads or writes anything.

Invariants:

- The lock is the pair (``OWNER_LOCK``, a hash of the connection's schema): two stores in two
  schemas of one database are two stores.
- PostgreSQL lets a lock go only once it notices that its connection ended, a moment after
  the holder closed it (or died): so the owner lets it go explicitly before closing, and a
  claim refused is tried again for ``CLAIM_PATIENCE`` seconds before it is refused for good
  (a restart right after a stop or a ``kill -9``).
- The hold is kept: every ``KEEP_INTERVAL`` seconds the lock's connection is used (so that
  no ``idle_session_timeout``, proxy or NAT idle timeout ends it for being idle) and, if it
  ended anyway (a database restart, a network cut), the lock is taken again on a new one. While
  it is lost another server may start on the store: the owner says so (a warning when the hold
  is lost, an error while another holds it), and keeps trying; it cannot undo what the other
  wrote, which is why the window is kept short.
"""

from __future__ import annotations

import logging
from typing import Any, Callable

import psycopg
import trio

from .owner import StoreInUse

log = logging.getLogger("threadline.store")

OWNER_LOCK = 7405212   # the first key of the advisory lock; the second is the schema's hash
CLAIM_PATIENCE = 3.0   # seconds a refused claim is tried again (a holder that just went away)
KEEP_INTERVAL = 5.0    # seconds between two checks of the lock's connection

_KEY = "%s, hashtext(current_schema())"
_HOLDERS = ("SELECT a.pid, a.client_addr::text, l.mode FROM pg_locks l JOIN pg_stat_activity "
            "a ON a.pid = l.pid WHERE l.locktype = 'advisory' AND l.granted AND l.objsubid = 2 "
            "AND l.database = (SELECT oid FROM pg_database WHERE datname = current_database()) "
            "AND l.classid = %s AND l.objid = (hashtext(current_schema())::bigint "
            "& 4294967295)::oid")


class PostgresClaim:
    """The hold of one opener on a store (see the header). ``connect`` opens a connection in
    autocommit mode (blocking; called in a worker thread)."""

    def __init__(self, name: str, connect: Callable[[], psycopg.Connection], *,
                 shared: bool) -> None:
        self.name = name
        self.shared = shared
        self._connect = connect
        self._take = "pg_try_advisory_lock_shared" if shared else "pg_try_advisory_lock"
        self._conn: psycopg.Connection | None = None

    async def take(self) -> None:
        """Take the lock, waiting ``CLAIM_PATIENCE`` seconds at most for a holder that just
        went away. Raises ``StoreInUse``, or ``psycopg.Error`` for a store that cannot be
        reached."""
        deadline = trio.current_time() + CLAIM_PATIENCE
        while True:
            conn, holders = await trio.to_thread.run_sync(self._try_sync)
            if conn is not None:
                self._conn = conn
                return
            if trio.current_time() >= deadline:
                raise self._in_use(holders)
            await trio.sleep(0.1)

    async def keep(self) -> None:
        """Keep the hold until cancelled (see the header)."""
        lost = False
        while True:
            await trio.sleep(KEEP_INTERVAL)
            try:
                if not lost:
                    await trio.to_thread.run_sync(self._ping_sync)
                    continue
                conn, holders = await trio.to_thread.run_sync(self._try_sync)
            except psycopg.Error as exc:
                if not lost:
                    lost = True
                    self._drop()
                    log.warning("%s: the connection that holds the store ended (%s); taking "
                                "the hold again", self.name, str(exc).strip().splitlines()[0]
                                if str(exc).strip() else type(exc).__name__)
                continue
            if conn is not None:
                self._conn, lost = conn, False
                log.warning("%s: holds the store again", self.name)
            else:
                log.error("%s", self._in_use(holders))

    async def let_go(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            await trio.to_thread.run_sync(self._let_go_sync, conn)

    # -- blocking, in worker threads ---------------------------------------------------------

    def _try_sync(self) -> tuple[psycopg.Connection | None, list[Any]]:
        """A connection holding the lock, or None and who holds it."""
        conn = self._connect()
        try:
            taken = conn.execute(f"SELECT {self._take}({_KEY})", (OWNER_LOCK,)).fetchone()
            if taken is not None and taken[0]:
                return conn, []
            holders = conn.execute(_HOLDERS, (OWNER_LOCK,)).fetchall()
        except BaseException:
            conn.close()
            raise
        conn.close()
        return None, holders

    def _ping_sync(self) -> None:
        conn = self._conn
        if conn is None or conn.closed:
            raise psycopg.OperationalError("the connection is closed")
        conn.execute("SELECT 1")

    def _let_go_sync(self, conn: psycopg.Connection) -> None:
        try:
            unlock = "pg_advisory_unlock_shared" if self.shared else "pg_advisory_unlock"
            conn.execute(f"SELECT {unlock}({_KEY})", (OWNER_LOCK,))
        except psycopg.Error:
            pass  # a connection already gone has let it go
        finally:
            conn.close()

    def _drop(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            try:
                conn.close()
            except psycopg.Error:
                pass

    def _in_use(self, holders: list[Any]) -> StoreInUse:
        who = ", ".join(f"backend pid {pid}" + (f" from {addr}" if addr else "")
                        for pid, addr, _ in holders[:3]) or "another server"
        if self.shared:
            return StoreInUse(f"{self.name}: a threadline server without --cluster uses this "
                              f"store ({who}): stop it, or start it with --cluster too")
        nodes = any(mode == "ShareLock" for _, _, mode in holders)
        return StoreInUse(f"{self.name}: " + (
            f"cluster nodes use this store ({who}): start this server with --cluster too, "
            "or give it another store" if nodes else
            f"another threadline server uses this store ({who}); one server per store "
            "without --cluster: stop it first, or run every server with --cluster"))
