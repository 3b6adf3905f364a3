"""Restarts over real sockets: a graceful stop, ``kill -9`` mid-run, a ``client_msg_id`` retried
across a restart, and PostgreSQL stopped and started under a live server."""

from __future__ import annotations

import signal

import trio

from tests.helpers import assert_runs_well_formed
from tests.servers import ServeProcess, token
from threadline.transport.client import ServerError, open_client

SCRIPTED = ("--agent", "tests.helpers:scripted_agent", "--grace", "0.5")


async def history(url: str, user: str = "ada", thread: str = "main") -> list[dict]:
    async with open_client(url, token(user)) as client:
        joined = await client.join(thread, since=0)
        return [await client.next_event(10) for _ in range(joined["last_seq"])]


def as_events(frames: list[dict]):
    from threadline.actors.messages import Event, ThreadKey

    return [Event(ThreadKey("ada", f["thread_id"]), f["seq"], f["event"], f["run_id"], f["ts"],
                  f["data"]) for f in frames]


async def test_a_graceful_restart_loses_nothing(tmp_path):
    store = ("--store", f"sqlite:///{tmp_path}/t.db")
    server = ServeProcess(*store, *SCRIPTED)
    try:
        url = await server.ready()
        async with open_client(url, token("ada")) as client:
            await client.join("main")
            first = await client.send("main", "think:one", client_msg_id="m-1")
            while (await client.next_event())["event"] != "agent_completed":
                pass
            running = await client.send("main", "think:two;sleep:60")
            while (await client.next_event())["event"] != "agent_thinking":
                pass
            server.signal(signal.SIGTERM)
            last = [e async for e in client.events()][-1]
            assert (last["event"], last["data"]) == ("agent_cancelled", {"reason": "shutdown"})
        assert await server.wait() == 0
    finally:
        server.kill()
    server = ServeProcess(*store, *SCRIPTED)
    try:
        url = await server.ready()
        frames = await history(url)
        assert [f["seq"] for f in frames] == list(range(1, len(frames) + 1))
        assert_runs_well_formed(as_events(frames))
        assert frames[-1]["run_id"] == running["run_id"]
        async with open_client(url, token("ada")) as client:
            await client.join("main")
            again = await client.send("main", "think:one", client_msg_id="m-1")  # a retry
            assert again == {**first, "ref": again["ref"]}
            threads = await client.threads()
            assert [(t["thread_id"], t["last_seq"]) for t in threads] == [("main", len(frames))]
        server.signal(signal.SIGINT)
        assert await server.wait() == 0
    finally:
        server.kill()


async def test_kill_9_mid_run_then_restart_closes_the_run(tmp_path):
    store = ("--store", f"sqlite:///{tmp_path}/t.db")
    server = ServeProcess(*store, *SCRIPTED)
    try:
        url = await server.ready()
        async with open_client(url, token("ada")) as client:
            await client.join("main")
            acked = await client.send("main", "think:a;think:b;sleep:60", client_msg_id="k-1")
            seen = []
            while len(seen) < 4:  # user_message, agent_started, two thinks: all acknowledged
                seen.append(await client.next_event())
            server.kill()  # SIGKILL: no shutdown at all
    finally:
        server.kill()
    server = ServeProcess(*store, *SCRIPTED)
    try:
        url = await server.ready()
        frames = await history(url)
        assert frames[:4] == seen  # everything the client saw (so was stored) survived
        assert (frames[4]["event"], frames[4]["data"]) == ("agent_failed",
                                                           {"error": "server restarted"})
        assert frames[4]["run_id"] == acked["run_id"] and len(frames) == 5
        async with open_client(url, token("ada")) as client:
            await client.join("main")
            retry = await client.send("main", "think:a;think:b;sleep:60", client_msg_id="k-1")
            assert retry["run_id"] == acked["run_id"]  # idempotent across the crash
        server.signal(signal.SIGTERM)
        assert await server.wait() == 0
    finally:
        server.kill()


async def test_postgres_stopped_and_started_under_a_live_server(pg_cluster, pg_dsn):
    server = ServeProcess("--store", pg_dsn, *SCRIPTED)
    try:
        url = await server.ready()
        async with open_client(url, token("ada")) as client, \
                open_client(url, token("bob")) as bystander:
            await client.join("main")
            await bystander.join("main")
            await client.send("main", "think:before")
            while (await client.next_event())["event"] != "agent_completed":
                pass
            await trio.to_thread.run_sync(pg_cluster.stop)
            try:
                try:
                    await client.send("main", "lost")
                    raise AssertionError("accepted without a store")
                except ServerError as exc:
                    assert exc.code == "internal"
                await client.ping()  # the connections stay open
                await bystander.ping()
            finally:
                await trio.to_thread.run_sync(pg_cluster.start)
            with trio.fail_after(30):  # the server recovers by itself
                while True:
                    try:
                        back = await client.send("main", "think:after")
                        break
                    except ServerError:
                        await trio.sleep(0.3)
            while (event := await client.next_event())["run_id"] != back["run_id"] or \
                    event["event"] != "agent_completed":
                pass
        frames = await history(url)
        texts = [f["data"]["text"] for f in frames if f["event"] == "user_message"]
        assert texts == ["think:before", "think:after"]  # "lost" was not stored, not half way
        assert [f["seq"] for f in frames] == list(range(1, len(frames) + 1))
        server.signal(signal.SIGTERM)
        assert await server.wait() == 0
    finally:
        server.kill()
