"""Running a cluster node: ``open_cluster_runtime``, the one composition that an embedding
program and ``threadline serve --cluster`` both use.

::

    config = ClusterConfig(dsn, node_id="a", peer_listen=("10.0.0.5", 7000))
    async with open_cluster_runtime(config, agent=my_agent, limits=limits) as cluster:
        async with open_server(cluster.runtime, port=8765, secret=SECRET, limits=limits,
                               quotas=cluster.quotas,
                               extra_metrics=cluster.extra_metrics,
                               extra_health=cluster.extra_health):
            ...
        await cluster.leave(grace=5.0)   # optional: hand the shards over before closing

Everything is built in dependency order and given what it uses at construction, so nothing is
plugged in afterwards: the shard table and the wake-ups first; the fence, then the
PostgreSQL journal it guards (``open_durable_journal(fence=...)``); the lease connection, the
checks (the cluster's token secret, a node id not in use), the peer port; the peer clients;
the feed hub and the announcer; the runtime, whose directory admits only the table's local
shards and whose gateway routes through a ``Router`` built over its ``LocalThreads``
(``open_runtime(admit=..., route=...)``), without the start-up recovery (each shard is
recovered when taken); then the node, the peer server, the listener, and the first lease
round, before the context yields (so a node owns its first shards before it serves).

The node's per-user quotas are made here (``UserQuotas(limits)``, ``cluster.quotas``) and
given to its server (``open_server(quotas=...)``): the peer server counts the other nodes'
reports in them and the ``UsageReporter`` tells them this node's (``usage.py``), so that a
user's limits hold across the cluster. A server made without them counts this node alone.

Leaving the context leaves the cluster: the router stops moving subscribers (``closing``),
every shard still held is handed over (``Node.leave``, with no grace if ``leave`` was not
called first), then the runtime closes, then the journal.
"""

from __future__ import annotations

import logging
import secrets
from contextlib import AsyncExitStack, asynccontextmanager
from typing import AsyncIterator, Iterator

import attrs
import trio
from prometheus_client.core import Metric

from threadline.actors.tracing import Tracing
from threadline.actors.usage import BudgetHook
from threadline.actors.engine import Agent
from threadline.actors.local import LocalThreads
from threadline.actors.tools import ToolRegistry
from threadline.api import Runtime, RuntimeConfig, open_runtime
from threadline.stores import open_durable_journal
from threadline.stores.durable import DurableJournal
from threadline.transport.limits import Limits
from threadline.transport.quotas import UserQuotas

from . import leases
from .admission import ClusterRefusal, node_in_use
from .config import ClusterConfig, made_up_node_id
from .feeds import FeedHub
from .fence import Fence
from .interest import Announcer, Followers
from .leases import LeaseConnection
from .listen import listen
from .node import Node
from .peer_server import PeerServer
from .peers import open_peer_clients
from .router import Router
from .shards import ShardTable
from .usage import UsageBook, UsageReporter
from .wakeup import Wakeup

__all__ = ["ClusterConfig", "ClusterRuntime", "made_up_node_id", "open_cluster_runtime"]

log = logging.getLogger("threadline.cluster")


@attrs.frozen
class ClusterRuntime:
    """A runtime that is one node of a cluster (``open_cluster_runtime``)."""

    runtime: Runtime
    node: Node
    quotas: UserQuotas  # the node's per-user quotas, counted cluster-wide: ``open_server(quotas=)``

    async def leave(self, grace: float) -> None:
        """The graceful stop's first step: hand every shard over (runs get ``grace``
        seconds) and leave the cluster; the runtime still serves what it forwards."""
        await self.node.leave(grace)

    def extra_metrics(self) -> Iterator[Metric]:
        """The node's ``/metrics`` families: ``open_server(extra_metrics=...)``."""
        return self.node.metrics()

    def extra_health(self) -> dict[str, object]:
        """The node's ``/healthz`` fields: ``open_server(extra_health=...)``."""
        return self.node.health()


