"""Starting a cluster node: its settings, its journal (fenced), and joining.

``threadline serve --cluster`` does, in this order: ``open_cluster_journal`` (the PostgreSQL
journal whose every transaction is fenced by this node's leases), ``open_runtime`` without the
start-up recovery (each shard is recovered when it is taken), the server, then ``open_node``,
which runs the first lease round before the server says it is ready.
"""

from __future__ import annotations

import logging
import os
import secrets
import socket
from contextlib import asynccontextmanager
from typing import Any, AsyncIterator

import attrs
import trio

from threadline.stores import open_durable_journal
from threadline.stores.durable import DurableJournal

from . import leases
from .admission import ClusterRefusal, node_in_use
from .fence import Fence
from .interest import Announcer, Followers
from .listen import listen
from .node import Node
from .peer_server import PeerServer
from .peers import open_peer_clients
from .router import Router
from .shards import ShardTable
from .tls import PeerTLS

log = logging.getLogger("threadline.cluster")

def made_up_node_id() -> str:
    return f"{socket.gethostname()[:32]}-{os.getpid()}-{secrets.token_hex(2)}"


@attrs.frozen
class ClusterConfig:
    dsn: str
    node_id: str = attrs.Factory(made_up_node_id)
    peer_listen: tuple[str, int] = ("127.0.0.1", 0)
    peer_advertise: tuple[str, int] | None = None  # default: the address listened on
    lease_ttl: float = 10.0
    handover_grace: float = 5.0  # runs of a shard handed over get this long to finish
    peer_tls: PeerTLS | None = None  # None: a plaintext peer link (``tls.load_peer_tls``)

    @property
    def interval(self) -> float:
        return self.lease_ttl / 3

    @property
    def margin(self) -> float:
        """Seconds of each lease the node does not count on (a renewal's own time, clocks)."""
        return min(1.0, self.lease_ttl / 4)

    @property
    def stuck_after(self) -> float:
        """Seconds after which the server ends a node's transaction that is stuck (a paused
        node): its locks on lease rows must not outlive its lease by much."""
        return max(1.0, self.lease_ttl / 2)


@asynccontextmanager
async def open_cluster_journal(config: ClusterConfig, table: ShardTable
                               ) -> AsyncIterator[tuple[DurableJournal, Fence]]:
    """The PostgreSQL journal of ``config.dsn``, every transaction fenced by ``table``'s
    epochs; a store that cannot be used raises ``StoreError`` (one line)."""
    from threadline.stores.postgres import PostgresBackend

    # ``open_node`` wires the fence to the node, and its followers to the peer server.
    fence = Fence(table, on_fenced=lambda shards: None, followers=Followers())
    backend = PostgresBackend(config.dsn, writer_stuck_after=config.stuck_after,
                              application_name=leases.application_name(config.node_id))
    async with open_durable_journal(backend, fence=fence) as journal:
        yield journal, fence


@asynccontextmanager
async def open_node(config: ClusterConfig, table: ShardTable, runtime: Any, journal: Any,
                    fence: Fence, *, http_url: str = "") -> AsyncIterator[Node]:
    """Join the cluster: listen for peers, run the first lease round (so the node owns its
    first shards before it says it is ready), then the loop. Leaving the context leaves the
    cluster, handing over every shard still held (``Node.leave`` first, with a grace, is the
    graceful stop)."""
    node = Node(config, table, runtime, journal, fence, http_url)
    token = trio.lowlevel.current_trio_token()
    fence.on_fenced = lambda shards: token.run_sync_soon(node.wake)
    secret = await node.leases.run(leases.setup, secrets.token_urlsafe(32))
    since = await node.leases.run(leases.in_use, table.node_id, config.lease_ttl)
    if since is not None:
        raise ClusterRefusal(node_in_use(table.node_id, since))
    host, port = config.peer_listen
    listeners = await trio.open_tcp_listeners(port, host=host)
    bound = listeners[0].socket.getsockname()[1]
    advertise = config.peer_advertise or (host, bound)
    node.peer_address = leases.format_address(advertise)
    try:
        tls = config.peer_tls
        async with open_peer_clients(table.node_id, secret.encode(),
                                     tls=tls and tls.client) as clients, \
                trio.open_nursery() as nursery:
            router = node.router = Router(runtime.gateway, table, clients, node.hub, node.wake)
            server = PeerServer(table.node_id, secret.encode(), router.ask_owned,
                                tls=tls and tls.server, followers=fence.followers)
            node.announcer = Announcer(table, clients, journal, node.hub.followed,
                                       node.hub.mark_shards)
            await nursery.start(server.serve, listeners)
            await nursery.start(node.hub.run)
            node.nursery = nursery
            runtime.directory.admit = table.is_local
            runtime.gateway.router = router
            runtime.gateway.cluster_statistics = node.statistics
            nursery.start_soon(node.announcer.run)
            nursery.start_soon(listen, config.dsn, (node.events_channel, leases.SHARDS_CHANNEL),
                               node.on_notify, node.on_listening,
                               leases.application_name(config.node_id))
            await node.round()
            nursery.start_soon(node.run_loop)
            nursery.start_soon(node.watch_expiry)
            await trio.lowlevel.checkpoint()  # the loop is on before anyone can leave
            log.info("node %s in the cluster: peers on %s (%s), %d shards, %d nodes live",
                     table.node_id, node.peer_address, "mutual TLS" if tls else "plaintext",
                     table.owned, node.nodes_live)
            try:
                yield node
            finally:
                with trio.CancelScope(shield=True):
                    router.closing = True
                    await node.leave(0.0)
                nursery.cancel_scope.cancel()
    finally:
        await trio.to_thread.run_sync(node.leases.close)
