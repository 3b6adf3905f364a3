"""The SessionActor: one per WebSocket connection.

It holds the user id from the token (as a ``UserHandle``: it can only name that user's
threads), the threads it joined (a ``Tap`` each, in the ``Outbox``), and the connection's
sans-IO state (``ConnectionState``: rates, bad frames, the close decision).

Tasks, all in the session's own nurseries: the reader (frames in, admitted, decoded, then
dispatched), one lane per thread with requests waiting (a thread's requests run in order, and
one thread's slow request never holds back another thread's, nor a ping), the writer (the
outbox to the socket), the keepalive and the token's expiry.

Containment: a failed request is answered with its protocol error (``threadline.transport.answers``; a
bug: ``internal``) and the connection stays; a full outgoing queue closes with 1013; a failed
task, 1011. ``run`` never raises ``Exception``: nothing reaches the server's nursery.
"""

from __future__ import annotations

import logging
import time
from typing import Any, Awaitable, Callable

import trio
from websockets.frames import Frame

from threadline.actors.errors import JournalUnavailable, LimitReached, MailboxFull
from threadline.actors.gateway import UserHandle
from threadline.actors.messages import Accepted

from .answers import answer_for
from .codec import Codec
from .connection import WebSocketConnection
from .lanes import Lanes
from .limits import Limits
from .messages import (BAD_FRAME, CLOSE_GOING_AWAY, CLOSE_INTERNAL, CLOSE_TOKEN_EXPIRED,
                       CLOSE_TRY_AGAIN, INTERNAL, LIMIT_REACHED, NOT_JOINED, RATE_LIMITED,
                       BadFrame, Cancel, Decide, Join, Leave, Ping, Regenerate, Request, Send,
                       Threads)
from .frames import Accepted as AcceptedFrame, Error, Left, Ok, Pong, ServerFrame, ThreadsPage
from .outbox import Outbox, Overflow, Tap
from .policy import ConnectionState, Verdict
from .quotas import UserQuota
from .paging import CursorKey, read_threads_page
from .stats import ServerStats

log = logging.getLogger("threadline.session")

OVERFLOW_REASON = "outgoing queue overflow: reconnect and join with since"


