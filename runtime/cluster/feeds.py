"""Events of threads another node owns, for this node's subscribers: read from the journal.

A subscriber here of a thread owned elsewhere gets a ``Feed``: its position (the seq of the
last event it was given) and nothing else. A feed is read from the journal, after its
position, a page at a time (a ``join`` with ``since`` replays the same way; here one query
reads a page for many feeds at once), whenever the owner's
``NOTIFY`` (``fence.py``) names its thread or its shard, and by the slow poll that is the
backstop for a notification lost (a listener that reconnected, a payload cut to shards). The
owner notifies only nodes that follow the shard: the hub counts its feeds per shard and calls
``on_followed`` when the set of shards with a feed changes (``interest.py`` tells the peers);
``mark_shards`` reads again the feeds of shards an owner was told of late.

Invariants:

- A feed's subscriber gets events in seq order, each once, only durable ones (the journal has
  nothing else), with no gap: a read starts right after the position and the position moves
  only by what was delivered. A feed is read by one task at a time (``reading``); a
  notification meanwhile marks it to be read again.
- A subscriber that cannot take an event (``MailboxFull``) is dropped with ``overflow``, as a
  thread actor drops one; a thread that no longer exists, or whose last seq went below the
  position (it was deleted, and maybe made again), drops its feeds with ``THREAD_DELETED``.
- A thread deleted and made again is never taken for the one the feed follows, however long
  the new one is: a feed knows its thread's ``created_at`` (the owner's answer when it
  subscribed, or the ``Joined`` its subscriber got), and each read returns the thread's
  ``created_at`` in the same statement as its events (one snapshot), so events of another
  thread of the same id are never delivered: the feed is dropped with ``THREAD_DELETED``.
- Reads are bounded and batched: ``READERS`` at once for all feeds, each one query for up
  to ``BATCH`` feeds (a page of ``PAGE`` events each), so a notification naming many threads
  costs one round trip, not one per subscriber.
"""

from __future__ import annotations

import collections
import logging
from typing import Any, Callable

import trio

from threadline.actors.errors import ActorStopped, JournalUnavailable, MailboxFull
from threadline.actors.messages import THREAD_DELETED, Event, ThreadKey

from .fence import decode_touched
from .shards import key_hash, shard_of

log = logging.getLogger("threadline.cluster")

READERS = 4          # reads at once (the journal's read pool has 4 connections)
BATCH = 64           # feeds per read
PAGE = 200           # events per feed per read; a feed with more is read again
POLL_INTERVAL = 2.0  # seconds between two checks of every feed's thread against the journal


def read_feeds(cur: Any, wanted: list[tuple[ThreadKey, int]], limit: int
               ) -> list[tuple[float | None, list[Event]]]:
    """For each ``(key, after)``: the thread's ``created_at`` (None: no such thread) and its
    events ``seq > after``, at most ``limit``, in seq order; one statement for all, so one
    snapshot (PostgreSQL: ``LATERAL``). Blocking: runs on the journal's read pool."""
    rows = ",".join(["(%s::int, %s::text, %s::text, %s::bigint)"] * len(wanted))
    params = [x for i, (key, after) in enumerate(wanted)
              for x in (i, key.user_id, key.thread_id, after)]
    cur.execute(f"WITH f(i, u, t, after) AS (VALUES {rows}) SELECT f.i, th.created_at, e.seq, "
                f"e.event, e.run_id, e.ts, e.data FROM f LEFT JOIN threads th ON "
                f"th.user_id = f.u AND th.thread_id = f.t LEFT JOIN LATERAL (SELECT seq, event, "
                f"run_id, ts, data FROM events WHERE user_id = f.u AND thread_id = f.t AND "
                f"seq > f.after ORDER BY seq LIMIT {int(limit)}) AS e ON true "
                f"ORDER BY f.i, e.seq", params)
    created: list[float | None] = [None] * len(wanted)
    out: list[list[Event]] = [[] for _ in wanted]
    for i, created_at, seq, name, run_id, ts, data in cur.fetchall():
        created[i] = created_at
        if seq is not None:
            out[i].append(Event(wanted[i][0], seq, name, run_id, ts, data))
    return list(zip(created, out))


class Feed:
    __slots__ = ("key", "subscriber", "position", "created_at", "hash", "shard", "dirty",
                 "reading", "check")

    def __init__(self, key: ThreadKey, subscriber: Any, position: int,
                 created_at: float | None) -> None:
        self.key = key
        self.subscriber = subscriber
        self.position = position
        self.created_at = created_at  # which thread of this id (None: the first read's)
        self.hash = key_hash(key)
        self.shard = shard_of(key)
        self.dirty = self.reading = False
        self.check = False  # a read that finds nothing asks whether the thread still exists


