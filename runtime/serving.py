"""What ``threadline serve`` runs once ``cli.py`` has checked its settings: the store and the
runtime (for a cluster node, ``threadline.cluster.open_cluster_runtime``: the fenced store, the
runtime and the node, as an embedding program would), the server; the ``ready:`` line
(and the demo token and the chat page's address); and, on SIGINT or SIGTERM, the graceful stop:
drain, hand a cluster node's shards over, let runs finish within the grace period, close the
connections with 1001.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import signal
from typing import TYPE_CHECKING

import trio

from threadline.actors.engine import Agent
from threadline.actors.tools import ToolRegistry
from threadline.actors.tracing import Tracing
from threadline.transport.auth import Authenticator, mint
from threadline.transport.limits import Limits

from .api import RuntimeConfig, open_runtime
from .options import TOKEN_TTL
from .server import bind, http_url, open_server
from .stores import describe_store, open_journal
from .tuning import raise_fd_limit, tune_gc

if TYPE_CHECKING:
    from threadline.cluster import ClusterRuntime

log = logging.getLogger("threadline")
DEMO_USER = "demo"


async def serve(args: argparse.Namespace, auth: Authenticator, agent: Agent,
                tools: ToolRegistry, limits: Limits) -> int:
    """Open the store, the runtime and the server; print ``ready:``; on SIGINT or SIGTERM drain
    and stop (runs get ``--grace`` seconds). A signal while starting (say, a store that does
    not answer) abandons the start."""
    tune_gc()
    log.info("open files limit %d", raise_fd_limit())
    log.info("store %s", describe_store(args.store))
    stop, ready, starting = trio.Event(), trio.Event(), trio.CancelScope()
    with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:

        async def watch() -> None:
            async for signum in signals:
                log.info("%s: shutting down (runs get %ss)", signal.Signals(signum).name,
                         args.grace)
                stop.set()
                if not ready.is_set():
                    starting.cancel()
                return

        try:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(watch)
                with starting:
                    async with contextlib.AsyncExitStack() as stack:
                        await _serve_until(stack, args, auth, agent, tools, limits, ready, stop)
                nursery.cancel_scope.cancel()
        finally:  # an agent that holds resources (the openai one: its HTTP client) lets go
            if (aclose := getattr(agent, "aclose", None)) is not None:
                with trio.CancelScope(shield=True):
                    await aclose()
    log.info("stopped")
    return 0


async def _serve_until(stack: contextlib.AsyncExitStack, args: argparse.Namespace,
                       auth: Authenticator, agent: Agent, tools: ToolRegistry, limits: Limits,
                       ready: trio.Event, stop: trio.Event) -> None:
    """Bind the ports; open the store and the runtime (a cluster node: ``open_cluster_runtime``,
    the fenced store, the runtime and the node, which joins before the server opens), then the
    server; say ``ready:``; at ``stop``, drain, hand the node's shards over, and stop."""
    # The ports first: a start that cannot listen (say, one already in use) has touched no
    # store, and in particular has not run the start-up recovery on a live server's threads.
    listeners = await bind(args.host, args.port)
    metrics_listeners = None
    if args.metrics_address is not None:
        metrics_listeners = await bind(*args.metrics_address)
    for listener in [*listeners, *(metrics_listeners or ())]:  # closed also if a start fails
        stack.push_async_callback(listener.aclose)
    config = RuntimeConfig(shutdown_grace=args.grace, delta_interval=args.delta_interval,
                           user_runs=limits.user_runs, tokens_per_day=limits.user_tokens_per_day,
                           tokens_per_month=limits.user_tokens_per_month)
    tracing = None
    if args.otel:  # closed after the runtime (the stack): the last spans are exported
        from threadline.otel import open_tracing

        tracing = await stack.enter_async_context(open_tracing())
        log.info("tracing with OpenTelemetry, exported as OTEL_* says")
    cluster = None
    if args.cluster:
        url = http_url(args.host, listeners[0].socket.getsockname()[1])
        cluster = await stack.enter_async_context(
            _open_cluster_runtime(args, agent, tools, config, url, limits, tracing))
        rt = cluster.runtime
    else:
        journal = await stack.enter_async_context(open_journal(args.store))
        rt = await stack.enter_async_context(open_runtime(
            journal=journal, agent=agent, tools=tools, config=config, tracing=tracing))
    server = await stack.enter_async_context(open_server(
        rt, host=args.host, port=args.port, auth=auth, limits=limits,
        metrics_token=args.metrics_token, metrics_address=args.metrics_address,
        demo=args.demo, listeners=listeners, metrics_listeners=metrics_listeners,
        extra_metrics=cluster.extra_metrics if cluster is not None else None,
        extra_health=cluster.extra_health if cluster is not None else None,
        quotas=cluster.quotas if cluster is not None else None))
    ready.set()
    # The openai agent names its model and endpoint (never its key); others, their --agent.
    describe = getattr(agent, "describe", None)
    log.info("agent %s", describe() if callable(describe) else args.agent)
    print(f"ready: {server.url}", flush=True)
    token = None
    if args.made_up:
        token = mint(DEMO_USER, args.secret, ttl=TOKEN_TTL)
        print(f"demo token (user {DEMO_USER!r}, 24 h): {token}\n"
              f"connect:  {server.url}?token={token}", flush=True)
    if args.demo:
        query = f"?token={token}" if token else ""
        print(f"open:     {server.http_url}{query}", flush=True)
    await stop.wait()
    if cluster is not None:  # its threads move to the other nodes before its clients are closed
        server.server.drain()
        await cluster.leave(args.grace)
    await server.shutdown(args.grace)


def _open_cluster_runtime(args: argparse.Namespace, agent: Agent, tools: ToolRegistry,
                          config: RuntimeConfig, url: str, limits: Limits,
                          tracing: Tracing | None,
                          ) -> contextlib.AbstractAsyncContextManager[ClusterRuntime]:
    """``open_cluster_runtime`` with the node's settings from the command line (``limits``:
    the server's, whose per-user ones the node counts across the cluster)."""
    from threadline.cluster import ClusterConfig, load_peer_tls, made_up_node_id, \
        open_cluster_runtime

    peer_tls = load_peer_tls(args.peer_cert, args.peer_key, args.peer_ca, args.peer_plaintext,
                             [args.peer_address[0],
                              *([args.peer_advertise[0]] if args.peer_advertise else [])])
    cluster = ClusterConfig(args.store, node_id=args.node_id or made_up_node_id(),
                            peer_listen=args.peer_address, peer_advertise=args.peer_advertise,
                            lease_ttl=args.lease_ttl, handover_grace=args.grace,
                            peer_tls=peer_tls)
    return open_cluster_runtime(cluster, agent=agent, tools=tools, runtime_config=config,
                                http_url=url, limits=limits, tracing=tracing)