class Session:
    def __init__(self, conn: WebSocketConnection, user: UserHandle, codec: Codec, limits: Limits,
                 stats: ServerStats, draining: Callable[[], bool], *,
                 quota: UserQuota | None = None, expires_at: float | None = None,
                 cursors: CursorKey | None = None) -> None:
        self.conn = conn
        self.cursors = cursors  # of the threads pages' cursors: the HTTP API's
        self.user = user
        self.codec = codec
        self.limits = limits
        self.stats = stats
        self.quota = quota
        self.expires_at = expires_at
        self._draining = draining
        self.state = ConnectionState(limits, trio.current_time())
        self.outbox = Outbox(conn, codec, limits.outgoing_queue, stats)
        self.taps: dict[str, Tap] = {}
        self._lanes = Lanes(self._handle, limits.lane_depth)
        self._done = trio.Event()
        self._writer_done = trio.Event()
        self._dispatch: dict[type, Callable[[Any], Awaitable[None]]] = {
            Join: self._join, Leave: self._leave, Send: self._send, Cancel: self._cancel,
            Regenerate: self._regenerate, Decide: self._decide, Threads: self._threads}  # a ping is answered by the reader, at once

    # -- lifecycle ---------------------------------------------------------------------------

    def close(self, code: int | None, reason: str = "") -> None:
        """End the session (never blocks; the first decision wins). ``None``: the peer or the
        protocol already closed, nothing to send."""
        decision = self.state.close(code, reason)
        if decision is not None:
            if code is not None:
                self.stats.closed(code)
                log.info("closing a connection of %s: %d %s", self.user.user_id, code, reason)
            self.outbox.discard = decision.discard_queued
        self._done.set()

    async def run(self) -> None:
        """Serve the connection until it closes; queued frames go out before the close frame
        (bounded by ``close_timeout``), except after 1013. Never raises ``Exception``."""
        try:
            async with trio.open_nursery() as outer:
                outer.start_soon(self._writer)
                async with trio.open_nursery() as inner:
                    self._inner = inner
                    inner.start_soon(self._reader)
                    if self.limits.ping_interval is not None:
                        inner.start_soon(self._keepalive, self.limits.ping_interval)
                    if self.expires_at is not None:
                        inner.start_soon(self._expire, self.expires_at)
                    await self._done.wait()
                    inner.cancel_scope.cancel()
                self.outbox.close()  # the writer drains what is queued, then ends
                with trio.move_on_after(self.limits.close_timeout):
                    await self._writer_done.wait()
                outer.cancel_scope.cancel()
        except* Exception as group:
            log.error("a connection of %s failed", self.user.user_id, exc_info=group)
            self.close(CLOSE_INTERNAL, "internal error")
        finally:
            with trio.CancelScope(shield=True):
                await self._leave_all()
                decision = self.state.decision
                code, reason = (decision.code, decision.reason) if decision else (1000, "")
                await self.conn.close(code or 1000, reason, self.limits.close_timeout)
                self.state.gone()

    _inner: trio.Nursery  # the reader's nursery, where lanes start; set by run

    async def _leave_all(self) -> None:
        taps, self.taps = list(self.taps.values()), {}
        async with trio.open_nursery() as nursery:
            for tap in taps:
                tap.active = False
                nursery.start_soon(tap.thread.unsubscribe, tap)

    def _tap_dropped(self, tap: Tap, overflow: bool, deleted: bool) -> None:
        if deleted:  # the connection stays; the thread's queued events are not written
            tap.active = False
            if self.taps.get(tap.thread_id) is tap:
                del self.taps[tap.thread_id]
            self._reply(Left(None, tap.thread_id, reason="deleted"))
        elif overflow:
            self.close(CLOSE_TRY_AGAIN, OVERFLOW_REASON)
        elif self._draining():
            self.close(CLOSE_GOING_AWAY, "server shutting down")
        else:
            self.close(CLOSE_INTERNAL, f"thread {tap.thread_id} stopped: rejoin with since")

    async def _keepalive(self, interval: float) -> None:
        await self.conn.keepalive(interval, self.limits.ping_timeout)
        if self.conn.open:
            self.close(CLOSE_INTERNAL, "keepalive ping timeout")

    async def _expire(self, expires_at: float) -> None:
        """Close with 4001 once the wall clock reaches ``expires_at``, the instant the token
        stops being accepted (``Identity.expires_at``: exp plus the leeway), never before."""
        # trio's clock is monotonic and the token's is the wall clock: sleep again if they
        # drifted apart. Bounded: each pass sleeps what is left, and a pass that wakes early
        # wakes close to the instant.
        for _ in range(100):
            left = expires_at - time.time()
            if left <= 0:
                break
            await trio.sleep(left)
        self.close(CLOSE_TOKEN_EXPIRED, "token expired: reconnect with a fresh token")

    # -- reading -----------------------------------------------------------------------------

    async def _reader(self) -> None:
        conn = self.conn
        while True:
            for event in await conn.receive():
                if self._done.is_set():  # decided meanwhile (by any task): read no more
                    return
                message = conn.assemble(event) if isinstance(event, Frame) else None
                if message is not None:
                    self._on_message(*message)
            if not conn.open:  # the peer closed, or the protocol failed it (1002, 1007, 1009)
                sent = conn.protocol.close_sent
                if sent is not None and sent.code is not None:
                    self.stats.closed(sent.code)
                self.close(None)
                return

    def _on_message(self, binary: bool, payload: bytes | str) -> None:
        stats, size = self.stats, self.conn.message_bytes
        stats.frames_received += 1
        stats.bytes_received += size
        if self.state.receive_message(size, trio.current_time()) is Verdict.RATE_LIMITED:
            stats.rate_limited += 1
            if self.state.rate_limited == 1:
                log.info("rate limiting a connection of %s", self.user.user_id)
            self._reply(Error(RATE_LIMITED, f"more than {self.limits.rate:g} frames/s or "
                                    f"{self.limits.byte_rate:g} bytes/s; this frame was dropped"))
            return
        try:
            request = self.codec.decode(payload, binary=binary)
        except BadFrame as exc:
            stats.bad_frames += 1
            self._reply(Error(BAD_FRAME, exc.message, exc.ref))
            decision = self.state.bad_frame()
            if decision is not None:
                log.info("closing a connection of %s: %s", self.user.user_id, decision.reason)
                self.close(decision.code, decision.reason)
            return
        self.state.good_frame()
        if type(request) is Ping:
            self._reply(Pong(request.ref))  # never waits behind anything
            return
        self._enqueue(request)

    def _enqueue(self, request: Request) -> None:
        """Into the lane of its thread (``threads`` has a lane of its own)."""
        if not self._lanes.put_nowait(self._inner, getattr(request, "thread_id", None), request):
            self.stats.rate_limited += 1
            self._reply(Error(RATE_LIMITED, f"more than {self.limits.lane_depth} requests "
                                    "waiting on this thread; this one was dropped", request.ref))

    async def _handle(self, request: Request) -> None:
        try:
            await self._dispatch[type(request)](request)
        except (Overflow, MailboxFull):  # MailboxFull: the thread could not queue our Joined
            self.close(CLOSE_TRY_AGAIN, OVERFLOW_REASON)
        except Exception as exc:
            answer = answer_for(exc)
            if answer is None:  # a bug: say so in the log, answer internal, keep the connection
                log.exception("request %s of %s failed", type(request).__name__,
                              self.user.user_id)
                answer = (INTERNAL, "the server failed")
            code, message = answer
            if code == INTERNAL:
                log.warning("request of %s failed: %r", self.user.user_id, exc)
            elif code == LIMIT_REACHED:
                self.stats.limits_reached += 1
            elif code == RATE_LIMITED:
                self.stats.rate_limited += 1
            self._reply(Error(code, message, request.ref))

    def _reply(self, frame: ServerFrame) -> None:
        try:
            self.outbox.put_nowait(frame)
        except Overflow:
            self.close(CLOSE_TRY_AGAIN, OVERFLOW_REASON)

    # -- requests ------------------------------------------------------------------------------

    async def _send(self, request: Send) -> None:
        tap = self.taps.get(request.thread_id)
        if tap is None:
            return self._not_joined(request)
        if self.quota is not None:
            self.quota.admit_send()
        started = trio.current_time()
        thread = tap.thread
        with thread.gateway.tracing.request("send", request.traceparent,
                                            thread.key) as span:
            acc = await thread.send(request.text, client_msg_id=request.client_msg_id,
                                    strategy=request.strategy, parent=request.parent,
                                    attachments=request.attachments,
                                    traceparent=span.traceparent)
        self.stats.send_seconds.observe(trio.current_time() - started)
        self._accepted(request, acc)

    async def _regenerate(self, request: Regenerate) -> None:
        """1.1: admitted as a ``send`` is (joined, the user's send rate); ``accepted`` once
        its ``answer_requested`` is stored; ``NotFound`` (``not_found``): no such message."""
        tap = self.taps.get(request.thread_id)
        if tap is None:
            return self._not_joined(request)
        if self.quota is not None:
            self.quota.admit_send()
        thread = tap.thread
        with thread.gateway.tracing.request("regenerate", request.traceparent,
                                            thread.key) as span:
            acc = await thread.regenerate(request.message_id,
                                          client_msg_id=request.client_msg_id,
                                          strategy=request.strategy, traceparent=span.traceparent)
        self._accepted(request, acc)

    def _accepted(self, request: Send | Regenerate, acc: Accepted) -> None:
        self._reply(AcceptedFrame(request.ref, request.thread_id, acc.message_id, acc.run_id,
                                  acc.seq))

    async def _join(self, request: Join) -> None:
        old = self.taps.get(request.thread_id)
        if old is None and len(self.taps) >= self.limits.max_threads:
            raise LimitReached(f"at most {self.limits.max_threads} threads joined per connection")
        if old is None and self.quota is not None:
            await self.quota.admit_thread(request.thread_id)
        thread = old.thread if old is not None else self.user.thread(request.thread_id)
        if old is not None:  # joined again: a fresh subscription, replayed from since
            old.active = False
            await thread.unsubscribe(old)
        tap = Tap(self.outbox, thread, request.since, request.ref, self._tap_dropped)
        self.taps[request.thread_id] = tap
        try:
            await thread.subscribe(tap, request.since)  # the thread queues Joined, then events
        except BaseException:
            tap.active = False
            if self.taps.get(request.thread_id) is tap:
                del self.taps[request.thread_id]
            raise

    async def _leave(self, request: Leave) -> None:
        tap = self.taps.pop(request.thread_id, None)
        if tap is not None:
            tap.active = False  # the writer drops what is still queued for it
            await tap.thread.unsubscribe(tap)
        self._reply(Left(request.ref, request.thread_id))

    async def _cancel(self, request: Cancel) -> None:
        tap = self.taps.get(request.thread_id)
        if tap is None:
            return self._not_joined(request)
        run_id = await tap.thread.cancel(request.run_id)
        self._reply(Ok(request.ref, request.thread_id, run_id))

    async def _decide(self, request: Decide) -> None:
        """``ok`` once ``approval_decided`` is stored; ``UnknownCall`` (``unknown_call``)."""
        tap = self.taps.get(request.thread_id)
        if tap is None:
            return self._not_joined(request)
        await tap.thread.decide(request.run_id, request.call_id, request.approved, request.reason)
        self._reply(Ok(request.ref, request.thread_id, request.run_id, request.call_id))

    async def _threads(self, request: Threads) -> None:
        page, next_cursor = await read_threads_page(self.user, request.limit, request.cursor,
                                                    self.cursors)
        self._reply(ThreadsPage(request.ref, page, next_cursor))

    def _not_joined(self, request: Send | Regenerate | Cancel | Decide) -> None:
        self._reply(Error(NOT_JOINED, f"join {request.thread_id!r} first", request.ref))
    # -- writing -----------------------------------------------------------------------------

    async def _writer(self) -> None:
        try:
            await self.outbox.run_writer()
        except (trio.BrokenResourceError, trio.ClosedResourceError, OSError):
            self.close(None)
        except JournalUnavailable as exc:
            log.warning("replay for %s failed: %r", self.user.user_id, exc)
            self.close(CLOSE_INTERNAL, "replay failed: rejoin with since")
        finally:
            self._writer_done.set()
