"""One owner per store: a second server (other port, same port), ``delete-user`` and an
embedding program's ``open_journal`` on a store a live process owns are refused in one line
with nothing written; ``kill -9`` of the owner lets the store go. Real ``threadline serve``
processes, real SQLite files, a real PostgreSQL."""

from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import sys
import textwrap
from pathlib import Path
from urllib.parse import urlsplit

import psycopg
import pytest
import trio

from tests.runtime.test_cli_errors import cli, refused
from tests.servers import SECRET, ServeProcess, token
from threadline.stores import StoreInUse, open_journal
from threadline.stores.postgres import PostgresBackend
from threadline.transport.client import open_client

SCRIPTED = ("--agent", "tests.helpers:scripted_agent", "--grace", "0.5")


def events_in(db: Path) -> list[tuple[int, str]]:
    with sqlite3.connect(db) as conn:
        return conn.execute("SELECT seq, event FROM events ORDER BY seq").fetchall()


async def a_live_run(url: str):
    """A client of ``ada/main`` with a run in progress (it thinks, then waits a while)."""
    client_cm = open_client(url, token("ada"))
    client = await client_cm.__aenter__()
    await client.join("main")
    await client.send("main", "think:one;sleep:4;think:two")
    while (await client.next_event())["event"] != "agent_thinking":
        pass
    return client_cm, client


async def the_run_ends_well(client) -> None:
    """The live run goes on: no ``agent_failed`` written into it by the refused start."""
    while True:
        event = await client.next_event(20)
        assert event["event"] != "agent_failed", event
        if event["event"] == "agent_completed":
            return


@pytest.mark.parametrize("same_port", [False, True])
async def test_a_second_server_on_a_sqlite_store_is_refused_and_writes_nothing(tmp_path, same_port):
    db = tmp_path / "t.db"
    first = ServeProcess("--store", f"sqlite:///{db}", *SCRIPTED)
    try:
        url = await first.ready()
        client_cm, client = await a_live_run(url)
        before = events_in(db)
        port = urlsplit(url).port if same_port else 0
        out = await trio.to_thread.run_sync(lambda: cli(
            "serve", "--store", f"sqlite:///{db}", "--port", str(port), *SCRIPTED,
            env={"THREADLINE_SECRET": SECRET}))
        if same_port:
            refused(out, "address already in use")
        else:
            line = refused(out, "in use by pid")
            assert f"SQLite {db}" in line and "one server per SQLite store" in line
        assert events_in(db) == before  # no recovery ran: the live run is not closed
        await the_run_ends_well(client)
        await client_cm.__aexit__(None, None, None)
    finally:
        first.kill()


async def test_delete_user_on_a_live_sqlite_store_is_refused_with_advice(tmp_path):
    db = tmp_path / "t.db"
    server = ServeProcess("--store", f"sqlite:///{db}", *SCRIPTED)
    try:
        url = await server.ready()
        async with open_client(url, token("ada")) as client:
            await client.join("main")
            await client.send("main", "think:one")
            await the_run_ends_well(client)
        before = events_in(db)
        out = await trio.to_thread.run_sync(
            lambda: cli("delete-user", "ada", "--store", f"sqlite:///{db}"))
        line = refused(out, "in use by pid")
        assert "DELETE /v1/threads/THREAD_ID" in line
        assert events_in(db) == before
    finally:
        server.kill()


async def test_an_embedding_program_is_refused_then_takes_the_store_after_kill_9(tmp_path):
    db = tmp_path / "t.db"
    server = ServeProcess("--store", f"sqlite:///{db}", *SCRIPTED)
    try:
        url = await server.ready()
        client_cm, client = await a_live_run(url)
        with pytest.raises(StoreInUse, match=f"pid {server.proc.pid} "):
            async with open_journal(f"sqlite:///{db}"):
                pass
        # Another process, as an embedding program would be.
        program = textwrap.dedent(f"""
            import trio
            from threadline.stores import open_journal, StoreInUse
            async def main():
                try:
                    async with open_journal("sqlite:///{db}"):
                        print("opened")
                except StoreInUse as exc:
                    print("refused:", exc)
            trio.run(main)
        """)
        run = lambda: subprocess.run([sys.executable, "-c", program], capture_output=True,
                                     text=True, timeout=60)
        out = await trio.to_thread.run_sync(run)
        assert out.stdout.startswith("refused: ") and out.returncode == 0, out
        server.kill()  # SIGKILL: the kernel lets the lock go
        await client_cm.__aexit__(None, None, None)
        out = await trio.to_thread.run_sync(run)
        assert out.stdout == "opened\n", out
    finally:
        server.kill()


async def test_the_lock_is_let_go_when_the_store_closes(tmp_path):
    url = f"sqlite:///{tmp_path}/t.db"
    async with open_journal(url):
        with pytest.raises(StoreInUse):
            async with open_journal(url):
                pass
    async with open_journal(url):  # again, once the first one closed
        pass


