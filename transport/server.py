"""The WebSocket server: trio streams driving ``websockets.server.ServerProtocol``.

One task per connection: read the opening request (bounded by ``handshake_timeout``), route it
(``/v1/ws``, ``/healthz``, ``/metrics``, else 404), authenticate in the handshake (401 before
any WebSocket opens), negotiate the subprotocol, then run a ``Session``.

Shutdown is in two steps so that clients see their runs end: ``drain()`` (``/healthz`` answers
503, new WebSockets are refused with 503, open ones go on), and, once the runtime has ended the
runs, ``close_sessions()`` (close 1001 after each connection's queued frames).
"""

from __future__ import annotations

import logging
from typing import Sequence

import trio
from websockets.http11 import Request, Response
from websockets.server import ServerProtocol

from actors.gateway import Gateway

from .auth import AuthError, token_of, verify
from .codec import Codec
from .connection import WebSocketConnection
from .http import WS_PATH, json_response, path_of, response, text_response
from .limits import Limits
from .messages import CLOSE_GOING_AWAY, JSON, SUBPROTOCOLS
from .metrics import Metrics
from .session import Session
from .stats import ServerStats

log = logging.getLogger("threadline.server")
# websockets logs every connection opened and closed at INFO: its own logger, so that a server
# holding 10,000 connections can log at INFO without that (``threadline serve --log debug``).
wire_log = logging.getLogger("threadline.wire")


def select_subprotocol(protocol: ServerProtocol, offered: Sequence[str]) -> str | None:
    """The first of ours the client offers. None (no header; JSON) when it offers none of
    ours: PROTOCOL.md makes JSON the default, and a client that asked only for others gets
    the default rather than a failed handshake."""
    for name in offered:
        if name in SUBPROTOCOLS:
            return name
    return None


class Server:
    def __init__(self, gateway: Gateway, *, secret: str, limits: Limits = Limits()) -> None:
        if not secret:
            raise ValueError("a server needs a secret to verify tokens")
        self.gateway = gateway
        self.limits = limits
        self._secret = secret
        self.sessions: set[Session] = set()
        self.stats = ServerStats()
        self.metrics = Metrics(gateway, self.stats)
        self.draining = False
        self._idle = trio.Event()

    async def serve(self, listeners: list[trio.SocketListener],
                    task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Accept connections until cancelled."""
        await trio.serve_listeners(self.handle, listeners, task_status=task_status)

    def drain(self) -> None:
        if not self.draining:
            log.info("draining: /healthz answers 503, new connections are refused")
            self.draining = True

    async def close_sessions(self, timeout: float) -> None:
        """Close every connection with 1001 and wait (up to ``timeout``) until they are gone."""
        self.drain()
        if self.sessions:
            log.info("closing %d connections with 1001", len(self.sessions))
        for session in list(self.sessions):
            session.close(CLOSE_GOING_AWAY, "server shutting down")
        with trio.move_on_after(timeout):
            while self.sessions:
                self._idle = trio.Event()
                await self._idle.wait()

    async def handle(self, stream: trio.SocketStream) -> None:
        protocol = ServerProtocol(subprotocols=list(SUBPROTOCOLS),
                                  select_subprotocol=select_subprotocol,
                                  max_size=self.limits.max_frame_bytes, logger=wire_log)
        conn = WebSocketConnection(stream, protocol)
        try:
            request = await self._request(conn)
            if request is None:
                return
            answer, user_id = self._route(protocol, request)
            protocol.send_response(answer)
            await conn.flush()
            if answer.status_code != 101 or user_id is None:
                return
            session = Session(conn, self.gateway.user(user_id),
                              Codec(protocol.subprotocol or JSON), self.limits, self.stats,
                              lambda: self.draining)
            self.sessions.add(session)
            self.stats.connections_total += 1
            self.stats.connections_open += 1
            try:
                await session.run()
            finally:
                self.sessions.discard(session)
                self.stats.connections_open -= 1
                if not self.sessions:
                    self._idle.set()
        except (trio.BrokenResourceError, trio.ClosedResourceError, OSError):
            pass  # the peer went away
        finally:
            await conn.aclose()

    async def _request(self, conn: WebSocketConnection) -> Request | None:
        with trio.move_on_after(self.limits.handshake_timeout):
            while not conn.eof:
                for event in await conn.receive():
                    if isinstance(event, Request):
                        return event
                if conn.protocol.handshake_exc is not None:  # not HTTP: already answered
                    return None
        return None

    def _route(self, protocol: ServerProtocol, request: Request) -> tuple[Response, str | None]:
        path = path_of(request.path)
        if path == "/healthz":
            if self.draining:
                return json_response(503, {"status": "draining"}), None
            return json_response(200, {"status": "ok"}), None
        if path == "/metrics":
            body, content_type = self.metrics.render(request.headers.get("Accept"))
            return response(200, body, content_type), None
        if path != WS_PATH:
            return text_response(404, "not found"), None
        if self.draining:
            return text_response(503, "server shutting down"), None
        try:
            user_id = verify(token_of(request.path, request.headers), self._secret)
        except AuthError as exc:
            return text_response(401, str(exc)), None
        # accept() checks the upgrade headers (400/426 for a plain HTTP GET) and negotiates
        # the subprotocol.
        answer = protocol.accept(request)
        return answer, user_id if answer.status_code == 101 else None
