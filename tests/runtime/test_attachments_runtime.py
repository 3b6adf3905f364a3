"""Attachments in the runtime, embedded, on SQLite and PostgreSQL: a message names the user's
uploads and its run reads them (``run.attachments``), also when regenerated; another user's or
another thread's attachment is ``NotFound`` and stores nothing; deleting a thread or a user
removes the bytes from the database (checked with SQL); the sweeper runs at start, so an
attachment never sent is gone after a restart past its age, and an upload a stop cut off is
gone at the next start (a standalone runtime owns its store: none can be under way)."""

from __future__ import annotations

import hashlib
import sqlite3
import time
from contextlib import asynccontextmanager

import psycopg
import pytest
import trio

from threadline import open_runtime
from threadline.actors.errors import NotFound
from threadline.actors.messages import TERMINAL_EVENTS
from threadline.stores import open_journal

SEEN: dict[str, list[tuple[str, str, int, bytes]]] = {}


async def reader(run) -> str:
    SEEN[run.context.run_id] = [(a.name, a.content_type, a.size, await a.read())
                                for a in run.attachments]
    return "read"


@pytest.fixture(params=["sqlite", "postgresql"])
def store(request, tmp_path):
    if request.param == "sqlite":
        path = tmp_path / "a.db"
        return f"sqlite:///{path}", lambda sql: sqlite3.connect(path).execute(sql).fetchall()
    dsn = request.getfixturevalue("pg_dsn")
    return dsn, lambda sql: psycopg.connect(dsn).execute(sql).fetchall()


async def upload(journal, user: str, aid: str, data: bytes, now: float | None = None) -> None:
    await journal.begin_upload(user, aid, f"{aid}.bin", "application/pdf",
                               time.time() if now is None else now)
    for n in range(0, len(data), 256 * 1024):
        await journal.write_chunk(user, aid, n // (256 * 1024), data[n:n + 256 * 1024], 10**9)
    await journal.finish_upload(user, aid, len(data), hashlib.sha256(data).hexdigest())


@asynccontextmanager
async def runtime(url: str):
    async with open_journal(url) as journal, open_runtime(journal=journal, agent=reader) as rt:
        yield journal, rt


async def until_ended(sub, run_id: str) -> None:
    with trio.fail_after(10):
        async for event in sub:
            if event.run_id == run_id and event.event in TERMINAL_EVENTS:
                return


async def test_a_run_reads_its_messages_attachments_also_regenerated(store):
    url, _ = store
    big = bytes(range(256)) * 4096 + b"!"  # 1 MiB and a byte: five chunks
    async with runtime(url) as (journal, rt):
        await upload(journal, "ada", "att_big", big)
        await upload(journal, "ada", "att_small", b"small")
        thread = rt.thread("ada", "main")
        async with thread.open_subscription() as sub:
            acc = await thread.send("see", attachments=["att_big", "att_small"])
            await until_ended(sub, acc.run_id)
            again = await thread.regenerate(acc.message_id)
            await until_ended(sub, again.run_id)
        message = (await thread.history(0, limit=1))[0]
    expected = [("att_big.bin", "application/pdf", len(big), big),
                ("att_small.bin", "application/pdf", 5, b"small")]
    assert SEEN[acc.run_id] == SEEN[again.run_id] == expected
    assert message.data["attachments"] == [
        {"attachment_id": "att_big", "name": "att_big.bin", "content_type": "application/pdf",
         "size": len(big)},
        {"attachment_id": "att_small", "name": "att_small.bin",
         "content_type": "application/pdf", "size": 5}]


async def test_another_users_or_threads_attachment_is_not_found(store):
    url, _ = store
    async with runtime(url) as (journal, rt):
        await upload(journal, "bob", "att_bob", b"bob's")
        await upload(journal, "ada", "att_ada", b"ada's")
        await journal.begin_upload("ada", "att_half", "h", "text/plain", time.time())  # unfinished
        ada = rt.thread("ada", "main")
        for ids in (["att_bob"], ["att_unknown"], ["att_half"], ["att_ada", "att_bob"]):
            with pytest.raises(NotFound):
                await ada.send("mine?", attachments=ids)
        async with ada.open_subscription() as sub:
            acc = await ada.send("mine", attachments=["att_ada"])
            await until_ended(sub, acc.run_id)
        with pytest.raises(NotFound):  # now main's: not another thread's
            await rt.thread("ada", "other").send("again", attachments=["att_ada"])
        again = await ada.send("the same thread may name it again", attachments=["att_ada"])
        assert again.seq == 4  # the refused sends stored nothing
        assert await journal.last_seq(rt.thread("ada", "other").key) == 0


async def test_deleting_a_thread_or_a_user_removes_the_bytes_from_the_database(store):
    url, query = store
    async with runtime(url) as (journal, rt):
        for aid in ("att_1", "att_2", "att_3"):
            await upload(journal, "ada", aid, aid.encode() * 1000)
        await upload(journal, "bob", "att_b", b"bob")
        thread = rt.thread("ada", "main")
        async with thread.open_subscription() as sub:
            acc = await thread.send("x", attachments=["att_1"])
            await until_ended(sub, acc.run_id)
        await thread.delete()
        rows = query("SELECT attachment_id FROM attachment_chunks ORDER BY attachment_id")
        assert [r[0] for r in rows] == ["att_2", "att_3", "att_b"]
        await rt.thread("ada", "t2").send("y", attachments=["att_2"])
        await rt.delete_user("ada")  # its threads, and att_3, never sent
    assert [r[0] for r in query("SELECT attachment_id FROM attachment_chunks")] == ["att_b"]
    assert [r[0] for r in query("SELECT attachment_id FROM attachments")] == ["att_b"]
    assert query("SELECT user_id, bytes FROM attachment_usage ORDER BY user_id") == [
        ("ada", 0), ("bob", 3)]


async def test_the_sweeper_runs_at_start_so_a_restart_loses_nothing_of_it(store):
    url, query = store
    async with runtime(url) as (journal, rt):
        await trio.sleep(0.2)  # its first sweep (at start) is done
        await upload(journal, "ada", "att_old", b"old", now=time.time() - 25 * 3600)
        await upload(journal, "ada", "att_new", b"new")
        await journal.begin_upload("ada", "att_cut", "c", "text/plain", time.time())
        await journal.write_chunk("ada", "att_cut", 0, b"partial", 10**9)  # cut off by a stop
    async with runtime(url):
        with trio.fail_after(10):
            while len(query("SELECT attachment_id FROM attachments")) > 1:
                await trio.sleep(0.05)
    assert [r[0] for r in query("SELECT attachment_id FROM attachments")] == ["att_new"]
    assert [r[0] for r in query("SELECT attachment_id FROM attachment_chunks")] == ["att_new"]


async def test_the_bytes_stored_are_measured_at_start_for_metrics(store):
    url, _ = store
    async with runtime(url) as (journal, _):
        await upload(journal, "ada", "att_a", b"a" * 1000)
        await upload(journal, "bob", "att_b", b"b" * 500)
    async with runtime(url) as (journal, rt):
        with trio.fail_after(10):
            while rt.statistics().attachment_bytes is None:
                await trio.sleep(0.02)
        assert rt.statistics().attachment_bytes == 1500
