"""Single ownership under races: clients on every node hit the same fresh threads at once, and
each thread is activated exactly once in the whole cluster."""

from __future__ import annotations

import trio

from tests.cluster.nodes import SCRIPTED, open_nodes, stored, threads_owned_by
from tests.servers import token
from threadline.actors.messages import ThreadKey
from threadline.transport.client import open_client

THREADS = 24
CLIENTS_PER_NODE = 3


async def test_each_fresh_thread_is_activated_once_in_the_cluster(pg_dsn):
    # One user sends 216 messages at once: over the per-user burst (100) as soon as the nodes'
    # usage reports meet during the burst, which this test is not about.
    async with open_nodes(pg_dsn, 3, *SCRIPTED, "--lease-ttl", "3",
                          "--limit", "user_send_burst=1000") as nodes:
        before = [await n.metric("threadline_actor_activations_total") for n in nodes]
        assert before == [0, 0, 0]
        threads = [t for n in nodes for t in threads_owned_by(pg_dsn, n, "racer", THREADS // 3,
                                                              prefix=f"race-{n.port}-")]
        accepted: list[dict] = []
        go = trio.Event()

        async def client(url: str, n: int) -> None:
            async with open_client(url, token("racer")) as c:
                await go.wait()
                async with trio.open_nursery() as nursery:
                    for thread in threads:
                        nursery.start_soon(hit, c, thread, n)

        async def hit(c, thread: str, n: int) -> None:
            await c.join(thread)
            accepted.append(await c.send(thread, f"hello from {n}"))

        with trio.fail_after(60):
            async with trio.open_nursery() as nursery:
                for i, node in enumerate(nodes * CLIENTS_PER_NODE):
                    nursery.start_soon(client, node.url, i)
                await trio.sleep(0.5)
                go.set()
        # The nodes' own records: one activation per thread, all together; none passivated.
        after = [await n.metric("threadline_actor_activations_total") for n in nodes]
        assert sum(after) == THREADS, after
        assert after == [THREADS // 3] * 3  # each node activated those it owns
        # The store's: each thread made once, every message stored once, seq gapless.
        assert len(accepted) == THREADS * CLIENTS_PER_NODE * 3
        for thread in threads:
            events = stored(pg_dsn, ThreadKey("racer", thread))
            assert [e.seq for e in events] == list(range(1, len(events) + 1))
            messages = [e for e in events if e.event == "user_message"]
            assert len(messages) == CLIENTS_PER_NODE * 3
            mine = sorted((a["run_id"], a["seq"]) for a in accepted if a["thread_id"] == thread)
            assert mine == sorted((e.run_id, e.seq) for e in messages)
