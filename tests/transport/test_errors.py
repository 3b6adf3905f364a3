"""Every error code and close code of PROTOCOL.md, each provoked for real over loopback; after
each, the server still serves everyone else."""

from __future__ import annotations

import json

import pytest
import trio

from tests.helpers import FailingJournal
from tests.servers import serving, token
from tests.transport.wire import close_code, frames_until_closed
from threadline.transport.client import ServerError, connect, open_client
from threadline.transport.limits import Limits


async def still_serves(server, user="bystander"):
    async with open_client(server.url, token(user)) as client:
        await client.join("main")
        acc = await client.send("main", "still there?")
        while True:
            event = await client.next_event(10)
            if event["event"] == "agent_completed" and event["run_id"] == acc["run_id"]:
                return


async def error_of(coro) -> ServerError:
    with pytest.raises(ServerError) as info:
        await coro
    return info.value


read_until_closed = frames_until_closed


async def test_bad_frames_are_answered_and_the_connection_stays(server):
    async with open_client(server.url, token("ada")) as client:
        await client.send_raw(b"{not json", binary=False)
        frame = await client.next_unsolicited()
        assert frame == {"type": "error", "code": "bad_frame", "message": "not valid JSON"}
        exc = await error_of(client.request({"type": "dance"}))  # with a ref: it answers it
        assert exc.code == "bad_frame" and "unknown type" in exc.message
        exc = await error_of(client.request({"type": "send", "thread_id": "bad id!", "text": "x"}))
        assert exc.code == "bad_frame"
        await client.ping()
    await still_serves(server)


async def test_too_many_bad_frames_in_a_row_close_with_1008(server):
    async with open_client(server.url, token("ada")) as client:
        for _ in range(19):
            await client.send_raw(b"[]", binary=False)
        await client.ping()  # a good frame resets the count
        for _ in range(19):
            await client.send_raw(b"[]", binary=False)
        await client.ping()
        for _ in range(20):
            await client.send_raw(b"[]", binary=False)
        with trio.fail_after(10):
            async for _ in client.events():
                pass
        assert client.close_code == 1008
    await still_serves(server)


async def test_not_joined(server):
    async with open_client(server.url, token("ada")) as client:
        assert (await error_of(client.send("main", "hi"))).code == "not_joined"
        assert (await error_of(client.cancel("main"))).code == "not_joined"
        await client.join("main")
        await client.leave("main")
        assert (await error_of(client.send("main", "hi"))).code == "not_joined"
    await still_serves(server)


async def test_busy_and_unknown_run(scripted_server):
    async with open_client(scripted_server.url, token("ada")) as client:
        await client.join("main")
        assert (await error_of(client.cancel("main"))).code == "unknown_run"
        acc = await client.send("main", "sleep:60")
        while (await client.next_event())["event"] != "agent_started":
            pass
        exc = await error_of(client.send("main", "now!", strategy="reject"))
        assert exc.code == "busy"
        assert (await error_of(client.cancel("main", "run_other"))).code == "unknown_run"
        ok = await client.cancel("main", acc["run_id"])
        assert ok["type"] == "ok" and ok["run_id"] == acc["run_id"]
        while (event := await client.next_event())["event"] != "agent_cancelled":
            pass
        assert event["data"] == {"reason": "cancel"}
        assert (await error_of(client.cancel("main", acc["run_id"]))).code == "unknown_run"
    await still_serves(scripted_server)


async def test_rate_limited():
    # 1 token/s refill: only a stall of over 2 s could let more than 7 of 12 through.
    async with serving(limits=Limits(rate=1, burst=5, ping_interval=None)) as server:
        async with open_client(server.url, token("ada")) as client:
            outcomes = []

            async def ping():
                try:
                    await client.ping()
                    outcomes.append("pong")
                except ServerError as exc:
                    outcomes.append(exc.code)

            async with trio.open_nursery() as nursery:
                for _ in range(12):
                    nursery.start_soon(ping)
            assert outcomes.count("rate_limited") >= 5
            assert 5 <= outcomes.count("pong") <= 7  # the burst, and what refilled meanwhile
            await trio.sleep(1.5)
            await client.ping()  # refilled: the connection stayed open
        await still_serves(server)