@asynccontextmanager
async def open_cluster_runtime(config: ClusterConfig, *, agent: Agent | None = None,
                               tools: ToolRegistry | None = None,
                               runtime_config: RuntimeConfig | None = None,
                               http_url: str = "", limits: Limits | None = None,
                               budget: BudgetHook | None = None,
                               tracing: Tracing | None = None,
                               ) -> AsyncIterator[ClusterRuntime]:
    """Join the cluster of ``config.dsn`` as ``config.node_id`` and run a runtime as one of
    its nodes (see the header). ``agent``, ``tools``, ``runtime_config``, ``budget`` and
    ``tracing`` are ``open_runtime``'s; ``http_url``: where this node's server is, as the other nodes see
    it in ``cluster_nodes`` (``threadline.server.http_url``; empty if it has none);
    ``limits``: the server's, whose per-user ones ``cluster.quotas`` counts cluster-wide.

    Raises ``StoreError`` (a store that cannot be used, one line), ``ClusterRefusal`` (the
    node id is in use), ``OSError`` (the peer port cannot be bound)."""
    table = ShardTable(config.node_id, margin=config.margin)
    rounds, announce = Wakeup(), Wakeup()
    token = trio.lowlevel.current_trio_token()
    # The fence runs in the writer's thread: a refused write asks for a round from there.
    fence = Fence(table, on_fenced=lambda shards: token.run_sync_soon(rounds.set),
                  followers=Followers())
    # The peer port first: a node that cannot listen has touched no store (as serve's port).
    host, port = config.peer_listen
    listeners = await trio.open_tcp_listeners(port, host=host)
    async with AsyncExitStack() as closing:
        for listener in listeners:
            closing.push_async_callback(listener.aclose)
        async with _open_fenced_journal(config, fence) as journal:
            lease_connection = LeaseConnection(config.dsn, config.stuck_after,
                                               leases.application_name(config.node_id))
            try:
                async with _open_node(config, table, fence, journal, lease_connection, rounds,
                                      announce, agent, tools, runtime_config, http_url,
                                      UserQuotas(limits or Limits()), listeners,
                                      budget, tracing) as cluster:
                    yield cluster
            finally:
                await trio.to_thread.run_sync(lease_connection.close)


@asynccontextmanager
async def _open_fenced_journal(config: ClusterConfig, fence: Fence
                               ) -> AsyncIterator[DurableJournal]:
    from threadline.stores.postgres import PostgresBackend

    backend = PostgresBackend(config.dsn, writer_stuck_after=config.stuck_after,
                              application_name=leases.application_name(config.node_id))
    async with open_durable_journal(backend, fence=fence) as journal:
        yield journal


@asynccontextmanager
async def _open_node(config: ClusterConfig, table: ShardTable, fence: Fence,
                     journal: DurableJournal, lease_connection: LeaseConnection,
                     rounds: Wakeup, announce: Wakeup, agent: Agent | None,
                     tools: ToolRegistry | None, runtime_config: RuntimeConfig | None,
                     http_url: str, quotas: UserQuotas, listeners: list[trio.SocketListener],
                     budget: BudgetHook | None, tracing: Tracing | None,
                     ) -> AsyncIterator[ClusterRuntime]:
    secret = (await lease_connection.run(leases.setup, secrets.token_urlsafe(32))).encode()
    since = await lease_connection.run(leases.in_use, table.node_id, config.lease_ttl)
    if since is not None:
        raise ClusterRefusal(node_in_use(table.node_id, since))
    host = config.peer_listen[0]
    advertise = config.peer_advertise or (host, listeners[0].socket.getsockname()[1])
    tls = config.peer_tls
    async with open_peer_clients(table.node_id, secret,
                                 tls=tls.client if tls is not None else None) as clients:
        hub = FeedHub(journal, on_followed=announce.set)
        announcer = Announcer(table, clients, journal, hub.followed, hub.mark_shards,
                              announce)
        book = UsageBook(quotas)
        reporter = UsageReporter(quotas, table, clients, book)

        def route(local: LocalThreads) -> Router:
            return Router(local, table, clients, hub, rounds.set)

        async with open_runtime(journal=journal, agent=agent, tools=tools,
                                config=runtime_config, recover=False, admit=table.is_local,
                                route=route, budget=budget, tracing=tracing) as runtime, \
                trio.open_nursery() as nursery:
            router = runtime.gateway.router
            assert isinstance(router, Router)
            node = Node(config, table, runtime, journal, fence, lease_connection, hub, router,
                        announcer, rounds, nursery,
                        peer_address=leases.format_address(advertise), http_url=http_url,
                        usage=reporter)
            server = PeerServer(table.node_id, secret, router.ask_owned,
                                tls=tls.server if tls is not None else None, followers=fence.followers, usage=book)
            await nursery.start(server.serve, listeners)
            await nursery.start(hub.run)
            nursery.start_soon(announcer.run)
            nursery.start_soon(reporter.run)
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
                yield ClusterRuntime(runtime, node, quotas)
            finally:
                with trio.CancelScope(shield=True):
                    router.closing = True
                    await node.leave(0.0)
                nursery.cancel_scope.cancel()
