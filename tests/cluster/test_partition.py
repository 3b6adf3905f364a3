"""A node cut off from the database (a TCP proxy in between stops passing bytes, connections
left open: a partition, not a refusal) gives up its shards on its own when its lease runs out,
and the other node takes them; once the link is back it takes its share again."""

from __future__ import annotations

import trio

from tests.cluster.nodes import SCRIPTED, Node, balanced, threads_owned_by
from tests.proxies import Proxy
from tests.servers import token
from threadline.transport.client import open_client


class FreezingProxy(Proxy):
    """``freeze`` stops it passing bytes either way, ``thaw`` lets them through again."""

    def __init__(self, port: int) -> None:
        super().__init__(port)
        self.frozen = False
        self.thawed = trio.Event()

    async def forward(self, data, dst, pair, upstream) -> bool:
        while self.frozen:
            await self.thawed.wait()
        await dst.send_all(data)
        return True

    def freeze(self) -> None:
        self.frozen, self.thawed = True, trio.Event()

    def thaw(self) -> None:
        self.frozen = False
        self.thawed.set()


async def test_a_node_cut_off_from_the_database_gives_its_shards_up(pg_dsn, pg_cluster):
    proxy = FreezingProxy(pg_cluster.port)
    args = (*SCRIPTED, "--lease-ttl", "3")
    async with trio.open_nursery() as nursery:
        port = await nursery.start(proxy.serve)
        cut_dsn = pg_dsn.replace(f":{pg_cluster.port}/", f":{port}/")
        a = b = None
        try:
            a = await Node(cut_dsn, *args).ready()
            b = await Node(pg_dsn, *args).ready()
            await balanced([a, b])
            (thread,) = threads_owned_by(pg_dsn, a, "ada", 1)
            proxy.freeze()
            with trio.fail_after(30):  # a's renewals hang: its own deadline drops its shards
                while (await a.health())["cluster"]["shards_owned"] > 0:
                    await trio.sleep(0.2)
            await balanced([b], timeout=30)  # and b takes every one of them
            async with open_client(b.url, token("ada")) as client:
                await client.join(thread)
                await client.send(thread, "think:served by b")
                with trio.fail_after(15):
                    while (await client.next_event())["event"] != "agent_completed":
                        pass
            proxy.thaw()
            await balanced([a, b], timeout=60)  # a is back, and takes its share again
        except BaseException:
            for node in (a, b):
                if node is not None:
                    print(f"--- log of node {node.node_id} ---\n{node.logs()[-5000:]}")
            raise
        finally:
            for node in (a, b):
                if node is not None:
                    node.kill()
            proxy.thaw()
            nursery.cancel_scope.cancel()
