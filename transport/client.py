"""A trio client of protocol v1, for embedding, tests and benchmarks.

::

    async with open_client("ws://127.0.0.1:8765/v1/ws", token) as client:
        await client.join("main")
        accepted = await client.send("main", "hello")
        async for frame in client.events():     # {"type": "event", "thread_id": ..., ...}
            if frame["event"] == "agent_completed":
                break

Requests get a ``ref`` and wait for the frame that answers it; an ``error`` answer raises
``ServerError(code, message)``. With ``reconnect=True``, a connection lost for any reason but a
normal close or the client's own fault (1000, 1008, 1009) is opened again with backoff, and
every joined thread is joined again with ``since`` set to the last seq received, so the event
stream goes on with no gap and no duplicate.
"""

from __future__ import annotations

import itertools
import logging
from contextlib import asynccontextmanager
from typing import Any, AsyncIterator
from urllib.parse import urlsplit

import trio
from websockets.client import ClientProtocol
from websockets.frames import Frame
from websockets.http11 import Response
from websockets.uri import parse_uri

from actors.mailbox import Reply

from .codec import Codec
from .connection import WebSocketConnection
from .messages import CLOSE_NORMAL, CLOSE_POLICY, CLOSE_TOO_BIG, JSON, MSGPACK

log = logging.getLogger("threadline.client")

# A normal close, or the client's own fault: reconnecting would only repeat it.
NO_RECONNECT = {CLOSE_NORMAL, CLOSE_POLICY, CLOSE_TOO_BIG}


class ClientError(Exception):
    pass


class HandshakeRejected(ClientError):
    """The server answered the opening handshake with an HTTP error (401, 404, 503, ...)."""

    def __init__(self, status: int, body: str) -> None:
        super().__init__(f"HTTP {status}: {body}")
        self.status = status
        self.body = body


