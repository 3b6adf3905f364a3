"""The WebSocket server: trio streams driving ``websockets.server.ServerProtocol``.

One task per connection: read the opening request (bounded by ``handshake_timeout``), route it
(``/v1/ws``, ``/healthz``, ``/metrics``, else 404), check the Origin (403) and the token in the
handshake (401, or 400 for a malformed request, before any WebSocket opens), negotiate the
subprotocol, count the connection against the user's quota, then run a ``Session``.

Containment: each connection's task ends in ``handle``'s handler, which logs what escaped and
closes that connection. No exception raised while serving one connection, in the handshake or in
a session, reaches ``trio.serve_listeners``' nursery: one client can never stop the server.

Shutdown is in two steps so that clients see their runs end: ``drain()`` (``/healthz`` answers
503, new WebSockets are refused with 503, open ones go on), and, once the runtime has ended the
runs, ``close_sessions()`` (close 1001 after each connection's queued frames).
"""

from __future__ import annotations

import hmac
import logging
from typing import Sequence

import trio
from websockets.datastructures import Headers
from websockets.http11 import Request, Response
from websockets.server import ServerProtocol

from threadline.actors.errors import LimitReached
from threadline.actors.gateway import Gateway

from .auth import AuthError, Authenticator, Identity, token_of
from .codec import Codec, error_frame
from .connection import WebSocketConnection
from .http import WS_PATH, json_response, path_of, response, text_response
from .limits import Limits
from .messages import CLOSE_GOING_AWAY, CLOSE_POLICY, JSON, LIMIT_REACHED, SUBPROTOCOLS
from .metrics import Metrics
from .quotas import UserQuotas
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


class BadRequest(Exception):
    """A request the server answers 400 (e.g. a header that must appear once, twice)."""


def header(headers: Headers, name: str) -> str | None:
    """One header's value; ``BadRequest`` if it is there more than once (``Headers.get``
    would raise websockets' ``MultipleValuesError``, a ``LookupError``, instead)."""
    values = headers.get_all(name)
    if len(values) > 1:
        raise BadRequest(f"more than one {name} header")
    return values[0] if values else None


def peer_of(stream: trio.abc.Stream) -> str:
    try:
        host, port = stream.socket.getpeername()[:2]  # type: ignore[attr-defined]
        return f"{host}:{port}"
    except (AttributeError, OSError, ValueError, TypeError):
        return "?"