async def test_a_missing_folder_is_said_as_before(tmp_path):
    from threadline.stores import StoreError

    with pytest.raises(StoreError, match="does not exist"):
        async with open_journal(f"sqlite:///{tmp_path}/nowhere/t.db"):
            pass


# -- PostgreSQL: an advisory lock, exclusive or shared by cluster nodes ---------------------------

async def test_two_servers_without_cluster_on_one_postgresql_are_refused(pg_dsn):
    async with open_journal(pg_dsn):
        with pytest.raises(StoreInUse, match="another threadline server uses this store"):
            async with open_journal(pg_dsn):
                pass
        out = await trio.to_thread.run_sync(lambda: cli("delete-user", "ada", "--store", pg_dsn))
        refused(out, "another threadline server uses this store")
    async with open_journal(pg_dsn):  # let go at close
        pass


async def test_cluster_nodes_share_a_postgresql_store_with_each_other_only(pg_dsn):
    backend = PostgresBackend(pg_dsn)
    async with backend.claim(shared=True), backend.claim(shared=True):
        with pytest.raises(StoreInUse, match="cluster nodes use this store"):
            async with backend.claim(shared=False):
                pass
    async with backend.claim(shared=False):
        with pytest.raises(StoreInUse, match="without --cluster uses this store"):
            async with backend.claim(shared=True):
                pass


async def test_every_name_of_a_sqlite_store_is_refused_alike(tmp_path):
    """From a red-team pass: a symbolic link, a hard link, and the holder file deleted all
    let a second opener in while the lock was on ``PATH.lock``; the lock is on the database
    file itself now."""
    db = tmp_path / "t.db"
    (tmp_path / "link.db").symlink_to(db)
    async with open_journal(f"sqlite:///{db}"):
        os.link(db, tmp_path / "hard.db")
        (tmp_path / "t.db.lock").unlink()  # the holder's words only: it decides nothing
        for name in ("link.db", "hard.db", "t.db", "./t.db"):
            with pytest.raises(StoreInUse):
                async with open_journal(f"sqlite:///{tmp_path}/{name}"):
                    pass


async def test_a_lock_a_forked_child_keeps_is_said_so(tmp_path):
    db = tmp_path / "t.db"
    program = textwrap.dedent(f"""
        import os, sys, time, trio
        from threadline.stores import open_journal
        async def main():
            async with open_journal("sqlite:///{db}"):
                child = os.fork()
                if child == 0:  # the child keeps the descriptor
                    time.sleep(30)
                    os._exit(0)
                print(child, flush=True)
                os._exit(0)  # the parent dies, as after kill -9
        trio.run(main)
    """)
    proc = subprocess.Popen([sys.executable, "-c", program], stdout=subprocess.PIPE, text=True)
    child = int((await trio.to_thread.run_sync(proc.stdout.readline)).strip())
    try:
        await trio.to_thread.run_sync(proc.wait)
        with pytest.raises(StoreInUse, match=f"started by pid {proc.pid}, which has exited"):
            async with open_journal(f"sqlite:///{db}"):
                pass
    finally:
        os.kill(child, signal.SIGKILL)


async def test_two_schemas_of_one_database_are_two_stores(pg_dsn):
    with psycopg.connect(pg_dsn, autocommit=True) as conn:
        conn.execute("CREATE SCHEMA IF NOT EXISTS tenant2")
    other = pg_dsn + ("&" if "?" in pg_dsn else "?") + "options=-csearch_path%3Dtenant2"
    async with open_journal(pg_dsn), open_journal(other):
        pass  # neither refuses the other


async def test_a_postgresql_hold_that_ends_is_taken_again(pg_dsn, monkeypatch, caplog):
    """From a red-team pass: the lock's idle connection was ended (idle_session_timeout, a
    database restart) and a second server started without a word. Now the owner notices and
    takes the hold again, and the other is refused."""
    from threadline.stores import pg_owner

    monkeypatch.setattr(pg_owner, "KEEP_INTERVAL", 0.2)
    async with open_journal(pg_dsn):
        with psycopg.connect(pg_dsn, autocommit=True) as conn:  # end the hold's connection
            ended = conn.execute(
                "SELECT pg_terminate_backend(l.pid) FROM pg_locks l WHERE l.locktype = "
                "'advisory' AND l.classid = %s AND l.granted", (pg_owner.OWNER_LOCK,)).fetchall()
        assert ended == [(True,)]
        with trio.fail_after(10):
            while not any("holds the store again" in r.getMessage() for r in caplog.records):
                await trio.sleep(0.1)
        with pytest.raises(StoreInUse, match="another threadline server uses this store"):
            async with open_journal(pg_dsn):
                pass
    assert any("the connection that holds the store ended" in r.getMessage()
               for r in caplog.records)
