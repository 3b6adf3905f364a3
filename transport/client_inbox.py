"""What the bundled client (``threadline.transport.client``) receives: decoded, and each frame routed.

A frame with an integer ``ref`` answers the request waiting for it; an ``event`` goes to the
events channel; a frame that answers no pending request (an error for a frame without a
``ref``, a type this client does not know) goes to the unsolicited channel (the last 1,000
are kept). An answer to a request given up on is dropped.

Invariants: nothing a server sends can make ``read_until_closed`` raise: malformed frames are
logged and skipped, and a frame that cannot be decoded at all closes the connection (1007).
Every frame the server reads gets exactly one answer (PROTOCOL.md), which is how a
``rate_limited`` without a ``ref`` still reaches its request (``_Owed``). An event at or below
the last seq received on its thread is dropped: a thread joined again with ``since`` after a
reconnect goes on with no duplicate. Events beyond ``event_buffer`` unread ones make the read
wait: the client stops reading (the server then closes it with 1013, as any slow reader).
"""

from __future__ import annotations

import json
import logging
from typing import Any

import msgpack
import trio
from websockets.frames import Frame

from threadline.actors.reply import Reply

from .client_errors import ConnectionClosed
from .connection import WebSocketConnection
from .messages import CLOSE_ABNORMAL, CLOSE_INVALID_DATA, CLOSE_NORMAL, RATE_LIMITED

__all__ = ["Inbox"]

log = logging.getLogger("threadline.client")


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


class Inbox:
    """The routing state of one client, over all its connections: the requests waiting
    (``pending``, by ref; the client adds and removes them), the answers owed on the current
    connection (``owed``: a new one per connection), the last seq received per joined thread
    (``joined``), and the two channels frames go to."""

    def __init__(self, binary: bool, event_buffer: int, record: bool) -> None:
        self.binary = binary
        self.pending: dict[int, Reply[dict[str, Any]]] = {}
        self.owed = _Owed()
        self.joined: dict[str, int] = {}     # thread_id -> last seq received
        self.log: list[dict[str, Any]] | None = [] if record else None  # every frame, in order
        self._events_in, self.events = trio.open_memory_channel[dict[str, Any]](event_buffer)
        self._other_in, self.unsolicited = trio.open_memory_channel[dict[str, Any]](1000)

    async def read_until_closed(self, conn: WebSocketConnection) -> tuple[int, str]:
        """Dispatch frames until ``conn`` closes; close it (1007) on a frame that cannot be
        decoded. A frame that decodes but breaks the protocol is logged and skipped: this
        must not raise, or it would take the client's nursery down. Returns the close code
        and reason (the peer's, else ours; 1006 if there was no close frame)."""
        while True:
            for event in await conn.receive():
                if not isinstance(event, Frame) or (message := conn.assemble(event)) is None:
                    continue
                try:
                    frame = self._decode(message[1])
                except Exception as exc:
                    log.warning("closing: undecodable frame from the server (%r)", exc)
                    await conn.close(CLOSE_INVALID_DATA, "undecodable frame", 2.0)
                    return CLOSE_INVALID_DATA, "undecodable frame"
                try:
                    if isinstance(frame, dict):
                        await self._dispatch(frame)
                    else:
                        log.warning("skipping a frame that is not an object: %.200r", frame)
                except Exception:
                    log.exception("skipping a frame the client could not handle: %.200r", frame)
            if not conn.open:
                await conn.close(CLOSE_NORMAL, "", 2.0)  # completes the closing handshake, closes TCP
                # The peer's close, else ours (e.g. 1007 for text that is not UTF-8).
                close = conn.protocol.close_rcvd or conn.protocol.close_sent
                if close is None:
                    return CLOSE_ABNORMAL, "abnormal closure"
                return close.code, close.reason

    def _decode(self, payload: bytes | str) -> Any:
        # Not Codec.decode_frame: a payload that is not JSON (or msgpack) closes the
        # connection, a JSON value that is not an object is only skipped.
        return msgpack.unpackb(payload, raw=False) if self.binary else json.loads(payload)

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
            self.owed.refs.discard(ref)
            self._answer(ref, frame)
        elif ref is not None or (frame.get("type"), frame.get("code")) != ("error", RATE_LIMITED) \
                or not self.owed.refused_without_ref(frame):
            self._answer(None, frame)
        for refused, refusal in self.owed.settle():
            self._answer(refused, refusal, owed=True)

    def _answer(self, ref: int | None, frame: dict[str, Any], owed: bool = False) -> None:
        reply = self.pending.get(ref) if ref is not None else None
        if reply is not None and not reply.done:
            reply.set(frame)
        elif not owed:  # an answer to a request given up on is of interest to no one
            log.debug("a frame that answers no pending request: %.200r", frame)
            try:
                self._other_in.send_nowait(frame)
            except trio.WouldBlock:
                log.warning("dropping an unsolicited frame: %.200r", frame)

    def new_connection(self) -> None:
        """Owe nothing: a new connection answers only what is sent on it."""
        self.owed = _Owed()

    def fail_pending(self, code: int | None, reason: str) -> None:
        """Fail every request waiting, with ``ConnectionClosed(code, reason)``."""
        for reply in list(self.pending.values()):
            reply.fail(ConnectionClosed(code, reason))
        self.pending.clear()

    def close(self) -> None:
        """End both channels: their readers get ``EndOfChannel`` once they are drained."""
        self._events_in.close()
        self._other_in.close()