class Server:
    def __init__(self, gateway: Gateway, *, auth: Authenticator, limits: Limits = Limits(),
                 metrics_token: str | None = None, metrics_here: bool = True) -> None:
        self.gateway = gateway
        self.limits = limits
        self.auth = auth
        self.metrics_token = metrics_token
        self.metrics_here = metrics_here  # False: /metrics is served on another address
        self.sessions: set[Session] = set()
        self.stats = ServerStats()
        self.metrics = Metrics(gateway, self.stats)
        self.quotas = UserQuotas(limits)
        self.draining = False
        self._idle = trio.Event()

    async def serve(self, listeners: list[trio.SocketListener],
                    task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Accept connections until cancelled."""
        await trio.serve_listeners(self.handle, listeners, task_status=task_status)

    async def serve_metrics(self, listeners: list[trio.SocketListener],
                            task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Answer ``/metrics`` and ``/healthz`` only, e.g. on an operator-only address."""
        await trio.serve_listeners(self.handle_metrics, listeners, task_status=task_status)

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

    # -- one connection ------------------------------------------------------------------------

    async def handle(self, stream: trio.SocketStream) -> None:
        await self._contained(stream, self._serve)

    async def handle_metrics(self, stream: trio.SocketStream) -> None:
        await self._contained(stream, self._serve_metrics)

    async def _contained(self, stream: trio.SocketStream, serve) -> None:  # type: ignore[no-untyped-def]
        protocol = ServerProtocol(subprotocols=list(SUBPROTOCOLS),
                                  select_subprotocol=select_subprotocol,
                                  max_size=self.limits.max_frame_bytes, logger=wire_log)
        conn = WebSocketConnection(stream, protocol)
        peer = peer_of(stream)
        try:
            await serve(conn, peer)
        except* (trio.BrokenResourceError, trio.ClosedResourceError, OSError):
            pass  # the peer went away
        except* Exception as group:
            log.error("connection from %s failed", peer, exc_info=group)
        finally:
            await conn.aclose()

    async def _serve(self, conn: WebSocketConnection, peer: str) -> None:
        request = await self._request(conn)
        if request is None:
            return
        protocol = conn.protocol
        try:
            answer, identity = self._route(protocol, request, peer)
        except BadRequest as exc:
            answer, identity = text_response(400, str(exc)), None
        protocol.send_response(answer)
        await conn.flush()
        if answer.status_code != 101 or identity is None:
            if answer.status_code >= 400:
                self.stats.refused(answer.status_code)
            return
        user = self.gateway.user(identity.user_id)
        codec = Codec(protocol.subprotocol or JSON)
        try:
            quota = self.quotas.open(user)
        except LimitReached as exc:
            self.stats.limits_reached += 1
            log.info("refusing a connection of %s from %s: %s", user.user_id, peer, exc)
            conn.write(codec.encode(error_frame(LIMIT_REACHED, str(exc))), binary=codec.binary)
            await conn.close(CLOSE_POLICY, str(exc), self.limits.close_timeout)
            return
        session = Session(conn, user, codec, self.limits, self.stats, lambda: self.draining,
                          quota=quota, expires_at=identity.expires_at)
        self.sessions.add(session)
        self.stats.connections_total += 1
        self.stats.connections_open += 1
        log.info("connection of %s from %s opened (%s)", user.user_id, peer, codec.subprotocol)
        try:
            await session.run()
        finally:
            self.quotas.release(quota)
            self.sessions.discard(session)
            self.stats.connections_open -= 1
            if not self.sessions:
                self._idle.set()
            decision = session.state.decision
            log.info("connection of %s from %s closed: %s %s", user.user_id, peer,
                     decision.code if decision and decision.code else "by the client",
                     decision.reason if decision else "")

    async def _serve_metrics(self, conn: WebSocketConnection, peer: str) -> None:
        request = await self._request(conn)
        if request is None:
            return
        path = path_of(request.path)
        try:
            answer = self._operator(request) if path in ("/metrics", "/healthz") else \
                text_response(404, "not found")
        except BadRequest as exc:
            answer = text_response(400, str(exc))
        conn.protocol.send_response(answer)
        await conn.flush()

    async def _request(self, conn: WebSocketConnection) -> Request | None:
        with trio.move_on_after(self.limits.handshake_timeout):
            while not conn.eof:
                for event in await conn.receive():
                    if isinstance(event, Request):
                        return event
                if conn.protocol.handshake_exc is not None:  # not HTTP: already answered
                    return None
        return None

    # -- routing ---------------------------------------------------------------------------------

    def _operator(self, request: Request) -> Response:
        """``/healthz`` and ``/metrics`` (behind the metrics token, if one is set)."""
        if path_of(request.path) == "/healthz":
            if self.draining:
                return json_response(503, {"status": "draining"})
            return json_response(200, {"status": "ok"})
        if self.metrics_token is not None:
            given = header(request.headers, "Authorization") or ""
            expected = f"Bearer {self.metrics_token}"
            if not hmac.compare_digest(given.encode(), expected.encode()):
                return text_response(401, "metrics need Authorization: Bearer <metrics token>")
        body, content_type = self.metrics.render(header(request.headers, "Accept"))
        return response(200, body, content_type)

    def _route(self, protocol: ServerProtocol, request: Request,
               peer: str) -> tuple[Response, Identity | None]:
        path = path_of(request.path)
        if path == "/healthz" or (path == "/metrics" and self.metrics_here):
            return self._operator(request), None
        if path != WS_PATH:
            return text_response(404, "not found"), None
        if self.draining:
            return text_response(503, "server shutting down"), None
        origin = header(request.headers, "Origin")
        if not self.auth.origin_allowed(origin, header(request.headers, "Host")):
            log.info("refusing origin %r from %s", origin, peer)
            return text_response(403, "origin not allowed"), None
        try:
            identity = self.auth.verify(token_of(request.path, request.headers))
        except AuthError as exc:
            self.stats.auth_failed(str(exc))
            log.info("authentication failed from %s: %s", peer, exc)
            return text_response(getattr(exc, "status", 401), str(exc)), None
        # accept() checks the upgrade headers (400/426 for a plain HTTP GET) and negotiates
        # the subprotocol.
        answer = protocol.accept(request)
        return answer, identity if answer.status_code == 101 else None
