"""Serving a runtime on a host and port from inside a trio program.

::

    async with open_runtime() as rt:
        async with open_server(rt, port=8765, secret=SECRET) as server:
            print("listening on", server.url)
            await trio.sleep_forever()

Leaving ``open_server`` stops accepting and closes the connections with 1001; the runtime goes
on. ``server.shutdown()`` is the whole graceful stop that ``threadline serve`` runs on SIGTERM:
drain, let active runs finish within the grace period, end the others with ``agent_cancelled``
(reason ``shutdown``) so that clients see them, then close the connections with 1001.
"""

from __future__ import annotations

import logging
from contextlib import asynccontextmanager
from typing import AsyncIterator

import attrs
import trio

from threadline.transport.auth import Authenticator
from threadline.transport.limits import Limits
from threadline.transport.metrics import ExtraMetrics
from threadline.transport.quotas import UserQuotas
from threadline.transport.server import ExtraHealth, Server

from .api import Runtime

log = logging.getLogger("threadline.server")


@attrs.define
class RunningServer:
    server: Server
    runtime: Runtime
    host: str
    port: int
    metrics_port: int | None = None  # when /metrics has an address of its own

    @property
    def url(self) -> str:
        return f"ws://{self._hostport}/v1/ws"

    @property
    def http_url(self) -> str:
        """The HTTP root: the HTTP API is under ``/v1/``, the chat page (``demo``) at ``/``."""
        return http_url(self.host, self.port)

    @property
    def _hostport(self) -> str:
        return hostport(self.host, self.port)

    async def shutdown(self, grace: float | None = None) -> None:
        """Drain, stop the runtime (runs get ``grace`` seconds, then ``agent_cancelled``),
        and close every connection with 1001 once its queued frames are out."""
        self.server.drain()
        await self.runtime.aclose(grace)
        await self.server.close_sessions(self.server.limits.close_timeout + 1.0)


def hostport(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def http_url(host: str, port: int) -> str:
    """The HTTP root of a server on ``host:port`` (``RunningServer.http_url``), known as
    soon as its port is bound."""
    return f"http://{hostport(host, port)}/"


async def bind(host: str, port: int) -> list[trio.SocketListener]:
    """Listening sockets on ``host:port`` (port 0: a free one); ``OSError`` if it cannot be
    bound. Nothing is accepted until ``open_server`` serves them."""
    return await trio.open_tcp_listeners(port, host=host)


@asynccontextmanager
async def open_server(runtime: Runtime, *, host: str = "127.0.0.1", port: int = 8765,
                      secret: str | None = None, auth: Authenticator | None = None,
                      limits: Limits = Limits(), metrics_token: str | None = None,
                      metrics_address: tuple[str, int] | None = None, demo: bool = False,
                      listeners: list[trio.SocketListener] | None = None,
                      metrics_listeners: list[trio.SocketListener] | None = None,
                      extra_metrics: ExtraMetrics | None = None,
                      extra_health: ExtraHealth | None = None,
                      quotas: UserQuotas | None = None,
                      ) -> AsyncIterator[RunningServer]:
    """Listen on ``host:port`` (port 0: any free port, see ``.port``) and serve ``runtime``.

    Tokens are checked by ``auth``, or, given only ``secret``, as HS256 with it.
    ``metrics_token``: scrapes of ``/metrics`` need ``Authorization: Bearer`` it.
    ``metrics_address``: serve ``/metrics`` (and ``/healthz``) there instead of on the main port.
    ``demo``: serve the chat page at ``/`` (``/v1/client.js`` and the HTTP API always).
    ``listeners`` (and ``metrics_listeners``): sockets already bound, from ``bind``, instead
    of ``host:port`` (and ``metrics_address``): ``threadline serve`` binds before it opens the
    store, so that a start that cannot listen has touched nothing.
    ``extra_metrics`` and ``extra_health``: more families for ``/metrics`` and more fields
    for ``/healthz`` (a cluster node's: ``ClusterRuntime.extra_metrics``, ``.extra_health``).
    ``quotas``: the per-user quotas to count in (a cluster node's ``ClusterRuntime.quotas``,
    counted across the cluster; made with ``limits``), instead of the server's own.
    Raises ``OSError`` when an address cannot be bound (e.g. in use), ``ValueError`` for
    ``quotas`` made with other limits.
    """
    if auth is None:
        if not secret:
            raise ValueError("open_server needs a secret or an Authenticator")
        auth = Authenticator(secret=secret)
    server = Server(runtime.gateway, auth=auth, limits=limits, metrics_token=metrics_token,
                    metrics_here=metrics_address is None, demo=demo,
                    extra_metrics=extra_metrics, extra_health=extra_health, quotas=quotas)
    if listeners is None:
        listeners = await bind(host, port)
    bound = listeners[0].socket.getsockname()[1]
    async with trio.open_nursery() as nursery:
        await nursery.start(server.serve, listeners)
        running = RunningServer(server, runtime, host, bound)
        if metrics_address is not None:
            mhost, mport = metrics_address
            if metrics_listeners is None:
                metrics_listeners = await bind(mhost, mport)
            running.metrics_port = metrics_listeners[0].socket.getsockname()[1]
            await nursery.start(server.serve_metrics, metrics_listeners)
            log.info("metrics on http://%s:%d/metrics", mhost, running.metrics_port)
        log.info("listening on %s", running.url)
        try:
            yield running
        finally:
            with trio.CancelScope(shield=True):
                await server.close_sessions(limits.close_timeout + 1.0)
            nursery.cancel_scope.cancel()
