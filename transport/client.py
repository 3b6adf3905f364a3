"""A trio client of protocol v1, for embedding, tests and benchmarks.

::

    async with open_client("ws://127.0.0.1:8765/v1/ws", token) as client:
        await client.join("main")
        accepted = await client.send("main", "hello")
        async for frame in client.events():     # {"type": "event", "thread_id": ..., ...}
            if frame["event"] == "agent_completed":
                break

Requests get a ``ref`` and wait for the frame that answers it; an ``error`` answer raises the
``ServerError`` subclass of its code (``RateLimited``, ``Busy``, ...) from that request, and the
connection stays up. Frames that answer no pending request (an error for a frame without a
``ref``, a type this client does not know) go to ``next_unsolicited()``.

Invariants: the only background task is the reader, and nothing a server sends can make it
raise: malformed frames are logged and skipped, and a frame that cannot be decoded at all
closes the connection (1007), which requests see as ``ConnectionClosed``. So ``open_client``
raises what its body raises, never an exception group. Every frame the server reads gets
exactly one answer (PROTOCOL.md), which is how a ``rate_limited`` without a ``ref`` still
reaches its request (``_Owed``). With ``reconnect=True``, a connection lost for any reason but
a normal close, a fault of what was sent or an expired token (1000, 1007, 1008, 1009, 4001)
is opened again with backoff, and every joined thread is joined again with ``since`` set to
the last seq received, so the event stream goes on with no gap and no duplicate.
"""

from __future__ import annotations

import itertools
import json
import logging
from contextlib import asynccontextmanager
from typing import Any, AsyncIterator
from urllib.parse import urlsplit

import msgpack
import trio
from websockets.client import ClientProtocol
from websockets.frames import Frame
from websockets.http11 import Response
from websockets.uri import parse_uri

from actors.mailbox import Reply

from .codec import Codec
from .connection import WebSocketConnection
from .messages import (
    BAD_FRAME,
    BUSY,
    CLOSE_INVALID_DATA,
    CLOSE_NORMAL,
    CLOSE_POLICY,
    CLOSE_TOKEN_EXPIRED,
    CLOSE_TOO_BIG,
    INTERNAL,
    JSON,
    LIMIT_REACHED,
    MSGPACK,
    NOT_JOINED,
    RATE_LIMITED,
    UNKNOWN_RUN,
)

log = logging.getLogger("threadline.client")

# Reconnecting would only repeat these: a normal close, a fault of what was sent, a token
# that expired (the same token is refused with 401).
NO_RECONNECT = {CLOSE_NORMAL, CLOSE_INVALID_DATA, CLOSE_POLICY, CLOSE_TOO_BIG,
                CLOSE_TOKEN_EXPIRED}
HANDSHAKE_TIMEOUT = 10.0  # per reconnection attempt, as the server's own handshake_timeout


class ClientError(Exception):
    pass


class HandshakeRejected(ClientError):
    """The server answered the opening handshake with an HTTP error (401, 404, 503, ...)."""

    def __init__(self, status: int, body: str) -> None:
        super().__init__(f"HTTP {status}: {body}")
        self.status = status
        self.body = body


