"""Requests of different threads of one connection do not wait for each other; requests of one
thread keep their order (issue 9). Over loopback, with a store that stalls one thread's writes."""

from __future__ import annotations

import json

import trio
from trio_websocket import open_websocket_url

from tests.helpers import HoldingJournal
from tests.servers import serving, token


async def test_a_send_stalled_in_the_store_delays_no_ping_and_no_cancel_of_another_thread():
    journal = HoldingJournal()
    async with serving(scripted=True, journal=journal) as server:
        async with open_websocket_url(f"{server.url}?token={token('ada')}") as ws:
            async def request(frame):  # type: ignore[no-untyped-def]
                await ws.send_message(json.dumps(frame))

            answers: dict = {}

            async def read() -> None:
                while True:
                    frame = json.loads(await ws.get_message())
                    if "ref" in frame:
                        answers[frame["ref"]] = frame

            async def answer(ref, timeout=10):  # type: ignore[no-untyped-def]
                with trio.fail_after(timeout):
                    while ref not in answers:
                        await trio.sleep(0.005)
                return answers[ref]

            async with trio.open_nursery() as nursery:
                nursery.start_soon(read)
                await request({"type": "join", "thread_id": "slow", "ref": "j1"})
                await request({"type": "join", "thread_id": "fast", "ref": "j2"})
                await answer("j1"), await answer("j2")
                await request({"type": "send", "thread_id": "fast", "text": "sleep:30",
                               "ref": "run"})
                await answer("run")
                journal.holds = lambda events: events[0].key.thread_id == "slow"
                await request({"type": "send", "thread_id": "slow", "text": "a", "ref": "s1"})
                await request({"type": "send", "thread_id": "slow", "text": "b", "ref": "s2"})
                await request({"type": "ping", "ref": "p"})
                await request({"type": "cancel", "thread_id": "fast", "ref": "c"})
                assert (await answer("p"))["type"] == "pong"
                assert (await answer("c"))["type"] == "ok"
                assert "s1" not in answers and "s2" not in answers  # still stalled, in order
                journal.release()
                first, second = await answer("s1"), await answer("s2")
                assert first["type"] == second["type"] == "accepted"
                assert first["seq"] < second["seq"]  # one thread's requests keep their order
                nursery.cancel_scope.cancel()
