"""The server: every connection's requests read with h11, then a WebSocket driven by
``websockets.server.ServerProtocol`` over trio streams, or plain HTTP answers.

One task per connection: read a request (``http_front``: h11, bounded in size and by
``handshake_timeout``), route it: ``/v1/ws`` goes on to the WebSocket handshake with the bytes
read (the Origin check, 403; the token, 401, or 400 for a malformed request, before any
WebSocket opens; the subprotocol; the user's connection quota), then a ``Session``. Anything
else gets an HTTP answer: the HTTP API (``http_api``, under ``/v1/``, which admits a request
against its user's quota before reading its body), ``/healthz``, ``/metrics``, the static files
(``static.asset``), else 404; a method a path does not take is 405. ``HEAD`` is answered
wherever ``GET`` is, without the body (``RequestReader.answer``), except the WebSocket's path,
which only a ``GET`` upgrade reaches.

Keep-alive (HTTP/1.1 persistent connections): after an HTTP answer the connection waits for
its next request when the answer said ``Connection: keep-alive`` (``RequestReader.answer``:
h11's cycle, the client's wish, the request read whole), at most ``KEEPALIVE_REQUESTS``
requests per connection. Every bound is per request: the next request (head and body) must
arrive within ``handshake_timeout`` of the previous answer, which is also how long an idle
connection is kept; its size, its user's quota, its write timeouts are the first's. A
malformed request (answered), a client too slow, an answer not written whole, and a WebSocket
upgrade (the first request or a later one: it goes to the websockets engine with its own
bytes, as a first one does) end the loop. While the server drains, every answer says
``Connection: close`` and connections waiting between two requests are closed at once.

Containment: each connection's task ends in ``handle``'s handler, which logs what escaped and
closes that connection. No exception raised while serving one connection, in the handshake, an
HTTP request or a session, reaches ``trio.serve_listeners``' nursery: one client can never stop
the server.

Per-user quotas (``quotas.py``) are the server's own ``UserQuotas(limits)``, or the one it is
given at construction (a cluster node's, which also counts what the other nodes' users use:
``ClusterRuntime.quotas``); given ones must count against the server's ``limits``.

Shutdown is in two steps so that clients see their runs end: ``drain()`` (``/healthz`` answers
503, new WebSockets are refused with 503, open ones go on, idle HTTP connections close), and,
once the runtime has ended the runs, ``close_sessions()`` (close 1001 after each connection's
queued frames).
"""

from __future__ import annotations

import hmac
import logging
from typing import Callable, Mapping, cast

import trio
from websockets.http11 import Request, Response
from websockets.server import ServerProtocol
from websockets.typing import Subprotocol

from threadline.actors.errors import LimitReached
from threadline.actors.gateway import Gateway

from .auth import AuthError, Authenticator, Identity, token_of
from .codec import Codec
from .frames import Error
from .connection import WebSocketConnection
from .http import WS_PATH, json_response, method_not_allowed, path_of, response, \
    text_response
from .http_api import HttpApi
from .handshake import BadRequest, handshake_request, header, select_subprotocol
from .http_front import After, Malformed, RequestReader, close_gently, read_head
from .limits import Limits
from .messages import CLOSE_GOING_AWAY, CLOSE_POLICY, JSON, LIMIT_REACHED, SUBPROTOCOLS
from .metrics import ExtraMetrics, Metrics
from .quotas import UserQuotas
from .session import Session
from .static import ASSETS, asset
from .stats import ServerStats

log = logging.getLogger("threadline.server")
#: More fields for ``/healthz``, from what embeds the server (a cluster node's ``cluster``).
ExtraHealth = Callable[[], Mapping[str, object]]
# websockets logs every connection opened and closed at INFO: its own logger, so that a server
# holding 10,000 connections can log at INFO without that (``threadline serve --log debug``).
wire_log = logging.getLogger("threadline.wire")
#: Requests one connection carries (HTTP keep-alive); the answer to the last says ``Connection:
#: close``. nginx's default (``keepalive_requests``): a client moves to a fresh connection (and,
#: behind a balancer, maybe to another node) now and then, at a cost of one handshake in 1,000.
KEEPALIVE_REQUESTS = 1_000


