"""A conflict in the store is not the client's fault: a thread whose events another writer
(another connection to the same database, behind the server's back) wrote meanwhile answers
``internal``, never ``bad_frame``, reloads from the store at once, gives its subscribers what
the other writer stored, and serves again; never a wedge until restart. A real server on
loopback over SQLite and PostgreSQL, written behind by a second real connection."""

from __future__ import annotations

import json
import sqlite3
import time
from contextlib import asynccontextmanager
from typing import AsyncIterator

import psycopg
import pytest
import trio

from tests.helpers import assert_runs_well_formed, scripted_agent, test_tools
from tests.proxies import Proxy
from tests.servers import SECRET, token
from threadline import open_runtime
from threadline.actors.messages import Event, ThreadKey
from threadline.server import RunningServer, open_server
from threadline.stores import open_journal
from threadline.transport.client import ServerError, open_client
from threadline.transport.limits import Limits


@pytest.fixture(params=["sqlite", "postgresql"])
def store(request, tmp_path):
    if request.param == "sqlite":
        path = tmp_path / "t.db"
        return f"sqlite:///{path}", lambda: sqlite3.connect(path, isolation_level=None)
    dsn = request.getfixturevalue("pg_dsn")
    return dsn, lambda: psycopg.connect(dsn, autocommit=True)


def write_behind(connect, user: str, thread: str, events: int) -> int:
    """Another writer appends ``events`` thinking events to the thread, as a second server
    would (row and events in one transaction); the new last seq."""
    conn = connect()
    try:
        mark = "?" if isinstance(conn, sqlite3.Connection) else "%s"
        cur = conn.cursor()
        cur.execute(f"SELECT last_seq FROM threads WHERE user_id = {mark} AND thread_id = {mark}",
                    (user, thread))
        last = cur.fetchone()[0]
        cur.execute("BEGIN")
        for seq in range(last + 1, last + events + 1):
            cur.execute(f"INSERT INTO events (user_id, thread_id, seq, event, run_id, ts, data) "
                        f"VALUES ({mark}, {mark}, {mark}, {mark}, {mark}, {mark}, {mark})",
                        (user, thread, seq, "agent_thinking", "run-behind", time.time(),
                         json.dumps({"text": f"behind {seq}"})))
        cur.execute(f"UPDATE threads SET last_seq = {mark} WHERE user_id = {mark} AND "
                    f"thread_id = {mark}", (last + events, user, thread))
        cur.execute("COMMIT")
        return last + events
    finally:
        conn.close()


@asynccontextmanager
async def served(url: str) -> AsyncIterator[RunningServer]:
    """A server on loopback over the store at ``url``, with the scripted agent."""
    async with open_journal(url) as journal, open_runtime(
            journal=journal, agent=scripted_agent, tools=test_tools()) as rt, open_server(
            rt, port=0, secret=SECRET, limits=Limits(ping_interval=None)) as server:
        yield server


async def first_turn(client) -> None:
    """Join ``main`` and have one turn answered, so the thread's row is cached."""
    await client.join("main")
    first = await client.send("main", "think:one")
    await until_completed(client, first["run_id"])


async def until_completed(client, run_id: str) -> list[dict]:
    seen = []
    while True:
        event = await client.next_event(20)
        seen.append(event)
        if event["run_id"] == run_id and event["event"] in (
                "agent_completed", "agent_failed", "agent_cancelled"):
            return seen


async def send_until_served(client, text: str) -> tuple[dict, list[str]]:
    """Send until accepted, at most three times: the answer, and the codes of the failures."""
    codes = []
    for attempt in range(3):
        try:
            return await client.send("main", f"{text} {attempt}"), codes
        except ServerError as exc:
            codes.append(exc.code)
    raise AssertionError(f"the thread never served again: {codes}")


@pytest.mark.parametrize("behind", [1, 300])  # within a catch-up, and past it (resume)
async def test_a_thread_written_behind_the_servers_back_recovers_at_once(store, behind):
    url, connect = store
    async with served(url) as server:
        async with open_client(server.url, token("ada")) as client:
            await first_turn(client)
            last = await trio.to_thread.run_sync(write_behind, connect, "ada", "main", behind)
            accepted, codes = await send_until_served(client, "think:after")
            assert codes in ([], ["internal"]), codes  # never bad_frame; at most one failure
            assert accepted["seq"] > last
            await until_completed(client, accepted["run_id"])
        # What a client that resumes from 0 sees: every event once, in order, well formed
        # apart from the other writer's run, which never started.
        async with open_client(server.url, token("ada")) as again:
            joined = await again.join("main", since=0)
            frames = [await again.next_event(10) for _ in range(joined["last_seq"])]
    assert [f["seq"] for f in frames] == list(range(1, len(frames) + 1))
    assert sum(f["run_id"] == "run-behind" for f in frames) == behind
    ours = [Event(ThreadKey("ada", "main"), f["seq"], f["event"], f["run_id"], f["ts"], f["data"])
            for f in frames if f["run_id"] != "run-behind"]
    assert_runs_well_formed(ours)


