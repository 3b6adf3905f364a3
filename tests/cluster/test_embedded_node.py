"""Two cluster nodes in one trio program, through ``open_cluster_runtime`` (what an embedding
program uses, and ``threadline serve --cluster`` too): a thread used through node A that node B
owns is served by B, its events reach a subscriber on A in order, and each node's figures and
health are its own."""

from __future__ import annotations

import trio

from tests.helpers import scripted_agent
from threadline.actors.messages import ThreadKey
from threadline.cluster import ClusterConfig, ClusterRuntime, open_cluster_runtime
from threadline.cluster.shards import SHARDS

TTL = 3.0


def config(dsn: str, node_id: str) -> ClusterConfig:
    return ClusterConfig(dsn, node_id=node_id, lease_ttl=TTL, handover_grace=1.0)


async def balanced(nodes: list[ClusterRuntime], timeout: float = 30) -> None:
    with trio.fail_after(timeout):
        while True:
            owned = [n.node.table.owned for n in nodes]
            if sum(owned) == SHARDS and all(owned):
                return
            await trio.sleep(0.1)


def owned_by(node: ClusterRuntime, user: str) -> str:
    for i in range(10_000):
        if node.node.table.is_local(ThreadKey(user, f"t{i}")):
            return f"t{i}"
    raise AssertionError("the node owns no shard")


async def test_a_thread_used_through_one_node_is_served_by_its_owner(pg_dsn):
    with trio.fail_after(90):
        async with open_cluster_runtime(config(pg_dsn, "a"), agent=scripted_agent) as a, \
                open_cluster_runtime(config(pg_dsn, "b"), agent=scripted_agent) as b:
            await balanced([a, b])
            thread_id = owned_by(b, "ada")
            assert not a.node.table.is_local(ThreadKey("ada", thread_id))
            thread = a.runtime.thread("ada", thread_id)
            async with thread.open_subscription() as events:
                assert events.joined_at == 0
                first = await thread.send("think:hmm;sleep:0.1", client_msg_id="c-1")
                seen = []
                async for event in events:
                    seen.append(event)
                    if event.event == "agent_completed":
                        break
            assert [e.event for e in seen] == ["user_message", "agent_started",
                                               "agent_thinking", "agent_completed"]
            assert [e.seq for e in seen] == [1, 2, 3, 4]
            assert seen[0].run_id == first.run_id
            # The same idempotence as on one node, and the same info from either node.
            again = await thread.send("think:hmm;sleep:0.1", client_msg_id="c-1")
            assert again.run_id == first.run_id
            info_a = await thread.info()
            info_b = await b.runtime.thread("ada", thread_id).info()
            assert info_a.last_seq == info_b.last_seq == 4
            # B served it, A forwarded it.
            assert a.runtime.statistics().activations == 0
            assert b.runtime.statistics().activations >= 1
            assert a.node.statistics().forwarded >= 3
            # Each node's /healthz fields and /metrics families, given to its server.
            assert a.extra_health()["cluster"]["node"] == "a"
            assert b.extra_health()["cluster"]["shards_owned"] == b.node.table.owned
            names = {family.name for family in a.extra_metrics()}
            assert {"threadline_cluster_shards_owned",
                    "threadline_cluster_forwarded_requests"} <= names
            await b.leave(0.5)  # a graceful stop: A takes B's shards at once
            with trio.fail_after(20):
                while a.node.table.owned < SHARDS:
                    await trio.sleep(0.1)
            assert (await thread.info()).last_seq == 4  # now served by A itself
