"""The outbox of one connection: a bounded queue of frames, the writer, and the replays.

Every frame a connection sends goes through one bounded queue: replies (``put_nowait``) and the
events of the threads it joined (through a ``Tap``, which a thread actor delivers to). So their
order on the wire is the order they were queued, and a client that reads too slowly fills the
queue instead of slowing anything else: the queue refuses (``Overflow``), and the session closes
with 1013.

Invariants:
- Every frame taken from the queue is written, in order, until the connection is closed; a
  frame is never dropped on an open connection. (Items of a tap that left are skipped: the
  client asked for no more of that thread.)
- For a tap, the events written are gapless and in seq order: a ``Joined`` item writes
  ``joined``, then replays the stored events ``since < seq <= last_seq`` from the journal at
  this client's pace (a page at a time, bounded in count and in bytes: ``replay_page``), and
  live events queued meanwhile are skipped up to the last one the replay wrote.
- A thread deleted while a tap replays it ends that tap as the thread's own drop does (``left``
  {reason: deleted}); the connection stays. Only events a store lost, of a thread that still
  has them, fail the replay (``JournalUnavailable``: the session closes with 1011).
"""

from __future__ import annotations

from typing import Any, Callable

import trio

from threadline.actors.errors import ActorStopped, MailboxFull
from threadline.actors.gateway import ThreadHandle
from threadline.actors.journal import replay_start
from threadline.actors.mailbox import Mailbox
from threadline.actors.messages import THREAD_DELETED, Event, Joined, ThreadKey

from .codec import Codec
from .connection import WebSocketConnection
from .frames import Joined as JoinedFrame, ServerFrame
from .messages import Ref
from .stats import ServerStats

#: Frames encoded per flush when more are waiting: one ``send()`` for many frames (measured: the
#: flush was 28% of the server's CPU with a send() per frame).
WRITE_BATCH = 64


class Overflow(Exception):
    """The queue is full: the client reads too slowly."""


class Tap:
    """A connection's subscription to one thread: what the thread actor delivers to."""

    __slots__ = ("outbox", "thread", "thread_id", "since", "ref", "active", "last_sent",
                 "on_drop")

    def __init__(self, outbox: Outbox, thread: ThreadHandle, since: int | None, ref: Ref,
                 on_drop: Callable[[Tap, bool, bool], None]) -> None:
        self.outbox = outbox
        self.thread = thread  # the handle every request on this thread goes through
        self.thread_id = thread.thread_id
        self.since = since
        self.ref = ref
        self.active = True
        self.last_sent = -1  # the seq of the last event written; known once joined
        self.on_drop = on_drop

    def deliver(self, item: Event | Joined) -> None:
        """Called by the thread actor. ``MailboxFull``: the thread drops this tap."""
        self.outbox.queue.tell((self, item))

    def dropped(self, key: ThreadKey, reason: str, *, overflow: bool) -> None:
        """``on_drop(tap, overflow, deleted)``, once, unless the client already left."""
        if self.active:
            self.on_drop(self, overflow, reason == THREAD_DELETED)


class Outbox:
    def __init__(self, conn: WebSocketConnection, codec: Codec, capacity: int,
                 stats: ServerStats) -> None:
        self.conn = conn
        self.codec = codec
        self.stats = stats
        self.queue = Mailbox(capacity)
        self.discard = False  # set on 1013: drop what is queued instead of writing it

    def put_nowait(self, frame: ServerFrame) -> None:
        """Queue a reply. Raises ``Overflow``; ignored once the outbox is closed."""
        try:
            self.queue.tell((None, frame))
        except MailboxFull:
            raise Overflow("outgoing queue overflow") from None
        except ActorStopped:
            pass  # closing: the session is going away

    def close(self) -> None:
        """No more frames; the writer writes what is queued (unless ``discard``) and ends."""
        self.queue.close_send()

    async def run_writer(self) -> None:
        """Write queued frames until the outbox is closed and drained. Raises
        ``trio.BrokenResourceError`` when the peer is gone and ``JournalUnavailable`` when a
        replay cannot read the journal; the session decides what each means."""
        receive = self.queue.receive_channel.receive
        while True:
            try:
                item = await receive()
            except trio.EndOfChannel:
                return
            written = 0
            while item is not None:
                if not self.discard:
                    await self._write(*item)
                written += 1
                if written == WRITE_BATCH:
                    break  # flush now; the next item waits in the queue, not in a variable
                item = await self._next_queued()
            await self.conn.flush()

    async def _next_queued(self) -> Any:
        """The next queued item if there is one now, or after one scheduling round: the
        thread's next event is usually one round away, and one flush for two frames is cheaper
        than a flush each."""
        receive_nowait = self.queue.receive_channel.receive_nowait
        for attempt in range(2):
            try:
                return receive_nowait()
            except trio.WouldBlock:
                if attempt == 0:
                    await trio.lowlevel.cancel_shielded_checkpoint()
            except trio.EndOfChannel:
                return None
        return None

    def _send(self, frame: ServerFrame) -> None:
        self.conn.write(self.codec.encode(frame), binary=self.codec.binary)
        self.stats.frames_sent += 1

    def _send_event(self, event: Event) -> None:
        self.conn.write(self.codec.encode_event(event), binary=self.codec.binary)
        self.stats.frames_sent += 1

    async def _write(self, tap: Tap | None, item: Any) -> None:
        if tap is None:
            self._send(item)
        elif not tap.active:
            return
        elif type(item) is Joined:
            self._send(JoinedFrame(tap.ref, tap.thread_id, item.last_seq, item.created_at))
            await self._replay(tap, item.last_seq)
        elif item.seq > tap.last_sent:  # else: already written by the replay
            tap.last_sent = item.seq
            self._send_event(item)

    async def _replay(self, tap: Tap, upto: int) -> None:
        """Stored events ``since < seq <= upto``, a page at a time, at this client's pace.
        Live events queue up behind meanwhile; those the replay covered are skipped."""
        after = replay_start(tap.since, upto)
        while after < upto and tap.active:
            page = await tap.thread.replay_page(after, upto)
            if not page:
                # The thread was deleted meanwhile, and is about to drop this tap as deleted:
                # do it now (``left`` {reason: deleted}, the connection stays); its own drop
                # then finds the tap inactive. Nothing more is written for the tap.
                tap.dropped(tap.thread.key, THREAD_DELETED, overflow=False)
                return
            for event in page:
                self._send_event(event)
            after = page[-1].seq
            await self.conn.flush()
        tap.last_sent = after
