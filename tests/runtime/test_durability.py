"""Durable stores under a runtime: group commit, schema versions, restarts, outages."""

from __future__ import annotations

import sqlite3

import psycopg
import pytest
import trio

from threadline.actors.errors import JournalUnavailable
from threadline.actors.messages import Event, ThreadKey
from threadline.actors.usage import Usage
from threadline import open_runtime
from threadline.stores import SchemaTooNew, open_journal, schema
from tests.helpers import (assert_runs_well_formed, scripted_agent, store_refusal, test_tools,
                           until_terminal)


@pytest.fixture(params=["sqlite", "postgresql"])
def store_url(request, tmp_path):
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path}/t.db"
    return request.getfixturevalue("pg_dsn")


async def test_group_commit_batches_concurrent_writes(store_url):
    async with open_journal(store_url) as journal:
        keys = [ThreadKey(f"u{i}", "main") for i in range(300)]
        async with trio.open_nursery() as nursery:
            for key in keys:
                nursery.start_soon(journal.ensure_thread, key, 1.0)
        before = journal.batches
        async with trio.open_nursery() as nursery:
            for key in keys:
                nursery.start_soon(journal.append, [Event(key, 1, "agent_thinking", "r", 2.0, {})])
        assert journal.batches - before <= 30  # not one transaction per event
        for key in keys:
            assert [e.seq for e in await journal.read(key, 0)] == [1]


async def test_a_refused_append_does_not_fail_its_batch(store_url):
    async with open_journal(store_url) as journal:
        a, b = ThreadKey("a", "t"), ThreadKey("b", "t")
        await journal.ensure_thread(a, 1.0)
        await journal.ensure_thread(b, 1.0)
        outcomes = {}

        async def append(key, seq):
            try:
                await journal.append([Event(key, seq, "agent_thinking", "r", 2.0, {})])
                outcomes[key] = "ok"
            except ValueError:
                outcomes[key] = "refused"

        async with trio.open_nursery() as nursery:  # both in the same batch
            nursery.start_soon(append, a, 1)
            nursery.start_soon(append, b, 5)
        assert outcomes == {a: "ok", b: "refused"}
        assert await journal.last_seq(a) == 1 and await journal.last_seq(b) == 0


async def refused(url: str) -> SchemaTooNew:
    exc = await store_refusal(url)
    assert isinstance(exc, SchemaTooNew), exc
    return exc


async def test_sqlite_refuses_a_newer_schema(tmp_path):
    path = tmp_path / "t.db"
    async with open_journal(f"sqlite:///{path}"):
        pass
    with sqlite3.connect(path) as conn:
        conn.execute("PRAGMA user_version = 99")
    exc = await refused(f"sqlite:///{path}")
    assert f"schema version 99, newer than the {schema.VERSION} this threadline knows" in str(exc)


async def test_postgres_refuses_a_newer_schema(pg_dsn):
    async with open_journal(pg_dsn):
        pass
    with psycopg.connect(pg_dsn, autocommit=True) as conn:
        conn.execute("UPDATE threadline_schema SET version = 99")
    assert "schema version 99" in str(await refused(pg_dsn))


async def test_a_restart_keeps_threads_history_and_idempotency(store_url):
    async with open_journal(store_url) as journal:
        async with open_runtime(journal=journal) as rt:
            thread = rt.thread("ada", "main")
            async with thread.open_subscription() as sub:
                first = await thread.send("hello", client_msg_id="c1")
                await until_terminal(sub, first.run_id)
            before = await thread.history()
    async with open_journal(store_url) as journal:
        async with open_runtime(journal=journal) as rt:
            thread = rt.thread("ada", "main")
            assert await thread.history() == before
            assert await thread.send("hello", client_msg_id="c1") == first
            info = await thread.info()
            assert info.last_seq == 4
            assert [t.key.thread_id for t in await rt.user("ada").threads()] == ["main"]
            again = await thread.send("again")
            assert again.seq == 5


