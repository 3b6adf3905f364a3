"""The durable peer: the FastAPI peer (``fastapi_app.py``) with what the usual stack does for
durability: every event is inserted and committed in the database before it is sent. On
PostgreSQL with asyncpg and on SQLite with aiosqlite, each written the way its documentation
teaches:

- PostgreSQL: a pool made at startup (``asyncpg.create_pool``, its default size), a connection
  acquired per event (``async with pool.acquire()``), and asyncpg's implicit transaction per
  statement: the INSERT is committed when ``execute`` returns.
- SQLite: one aiosqlite connection for the app (SQLite has one writer at a time: more writer
  connections would only queue on its lock), WAL and ``synchronous=FULL`` as threadline's
  default store, ``execute`` then ``commit`` per event.

The events of one thread are stored and sent under a lock of that thread, so that the order of
their seq is the order of delivery. Same durability as threadline: the client sees an event only
once it is committed.

Run: ``PEER_DATABASE=postgresql://... uvicorn bench.peers.durable_app:app --port 8000``, or
``PEER_DATABASE=sqlite:////tmp/peer.db``.
"""

from __future__ import annotations

import asyncio
import json
import os
from collections import defaultdict
from contextlib import asynccontextmanager
from typing import Any, AsyncIterator

from fastapi import FastAPI

from .fastapi_app import ConnectionManager, build

COLUMNS = "user_id, thread_id, seq, event, run_id, ts, data"


class PostgresEvents:
    def __init__(self, dsn: str) -> None:
        self.dsn = dsn

    async def open(self) -> None:
        import asyncpg

        self.pool = await asyncpg.create_pool(self.dsn)
        async with self.pool.acquire() as conn:
            await conn.execute(
                "CREATE TABLE IF NOT EXISTS peer_events (user_id text, thread_id text, "
                "seq bigint, event text, run_id text, ts double precision, data jsonb, "
                "PRIMARY KEY (user_id, thread_id, seq))")

    async def insert(self, thread: tuple[str, str], m: dict[str, Any]) -> None:
        async with self.pool.acquire() as conn:
            await conn.execute(
                f"INSERT INTO peer_events ({COLUMNS}) VALUES ($1, $2, $3, $4, $5, $6, $7::jsonb)",
                thread[0], thread[1], m["seq"], m["event"], m["run_id"], m["ts"],
                json.dumps(m["data"]))

    async def close(self) -> None:
        await self.pool.close()


class SQLiteEvents:
    def __init__(self, path: str) -> None:
        self.path = path

    async def open(self) -> None:
        import aiosqlite

        self.db = await aiosqlite.connect(self.path)
        await self.db.execute("PRAGMA journal_mode=WAL")
        await self.db.execute("PRAGMA synchronous=FULL")
        await self.db.execute(
            "CREATE TABLE IF NOT EXISTS peer_events (user_id TEXT, thread_id TEXT, seq INTEGER, "
            "event TEXT, run_id TEXT, ts REAL, data TEXT, PRIMARY KEY (user_id, thread_id, seq))")
        await self.db.commit()

    async def insert(self, thread: tuple[str, str], m: dict[str, Any]) -> None:
        await self.db.execute(
            f"INSERT INTO peer_events ({COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?)",
            (thread[0], thread[1], m["seq"], m["event"], m["run_id"], m["ts"],
             json.dumps(m["data"])))
        await self.db.commit()

    async def close(self) -> None:
        await self.db.close()


class DurableManager(ConnectionManager):
    def __init__(self, store: PostgresEvents | SQLiteEvents) -> None:
        super().__init__()
        self.store = store
        self.write_locks: dict[tuple[str, str], asyncio.Lock] = defaultdict(asyncio.Lock)

    async def publish(self, thread: tuple[str, str], event: str, run_id: str, data: dict) -> None:
        async with self.write_locks[thread]:
            message = self.next_event(thread, event, run_id, data)
            await self.store.insert(thread, message)  # committed before anyone sees it
            await self.broadcast(thread, message)


def store_of(url: str) -> PostgresEvents | SQLiteEvents:
    if url.startswith("sqlite:///"):
        return SQLiteEvents(url.removeprefix("sqlite:///"))
    if url.startswith(("postgresql://", "postgres://")):
        return PostgresEvents(url)
    raise SystemExit(f"PEER_DATABASE must be sqlite:///PATH or postgresql://..., not {url!r}")


manager = DurableManager(store_of(os.environ.get("PEER_DATABASE", "sqlite:///peer.db")))


@asynccontextmanager
async def lifespan(app: FastAPI) -> AsyncIterator[None]:
    await manager.store.open()
    try:
        yield
    finally:
        await manager.store.close()


app = build(manager, lifespan=lifespan)