class ServerError(ClientError):
    """The server answered a request with an ``error`` frame; a subclass per code of
    PROTOCOL.md (an unknown code raises this class itself)."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(f"{code}: {message}")
        self.code = code
        self.message = message

    @staticmethod
    def of(frame: dict[str, Any]) -> ServerError:
        code, message = str(frame.get("code", "?")), str(frame.get("message", ""))
        return _ERRORS.get(code, ServerError)(code, message)


class BadFrame(ServerError):
    """``bad_frame``: the request was not valid."""


class NotJoined(ServerError):
    """``not_joined``: join the thread first."""


class Busy(ServerError):
    """``busy``: ``strategy: reject`` while a run is active."""


class UnknownRun(ServerError):
    """``unknown_run``: no such active run to cancel."""


class RateLimited(ServerError):
    """``rate_limited``: dropped; sending it later may work."""


class LimitReached(ServerError):
    """``limit_reached``: a per-connection or per-user limit."""


class Internal(ServerError):
    """``internal``: nothing stored; retry with the same client_msg_id."""


_ERRORS: dict[str, type[ServerError]] = {
    BAD_FRAME: BadFrame, NOT_JOINED: NotJoined, BUSY: Busy, UNKNOWN_RUN: UnknownRun,
    RATE_LIMITED: RateLimited, LIMIT_REACHED: LimitReached, INTERNAL: Internal}


class ConnectionClosed(ClientError):
    def __init__(self, code: int | None, reason: str) -> None:
        super().__init__(f"connection closed ({code} {reason})".rstrip())
        self.code = code
        self.reason = reason


async def connect(url: str, token: str | None, subprotocol: str = JSON, *,
                  max_size: int | None = None) -> WebSocketConnection:
    """Open a WebSocket to ``url`` with ``token`` (if any) in the Authorization header.
    Raises ``HandshakeRejected``."""
    parts = urlsplit(url)
    if parts.scheme != "ws":
        raise ValueError("only ws:// URLs are supported")
    stream = await trio.open_tcp_stream(parts.hostname or "127.0.0.1", parts.port or 80)
    protocol = ClientProtocol(parse_uri(url), subprotocols=[subprotocol], max_size=max_size)
    conn = WebSocketConnection(stream, protocol)
    try:
        request = protocol.connect()
        if token is not None:
            request.headers["Authorization"] = f"Bearer {token}"
        protocol.send_request(request)
        await conn.flush()
        while not conn.eof:
            for event in await conn.receive():
                if isinstance(event, Response):
                    if event.status_code != 101 or protocol.handshake_exc is not None:
                        body = (event.body or b"").decode("utf-8", "replace").strip()
                        raise HandshakeRejected(event.status_code, body)
                    return conn
        raise ConnectionClosed(None, "closed during the handshake")
    except BaseException:
        await conn.aclose()
        raise


class _Owed:
    """The answers one connection still owes, by ref. Sans-IO.

    A ``rate_limited`` may come without a ``ref``: a server may drop a frame over its rate
    unread. It still answers exactly one of the frames sent, so once the answers owed are no
    more than such refusals received, every ref still owed was refused. Counting holds only
    while every frame sent has a ref: a raw frame (``send_raw``) turns it off."""

    __slots__ = ("refs", "refusals", "counting")

    def __init__(self) -> None:
        self.refs: set[int] = set()
        self.refusals: list[dict[str, Any]] = []
        self.counting = True

    def refused_without_ref(self, frame: dict[str, Any]) -> bool:
        """Count one; False when counting is off (the frame is then unsolicited)."""
        if self.counting:
            self.refusals.append(frame)
        return self.counting

    def settle(self) -> list[tuple[int, dict[str, Any]]]:
        """The refs now known to be refused, each with a refusal; forgotten once returned."""
        if not self.refusals or len(self.refs) > len(self.refusals):
            return []
        if len(self.refs) < len(self.refusals):  # a server that answered twice: stop guessing
            log.warning("more refusals without a ref than frames owed: not matching them")
            self.counting = False
        refused = list(zip(sorted(self.refs), self.refusals)) if self.counting else []
        self.refs.clear()
        self.refusals.clear()
        return refused


class Client:
    def __init__(self, url: str, token: str, subprotocol: str, reconnect: bool,
                 event_buffer: int, record: bool = False) -> None:
        self.url = url
        self._token = token
        self.codec = Codec(subprotocol)
        self.reconnect = reconnect
        self._refs = itertools.count(1)
        self._pending: dict[int, Reply[dict[str, Any]]] = {}
        self._owed = _Owed()  # per connection
        self._events_in, self._events_out = trio.open_memory_channel[dict[str, Any]](event_buffer)
        self._other_in, self._other_out = trio.open_memory_channel[dict[str, Any]](1000)
        self.joined: dict[str, int] = {}     # thread_id -> last seq received
        self.conn: WebSocketConnection | None = None
        self.close_code: int | None = None
        self.close_reason = ""
        self.reconnects = 0
        self.log: list[dict[str, Any]] | None = [] if record else None  # every frame, in order
        self._connected = trio.Event()  # set while a connection is up, and once stopped
        self._closed = False
        self._stopped = trio.Event()

    # -- requests ------------------------------------------------------------------------------

    async def request(self, frame: dict[str, Any], timeout: float = 30.0) -> dict[str, Any]:
        """Send ``frame`` with a fresh ``ref``; return the frame that answers it. Blocks until
        it is answered, up to ``timeout`` (``trio.TooSlowError``). Raises the ``ServerError``
        of an ``error`` answer, ``ConnectionClosed`` if the connection ends first."""
        ref = next(self._refs)
        reply: Reply[dict[str, Any]] = Reply()
        self._pending[ref] = reply
        try:
            with trio.fail_after(timeout):
                await self._connected.wait()
                self._owed.refs.add(ref)
                await self._write(self.codec.encode({**frame, "ref": ref}), self.codec.binary)
                answer = await reply.wait()
        finally:
            self._pending.pop(ref, None)
        if answer.get("type") == "error":
            raise ServerError.of(answer)
        return answer

    async def join(self, thread_id: str, since: int | None = None) -> dict[str, Any]:
        frame: dict[str, Any] = {"type": "join", "thread_id": thread_id}
        if since is not None:
            frame["since"] = since
        answer = await self.request(frame)
        self.joined[thread_id] = since if since is not None else answer["last_seq"]
        return answer

    async def leave(self, thread_id: str) -> dict[str, Any]:
        self.joined.pop(thread_id, None)
        return await self.request({"type": "leave", "thread_id": thread_id})

    async def send(self, thread_id: str, text: str, *, client_msg_id: str | None = None,
                   strategy: str | None = None) -> dict[str, Any]:
        frame: dict[str, Any] = {"type": "send", "thread_id": thread_id, "text": text}
        if client_msg_id is not None:
            frame["client_msg_id"] = client_msg_id
        if strategy is not None:
            frame["strategy"] = strategy
        return await self.request(frame)

    async def cancel(self, thread_id: str, run_id: str | None = None) -> dict[str, Any]:
        frame: dict[str, Any] = {"type": "cancel", "thread_id": thread_id}
        if run_id is not None:
            frame["run_id"] = run_id
        return await self.request(frame)

    async def threads_page(self, limit: int | None = None,
                           cursor: str | None = None) -> tuple[list[dict[str, Any]], str | None]:
        """One page of the user's threads, newest first, and the cursor of the next page
        (None: no more; also from a server that does not page)."""
        frame: dict[str, Any] = {"type": "threads"}
        if limit is not None:
            frame["limit"] = limit
        if cursor is not None:
            frame["cursor"] = cursor
        answer = await self.request(frame)
        return answer["threads"], answer.get("next_cursor")

    async def threads(self) -> list[dict[str, Any]]:
        """All the user's threads, newest first: one request per page, following
        ``next_cursor``. A thread that moved between two pages is listed once."""
        out: dict[str, dict[str, Any]] = {}
        cursor: str | None = None
        seen: set[str] = set()
        while True:
            page, cursor = await self.threads_page(cursor=cursor)
            for thread in page:
                out.setdefault(thread["thread_id"], thread)
            if cursor is None:
                return list(out.values())
            if cursor in seen:  # a server bug would otherwise loop forever
                raise ClientError(f"the server repeated the cursor {cursor!r}")
            seen.add(cursor)

    async def ping(self) -> None:
        await self.request({"type": "ping"})

    # -- raw access (tests of the protocol itself) ---------------------------------------------

    async def send_frame(self, frame: dict[str, Any]) -> None:
        await self.send_raw(self.codec.encode(frame), binary=self.codec.binary)

    async def send_raw(self, payload: bytes, *, binary: bool) -> None:
        """Write one message, of any content; answers to it go to ``next_unsolicited``.
        Raises ``ConnectionClosed`` if the connection is not open."""
        self._owed.counting = False  # its answer may have no ref: see _Owed
        await self._write(payload, binary)

    async def _write(self, payload: bytes, binary: bool) -> None:
        conn = self.conn
        if conn is None or not conn.open:
            raise ConnectionClosed(self.close_code, self.close_reason)
        conn.write(payload, binary=binary)
        try:
            await conn.flush()
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            raise ConnectionClosed(self.close_code, self.close_reason) from None

    # -- frames in -----------------------------------------------------------------------------

    def events(self) -> trio.MemoryReceiveChannel[dict[str, Any]]:
        """Event frames in arrival order; iteration ends when the client is closed for good."""
        return self._events_out

    async def next_event(self, timeout: float = 30.0) -> dict[str, Any]:
        return await self._next(self._events_out, timeout)

    async def next_unsolicited(self, timeout: float = 30.0) -> dict[str, Any]:
        """The next frame that answered no pending request (the last 1,000 are kept)."""
        return await self._next(self._other_out, timeout)

    async def _next(self, channel: trio.MemoryReceiveChannel[dict[str, Any]],
                    timeout: float) -> dict[str, Any]:
        with trio.fail_after(timeout):
            try:
                return await channel.receive()
            except trio.EndOfChannel:
                raise ConnectionClosed(self.close_code, self.close_reason) from None

    # -- the connection ------------------------------------------------------------------------

    async def _run(self, conn: WebSocketConnection | None,
                   task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Read ``conn`` until it closes, then reconnect if asked. Never raises but Cancelled."""
        try:
            while conn is not None:
                self.conn, self._owed = conn, _Owed()
                self._connected.set()
                if not self.reconnects:
                    task_status.started()
                async with trio.open_nursery() as nursery:
                    if self.reconnects:
                        nursery.start_soon(self._rejoin)
                    await self._read(conn)
                    nursery.cancel_scope.cancel()
                self._connected = trio.Event()
                self._fail_pending()
                if self._closed or not self.reconnect or self.close_code in NO_RECONNECT:
                    return
                log.info("connection lost (%s %s); reconnecting", self.close_code,
                         self.close_reason)
                conn = await self._reconnect()
        finally:
            self._fail_pending()
            self._events_in.close()
            self._other_in.close()
            self._connected.set()  # requests waiting for a connection see ConnectionClosed
            self._stopped.set()

    async def _reconnect(self) -> WebSocketConnection | None:
        """A new connection, retried with backoff (50 ms to 2 s) while the network or a
        draining server (503) refuses it; None if the client was closed or the server refuses
        for good (e.g. 401: the token expired)."""
        delay = 0.05
        while not self._closed:
            with trio.move_on_after(HANDSHAKE_TIMEOUT):
                try:
                    conn = await connect(self.url, self._token, self.codec.subprotocol)
                    if self._closed:  # aclose() was called meanwhile
                        await conn.close(CLOSE_NORMAL, "", 2.0)
                        return None
                    self.reconnects += 1
                    return conn
                except HandshakeRejected as exc:
                    if exc.status != 503:
                        log.warning("reconnecting refused for good: %s", exc)
                        self.close_reason = f"reconnecting refused: {exc}"
                        return None
                except (OSError, ConnectionClosed):
                    pass
            await trio.sleep(delay)
            delay = min(delay * 2, 2.0)
        return None

    async def _rejoin(self) -> None:
        for thread_id, last in list(self.joined.items()):
            try:
                await self.join(thread_id, since=last)
            except (ClientError, trio.TooSlowError) as exc:
                log.warning("rejoining %s failed: %r", thread_id, exc)

    async def _read(self, conn: WebSocketConnection) -> None:
        """Dispatch frames until the connection closes; close it (1007) on a frame that
        cannot be decoded. A frame that decodes but breaks the protocol is logged and
        skipped: this task must not raise, or it would take the caller's nursery down."""
        while True:
            for event in await conn.receive():
                if not isinstance(event, Frame) or (message := conn.assemble(event)) is None:
                    continue
                try:
                    frame = self._decode(message[1])
                except Exception as exc:
                    log.warning("closing: undecodable frame from the server (%r)", exc)
                    await conn.close(CLOSE_INVALID_DATA, "undecodable frame", 2.0)
                    self.close_code, self.close_reason = CLOSE_INVALID_DATA, "undecodable frame"
                    return
                try:
                    if isinstance(frame, dict):
                        await self._dispatch(frame)
                    else:
                        log.warning("skipping a frame that is not an object: %.200r", frame)
                except Exception:
                    log.exception("skipping a frame the client could not handle: %.200r", frame)
            if not conn.open:
                await conn.close(1000, "", 2.0)  # completes the closing handshake, closes TCP
                # The peer's close, else ours (e.g. 1007 for text that is not UTF-8).
                close = conn.protocol.close_rcvd or conn.protocol.close_sent
                self.close_code = close.code if close is not None else 1006
                self.close_reason = close.reason if close is not None else "abnormal closure"
                return

    def _decode(self, payload: bytes | str) -> Any:
        # Not Codec.decode_frame: a payload that is not JSON (or msgpack) closes the
        # connection, a JSON value that is not an object is only skipped.
        return msgpack.unpackb(payload, raw=False) if self.codec.binary else json.loads(payload)

    async def _dispatch(self, frame: dict[str, Any]) -> None:
        if self.log is not None:
            self.log.append(frame)
        if frame.get("type") == "event":
            thread_id, seq = frame.get("thread_id"), frame.get("seq")
            if not isinstance(thread_id, str) or type(seq) is not int:
                log.warning("skipping a malformed event frame: %.200r", frame)
                return
            if seq <= self.joined.get(thread_id, -1):
                return  # seen before a reconnect
            if thread_id in self.joined:
                self.joined[thread_id] = seq
            try:
                await self._events_in.send(frame)
            except (trio.BrokenResourceError, trio.ClosedResourceError):
                pass  # the application closed events(): it wants none
            return
        ref = frame.get("ref")
        if type(ref) is int:
            self._owed.refs.discard(ref)
            self._answer(ref, frame)
        elif ref is not None or (frame.get("type"), frame.get("code")) != ("error", RATE_LIMITED) \
                or not self._owed.refused_without_ref(frame):
            self._answer(None, frame)
        for refused, refusal in self._owed.settle():
            self._answer(refused, refusal, owed=True)

    def _answer(self, ref: int | None, frame: dict[str, Any], owed: bool = False) -> None:
        reply = self._pending.get(ref) if ref is not None else None
        if reply is not None and not reply.done:
            reply.set(frame)
        elif not owed:  # an answer to a request given up on is of interest to no one
            log.debug("a frame that answers no pending request: %.200r", frame)
            try:
                self._other_in.send_nowait(frame)
            except trio.WouldBlock:
                log.warning("dropping an unsolicited frame: %.200r", frame)

    def _fail_pending(self) -> None:
        for reply in list(self._pending.values()):
            reply.fail(ConnectionClosed(self.close_code, self.close_reason))
        self._pending.clear()

    async def aclose(self, timeout: float = 5.0) -> None:
        """Close normally (1000): send the close frame; the reader task completes the closing
        handshake. Bounded by ``timeout``."""
        self._closed = True
        conn = self.conn
        if conn is None:
            return
        with trio.move_on_after(timeout):
            if conn.open:
                conn.protocol.send_close(1000, "")
                try:
                    await conn.flush()
                except (trio.BrokenResourceError, trio.ClosedResourceError):
                    pass
            await self._stopped.wait()


