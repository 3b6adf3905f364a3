"""NOTIFY only where someone listens, with two real nodes over one real PostgreSQL: clients on
the owner send none; a subscriber on the other node makes the owner notify that node, and gets
every event, in order, once."""

from __future__ import annotations

import trio

from tests.cluster.nodes import SCRIPTED, open_nodes, stored_well_formed, threads_owned_by
from tests.cluster.test_routing import TTL, until
from tests.servers import token
from threadline.actors.messages import ThreadKey
from threadline.transport.client import open_client

SENT, RECEIVED = ("threadline_cluster_notifications_sent_total",
                  "threadline_cluster_notifications_received_total")


async def test_owner_routed_traffic_sends_no_notify_and_a_remote_subscriber_misses_nothing(
        pg_dsn):
    async with open_nodes(pg_dsn, 2, *SCRIPTED, *TTL) as (a, b):
        (on_a,) = threads_owned_by(pg_dsn, a, "ada", 1)
        (on_b,) = threads_owned_by(pg_dsn, b, "bob", 1)
        # Every client on the node that owns its thread: not one NOTIFY, on either node.
        async with open_client(a.url, token("ada")) as ada, \
                open_client(b.url, token("bob")) as bob:
            for client, thread in ((ada, on_a), (bob, on_b)):
                await client.join(thread)
                for i in range(3):
                    await client.send(thread, "think:hm;sleep:0.01", client_msg_id=f"c-{i}")
                    await until(client, "agent_completed")
        for node in (a, b):
            assert await node.metric(SENT) == 0
            assert await node.metric(RECEIVED) == 0
        # A second tab of bob's on node a: it follows on_b's shard, so b notifies a.
        async with open_client(a.url, token("bob")) as far, \
                open_client(b.url, token("bob")) as near:
            joined = await far.join(on_b)
            assert joined["last_seq"] == 12
            await near.join(on_b)
            got: list[dict] = []
            for i in range(5):
                await near.send(on_b, "think:hm;sleep:0.01", client_msg_id=f"d-{i}")
                got += await until(far, "agent_completed")
            # every event after the join, in seq order, once
            assert [f["seq"] for f in got] == list(range(13, 13 + 20))
            assert [f["event"] for f in got[:4]] == ["user_message", "agent_started",
                                                     "agent_thinking", "agent_completed"]
        assert await b.metric(SENT) >= 1     # b told a: it has a subscriber there
        assert await a.metric(SENT) == 0     # nobody follows a's threads elsewhere
        assert await a.metric(RECEIVED) >= 1  # a heard it (not only its 2 s poll)
        events = stored_well_formed(pg_dsn, ThreadKey("bob", on_b))
        assert [e.seq for e in events[12:]] == [f["seq"] for f in got]
        # The tab gone, a tells b it follows nothing: a turn on b soon notifies nobody.
        async with open_client(b.url, token("bob")) as near:
            await near.join(on_b)
            for i in range(20):
                before = await b.metric(SENT)
                await near.send(on_b, "think:hm;sleep:0.01", client_msg_id=f"e-{i}")
                await until(near, "agent_completed")
                if await b.metric(SENT) == before:
                    break
                await trio.sleep(0.25)
            else:
                raise AssertionError("b went on notifying a after its subscriber left")
