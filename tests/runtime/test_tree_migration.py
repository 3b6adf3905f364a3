"""Schema migration 4 (the conversation tree) on a store the previous release made.

``tests/fixtures/store-v3.sqlite`` was written by threadline at schema version 3 (commit
259af2b, through its runtime and the echo agent: three turns of alice's ``main``, one of
``other`` whose first message is longer than a title, bob's streamed run cancelled and one turn
after it, and carol's thread with no message). Migrated, every thread is one branch: each
message follows the run of the message before it; each thread has its title; a new message
follows the thread's last run, and its history is the whole conversation. The same rows in a
PostgreSQL store made by migrations 1 to 3 migrate the same way. The released text of
migration 4 is pinned, as ``test_schema.py`` pins version 1.
"""

from __future__ import annotations

import shutil
import sqlite3
from pathlib import Path

import trio

from threadline import open_runtime
from tests.runtime.test_schema import migrate_to
from threadline.actors.history import read_history, read_turns
from threadline.actors.messages import TERMINAL_EVENTS, ThreadKey
from threadline.stores import open_journal, postgres, sql
from threadline.stores.schema import MIGRATIONS, VERSION

FIXTURE = Path(__file__).parent.parent / "fixtures" / "store-v3.sqlite"
ALICE, OTHER, BOB = ThreadKey("alice", "main"), ThreadKey("alice", "other"), ThreadKey("bob", "main")


def test_migration_4_is_the_text_it_was_released_with():
    assert MIGRATIONS[3].version == 4 and VERSION >= 4
    texts = MIGRATIONS[3].statements(postgres.DIALECT)
    assert texts[:2] == [
        "ALTER TABLE threads ADD COLUMN title TEXT",
        "CREATE TABLE turns (user_id TEXT NOT NULL, thread_id TEXT NOT NULL, run_id TEXT NOT "
        "NULL, message_id TEXT NOT NULL, parent TEXT NOT NULL, message_seq BIGINT NOT NULL, "
        "seq BIGINT NOT NULL, started_seq BIGINT, ended_seq BIGINT, PRIMARY KEY (user_id, "
        "thread_id, run_id))"]
    assert "COALESCE((m.data ->> 'message_id'), '')" in texts[5]
    assert texts[6].startswith("UPDATE threads SET title = (SELECT substr((f.data ->> 'text'), "
                               "1, 80)")


def fixture_rows() -> dict[str, list[tuple]]:
    with sqlite3.connect(FIXTURE) as conn:
        assert conn.execute("PRAGMA user_version").fetchone()[0] == 3
        return {table: conn.execute(f"SELECT * FROM {table}").fetchall()
                for table in ("threads", "events", "client_ids", "open_runs")}


async def check_migrated(url: str) -> None:
    rows = fixture_rows()
    messages = [r for r in rows["events"] if r[3] == "user_message"]
    async with open_journal(url) as journal:
        # Each message follows the run of the one before it, in its own thread only.
        for key in (ALICE, OTHER, BOB):
            runs = [r[4] for r in messages if (r[0], r[1]) == (key.user_id, key.thread_id)]
            placed = await journal.turns(key, 0, 100)
            assert [p.node.run_id for p in placed] == runs
            assert [p.node.parent for p in placed] == [None, *runs[:-1]]
            assert all((p.sibling_count, p.answer_count) == (1, 1) for p in placed)
            assert all(p.node.ended_seq is not None and p.node.started_seq is not None
                       for p in placed)
        views = await read_turns(journal, BOB, 0, 10)  # a cancelled run: what it streamed
        assert [(v.outcome, v.answer[:6]) for v in views] == [("cancelled", "1 2 3 "),
                                                             ("completed", "after ")]
        titles = {i.key.thread_id: i.title for i in await journal.threads("alice")}
        assert titles == {"main": "hello there", "other": "é" * 80}
        assert [i.title for i in await journal.threads("bob")] == ["/stream 100000"]
        assert [i.title for i in await journal.threads("carol")] == [None]
        # The runtime goes on from there: a new message follows the last run, and its history
        # is the conversation as it was, answers laid from their own events.
        async with open_runtime(journal=journal) as rt:
            thread = rt.thread(BOB.user_id, BOB.thread_id)
            async with thread.open_subscription() as sub:
                acc = await thread.send("and now?")
                with trio.fail_after(10):
                    async for event in sub:
                        if event.run_id == acc.run_id and event.event in TERMINAL_EVENTS:
                            break
            node = await journal.node(BOB, acc.run_id)
            assert node is not None and node.parent == messages[-1][4]
            history = await read_history(journal, BOB, acc.run_id, 100)
        assert [(t.role, t.outcome) for t in history] == [
            ("user", None), ("assistant", "cancelled"), ("user", None),
            ("assistant", "completed")]
        assert history[1].text.startswith("1 2 3") and history[3].text == "after the cancel"


async def test_a_sqlite_store_of_the_previous_release_migrates(tmp_path):
    path = tmp_path / "v3.db"
    shutil.copy(FIXTURE, path)
    await check_migrated(f"sqlite:///{path}")
    with sqlite3.connect(path) as conn:
        assert conn.execute("PRAGMA user_version").fetchone()[0] == VERSION


async def test_a_postgresql_store_of_the_previous_release_migrates(pg_dsn):
    """The fixture's rows in a PostgreSQL store made by migrations 1 to 3, as that release
    made them."""
    backend = postgres.PostgresBackend(pg_dsn)
    conn = backend.connect(writer=True)
    try:
        backend.begin(conn)
        cur = backend.cursor(conn)
        migrate_to(backend, cur, 3)
        for table, table_rows in fixture_rows().items():
            if table_rows:
                marks = ", ".join(["%s"] * len(table_rows[0]))
                cur.executemany(f"INSERT INTO {table} VALUES ({marks})", table_rows)
        backend.commit(conn)
    finally:
        backend.close(conn)
    await check_migrated(pg_dsn)
    assert sql.prepare(backend) == VERSION
