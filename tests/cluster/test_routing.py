"""Two and three real nodes over one real PostgreSQL: a client reaches a thread whatever node it
is connected to, two tabs on different nodes see one history, and users stay apart."""

from __future__ import annotations

import pytest
import trio

from tests.cluster.nodes import (SCRIPTED, open_nodes, owner, stored, stored_well_formed,
                                 threads_owned_by)
from tests.servers import http, token
from threadline.actors.messages import ThreadKey
from threadline.transport.client import UnknownRun, open_client

TTL = ("--lease-ttl", "3")


async def until(client, event: str, timeout: float = 15) -> list[dict]:
    frames = []
    with trio.fail_after(timeout):
        while not frames or frames[-1]["event"] != event:
            frames.append(await client.next_event(timeout))
    return frames


async def test_a_client_on_one_node_uses_a_thread_another_node_owns(pg_dsn):
    async with open_nodes(pg_dsn, 2, *SCRIPTED, *TTL) as (a, b):
        (thread,) = threads_owned_by(pg_dsn, b, "ada", 1)
        assert owner(pg_dsn, ThreadKey("ada", thread)) == b.node_id
        async with open_client(a.url, token("ada")) as client:
            assert (await client.join(thread))["last_seq"] == 0
            first = await client.send(thread, "think:hmm;sleep:0.1", client_msg_id="c-1")
            frames = await until(client, "agent_completed")
            assert [f["event"] for f in frames] == ["user_message", "agent_started",
                                                    "agent_thinking", "agent_completed"]
            assert [f["seq"] for f in frames] == [1, 2, 3, 4]
            # The same errors and idempotence as on one node.
            again = await client.send(thread, "think:hmm;sleep:0.1", client_msg_id="c-1")
            assert {**again, "ref": None} == {**first, "ref": None}
            with pytest.raises(UnknownRun):
                await client.cancel(thread)
            running = await client.send(thread, "sleep:60")
            await until(client, "agent_started")
            assert (await client.cancel(thread))["run_id"] == running["run_id"]
            frames = await until(client, "agent_cancelled")
            assert frames[-1]["data"] == {"reason": "cancel"}
            listed = {t["thread_id"]: t for t in await client.threads()}
            assert listed[thread]["last_seq"] == frames[-1]["seq"]
        # The owner served it, the node the client was on forwarded it.
        assert await b.metric("threadline_actor_activations_total") >= 1
        assert await a.metric("threadline_actor_activations_total") == 0
        assert await a.metric("threadline_cluster_forwarded_requests_total") >= 4
        stored_well_formed(pg_dsn, ThreadKey("ada", thread))


async def test_two_tabs_on_different_nodes_see_the_same_events_in_the_same_order(pg_dsn):
    async with open_nodes(pg_dsn, 3, *SCRIPTED, *TTL) as (a, b, c):
        (thread,) = threads_owned_by(pg_dsn, c, "ada", 1)
        async with open_client(a.url, token("ada")) as tab1, \
                open_client(b.url, token("ada")) as tab2:
            await tab1.join(thread)
            await tab2.join(thread)
            for i in range(5):
                tab = (tab1, tab2)[i % 2]
                await tab.send(thread, f"think:from tab {i % 2 + 1};sleep:0.05")
            seen1, seen2 = [], []
            with trio.fail_after(30):
                while len([f for f in seen1 if f["event"] == "agent_completed"]) < 5:
                    seen1.append(await tab1.next_event())
                while len(seen2) < len(seen1):
                    seen2.append(await tab2.next_event())

            def view(frames):
                return [(f["seq"], f["event"], f["run_id"], f["data"]) for f in frames]

            assert view(seen1) == view(seen2)
            assert [f["seq"] for f in seen1] == list(range(1, 21))
            # A third tab that joins late on the owner gets the same history by replay.
            async with open_client(c.url, token("ada")) as tab3:
                await tab3.join(thread, since=0)
                seen3 = [await tab3.next_event(10) for _ in range(20)]
            assert view(seen3) == view(seen1)


async def test_users_stay_apart_across_nodes(pg_dsn):
    async with open_nodes(pg_dsn, 2, *SCRIPTED, *TTL) as (a, b):
        # One thread id for both users, wherever their shards live; each user on a node.
        async with open_client(a.url, token("ada")) as ada, \
                open_client(b.url, token("bob")) as bob:
            await ada.join("main")
            await bob.join("main")
            await ada.send("main", "think:ada's secret")
            await bob.send("main", "think:bob's secret")
            ada_frames = await until(ada, "agent_completed")
            bob_frames = await until(bob, "agent_completed")
            for client in (ada, bob):  # nothing else comes to either of them
                with pytest.raises(trio.TooSlowError):
                    await client.next_event(1)
            assert [t["thread_id"] for t in await ada.threads()] == ["main"]
        # (the texts: ids are hex, which may hold "ada" or "b0b" by chance)
        assert all("bob's" not in str(f["data"]) for f in ada_frames)
        assert all("ada's" not in str(f["data"]) for f in bob_frames)
        assert any("ada's secret" in str(f["data"]) for f in ada_frames)
        assert any("bob's secret" in str(f["data"]) for f in bob_frames)
        for user in ("ada", "bob"):
            events = stored(pg_dsn, ThreadKey(user, "main"))
            assert [e.seq for e in events] == [1, 2, 3, 4]
            assert events[0].data["text"] == f"think:{user}'s secret"


async def test_a_thread_deleted_through_one_node_leaves_every_tab_on_every_node(pg_dsn):
    async with open_nodes(pg_dsn, 3, *SCRIPTED, *TTL) as (a, b, c):
        (thread,) = threads_owned_by(pg_dsn, b, "ada", 1)
        async with open_client(a.url, token("ada")) as far, \
                open_client(b.url, token("ada")) as near:
            await far.join(thread)
            await near.join(thread)
            await far.send(thread, "think:soon gone")
            await until(far, "agent_completed")
            status, _, _ = await http(c, "DELETE", f"/v1/threads/{thread}", tok=token("ada"))
            assert status == 200
            for tab in (far, near):
                left = await tab.next_unsolicited(15)
                assert left == {"type": "left", "thread_id": thread, "reason": "deleted"}
        assert stored(pg_dsn, ThreadKey("ada", thread)) == []
