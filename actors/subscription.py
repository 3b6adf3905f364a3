"""A subscriber with a bounded buffer that replays from the journal, for in-process consumers.

The thread actor delivers ``Joined(last_seq)`` first and then live events. A subscriber that
joined with ``since`` must show the stored events ``since < seq <= last_seq`` before the live
ones; this class reads them from the journal itself, a page at a time, at the consumer's pace,
so a long replay never sits in the thread's memory nor slows the thread. Each page is bounded
in count and in bytes (``replay_page``). A thread deleted during the replay ends it as its
drop does: ``SubscriberDropped`` with ``THREAD_DELETED``, never ``JournalUnavailable``.
"""

from __future__ import annotations

import collections

import trio

from .errors import ActorStopped, SubscriberDropped
from .journal import Journal, replay_page, replay_start
from .mailbox import Mailbox
from .messages import THREAD_DELETED, Event, Joined, ThreadKey


class Subscription:
    """Async iterator of one thread's events, in seq order, gapless.

    ``last_seq`` is the seq of the last event returned (or ``since``): resume from it. When the
    thread drops this subscriber (its buffer was full), iteration returns what was buffered and
    then raises ``SubscriberDropped``.
    """

    def __init__(self, key: ThreadKey, journal: Journal, since: int | None, capacity: int) -> None:
        self.key = key
        self._journal = journal
        self._inbox = Mailbox(capacity)
        self.last_seq: int | None = since
        self.joined_at: int | None = None  # the thread's last seq when the subscription began
        self._replay_upto = 0
        self._page: collections.deque[Event] = collections.deque()
        self._dropped: str | None = None

    # -- Subscriber (called by the thread actor; never blocks) ---------------------------------

    def deliver(self, item: Event | Joined) -> None:
        self._inbox.tell(item)

    def dropped(self, key: ThreadKey, reason: str, *, overflow: bool) -> None:
        self._dropped = reason
        self._inbox.close_send()  # the consumer drains what is buffered, then hears why

    # -- the consumer's side -------------------------------------------------------------------

    def __aiter__(self) -> Subscription:
        return self

    async def __anext__(self) -> Event:
        while True:
            if self._page:
                return self._take(self._page.popleft())
            if self.last_seq is not None and self.last_seq < self._replay_upto:
                page = await replay_page(self._journal, self.key, self.last_seq,
                                         self._replay_upto)
                if not page:  # deleted during the replay: the thread drops us as deleted
                    self._dropped = THREAD_DELETED
                    raise SubscriberDropped(THREAD_DELETED)
                self._page.extend(page)
                continue
            try:
                item = await self._inbox.receive()
            except ActorStopped:
                raise SubscriberDropped(self._dropped or "subscription closed") from None
            if isinstance(item, Joined):
                self.joined_at = item.last_seq
                self.last_seq = replay_start(self.last_seq, item.last_seq)
                self._replay_upto = item.last_seq
                continue
            if self.last_seq is not None and item.seq <= self.last_seq:
                continue  # already returned by the replay
            return self._take(item)

    def _take(self, event: Event) -> Event:
        self.last_seq = event.seq
        return event

    async def next(self, timeout: float | None = None) -> Event:
        """The next event; ``trio.TooSlowError`` past ``timeout`` seconds."""
        if timeout is None:
            return await self.__anext__()
        with trio.fail_after(timeout):
            return await self.__anext__()
