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
``ref``, a type this client does not know) go to ``next_unsolicited()``. The errors are in
``client_errors``, the routing of what is received in ``client_inbox``, the opening of
connections in ``client_connect``; all that a user needs is re-exported here.

Invariants: the only background task is the reader (``Inbox.read_until_closed``), which never
raises (see ``client_inbox``): a frame that cannot be decoded at all closes the connection
(1007), which requests see as ``ConnectionClosed``. So ``open_client`` raises what its body
raises, never an exception group. With ``reconnect=True``, a connection lost for any reason
but a normal close, a fault of what was sent or an expired token (1000, 1007, 1008, 1009,
4001: ``NO_RECONNECT``) is opened again with backoff, and every joined thread is joined again
with ``since`` set to the last seq received, so the event stream goes on with no gap and no
duplicate.
"""

from __future__ import annotations

import itertools
import logging
from contextlib import asynccontextmanager
from typing import Any, AsyncIterator, Sequence

import trio

from threadline.actors.journal import replay_start
from threadline.actors.messages import LATEST, Parent
from threadline.actors.reply import Reply

from .client_connect import NO_RECONNECT, connect, reconnect
from .client_errors import (BadFrame, BudgetExceeded, Busy, ClientError, ConnectionClosed, HandshakeRejected,
                            Internal, LimitReached, NotFound, NotJoined, RateLimited, ServerError,
                            UnknownCall, UnknownRun)
from .client_inbox import Inbox
from .codec import Codec
from .connection import WebSocketConnection
from .messages import CLOSE_NORMAL, JSON, MSGPACK

log = logging.getLogger("threadline.client")

class Client:
    def __init__(self, url: str, token: str, subprotocol: str, reconnect: bool,
                 event_buffer: int, record: bool = False) -> None:
        self.url = url
        self._token = token
        self.codec = Codec(subprotocol)
        self.reconnect = reconnect
        self._refs = itertools.count(1)
        self._inbox = Inbox(self.codec.binary, event_buffer, record)
        self.joined = self._inbox.joined  # thread_id -> last seq received (the same dict)
        self.log = self._inbox.log        # every frame, in order, if recorded (the same list)
        self.conn: WebSocketConnection | None = None
        self.close_code: int | None = None
        self.close_reason = ""
        self.reconnects = 0
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
        self._inbox.pending[ref] = reply
        try:
            with trio.fail_after(timeout):
                await self._connected.wait()
                self._inbox.owed.refs.add(ref)
                await self._write(self.codec.encode_client_frame({**frame, "ref": ref}), self.codec.binary)
                answer = await reply.wait()
        finally:
            self._inbox.pending.pop(ref, None)
        if answer.get("type") == "error":
            raise ServerError.of(answer)
        return answer

    async def join(self, thread_id: str, since: int | None = None) -> dict[str, Any]:
        frame: dict[str, Any] = {"type": "join", "thread_id": thread_id}
        if since is not None:
            frame["since"] = since
        answer = await self.request(frame)
        # As the server counts it (``replay_start``): a since beyond the thread's end is up to
        # date, and the live events from last_seq + 1 must not be taken for ones already seen.
        self.joined[thread_id] = replay_start(since, answer["last_seq"])
        return answer

    async def leave(self, thread_id: str) -> dict[str, Any]:
        self.joined.pop(thread_id, None)
        return await self.request({"type": "leave", "thread_id": thread_id})

    async def send(self, thread_id: str, text: str, *, client_msg_id: str | None = None,
                   strategy: str | None = None, parent: Parent = LATEST,
                   attachments: Sequence[str] = ()) -> dict[str, Any]:
        """The ``accepted`` once the message is stored. ``parent`` (1.1) is the run it follows:
        left out, the thread's newest (no ``parent`` in the frame); None, a new root (``null``);
        a run id of the thread: the ``parent`` of a message to edit makes a sibling of it. A
        parent that is no run of the thread raises ``NotFound``. ``attachments`` (1.1): ids
        of the user's uploads (``POST /v1/attachments``), at most 10; one that is not the
        user's, or is another thread's, raises ``NotFound``."""
        frame: dict[str, Any] = {"type": "send", "thread_id": thread_id, "text": text}
        if client_msg_id is not None:
            frame["client_msg_id"] = client_msg_id
        if strategy is not None:
            frame["strategy"] = strategy
        if parent is not LATEST:
            frame["parent"] = parent
        if attachments:
            frame["attachments"] = list(attachments)
        return await self.request(frame)

    async def regenerate(self, thread_id: str, message_id: str, *,
                         client_msg_id: str | None = None,
                         strategy: str | None = None) -> dict[str, Any]:
        """Ask for another answer to the ``user_message`` ``message_id`` (1.1); the
        ``accepted`` once its ``answer_requested`` is stored (``seq`` is that event's). A
        message the thread does not hold raises ``NotFound``."""
        frame: dict[str, Any] = {"type": "regenerate", "thread_id": thread_id,
                                 "message_id": message_id}
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

    async def decide(self, thread_id: str, run_id: str, call_id: str, approved: bool,
                     reason: str | None = None) -> dict[str, Any]:
        """Decide a tool call waiting for approval (PROTOCOL.md 1.1); the ``ok`` once the
        decision is stored. A call that does not wait raises the ``ServerError`` of
        ``unknown_call``."""
        frame: dict[str, Any] = {"type": "decide", "thread_id": thread_id, "run_id": run_id,
                                 "call_id": call_id, "approved": approved}
        if reason is not None:
            frame["reason"] = reason
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
        await self.send_raw(self.codec.encode_client_frame(frame), binary=self.codec.binary)

    async def send_raw(self, payload: bytes, *, binary: bool) -> None:
        """Write one message, of any content; answers to it go to ``next_unsolicited``.
        Raises ``ConnectionClosed`` if the connection is not open."""
        self._inbox.owed.counting = False  # its answer may have no ref: see client_inbox
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
        return self._inbox.events

    async def next_event(self, timeout: float = 30.0) -> dict[str, Any]:
        return await self._next(self._inbox.events, timeout)

    async def next_unsolicited(self, timeout: float = 30.0) -> dict[str, Any]:
        """The next frame that answered no pending request (the last 1,000 are kept)."""
        return await self._next(self._inbox.unsolicited, timeout)

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
                self.conn = conn
                self._inbox.new_connection()
                self._connected.set()
                if not self.reconnects:
                    task_status.started()
                async with trio.open_nursery() as nursery:
                    if self.reconnects:
                        nursery.start_soon(self._rejoin)
                    self.close_code, self.close_reason = await self._inbox.read_until_closed(conn)
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
            self._inbox.close()
            self._connected.set()  # requests waiting for a connection see ConnectionClosed
            self._stopped.set()

    async def _reconnect(self) -> WebSocketConnection | None:
        """A new connection (``client_connect.reconnect``: retried with backoff); None if the
        client was closed or the server refuses for good (e.g. 401: the token expired)."""
        try:
            conn = await reconnect(self.url, self._token, self.codec.subprotocol,
                                   lambda: self._closed)
        except HandshakeRejected as exc:
            log.warning("reconnecting refused for good: %s", exc)
            self.close_reason = f"reconnecting refused: {exc}"
            return None
        if conn is not None:
            self.reconnects += 1
        return conn

    async def _rejoin(self) -> None:
        for thread_id, last in list(self.joined.items()):
            try:
                await self.join(thread_id, since=last)
            except (ClientError, trio.TooSlowError) as exc:
                log.warning("rejoining %s failed: %r", thread_id, exc)

    def _fail_pending(self) -> None:
        self._inbox.fail_pending(self.close_code, self.close_reason)

    async def aclose(self, timeout: float = 5.0) -> None:
        """Close normally (1000): send the close frame; the reader task completes the closing
        handshake. Bounded by ``timeout``."""
        self._closed = True
        conn = self.conn
        if conn is None:
            return
        with trio.move_on_after(timeout):
            if conn.open:
                conn.protocol.send_close(CLOSE_NORMAL, "")
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


__all__ = ["BadFrame", "BudgetExceeded", "Busy", "Client", "ClientError", "ConnectionClosed", "HandshakeRejected",
           "Internal", "LimitReached", "NotFound", "NotJoined", "RateLimited", "ServerError",
           "UnknownCall", "UnknownRun",
           "connect", "open_client"]
