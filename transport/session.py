"""The SessionActor: one per WebSocket connection.

It holds the user id from the token (as a ``UserHandle``: it can only name that user's
threads), the threads it joined (a ``Tap`` each: the subscriber that thread delivers to), and
one bounded outgoing queue, its mailbox, through which every frame leaves: replies and events
alike, so their order on the wire is the order they were queued.

Three tasks: the reader (frames in, requests handled one at a time, in order), the writer
(the outgoing queue to the socket, batching flushes), and the keepalive. A slow reader never
slows a thread: its queue overflows, the thread drops it, and the session closes with 1013.
"""

from __future__ import annotations

import logging
from typing import Any, Callable

import attrs
import trio
from websockets.frames import Frame, Opcode

from actors.errors import (
    ActorStopped,
    AskTimeout,
    Busy,
    JournalUnavailable,
    MailboxFull,
    UnknownRun,
)
from actors.gateway import ThreadHandle, UserHandle
from actors.journal import replay_page, replay_start
from actors.mailbox import Mailbox
from actors.messages import Event, Joined, ThreadKey

from .codec import Codec, error_frame, event_frame, reply_frame
from .connection import WebSocketConnection
from .limits import Limits, TokenBucket
from .stats import ServerStats
from .messages import (
    BAD_FRAME,
    BUSY,
    CLOSE_GOING_AWAY,
    CLOSE_INTERNAL,
    CLOSE_POLICY,
    CLOSE_TRY_AGAIN,
    INTERNAL,
    LIMIT_REACHED,
    NOT_JOINED,
    RATE_LIMITED,
    UNKNOWN_RUN,
    BadFrame,
    Cancel,
    Join,
    Leave,
    Ping,
    Request,
    Send,
    Threads,
)

log = logging.getLogger("threadline.session")

WRITE_BATCH = 64     # frames encoded per flush when the queue has more waiting


class Tap:
    """A session's subscription to one thread: what the thread actor delivers to."""

    __slots__ = ("session", "thread", "thread_id", "since", "ref", "active", "last_sent")

    def __init__(self, session: Session, thread: ThreadHandle, since: int | None,
                 ref: Any) -> None:
        self.session = session
        self.thread = thread  # the handle every request on this thread goes through
        self.thread_id = thread.thread_id
        self.since = since
        self.ref = ref
        self.active = True
        self.last_sent = -1  # the seq of the last event written; known once joined

    def deliver(self, item: Event | Joined) -> None:
        self.session.outbox.tell((self, item))  # MailboxFull: the thread drops this tap

    def dropped(self, key: ThreadKey, reason: str, *, overflow: bool) -> None:
        if self.active:
            self.session.thread_dropped(self, overflow)