async def test_limit_reached_on_threads_joined():
    async with serving(limits=Limits(max_threads=2, ping_interval=None)) as server:
        async with open_client(server.url, token("ada")) as client:
            await client.join("a")
            await client.join("b")
            exc = await error_of(client.join("c"))
            assert exc.code == "limit_reached"
            await client.join("a", since=0)  # joining again is not one more
            await client.leave("b")
            await client.join("c")
        await still_serves(server)


async def test_internal_when_the_store_fails_and_nothing_is_stored():
    journal = FailingJournal()
    async with serving(journal=journal) as server:
        async with open_client(server.url, token("ada")) as client:
            await client.join("main")
            journal.failing = True
            exc = await error_of(client.send("main", "lost?", client_msg_id="c1"))
            assert exc.code == "internal"
            info = await client.threads()
            assert info[0]["last_seq"] == 0
            journal.failing = False
            acc = await client.send("main", "again", client_msg_id="c1")
            assert acc["seq"] == 1
        await still_serves(server)


async def test_a_frame_over_the_size_limit_closes_with_1009():
    async with serving(limits=Limits(max_frame_bytes=1024, ping_interval=None)) as server:
        async with open_client(server.url, token("ada")) as client:
            await client.join("main")
            await client.send_frame({"type": "send", "thread_id": "main", "text": "x" * 2000})
            with trio.fail_after(10):
                async for _ in client.events():
                    pass
            assert client.close_code == 1009
        await still_serves(server)


async def test_a_slow_reader_is_closed_with_1013_and_slows_no_one():
    limits = Limits(outgoing_queue=500, close_timeout=30, ping_interval=None)
    async with serving(scripted=True, limits=limits) as server:
        slow = await connect(server.url, token("ada"))
        slow.write(json.dumps({"type": "join", "thread_id": "main"}).encode(), binary=False)
        await slow.flush()
        async with open_client(server.url, token("ada")) as other_tab:
            await other_tab.join("main")
            # 40 MB of events, 2 ms apart so that a reading tab keeps up even on a busy
            # machine: far more than the socket buffers and a queue of 500 (10 MB) hold for
            # one that does not read.
            acc = await other_tab.send("main", "flood:2000:20000:0.002")
            seen = []
            while True:
                event = await other_tab.next_event(60)
                seen.append(event["seq"])
                if event["event"] == "agent_completed" and event["run_id"] == acc["run_id"]:
                    break
            assert seen == list(range(1, len(seen) + 1))  # the other tab got everything
            # Now the slow one reads: what it got is gapless, then the close says why.
            frames = await read_until_closed(slow, timeout=60)
            assert close_code(slow) == 1013
            seqs = [f["seq"] for f in frames if f["type"] == "event"]
            assert frames[0]["type"] == "joined"
            assert seqs == list(range(1, len(seqs) + 1)) and len(seqs) < len(seen)
            await slow.aclose()
            # It resumes with since and gets exactly what it missed.
            async with open_client(server.url, token("ada")) as resumed:
                await resumed.join("main", since=seqs[-1] if seqs else 0)
                rest = [(await resumed.next_event(30))["seq"] for _ in range(len(seen) - len(seqs))]
                assert seqs + rest == seen
        await still_serves(server)


async def test_keepalive_closes_a_dead_connection_and_keeps_a_live_one():
    limits = Limits(ping_interval=0.3, ping_timeout=0.5)
    async with serving(limits=limits) as server:
        async with open_client(server.url, token("ada")) as live:
            dead = await connect(server.url, token("bob"))
            await trio.sleep(2.0)  # the dead one never reads, so never answers a ping
            await read_until_closed(dead)
            assert close_code(dead) == 1011
            assert dead.protocol.close_rcvd.reason == "keepalive ping timeout"
            await dead.aclose()
            await live.ping()  # its reader answered every ping
        await still_serves(server)


async def test_shutdown_cancels_runs_and_closes_with_1001():
    async with serving(scripted=True, config=None) as server:
        async with open_client(server.url, token("ada")) as client:
            await client.join("main")
            acc = await client.send("main", "sleep:60")
            while (await client.next_event())["event"] != "agent_started":
                pass
            await server.shutdown(grace=0.5)
            events = [e async for e in client.events()]
            assert events[-1]["event"] == "agent_cancelled"
            assert events[-1]["data"] == {"reason": "shutdown"}
            assert events[-1]["run_id"] == acc["run_id"]
            assert client.close_code == 1001