class ServerError(ClientError):
    """The server answered a request with an ``error`` frame."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(f"{code}: {message}")
        self.code = code
        self.message = message


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


class Client:
    def __init__(self, url: str, token: str, subprotocol: str, reconnect: bool,
                 event_buffer: int, record: bool = False) -> None:
        self.url = url
        self._token = token
        self.codec = Codec(subprotocol)
        self.reconnect = reconnect
        self._refs = itertools.count(1)
        self._pending: dict[int, Reply[dict[str, Any]]] = {}
        self._events_in, self._events_out = trio.open_memory_channel[dict[str, Any]](event_buffer)
        # Frames that answer no pending request (an error for a frame without a readable ref).
        self._other_in, self._other_out = trio.open_memory_channel[dict[str, Any]](1000)
        self.joined: dict[str, int] = {}     # thread_id -> last seq received
        self.conn: WebSocketConnection | None = None
        self.close_code: int | None = None
        self.close_reason = ""
        self.reconnects = 0
        self.log: list[dict[str, Any]] | None = [] if record else None  # every frame, in order
        self._connected = trio.Event()
        self._closed = False
        self._stopped = trio.Event()

    # -- requests ------------------------------------------------------------------------------

    async def request(self, frame: dict[str, Any], timeout: float = 30.0) -> dict[str, Any]:
        """Send ``frame`` with a fresh ``ref``; return the frame that answers it."""
        ref = next(self._refs)
        reply: Reply[dict[str, Any]] = Reply()
        self._pending[ref] = reply
        try:
            with trio.fail_after(timeout):
                await self._connected.wait()
                await self.send_frame({**frame, "ref": ref})
                answer = await reply.wait()
        finally:
            self._pending.pop(ref, None)
        if answer.get("type") == "error":
            raise ServerError(answer.get("code", "?"), answer.get("message", ""))
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

    async def threads(self) -> list[dict[str, Any]]:
        return (await self.request({"type": "threads"}))["threads"]

    async def ping(self) -> None:
        await self.request({"type": "ping"})

    # -- raw access (tests of the protocol itself) ---------------------------------------------

    async def send_frame(self, frame: dict[str, Any]) -> None:
        await self.send_raw(self.codec.encode(frame), binary=self.codec.binary)

    async def send_raw(self, payload: bytes, *, binary: bool) -> None:
        conn = self.conn
        if conn is None or not conn.open:
            raise ConnectionClosed(self.close_code, self.close_reason)
        conn.write(payload, binary=binary)
        await conn.flush()

    # -- events --------------------------------------------------------------------------------

    def events(self) -> trio.MemoryReceiveChannel[dict[str, Any]]:
        """Event frames in arrival order; iteration ends when the client is closed for good."""
        return self._events_out

    async def next_event(self, timeout: float = 30.0) -> dict[str, Any]:
        with trio.fail_after(timeout):
            try:
                return await self._events_out.receive()
            except trio.EndOfChannel:
                raise ConnectionClosed(self.close_code, self.close_reason) from None

    async def next_unsolicited(self, timeout: float = 30.0) -> dict[str, Any]:
        """The next frame that answered no pending request."""
        with trio.fail_after(timeout):
            return await self._other_out.receive()

    # -- the connection ------------------------------------------------------------------------

    async def _run(self, task_status: trio.TaskStatus[None]) -> None:
        delay = 0.05
        first = True
        try:
            while True:
                try:
                    self.conn = await connect(self.url, self._token, self.codec.subprotocol)
                except (OSError, ConnectionClosed, HandshakeRejected) as exc:
                    if first or not self.reconnect or (isinstance(exc, HandshakeRejected)
                                                       and exc.status != 503):
                        raise
                    await trio.sleep(delay)
                    delay = min(delay * 2, 2.0)
                    continue
                delay = 0.05
                self._connected.set()
                if first:
                    task_status.started()
                    first = False
                else:
                    self.reconnects += 1
                async with trio.open_nursery() as nursery:
                    nursery.start_soon(self._read, nursery.cancel_scope)
                    if self.reconnects:
                        nursery.start_soon(self._rejoin)
                self._connected = trio.Event()
                self._fail_pending()
                if self._closed or not self.reconnect or self.close_code in NO_RECONNECT:
                    return
                log.info("connection lost (%s %s); reconnecting", self.close_code,
                         self.close_reason)
        finally:
            self._fail_pending()
            self._events_in.close()
            self._stopped.set()

    async def _rejoin(self) -> None:
        for thread_id, last in list(self.joined.items()):
            try:
                await self.join(thread_id, since=last)
            except ClientError as exc:
                log.warning("rejoining %s failed: %s", thread_id, exc)

    async def _read(self, scope: trio.CancelScope) -> None:
        conn = self.conn
        assert conn is not None
        while True:
            for event in await conn.receive():
                if isinstance(event, Frame):
                    message = conn.assemble(event)
                    if message is not None:
                        await self._dispatch(self.codec.decode_frame(message[1]))
            if not conn.open:
                rcvd = conn.protocol.close_rcvd
                self.close_code = rcvd.code if rcvd is not None else 1006
                self.close_reason = rcvd.reason if rcvd is not None else "abnormal closure"
                await conn.close(1000, "", 2.0)  # completes the handshake, closes TCP
                scope.cancel()
                return

    async def _dispatch(self, frame: dict[str, Any]) -> None:
        if self.log is not None:
            self.log.append(frame)
        if frame.get("type") == "event":
            thread_id = frame.get("thread_id")
            last = self.joined.get(thread_id, -1) if isinstance(thread_id, str) else -1
            if frame["seq"] <= last:
                return  # seen before a reconnect
            if thread_id in self.joined:
                self.joined[thread_id] = frame["seq"]
            await self._events_in.send(frame)
            return
        reply = self._pending.get(frame.get("ref"))  # type: ignore[arg-type]
        if reply is not None:
            reply.set(frame)
        else:
            try:
                self._other_in.send_nowait(frame)
            except trio.WouldBlock:
                log.warning("dropping an unsolicited frame: %r", frame)

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
    """
    subprotocol = {"json": JSON, "msgpack": MSGPACK}[encoding]
    client = Client(url, token, subprotocol, reconnect, event_buffer, record)
    async with trio.open_nursery() as nursery:
        await nursery.start(client._run)
        try:
            yield client
        finally:
            with trio.CancelScope(shield=True):
                await client.aclose()
            nursery.cancel_scope.cancel()


__all__ = ["Client", "ClientError", "ConnectionClosed", "HandshakeRejected", "ServerError",
           "connect", "open_client"]
