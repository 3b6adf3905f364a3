"""Isolation end to end, over real sockets: many users, several threads each, several
connections per user, the same thread ids across users, tabs, and thread switching."""

from __future__ import annotations

import random
from collections import defaultdict
from contextlib import AsyncExitStack

import trio

from tests.servers import serving, token
from threadline.transport.client import open_client

USERS = [f"user{i}" for i in range(6)]
THREADS = ["main", "work", "misc"]  # every user has these ids: never the same thread


async def drain_until(client, expected: dict[str, int], timeout: float = 30.0):
    """Collect events until each thread reached its expected last seq."""
    got: dict[str, list[dict]] = defaultdict(list)
    with trio.fail_after(timeout):
        while any((got[t][-1]["seq"] if got[t] else 0) < last for t, last in expected.items()):
            event = await client.next_event()
            got[event["thread_id"]].append(event)
    return got


async def test_every_connection_gets_exactly_its_threads():
    rng = random.Random(7)
    # three connections per user, each joined to a random set of the user's threads
    plans = [(user, set(rng.sample(THREADS, rng.randint(1, 3)))) for user in USERS
             for _ in range(3)]
    async with serving() as server, AsyncExitStack() as stack:
        clients = []
        for user, joined in plans:
            client = await stack.enter_async_context(open_client(server.url, token(user)))
            for t in sorted(joined):
                await client.join(t)
            clients.append(client)
        sent: dict[tuple[str, str], set[str]] = defaultdict(set)

        async def talk(user: str) -> None:  # every user writes on every thread, concurrently
            async with open_client(server.url, token(user)) as sender:
                for t in THREADS:
                    await sender.join(t)
                    for n in range(3):
                        sent[(user, t)].add((await sender.send(t, f"{user}/{t}/{n}"))["run_id"])

        async with trio.open_nursery() as talkers:
            for user in USERS:
                talkers.start_soon(talk, user)
        for client, (user, joined) in zip(clients, plans):
            got = await drain_until(client, {t: 12 for t in joined})  # 3 runs x 4 events
            assert set(got) == joined, "an event of a thread it did not join"
            for t, events in got.items():
                assert [e["seq"] for e in events] == list(range(1, 13))
                texts = [e["data"]["text"] for e in events if e["event"] == "user_message"]
                assert texts == [f"{user}/{t}/{n}" for n in range(3)], "another user's message"
                assert {e["run_id"] for e in events} == sent[(user, t)]
            with trio.move_on_after(0.2):
                extra = await client.next_event()
                raise AssertionError(f"unexpected event {extra}")


async def test_two_tabs_on_one_thread_see_everything_in_both():
    async with serving() as server:
        async with open_client(server.url, token("ada")) as tab1, \
                open_client(server.url, token("ada")) as tab2:
            await tab1.join("main")
            await tab2.join("main")
            await tab1.send("main", "from tab 1")
            await tab2.send("main", "from tab 2")
            one = await drain_until(tab1, {"main": 8})
            two = await drain_until(tab2, {"main": 8})
            assert one == two
            texts = [e["data"]["text"] for e in one["main"] if e["event"] == "user_message"]
            assert texts == ["from tab 1", "from tab 2"]


def last_seen(log: list[dict], thread_id: str) -> int:
    seqs = [f["seq"] for f in log if f["type"] == "event" and f["thread_id"] == thread_id]
    return seqs[-1] if seqs else 0


async def test_thread_switching_loses_and_duplicates_nothing():
    async with serving(scripted=True) as server:
        async with open_client(server.url, token("ada"), record=True) as viewer, \
                open_client(server.url, token("ada")) as writer:
            await writer.join("a")
            await writer.join("b")
            await viewer.join("a")
            current = "a"
            for _ in range(6):  # switch threads while both are streaming
                await writer.send("a", "flood:5:10:0.01")
                await writer.send("b", "flood:5:10:0.01")
                await trio.sleep(0.03)
                await viewer.leave(current)
                current = "b" if current == "a" else "a"
                await viewer.join(current, since=last_seen(viewer.log, current))
            await trio.sleep(1.0)  # every run is over
            other = "b" if current == "a" else "a"
            await viewer.join(other, since=last_seen(viewer.log, other))
            last = {t["thread_id"]: t["last_seq"] for t in await writer.threads()}
            with trio.fail_after(10):
                while any(last_seen(viewer.log, t) < last[t] for t in "ab"):
                    await viewer.next_event()
        # On the wire: per thread, every seq exactly once, in order, and nothing of a thread
        # between its "left" and the next "joined".
        joined = {"a": False, "b": False}
        seqs: dict[str, list[int]] = {"a": [], "b": []}
        for frame in viewer.log:
            if frame["type"] in ("joined", "left"):
                joined[frame["thread_id"]] = frame["type"] == "joined"
            elif frame["type"] == "event":
                assert joined[frame["thread_id"]], f"event after left: {frame}"
                seqs[frame["thread_id"]].append(frame["seq"])
        for t in "ab":
            assert seqs[t] == list(range(1, last[t] + 1)), (t, seqs[t])


async def test_resume_after_a_disconnect_in_the_middle_of_a_streaming_run():
    async with serving(scripted=True) as server:
        async with open_client(server.url, token("ada")) as writer:
            await writer.join("main")
            got: list[int] = []
            async with open_client(server.url, token("ada")) as reader:
                await reader.join("main")
                await writer.send("main", "flood:200:10:0.005")
                while len(got) < 20:
                    got.append((await reader.next_event())["seq"])
            # disconnected mid-run; the run goes on; resume where we were
            async with open_client(server.url, token("ada")) as reader:
                joined = await reader.join("main", since=got[-1])
                assert joined["last_seq"] >= got[-1]
                while True:
                    event = await reader.next_event()
                    got.append(event["seq"])
                    if event["event"] == "agent_completed":
                        break
            assert got == list(range(1, len(got) + 1)) and len(got) == 203


async def test_the_client_reconnects_and_resumes_by_itself():
    async with serving(scripted=True) as server:
        async with open_client(server.url, token("ada"), reconnect=True) as reader, \
                open_client(server.url, token("ada")) as writer:
            await reader.join("main")
            await writer.join("main")
            await writer.send("main", "flood:100:10:0.01")
            got = [(await reader.next_event())["seq"] for _ in range(10)]
            await reader.conn.aclose()  # the network drops it
            while True:
                event = await reader.next_event()
                got.append(event["seq"])
                if event["event"] == "agent_completed":
                    break
            assert reader.reconnects == 1
            assert got == list(range(1, 104))