async def test_a_graceful_stop_cancels_runs_in_the_journal(store_url):
    async with open_journal(store_url) as journal:
        async with open_runtime(journal=journal, agent=scripted_agent, tools=test_tools()) as rt:
            acc = await rt.thread("ada", "main").send("think:x;sleep:60")
            await trio.sleep(0.2)
            await rt.aclose(grace=0.1)
    async with open_journal(store_url) as journal:
        history = await journal.read(ThreadKey("ada", "main"), 0)
        assert history[-1].event == "agent_cancelled" and history[-1].run_id == acc.run_id
        assert history[-1].data == {"reason": "shutdown"}
        assert await journal.open_runs() == []


async def test_runs_left_open_by_a_crash_are_failed_at_start(store_url):
    key = ThreadKey("ada", "main")
    async with open_journal(store_url) as journal:  # what a crash leaves: open runs
        await journal.ensure_thread(key, 1.0)
        await journal.append([
            Event(key, 1, "user_message", "r1", 2.0, {"message_id": "m1", "text": "a"}),
            Event(key, 2, "agent_started", "r1", 2.0, {}),
            Event(key, 3, "user_message", "r2", 2.0, {"message_id": "m2", "text": "b"}),
        ])
    async with open_journal(store_url) as journal:
        async with open_runtime(journal=journal):
            history = await journal.read(key, 0)
    assert [(e.seq, e.event, e.run_id) for e in history[3:]] == [
        (4, "agent_failed", "r1"), (5, "agent_started", "r2"), (6, "agent_failed", "r2")]
    assert history[3].data == {"error": "server restarted"}
    assert_runs_well_formed(history)


async def test_a_run_closed_at_start_carries_the_usage_it_reported_before_the_crash(store_url):
    key = ThreadKey("ada", "main")
    async with open_journal(store_url) as journal:
        await journal.ensure_thread(key, 1.0)
        await journal.append([
            Event(key, 1, "user_message", "r1", 2.0, {"message_id": "m1", "text": "a"}),
            Event(key, 2, "agent_started", "r1", 2.0, {"message_id": "m1"}),
        ])
        await journal.record_usage(key, "r1", "d2026-12-07", "m2026-12", Usage(40, 9, 8, "m"))
    async with open_journal(store_url) as journal:
        async with open_runtime(journal=journal):
            history = await journal.read(key, 0)
    assert history[-1].data == {"error": "server restarted", "usage": {
        "input_tokens": 40, "output_tokens": 9, "cached_input_tokens": 8, "model": "m"}}


async def test_postgres_going_away_and_coming_back(pg_cluster, pg_dsn):
    async with open_journal(pg_dsn) as journal:
        async with open_runtime(journal=journal, agent=scripted_agent, tools=test_tools()) as rt:
            thread = rt.thread("ada", "main")
            async with thread.open_subscription() as sub:
                ok = await thread.send("think:before")
                await until_terminal(sub, ok.run_id)
                running = await thread.send("think:a;sleep:0.3;think:b")
                await trio.to_thread.run_sync(pg_cluster.stop)
                try:
                    await trio.sleep(1.0)  # the run's next event finds the store gone
                    with pytest.raises(JournalUnavailable):
                        await thread.send("lost?")
                    # The actor still answers, from memory, with what was acknowledged.
                    assert (await thread.info()).last_seq >= running.seq
                finally:
                    await trio.to_thread.run_sync(pg_cluster.start)
                with trio.fail_after(30):  # the store recovers by itself (backoff <= 5 s)
                    while True:
                        try:
                            back = await thread.send("think:after")
                            break
                        except JournalUnavailable:
                            await trio.sleep(0.2)
                await until_terminal(sub, back.run_id)
            history = await thread.history()
    texts = [e.data.get("text") for e in history if e.event == "user_message"]
    assert texts == ["think:before", "think:a;sleep:0.3;think:b", "think:after"]  # not half way
    lost = [e for e in history if e.run_id == running.run_id]
    assert lost[-1].event == "agent_failed" and lost[-1].data == {"error": "storage unavailable"}
    assert_runs_well_formed(history)
    assert [e.seq for e in history] == list(range(1, len(history) + 1))
