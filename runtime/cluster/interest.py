"""Who follows what: a node notifies only the nodes that have subscribers of what it wrote.

A node with subscribers of threads owned elsewhere (``feeds.py``) tells every live peer, over
the peer link (``wire.Follow``), the whole set of shards it follows (``Announcer``); each node
keeps what its peers told it (``Followers``, per connection: a link that ends forgets its
peer's set, and the peer tells it again on its next link). The writer's ``Fence.notify`` sends,
at commit, one ``NOTIFY`` on the channel of each node that follows a shard it wrote
(``events_channel``), naming only those shards' threads; with no follower, none at all. So a
cluster whose clients sit on the owner sends no ``NOTIFY`` (PostgreSQL commits notifying
transactions one at a time, cluster-wide), and a node hears only about what it follows.

Invariants:

- A subscriber never misses an event: a feed reads the journal after its own position, so a
  notification late or lost only delays (the 2 s poll stays the backstop). An owner told late
  costs no delay either: once an owner has answered a ``Follow`` adding shards (its snapshot
  is in place before the answer), the announcer locks those shards' lease rows
  ``FOR NO KEY UPDATE`` (in shard order, bounded by ``lock_timeout``) and only then marks
  their feeds to be read. The writer holds the rows of the shards it writes ``FOR SHARE``
  from its fence to its commit, so that lock waits for any transaction that read the old
  snapshot: the read that follows sees its events, and later transactions notify.
- ``Followers.by_shard`` is replaced whole, never changed in place: the writer's thread reads
  it once per transaction without a lock.
"""

from __future__ import annotations

import hashlib
import logging
from typing import Any, Callable, Hashable

import trio

from .wakeup import Wakeup
from .wire import PeerLost, PeerUnreachable

log = logging.getLogger("threadline.cluster")

ANNOUNCE_EVERY = 2.0   # seconds between two looks at every peer (a link made again meanwhile)
BARRIER_TIMEOUT_MS = 2000


def events_channel(node_id: str) -> str:
    """The node's own ``LISTEN`` channel (a plain identifier, whatever the node id)."""
    return "threadline_events_" + hashlib.sha256(node_id.encode()).hexdigest()[:24]


class Followers:
    """What the peers follow, as told on each of their links (``PeerServer`` calls
    ``follow`` and ``forget``); ``by_shard``: shard -> the channels to notify."""

    def __init__(self) -> None:
        self._told: dict[Hashable, tuple[str, frozenset[int]]] = {}
        self.by_shard: dict[int, tuple[str, ...]] = {}

    def follow(self, link: Hashable, node_id: str, shards: frozenset[int]) -> None:
        self._told[link] = (node_id, shards)
        self._rebuild()

    def forget(self, link: Hashable) -> None:
        if self._told.pop(link, None) is not None:
            self._rebuild()

    def _rebuild(self) -> None:
        channels: dict[int, set[str]] = {}
        for node_id, shards in self._told.values():
            channel = events_channel(node_id)
            for shard in shards:
                channels.setdefault(shard, set()).add(channel)
        self.by_shard = {s: tuple(sorted(c)) for s, c in channels.items()}


def wait_for_writers(cur: Any, shards: list[int]) -> None:
    """Lock the lease rows of ``shards`` for a moment (see the header): returns once every
    transaction that held one of them ``FOR SHARE`` has ended. Blocking: the read pool
    (autocommit: the two statements are one transaction, and the lock ends with it)."""
    listed = ",".join(str(int(s)) for s in sorted(shards))
    cur.execute(f"SET LOCAL lock_timeout = {BARRIER_TIMEOUT_MS}; SELECT shard FROM shard_leases "
                f"WHERE shard = ANY(ARRAY[{listed}]::int[]) ORDER BY shard FOR NO KEY UPDATE")


class Announcer:
    """Tells the live peers (``table.peers``) the shards ``followed()`` names, when it changes
    (``changed``) and every ``ANNOUNCE_EVERY`` s; once a peer has taken shards it had not,
    waits for the writers (``journal.read_with(wait_for_writers)``) and calls ``added``."""

    def __init__(self, table: Any, clients: Any, journal: Any,
                 followed: Callable[[], frozenset[int]],
                 added: Callable[[frozenset[int]], None], wake: Wakeup) -> None:
        self.table = table
        self.clients = clients  # ``PeerClients``
        self.journal = journal
        self.followed = followed
        self.added = added
        self._wake = wake  # set when what is followed, or who is live, changed
        self.announcements = 0  # Follow calls answered

    def changed(self) -> None:
        self._wake.set()

    async def run(self) -> None:
        while True:
            with trio.move_on_after(ANNOUNCE_EVERY):
                await self._wake.wait()
            self._wake.clear()
            await self.announce()

    async def announce(self) -> None:
        want = self.followed()
        new: set[int] = set()
        async with trio.open_nursery() as nursery:
            for peer in list(self.table.peers.values()):
                nursery.start_soon(self._tell, peer, want, new)
        if new:
            try:
                await self.journal.read_with(wait_for_writers, sorted(new))
            except Exception as exc:  # a lock not had in time, an outage: the reads catch up
                log.info("waiting for the writers of %d followed shards failed (%s)",
                         len(new), type(exc).__name__)
            self.added(frozenset(new))

    async def _tell(self, peer: Any, want: frozenset[int], new: set[int]) -> None:
        told = self.clients.following(peer.address)
        if told == want:
            return
        try:
            await self.clients.follow(peer.address, want)
        except (PeerUnreachable, PeerLost) as exc:
            log.debug("telling %s what this node follows failed: %s", peer.node_id, exc)
            return
        self.announcements += 1
        new.update(want - told)
