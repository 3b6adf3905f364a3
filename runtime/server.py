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

from transport.limits import Limits
from transport.server import Server

from .api import Runtime

log = logging.getLogger("threadline.server")


@attrs.define
class RunningServer:
    server: Server
    runtime: Runtime
    host: str
    port: int

    @property
    def url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"ws://{host}:{self.port}/v1/ws"

    async def shutdown(self, grace: float | None = None) -> None:
        """Drain, stop the runtime (runs get ``grace`` seconds, then ``agent_cancelled``),
        and close every connection with 1001 once its queued frames are out."""
        self.server.drain()
        await self.runtime.aclose(grace)
        await self.server.close_sessions(self.server.limits.close_timeout + 1.0)


@asynccontextmanager
async def open_server(runtime: Runtime, *, host: str = "127.0.0.1", port: int = 8765,
                      secret: str, limits: Limits = Limits()) -> AsyncIterator[RunningServer]:
    """Listen on ``host:port`` (port 0: any free port, see ``.port``) and serve ``runtime``."""
    server = Server(runtime.gateway, secret=secret, limits=limits)
    listeners = await trio.open_tcp_listeners(port, host=host)
    bound = listeners[0].socket.getsockname()[1]
    async with trio.open_nursery() as nursery:
        await nursery.start(server.serve, listeners)
        running = RunningServer(server, runtime, host, bound)
        log.info("listening on %s", running.url)
        try:
            yield running
        finally:
            with trio.CancelScope(shield=True):
                await server.close_sessions(limits.close_timeout + 1.0)
            nursery.cancel_scope.cancel()