async def test_live_subscribers_get_what_the_other_writer_stored(store):
    url, connect = store
    async with open_journal(url) as journal, open_runtime(
            journal=journal, agent=scripted_agent, tools=test_tools()) as rt:
        thread = rt.thread("ada", "main")
        async with thread.open_subscription() as events:
            first = await thread.send("think:one")
            async for event in events:
                if event.run_id == first.run_id and event.event == "agent_completed":
                    break
            last = await trio.to_thread.run_sync(write_behind, connect, "ada", "main", 2)
            for attempt in range(3):
                try:
                    accepted = await thread.send(f"think:after {attempt}")
                    break
                except Exception as exc:  # the one conflict: JournalUnavailable
                    assert type(exc).__name__ == "StoreConflict", exc
            seen = []
            async for event in events:
                seen.append(event)
                if event.run_id == accepted.run_id and event.event == "agent_completed":
                    break
    assert [e.seq for e in seen] == list(range(first.seq + 4, seen[-1].seq + 1))
    assert [e.data["text"] for e in seen if e.run_id == "run-behind"] == \
        [f"behind {last - 1}", f"behind {last}"]


# -- an ambiguous commit: PostgreSQL commits, the answer is lost --------------------------------

class CommitCutter(Proxy):
    """Once ``armed``, passes the next ``COMMIT`` to PostgreSQL, lets it commit, and cuts the
    connection before the server's answer comes back."""

    def __init__(self, port: int) -> None:
        super().__init__(port)
        self.armed = False
        self.cuts = 0

    async def forward(self, data, dst, pair, upstream) -> bool:
        if upstream and self.armed and b"COMMIT\x00" in data:
            self.armed = False
            # Cut before passing it on: ``send_all`` is a checkpoint, and the server's answer
            # could otherwise come back through the other direction's task in the meantime.
            pair.cut = True  # nothing more goes back to the client
            self.cuts += 1
            await dst.send_all(data)
            await trio.sleep(0.5)  # the server commits meanwhile
            return False
        await dst.send_all(data)
        return True


async def test_a_commit_whose_answer_is_lost_is_read_back_and_its_message_runs(pg_dsn, pg_cluster):
    cutter = CommitCutter(pg_cluster.port)
    async with trio.open_nursery() as nursery:
        port = await nursery.start(cutter.serve)
        dsn = pg_dsn.replace(f":{pg_cluster.port}/", f":{port}/")
        async with served(dsn) as server:
            async with open_client(server.url, token("ada")) as client:
                await first_turn(client)
                cutter.armed = True
                with pytest.raises(ServerError) as lost:  # stored, but its answer was cut
                    await client.send("main", "think:lost", client_msg_id="c-1")
                assert lost.value.code == "internal" and cutter.cuts == 1
                # The client retries, as the README says: the same accepted, which runs.
                with trio.fail_after(20):
                    while True:
                        try:
                            retried = await client.send("main", "think:lost",
                                                        client_msg_id="c-1")
                            break
                        except ServerError as exc:
                            assert exc.code == "internal", exc  # the store is reconnecting
                            await trio.sleep(0.2)
                after, codes = await send_until_served(client, "think:after")
                assert codes == [] and after["seq"] > retried["seq"]
            async with open_client(server.url, token("ada")) as again:
                joined = await again.join("main", since=0)
                frames = [await again.next_event(10) for _ in range(joined["last_seq"])]
                while not any(f["run_id"] == after["run_id"] and f["event"] == "agent_completed"
                              for f in frames):
                    frames.append(await again.next_event(10))
        nursery.cancel_scope.cancel()
    assert [f["seq"] for f in frames] == list(range(1, len(frames) + 1))
    assert sum(f["event"] == "user_message" and f["data"].get("client_msg_id") == "c-1"
               for f in frames) == 1
    events = [Event(ThreadKey("ada", "main"), f["seq"], f["event"], f["run_id"], f["ts"],
                    f["data"]) for f in frames]
    assert_runs_well_formed(events)  # the lost message's run ran, and ended once
    assert [e.data["text"] for e in events if e.run_id == retried["run_id"]
            and e.event == "agent_completed"] == ["think:lost"]


async def test_a_conflict_in_the_middle_of_an_answer_ends_that_run_and_logs_no_traceback(
        store, caplog):
    """The red-team's case: another writer lands while a run streams. The run ends with one
    terminal event at once (not at the next start's recovery), the thread serves again, and the
    log says so in warnings, with no traceback."""
    url, connect = store
    async with served(url) as server:
        async with open_client(server.url, token("ada")) as client:
            await first_turn(client)
            streaming = await client.send("main", "think:a;sleep:0.5;think:b;sleep:0.5;think:c")
            while (await client.next_event(10))["event"] != "agent_thinking":
                pass
            await trio.to_thread.run_sync(write_behind, connect, "ada", "main", 2)
            after, codes = await send_until_served(client, "think:after")
            assert codes in ([], ["internal"]), codes
            await until_completed(client, after["run_id"])
        async with open_client(server.url, token("ada")) as again:
            joined = await again.join("main", since=0)
            frames = [await again.next_event(10) for _ in range(joined["last_seq"])]
    ended = [f["event"] for f in frames if f["run_id"] == streaming["run_id"]
             and f["event"] in ("agent_completed", "agent_failed", "agent_cancelled")]
    assert len(ended) == 1, [(f["seq"], f["event"], f["run_id"]) for f in frames]
    ours = [Event(ThreadKey("ada", "main"), f["seq"], f["event"], f["run_id"], f["ts"], f["data"])
            for f in frames if f["run_id"] != "run-behind"]
    assert_runs_well_formed(ours)
    assert not [r for r in caplog.records if r.exc_info], \
        [(r.name, r.getMessage()) for r in caplog.records if r.exc_info]
