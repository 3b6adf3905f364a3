"""Bounded mailboxes and actor refs.

A mailbox is a trio memory channel with a fixed capacity. The names say how each call blocks:

- ``tell(msg)`` never blocks: it queues the message or raises ``MailboxFull``;
- ``send(msg)`` awaits space (backpressure) and is a checkpoint;
- ``ask(make)`` queues ``make(reply)`` and awaits the reply, bounded by a timeout.

Every sending call raises ``ActorStopped`` once the actor has closed its mailbox.
"""

from __future__ import annotations

from typing import Any, Callable, TypeVar

import attrs
import trio

from .errors import ActorStopped, AskTimeout, MailboxFull
from .reply import Reply

T = TypeVar("T")

#: Default for ``ask``: long enough for a durable write under load, short enough that a caller
#: facing a wedged actor gets an error rather than hanging.
DEFAULT_ASK_TIMEOUT = 10.0


@attrs.frozen(slots=True)
class MailboxStatistics:
    depth: int
    capacity: int | float
    senders_waiting: int
    closed: bool


class Backlog:
    """Messages sent to a set of mailboxes and not yet taken by their owners: one number for
    ``/metrics`` ("mailbox depths"), kept as messages come and go, so that a scrape never walks
    the mailboxes. The owner calls ``Mailbox.took`` for each message it takes."""

    __slots__ = ("messages",)

    def __init__(self) -> None:
        self.messages = 0


class Mailbox:
    """A bounded mailbox. The sending side is public; ``receive`` belongs to the owning actor."""

    __slots__ = ("_send", "_receive", "_closed", "_backlog")

    def __init__(self, capacity: int, backlog: Backlog | None = None) -> None:
        self._send, self._receive = trio.open_memory_channel[Any](capacity)
        self._closed = False
        self._backlog = backlog if backlog is not None else Backlog()

    def tell(self, msg: Any) -> None:
        """Queue ``msg`` without blocking. Raises ``MailboxFull`` or ``ActorStopped``."""
        try:
            self._send.send_nowait(msg)
        except trio.WouldBlock:
            raise MailboxFull(f"mailbox full ({self._send.statistics().max_buffer_size})") from None
        except (trio.ClosedResourceError, trio.BrokenResourceError):
            raise ActorStopped("actor stopped") from None
        self._backlog.messages += 1

    async def send(self, msg: Any) -> None:
        """Queue ``msg``, awaiting space. A checkpoint. Raises ``ActorStopped``."""
        try:
            await self._send.send(msg)
        except (trio.ClosedResourceError, trio.BrokenResourceError):
            raise ActorStopped("actor stopped") from None
        self._backlog.messages += 1

    async def ask(
        self, make: Callable[[Reply[T]], Any], timeout: float | None = DEFAULT_ASK_TIMEOUT
    ) -> T:
        """Queue ``make(reply)`` (awaiting space if the mailbox is full) and await the reply.

        The whole call, queueing included, is bounded by ``timeout`` seconds (``None``: no
        bound); past it, raises ``AskTimeout``. Raises ``ActorStopped`` if the actor stops first.
        """
        reply: Reply[T] = Reply()
        msg = make(reply)
        if timeout is None:
            await self._queue(msg)
            return await reply.wait()
        # A bare CancelScope with a deadline costs about half of ``trio.fail_after`` (measured
        # on the ask benchmark), and this is the hot path.
        with trio.CancelScope(deadline=trio.current_time() + timeout) as scope:
            await self._queue(msg)
            return await reply.wait()
        assert scope.cancelled_caught
        raise AskTimeout(f"no reply within {timeout} s")

    async def _queue(self, msg: Any) -> None:
        try:
            self._send.send_nowait(msg)
        except trio.WouldBlock:
            await self.send(msg)
            return
        except (trio.ClosedResourceError, trio.BrokenResourceError):
            raise ActorStopped("actor stopped") from None
        self._backlog.messages += 1

    @property
    def closed(self) -> bool:
        return self._closed

    def statistics(self) -> MailboxStatistics:
        s = self._send.statistics()
        return MailboxStatistics(
            depth=s.current_buffer_used,
            capacity=s.max_buffer_size,
            senders_waiting=s.tasks_waiting_send,
            closed=self._closed,
        )

    # -- the owning actor's side -----------------------------------------------------------

    async def receive(self) -> Any:
        """Await the next message. Raises ``ActorStopped`` once closed and drained."""
        try:
            msg = await self._receive.receive()
        except (trio.EndOfChannel, trio.ClosedResourceError):
            raise ActorStopped("mailbox closed") from None
        self._backlog.messages -= 1
        return msg

    @property
    def receive_channel(self) -> trio.MemoryReceiveChannel[Any]:
        """For the owner's hot loop: awaiting the channel directly saves a coroutine frame per
        idle actor; call ``took`` for each message. Raises ``trio.EndOfChannel`` once closed
        and drained."""
        return self._receive

    def took(self) -> None:
        """The owner took one message (see ``Backlog``). Never blocks."""
        self._backlog.messages -= 1

    def close_send(self) -> None:
        """Refuse further messages but let the owner drain what is queued; then ``receive``
        raises ``ActorStopped``."""
        self._closed = True
        self._send.close()

    def close(self) -> list[Any]:
        """Close for good: later sends raise ``ActorStopped``. Returns the messages still
        queued, which no one will handle: the owner, who knows their types, answers them."""
        self._closed = True
        self._send.close()
        unread = []
        while True:
            try:
                unread.append(self._receive.receive_nowait())
            except (trio.WouldBlock, trio.EndOfChannel, trio.ClosedResourceError):
                break
        self._receive.close()
        self._backlog.messages -= len(unread)
        return unread


@attrs.frozen(slots=True)
class ActorRef:
    """How the rest of the program reaches an actor: its key and the sending side of its mailbox."""

    key: Any
    mailbox: Mailbox

    def tell(self, msg: Any) -> None:
        self.mailbox.tell(msg)

    async def send(self, msg: Any) -> None:
        await self.mailbox.send(msg)

    async def ask(
        self, make: Callable[[Reply[T]], Any], timeout: float | None = DEFAULT_ASK_TIMEOUT
    ) -> T:
        return await self.mailbox.ask(make, timeout)