@asynccontextmanager
async def open_client(url: str, token: str, *, encoding: str = "json", reconnect: bool = False,
                      event_buffer: int = 100_000, record: bool = False) -> AsyncIterator[Client]:
    """Connect (raising ``HandshakeRejected`` if refused) and run the client until exit.

    ``encoding``: ``json`` or ``msgpack``. Events beyond ``event_buffer`` unread ones make the
    client stop reading, and the server eventually closes it with 1013, as for any slow reader.
    ``record``: keep every frame received, in order, in ``client.log`` (for tests).
    What the body raises comes out as it is, not in an exception group.
    """
    subprotocol = {"json": JSON, "msgpack": MSGPACK}[encoding]
    client = Client(url, token, subprotocol, reconnect, event_buffer, record)
    conn = await connect(url, token, subprotocol)  # before the nursery: errors come out bare
    raised: BaseException | None = None
    async with trio.open_nursery() as nursery:
        await nursery.start(client._run, conn)
        try:
            yield client
        except BaseException as exc:
            # Raised again below, outside the nursery, which would wrap it in a group. The
            # reader never raises, so nothing else can be lost.
            raised = exc
        finally:
            with trio.CancelScope(shield=True):
                await client.aclose()
            nursery.cancel_scope.cancel()
    if raised is not None:
        raise raised


__all__ = ["BadFrame", "Busy", "Client", "ClientError", "ConnectionClosed", "HandshakeRejected",
           "Internal", "LimitReached", "NotJoined", "RateLimited", "ServerError", "UnknownRun",
           "connect", "open_client"]