class Session:
    def __init__(self, conn: WebSocketConnection, user: UserHandle, codec: Codec, limits: Limits,
                 stats: ServerStats, draining: Callable[[], bool]) -> None:
        self.conn = conn
        self.user = user
        self.codec = codec
        self.limits = limits
        self.stats = stats
        self._draining = draining
        self.outbox = Mailbox(limits.outgoing_queue)
        self.taps: dict[str, Tap] = {}
        self._close: tuple[int, str] | None = None
        self._done = trio.Event()
        self._discard = False  # drop queued frames instead of writing them (1013)
        self._writer_done = trio.Event()
        self._bad_in_row = 0
        self._bucket = TokenBucket(limits.rate, limits.burst, trio.current_time())
        self._pong: trio.Event | None = None
        self._ping_data = b""

    # -- lifecycle ---------------------------------------------------------------------------

    def close(self, code: int | None, reason: str = "") -> None:
        """End the session (never blocks; the first call wins). ``None``: the peer or the
        protocol already closed, nothing to send."""
        if not self._done.is_set():
            if code is not None:
                self._close = (code, reason)
                self.stats.closed(code)
                log.info("closing a connection of %s: %d %s", self.user.user_id, code, reason)
            self._discard = code == CLOSE_TRY_AGAIN
            self._done.set()

    async def run(self) -> None:
        """Serve the connection until it closes. Queued frames are written before the close
        frame (bounded by ``close_timeout``), except after an overflow."""
        try:
            async with trio.open_nursery() as outer:
                outer.start_soon(self._writer)
                async with trio.open_nursery() as inner:
                    inner.start_soon(self._reader)
                    if self.limits.ping_interval is not None:
                        inner.start_soon(self._keepalive, self.limits.ping_interval)
                    await self._done.wait()
                    inner.cancel_scope.cancel()
                self.outbox.close_send()  # the writer drains what is queued, then ends
                with trio.move_on_after(self.limits.close_timeout):
                    await self._writer_done.wait()
                outer.cancel_scope.cancel()
        finally:
            with trio.CancelScope(shield=True):
                await self._leave_all()
                code, reason = self._close or (1000, "")
                await self.conn.close(code, reason, self.limits.close_timeout)

    async def _leave_all(self) -> None:
        taps, self.taps = list(self.taps.values()), {}
        async with trio.open_nursery() as nursery:
            for tap in taps:
                tap.active = False
                nursery.start_soon(tap.thread.unsubscribe, tap)

    def thread_dropped(self, tap: Tap, overflow: bool) -> None:
        if overflow:
            self.close(CLOSE_TRY_AGAIN, "outgoing queue overflow: reconnect and join with since")
        elif self._draining():
            self.close(CLOSE_GOING_AWAY, "server shutting down")
        else:
            self.close(CLOSE_INTERNAL, f"thread {tap.thread_id} stopped: rejoin with since")

    # -- reading -----------------------------------------------------------------------------

    async def _reader(self) -> None:
        conn = self.conn
        while True:
            for event in await conn.receive():
                if not isinstance(event, Frame):
                    continue
                if event.opcode is Opcode.PONG:
                    if self._pong is not None and event.data == self._ping_data:
                        self._pong.set()
                    continue
                message = conn.assemble(event)
                if message is not None:
                    await self._on_message(*message)
                    if self._done.is_set():
                        return
            if not conn.open:  # the peer closed, or the protocol failed it (1002, 1007, 1009)
                code = conn.protocol.close_code if conn.protocol.close_sent is not None else None
                if code is not None:
                    self.stats.closed(code)
                self.close(None)
                return

    async def _on_message(self, binary: bool, payload: bytes) -> None:
        self.stats.frames_received += 1
        try:
            request = self.codec.decode(payload, binary=binary)
        except BadFrame as exc:
            self._bad_in_row += 1
            self._reply(error_frame(BAD_FRAME, exc.message, exc.ref))
            if self._bad_in_row >= self.limits.max_bad_frames:
                self.close(CLOSE_POLICY, f"{self._bad_in_row} bad frames in a row")
            return
        self._bad_in_row = 0
        if not self._bucket.take(trio.current_time()):
            self._reply(error_frame(RATE_LIMITED, f"more than {self.limits.rate:g} frames/s; "
                                    "this frame was dropped", request.ref))
            return
        try:
            await self._handle(request)
        except Busy as exc:
            self._reply(error_frame(BUSY, str(exc), request.ref))
        except UnknownRun as exc:
            self._reply(error_frame(UNKNOWN_RUN, str(exc), request.ref))
        except (JournalUnavailable, ActorStopped, AskTimeout) as exc:
            log.warning("request of %s failed: %r", self.user.user_id, exc)
            self._reply(error_frame(INTERNAL, f"the server could not do it: {exc}", request.ref))

    async def _handle(self, request: Request) -> None:
        kind = type(request)
        if kind is Send:
            assert isinstance(request, Send)
            tap = self.taps.get(request.thread_id)
            if tap is None:
                return self._not_joined(request)
            acc = await tap.thread.send(
                request.text, client_msg_id=request.client_msg_id, strategy=request.strategy)
            self._reply(reply_frame("accepted", request.ref, thread_id=request.thread_id,
                                    message_id=acc.message_id, run_id=acc.run_id, seq=acc.seq))
        elif kind is Join:
            assert isinstance(request, Join)
            await self._join(request)
        elif kind is Leave:
            assert isinstance(request, Leave)
            tap = self.taps.pop(request.thread_id, None)
            if tap is not None:
                tap.active = False  # the writer drops what is still queued for it
                await tap.thread.unsubscribe(tap)
            self._reply(reply_frame("left", request.ref, thread_id=request.thread_id))
        elif kind is Cancel:
            assert isinstance(request, Cancel)
            tap = self.taps.get(request.thread_id)
            if tap is None:
                return self._not_joined(request)
            run_id = await tap.thread.cancel(request.run_id)
            self._reply(reply_frame("ok", request.ref, thread_id=request.thread_id, run_id=run_id))
        elif kind is Threads:
            infos = await self.user.threads()
            self._reply(reply_frame("threads", request.ref, threads=[
                {"thread_id": i.key.thread_id, "last_seq": i.last_seq,
                 "created_at": i.created_at, "updated_at": i.updated_at} for i in infos]))
        elif kind is Ping:
            self._reply(reply_frame("pong", request.ref))

    async def _join(self, request: Join) -> None:
        old = self.taps.get(request.thread_id)
        if old is None and len(self.taps) >= self.limits.max_threads:
            self._reply(error_frame(LIMIT_REACHED, f"at most {self.limits.max_threads} threads "
                                    "joined per connection", request.ref))
            return
        thread = old.thread if old is not None else self.user.thread(request.thread_id)
        if old is not None:  # joined again: a fresh subscription, replayed from since
            old.active = False
            await thread.unsubscribe(old)
        tap = Tap(self, thread, request.since, request.ref)
        self.taps[request.thread_id] = tap
        try:
            await thread.subscribe(tap, request.since)  # the thread queues Joined, then events
        except BaseException:
            tap.active = False
            del self.taps[request.thread_id]
            raise

    def _not_joined(self, request: Send | Cancel) -> None:
        self._reply(error_frame(NOT_JOINED, f"join {request.thread_id!r} first", request.ref))

    def _reply(self, frame: dict[str, Any]) -> None:
        try:
            self.outbox.tell((None, frame))
        except MailboxFull:
            self.close(CLOSE_TRY_AGAIN, "outgoing queue overflow: reconnect and join with since")
        except ActorStopped:
            pass  # closing

    # -- writing -----------------------------------------------------------------------------

    async def _writer(self) -> None:
        receive = self.outbox.receive_channel.receive
        try:
            while True:
                try:
                    item = await receive()
                except trio.EndOfChannel:
                    break
                for _ in range(WRITE_BATCH):
                    if not self._discard:
                        await self._write(*item)
                    next_item = await self._next_queued()
                    if next_item is None:
                        break
                    item = next_item
                await self.conn.flush()
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            self.close(None)
        except JournalUnavailable as exc:
            log.warning("replay for %s failed: %r", self.user.user_id, exc)
            self.close(CLOSE_INTERNAL, "replay failed: rejoin with since")
        finally:
            self._writer_done.set()

    async def _next_queued(self) -> Any:
        """The next queued item if there is one now, or after one scheduling round: the
        thread's next event is usually one round away, and one send() for two frames is
        cheaper than a send() each (measured: the writer's flush was 28% of the server's CPU
        with a send() per frame)."""
        receive_nowait = self.outbox.receive_channel.receive_nowait
        for attempt in range(2):
            try:
                return receive_nowait()
            except trio.WouldBlock:
                if attempt == 0:
                    await trio.lowlevel.cancel_shielded_checkpoint()
            except trio.EndOfChannel:
                return None
        return None

    def _send(self, frame: dict[str, Any]) -> None:
        self.conn.write(self.codec.encode(frame), binary=self.codec.binary)
        self.stats.frames_sent += 1

    async def _write(self, tap: Tap | None, item: Any) -> None:
        if tap is None:
            self._send(item)
        elif not tap.active:
            return
        elif type(item) is Joined:
            self._send(reply_frame("joined", tap.ref, thread_id=tap.thread_id,
                                   last_seq=item.last_seq))
            await self._replay(tap, item.last_seq)
        elif item.seq > tap.last_sent:  # else: already written by the replay
            tap.last_sent = item.seq
            self._send(event_frame(item))

    async def _replay(self, tap: Tap, upto: int) -> None:
        """Stored events ``since < seq <= upto``, a page at a time, at this client's pace.
        Live events queue up behind meanwhile; those the replay covered are skipped."""
        after = replay_start(tap.since, upto)
        while after < upto and tap.active:
            page = await replay_page(tap.thread.gateway.journal, tap.thread.key, after, upto)
            for event in page:
                self._send(event_frame(event))
            after = page[-1].seq
            await self.conn.flush()
        tap.last_sent = after

    # -- keepalive ---------------------------------------------------------------------------

    async def _keepalive(self, interval: float) -> None:
        n = 0
        while True:
            await trio.sleep(interval)
            n += 1
            self._ping_data = n.to_bytes(4, "big")
            self._pong = trio.Event()
            with trio.move_on_after(self.limits.ping_timeout):
                if self.conn.open:
                    self.conn.protocol.send_ping(self._ping_data)
                await self.conn.flush()
                await self._pong.wait()
            if not self._pong.is_set():
                self.close(CLOSE_INTERNAL, "keepalive ping timeout")
                return