class FeedHub:
    """Every feed of this node. ``journal`` is a ``DurableJournal`` (``read_with``,
    ``last_seqs``)."""

    def __init__(self, journal: Any, on_followed: Callable[[], None] = lambda: None) -> None:
        self.journal = journal
        self.on_followed = on_followed  # the shards with a feed changed
        self._feeds: dict[Any, Feed] = {}
        self._shards: collections.Counter[int] = collections.Counter()
        self._by_hash: dict[int, list[Feed]] = collections.defaultdict(list)
        self._queue: collections.deque[Feed] = collections.deque()
        self._idle = trio.lowlevel.ParkingLot()  # readers with nothing to read
        self.reads = self.delivered = self.notifications = 0

    def __len__(self) -> int:
        return len(self._feeds)

    def attach(self, key: ThreadKey, subscriber: Any, position: int,
               created_at: float | None) -> None:
        """Give ``subscriber`` the events of ``key`` (the thread created at ``created_at``)
        after ``position``, from now on."""
        self.detach(subscriber)
        feed = self._feeds[subscriber] = Feed(key, subscriber, position, created_at)
        self._by_hash[feed.hash].append(feed)
        self._mark(feed)  # what was stored between the position and now
        self._shards[feed.shard] += 1
        if self._shards[feed.shard] == 1:
            self.on_followed()

    def detach(self, subscriber: Any) -> bool:
        feed = self._feeds.pop(subscriber, None)
        if feed is None:
            return False
        same = self._by_hash[feed.hash]
        same.remove(feed)
        if not same:
            del self._by_hash[feed.hash]
        self._shards[feed.shard] -= 1
        if not self._shards[feed.shard]:
            del self._shards[feed.shard]
            self.on_followed()
        return True

    def followed(self) -> frozenset[int]:
        """The shards this node has feeds of."""
        return frozenset(self._shards)

    # -- what marks feeds to be read -------------------------------------------------------------

    def notified(self, payload: str) -> None:
        """A ``threadline_events`` notification (called in trio's thread)."""
        self.notifications += 1
        try:
            hashes, shards = decode_touched(payload)
        except ValueError:
            log.warning("ignoring a threadline_events notification that does not parse")
            return
        for h in hashes:
            for feed in self._by_hash.get(h, ()):
                self._mark(feed, check=True)
        if shards:
            for feed in self._feeds.values():
                if feed.shard in shards:
                    self._mark(feed, check=True)

    def mark_shards(self, shards: frozenset[int]) -> None:
        """Read the feeds of ``shards`` (their owners were told of them only now)."""
        for feed in self._feeds.values():
            if feed.shard in shards:
                self._mark(feed)

    def mark_all(self) -> None:
        """Notifications may have been lost (the listener reconnected): read every feed."""
        for feed in self._feeds.values():
            self._mark(feed)

    def _mark(self, feed: Feed, check: bool = False) -> None:
        feed.check = feed.check or check
        if not feed.dirty:
            feed.dirty = True
            if not feed.reading:
                self._queue.append(feed)
                self._idle.unpark()

    # -- reading -----------------------------------------------------------------------------

    async def run(self, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        async with trio.open_nursery() as nursery:
            for _ in range(READERS):
                nursery.start_soon(self._reader)
            nursery.start_soon(self._poll)
            task_status.started()

    async def _reader(self) -> None:
        while True:
            while not self._queue:
                await self._idle.park()
            feeds: list[Feed] = []
            while self._queue and len(feeds) < BATCH:
                feed = self._queue.popleft()
                if self._feeds.get(feed.subscriber) is feed:  # else detached while queued
                    feed.dirty, feed.reading = False, True
                    feeds.append(feed)
            if not feeds:
                continue
            try:
                await self._read(feeds)
            except JournalUnavailable as exc:
                log.info("reading events for %d subscribers failed (%s): the poll retries",
                         len(feeds), exc)
            finally:
                for feed in feeds:
                    feed.reading = False
                    if feed.dirty and self._feeds.get(feed.subscriber) is feed:
                        self._queue.append(feed)
                        self._idle.unpark()

    async def _read(self, feeds: list[Feed]) -> None:
        self.reads += 1
        pages = await self.journal.read_with(read_feeds, [(f.key, f.position) for f in feeds],
                                             PAGE)
        empty = []
        for feed, (created_at, events) in zip(feeds, pages):
            if self._feeds.get(feed.subscriber) is not feed:
                continue
            if created_at is not None and feed.created_at is None:
                feed.created_at = created_at
            if created_at is not None and created_at != feed.created_at:
                self._drop(feed, THREAD_DELETED, overflow=False)  # another thread of this id
                continue
            if events:
                self._deliver(feed, events)
            elif feed.check:
                feed.check = False
                empty.append(feed)
        if empty:  # nothing new though the thread was named: was it deleted?
            last = await self.journal.last_seqs([f.key for f in empty])
            for feed in empty:
                seq = last.get(feed.key)
                if self._feeds.get(feed.subscriber) is feed and (seq is None or
                                                                 seq < feed.position):
                    self._drop(feed, THREAD_DELETED, overflow=False)

    def _deliver(self, feed: Feed, events: list[Event]) -> None:
        for event in events:
            if event.seq != feed.position + 1:  # the thread was deleted and made again
                self._drop(feed, THREAD_DELETED, overflow=False)
                return
            try:
                feed.subscriber.deliver(event)
            except MailboxFull:
                self._drop(feed, f"mailbox full at seq {event.seq}", overflow=True)
                return
            except ActorStopped:
                self.detach(feed.subscriber)
                return
            feed.position = event.seq
            self.delivered += 1
        if len(events) == PAGE:
            self._mark(feed)

    def _drop(self, feed: Feed, reason: str, *, overflow: bool) -> None:
        if self.detach(feed.subscriber):
            feed.subscriber.dropped(feed.key, reason, overflow=overflow)

    async def _poll(self) -> None:
        """The backstop: every ``POLL_INTERVAL`` seconds, one look-up of every feed's thread;
        those behind, or gone, are read."""
        while True:
            await trio.sleep(POLL_INTERVAL)
            keys = list({feed.key for feed in self._feeds.values()})
            if not keys:
                continue
            try:
                last = await self.journal.last_seqs(keys)
            except JournalUnavailable:
                continue
            for feed in list(self._feeds.values()):
                seq = last.get(feed.key)
                if seq is None or seq != feed.position:
                    self._mark(feed, check=True)