def peer_of(stream: trio.abc.Stream) -> str:
    try:
        host, port = stream.socket.getpeername()[:2]  # type: ignore[attr-defined]
        return f"{host}:{port}"
    except (AttributeError, OSError, ValueError, TypeError):
        return "?"


class Server:
    def __init__(self, gateway: Gateway, *, auth: Authenticator, limits: Limits = Limits(),
                 metrics_token: str | None = None, metrics_here: bool = True,
                 demo: bool = False, extra_metrics: ExtraMetrics | None = None,
                 extra_health: ExtraHealth | None = None,
                 quotas: UserQuotas | None = None) -> None:
        if quotas is not None and quotas.limits != limits:
            raise ValueError("the quotas given count against other limits than the server's")
        self.gateway = gateway
        self.limits = limits
        self.auth = auth
        self.metrics_token = metrics_token
        self.metrics_here = metrics_here  # False: /metrics is served on another address
        self.sessions: set[Session] = set()
        self.stats = ServerStats()
        self.metrics = Metrics(gateway, self.stats, extra_metrics)
        self.extra_health = extra_health
        self.quotas = quotas if quotas is not None else UserQuotas(limits)
        self.api = HttpApi(gateway, auth, self.quotas, limits, self.stats)
        self.demo = demo  # the chat page at /
        self.draining = False
        self._idle = trio.Event()
        # connections between two HTTP requests, with the scope that ``drain`` cancels
        self._between: dict[trio.CancelScope, RequestReader] = {}

    async def serve(self, listeners: list[trio.SocketListener],
                    task_status: trio.TaskStatus[list[trio.SocketListener]]
                    = trio.TASK_STATUS_IGNORED) -> None:
        """Accept connections until cancelled."""
        await trio.serve_listeners(self.handle, listeners, task_status=task_status)

    async def serve_metrics(self, listeners: list[trio.SocketListener],
                            task_status: trio.TaskStatus[list[trio.SocketListener]]
                            = trio.TASK_STATUS_IGNORED) -> None:
        """Answer ``/metrics`` and ``/healthz`` only, e.g. on an operator-only address."""
        await trio.serve_listeners(self.handle_metrics, listeners, task_status=task_status)

    def drain(self) -> None:
        """From now on ``/healthz`` answers 503, new WebSockets are refused, every HTTP answer
        says ``Connection: close``, and connections idle between two HTTP requests close."""
        if not self.draining:
            log.info("draining: /healthz answers 503, new connections are refused")
            self.draining = True
        for scope, reader in list(self._between.items()):
            if reader.waiting:  # a request begun is answered (with Connection: close)
                scope.cancel()

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
        protocol = ServerProtocol(subprotocols=[Subprotocol(name) for name in SUBPROTOCOLS],
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
        reader = RequestReader(conn.stream)
        while (started := await self._next(reader)) is not None:
            request, deadline = started
            path = path_of(request.path)
            if path == WS_PATH and reader.method == "GET":
                await self._websocket(conn, reader, peer, deadline)
                return
            if path.startswith("/v1/") and path != WS_PATH and path not in ASSETS:
                after = await self.api.serve(reader.method, request, reader, deadline,
                                             self._keep_alive(reader))
            else:
                answer = self._plain(reader.method, request, path)
                if answer.status_code >= 400:
                    self.stats.refused(answer.status_code)
                after = await self._reply(reader, answer)
            if not await self._go_on(reader, after):
                return

    async def _next(self, reader: RequestReader) -> tuple[Request, float] | None:
        """The connection's next request's head, and the deadline of the whole request:
        ``handshake_timeout`` from now. None if none comes: the client closed, was too slow
        (dropped unanswered), sent a malformed one (answered), or the server drains while no
        byte of it has come (``drain``)."""
        deadline = trio.current_time() + self.limits.handshake_timeout
        if reader.requests and self.draining and reader.waiting:
            return None  # its previous answer was written as the drain began
        request = None
        with trio.CancelScope() as between:
            if reader.requests:
                self._between[between] = reader
            try:
                request = await self._head(reader, deadline)
            finally:
                self._between.pop(between, None)
        return None if request is None else (request, deadline)

    async def _reply(self, reader: RequestReader, answer: Response) -> After:
        return await reader.answer(answer, self._keep_alive(reader))

    def _keep_alive(self, reader: RequestReader) -> bool:
        """Whether the answer may keep the connection for the next request: it has carried
        fewer than ``KEEPALIVE_REQUESTS`` and the server does not drain."""
        return not self.draining and reader.requests < KEEPALIVE_REQUESTS

    async def _go_on(self, reader: RequestReader, after: After) -> bool:
        """Whether the connection carries another request; if not, it is closed gently after
        an answer written whole (its client may still be sending an unread body)."""
        if after is After.CLOSE:
            await close_gently(reader.stream, self.limits.close_timeout)
        return after is After.NEXT

    async def _websocket(self, conn: WebSocketConnection, reader: RequestReader, peer: str,
                         deadline: float) -> None:
        request = await handshake_request(conn, bytes(reader.raw), deadline)
        if request is None:
            self.stats.refused(400)
            return
        protocol = cast(ServerProtocol, conn.protocol)  # made in ``_contained``
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
            conn.write(codec.encode(Error(LIMIT_REACHED, str(exc))), binary=codec.binary)
            await conn.close(CLOSE_POLICY, str(exc), self.limits.close_timeout)
            return
        session = Session(conn, user, codec, self.limits, self.stats, lambda: self.draining,
                          quota=quota, expires_at=identity.expires_at,
                          cursors=self.api.cursors)
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
        reader = RequestReader(conn.stream)
        while (started := await self._next(reader)) is not None:
            request = started[0]
            if path_of(request.path) not in ("/metrics", "/healthz"):
                answer = text_response(404, "not found")
            elif reader.method not in ("GET", "HEAD"):
                answer = method_not_allowed("GET", "HEAD")
            else:
                try:
                    answer = self._operator(request)
                except BadRequest as exc:
                    answer = text_response(400, str(exc))
            if not await self._go_on(reader, await self._reply(reader, answer)):
                return

    async def _head(self, reader: RequestReader, deadline: float) -> Request | None:
        try:
            return await read_head(reader, deadline, self.limits.close_timeout)
        except Malformed as exc:  # answered
            self.stats.refused(exc.status)
            return None

    # -- routing ---------------------------------------------------------------------------------

    def _operator(self, request: Request) -> Response:
        """``/healthz`` and ``/metrics`` (behind the metrics token, if one is set)."""
        if path_of(request.path) == "/healthz":
            health: dict[str, object] = {"status": "draining" if self.draining else "ok"}
            if self.extra_health is not None:
                health.update(self.extra_health())
            return json_response(503 if self.draining else 200, health)
        if self.metrics_token is not None:
            given = header(request.headers, "Authorization") or ""
            expected = f"Bearer {self.metrics_token}"
            if not hmac.compare_digest(given.encode(), expected.encode()):
                return text_response(401, "metrics need Authorization: Bearer <metrics token>")
        body, content_type = self.metrics.render(header(request.headers, "Accept"))
        return response(200, body, content_type)

    def _plain(self, method: str, request: Request, path: str) -> Response:
        """The answer to a request that is neither the WebSocket nor the HTTP API."""
        if path == WS_PATH:
            return method_not_allowed("GET")
        found = asset(path, demo=self.demo)
        operator = path == "/healthz" or (path == "/metrics" and self.metrics_here)
        if found is None and not operator:
            return text_response(404, "not found")
        if method not in ("GET", "HEAD"):
            return method_not_allowed("GET", "HEAD")
        if found is not None:
            return response(200, found[1], found[0])
        try:
            return self._operator(request)
        except BadRequest as exc:
            return text_response(400, str(exc))

    def _route(self, protocol: ServerProtocol, request: Request,
               peer: str) -> tuple[Response, Identity | None]:
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
