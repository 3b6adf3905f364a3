"""A TCP proxy on loopback between a test's process and a server (PostgreSQL): what passes is
the subclass's to decide (``forward``), so that a test can freeze a link (a partition) or cut
it at the worst moment (after a ``COMMIT`` went out, before its answer came back)."""

from __future__ import annotations

import trio


class Pair:
    """One proxied connection: its scope (cancelled to end both directions) and a flag a
    ``forward`` may set to stop it passing anything more."""

    __slots__ = ("scope", "cut")

    def __init__(self, scope: trio.CancelScope) -> None:
        self.scope = scope
        self.cut = False


class Proxy:
    """Loopback TCP proxy to ``port``: ``serve`` (with ``nursery.start``) gives the port to
    connect to instead."""

    def __init__(self, port: int) -> None:
        self.target = port

    async def serve(self, task_status=trio.TASK_STATUS_IGNORED) -> None:
        listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
        task_status.started(listeners[0].socket.getsockname()[1])
        await trio.serve_listeners(self._pair, listeners)

    async def _pair(self, client: trio.SocketStream) -> None:
        async with client, await trio.open_tcp_stream("127.0.0.1", self.target) as server:
            async with trio.open_nursery() as nursery:
                pair = Pair(nursery.cancel_scope)
                nursery.start_soon(self._pump, client, server, pair, True)
                nursery.start_soon(self._pump, server, client, pair, False)

    async def _pump(self, src, dst, pair: Pair, upstream: bool) -> None:
        try:
            while data := await src.receive_some(65536):
                if pair.cut or not await self.forward(data, dst, pair, upstream):
                    break
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            pass
        pair.scope.cancel()

    async def forward(self, data: bytes, dst: trio.SocketStream, pair: Pair,
                      upstream: bool) -> bool:
        """Pass ``data`` on (``upstream``: from the client to the server); False ends the
        connection."""
        await dst.send_all(data)
        return True
