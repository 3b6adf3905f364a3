"""What every group-commit transaction of a cluster node does besides its writes: the fence
before them, one ``NOTIFY`` after them. Both run in the writer's worker thread, inside its
transaction (``stores/batch.py`` calls them).

The fence: the transaction reads, ``FOR SHARE``, the lease rows of the shards it is about to
write, and writes only the threads of shards whose row still names this node at the epoch it
holds (``ShardTable.epochs``). The lock holds until the commit, so a takeover (an ``UPDATE`` of
that row) waits for the transaction, and a transaction that comes after the takeover sees the
new epoch: no write lands under a lease its writer lost. A refused operation fails with
``Fenced`` (nothing of it stored) and the others of the batch go on. The primary key of
``events`` ``(user_id, thread_id, seq)`` stays the last guard against a duplicate seq.

The notification (``interest.py``): only to the nodes that follow a shard the transaction
wrote, as their peers told this node (``Followers.by_shard``, read once per transaction), one
``pg_notify`` per such node on its own channel, all in one statement, sent by the server at
commit (only durable events are announced), each under ``NOTIFY_LIMIT`` bytes; a transaction
whose shards nobody follows elsewhere notifies nobody. A payload names the threads written
that its node follows, as 32-bit hashes (``h`` and comma-separated hex), or, when too many
for the limit, their shards (``s`` and a base64 bitmap of 1,024 bits, 172 bytes). A listener
treats a hash or a shard as "maybe new events": a false match costs a read.
"""

from __future__ import annotations

import base64
import threading
from typing import Any, Callable, Collection, Iterable

from threadline.actors.errors import Fenced
from threadline.actors.messages import ThreadKey

from .interest import Followers
from .shards import SHARDS, ShardTable, key_hash, shard_of
NOTIFY_LIMIT = 7900  # bytes; PostgreSQL's own limit is 8,000


def encode_touched(keys: Collection[ThreadKey]) -> str:
    hashes = sorted({key_hash(k) for k in keys})
    if 1 + 9 * len(hashes) <= NOTIFY_LIMIT:
        return "h" + ",".join(f"{h:08x}" for h in hashes)
    bits = bytearray(SHARDS // 8)
    for key in keys:
        shard = shard_of(key)
        bits[shard // 8] |= 1 << (shard % 8)
    return "s" + base64.b64encode(bytes(bits)).decode()


def decode_touched(payload: str) -> tuple[set[int], set[int]]:
    """``(hashes, shards)`` a payload names (one of the two is empty). Raises ``ValueError``
    on a payload that is neither form."""
    if payload.startswith("h"):
        return {int(h, 16) for h in payload[1:].split(",") if h}, set()
    if payload.startswith("s"):
        bits = base64.b64decode(payload[1:], validate=True)
        if len(bits) != SHARDS // 8:
            raise ValueError("a shard bitmap of the wrong size")
        return set(), {i for i in range(SHARDS) if bits[i // 8] >> (i % 8) & 1}
    raise ValueError("not a threadline_events payload")


class Fence:
    """The node's fence and notifier, for ``DurableJournal(fence=...)``. ``on_fenced`` is
    called (from the writer's thread: it must be thread-safe) with the shards a transaction
    found lost, so that the node looks at its leases at once."""

    def __init__(self, table: ShardTable, on_fenced: Callable[[set[int]], None],
                 followers: Followers | None = None) -> None:
        self.table = table
        self.on_fenced = on_fenced
        self.followers = followers if followers is not None else Followers()
        self.refused = 0        # operations refused by the fence
        self.notifications = 0  # transactions that sent NOTIFYs (commits PostgreSQL serializes)
        self.notified = 0       # NOTIFYs sent (one per node told, per transaction)
        self._lock = threading.Lock()

    def check(self, cur: Any, keys: Iterable[ThreadKey]) -> set[ThreadKey]:
        """The keys of ``keys`` this transaction must not write (their shard is not ours at
        the epoch we hold); the rows of the others stay locked ``FOR SHARE`` until commit."""
        epochs = self.table.epochs  # one reference, read once: the node replaces it whole
        by_shard: dict[int, list[ThreadKey]] = {}
        for key in keys:
            by_shard.setdefault(shard_of(key), []).append(key)
        held = sorted(s for s in by_shard if s in epochs)
        confirmed: set[int] = set()
        if held:
            cur.execute("SELECT shard, owner, epoch FROM shard_leases WHERE shard = ANY(%s) "
                        "ORDER BY shard FOR SHARE", (held,))
            node = self.table.node_id
            confirmed = {s for s, owner, epoch in cur.fetchall()
                         if owner == node and epoch == epochs.get(s)}
        lost = set(by_shard) - confirmed
        if not lost:
            return set()
        with self._lock:
            self.refused += sum(len(by_shard[s]) for s in lost)
        self.on_fenced(lost)
        return {k for s in lost for k in by_shard[s]}

    def notify(self, cur: Any, keys: Collection[ThreadKey]) -> None:
        by_shard = self.followers.by_shard  # one reference, read once: replaced whole
        if not keys or not by_shard:
            return
        told: dict[str, list[ThreadKey]] = {}
        for key in keys:
            for channel in by_shard.get(shard_of(key), ()):
                told.setdefault(channel, []).append(key)
        if told:
            channels = sorted(told)
            cur.execute("SELECT pg_notify(c, p) FROM unnest(%s::text[], %s::text[]) AS n(c, p)",
                        (channels, [encode_touched(told[c]) for c in channels]))
            self.notifications += 1
            self.notified += len(channels)

    def keeps(self, key: ThreadKey) -> bool:
        """Whether the writer's cache may keep ``key``'s row: its shard is one we hold."""
        return shard_of(key) in self.table.epochs

    def error(self, key: ThreadKey) -> Fenced:
        return Fenced(f"thread {key.thread_id} is not owned by node {self.table.node_id} "
                      "any more; nothing was stored")
