"""Which shard a thread is in, and this node's table of shards: sans-IO, no clock of its own.

A thread ``(user_id, thread_id)`` is in shard ``crc32(user_id NUL thread_id) % SHARDS``: the
same in every process, every Python and every machine (``hash()`` is salted per process). A
node owns a shard while it holds that shard's lease in the store (``leases.py``); the lease's
``epoch`` grows by one at every takeover, and every write the node makes is fenced by the
epochs it holds (``fence.py``).

Invariants of ``ShardTable``:

- A shard is in exactly one ``ShardState``; every change goes through ``TRANSITIONS`` (a move
  not in it raises ``ValueError``: a bug, never a quiet fix).
- Only an ``OWNED`` shard's threads get actors here (``locate`` answers ``LOCAL`` for them and
  nothing else); a ``RECOVERING`` or ``RELEASING`` shard is between owners: its requests wait.
- ``epochs`` holds the epoch of every shard this node may write (``RECOVERING``, ``OWNED``,
  ``RELEASING``) and nothing else; it is replaced whole, never changed in place, because the
  store's writer thread reads it without a lock.
- The lease is this node's only while the store says so *and* the local clock says it has not
  run out: ``valid_until`` is when the last renewal began plus the TTL, less a margin; past
  it, ``expired`` tells the node to act as if every shard were lost (a node that was paused
  must not go on as if nothing happened: the store may have given its shards away).
"""

from __future__ import annotations

import enum
import math
import zlib
from typing import Iterable, Mapping

import attrs

from threadline.actors.messages import ThreadKey

SHARDS = 1024


def key_hash(key: ThreadKey) -> int:
    """A 32-bit hash of the key, stable everywhere (the shard is its low bits)."""
    return zlib.crc32(f"{key.user_id}\x00{key.thread_id}".encode())


def shard_of(key: ThreadKey) -> int:
    return key_hash(key) % SHARDS


def fair_share(live_nodes: int) -> int:
    """How many shards each of ``live_nodes`` should own: the ceiling, so that the shares
    always cover every shard."""
    return math.ceil(SHARDS / max(1, live_nodes))


class ShardState(enum.Enum):
    FREE = "free"              # another node's, or nobody's
    RECOVERING = "recovering"  # taken; closing the runs its last owner left open
    OWNED = "owned"            # ours: its threads have actors here
    RELEASING = "releasing"    # handing over: its actors stop, then the lease is let go


S = ShardState
#: (from, event) -> to. ``lost``: the store or the clock says the lease is gone.
TRANSITIONS: Mapping[tuple[ShardState, str], ShardState] = {
    (S.FREE, "taken"): S.RECOVERING,
    (S.RECOVERING, "recovered"): S.OWNED,
    (S.OWNED, "release"): S.RELEASING,
    (S.RELEASING, "released"): S.FREE,
    (S.RECOVERING, "lost"): S.FREE,
    (S.OWNED, "lost"): S.FREE,
    (S.RELEASING, "lost"): S.FREE,
}
WRITABLE = frozenset({S.RECOVERING, S.OWNED, S.RELEASING})


class Where(enum.Enum):
    LOCAL = "local"  # an OWNED shard of ours
    WAIT = "wait"    # between owners, or the owner is not known to be alive


@attrs.frozen
class Peer:
    node_id: str
    address: tuple[str, int]


class ShardTable:
    """This node's view of every shard: its own states and epochs, and who owns the rest."""

    def __init__(self, node_id: str, margin: float = 1.0) -> None:
        # ``margin``: ``ClusterConfig.margin``, a quarter of the TTL, at most 1 s.
        self.node_id = node_id
        self.margin = margin  # seconds of the TTL not counted on (clock drift, slow renewal)
        self.states = [S.FREE] * SHARDS
        self.epochs: Mapping[int, int] = {}
        self.owners: list[str | None] = [None] * SHARDS  # other nodes' shards, last seen
        self.peers: dict[str, Peer] = {}                 # live nodes but this one
        self.valid_until = -math.inf
        self.counts = {S.OWNED: 0}

    # -- transitions -------------------------------------------------------------------------

    def move(self, shards: Iterable[int], event: str) -> list[int]:
        """Apply ``event`` to ``shards``; the shards it applied to (a shard in a state where
        the event does not apply raises ``ValueError``)."""
        moved = []
        epochs = dict(self.epochs)
        for shard in shards:
            before = self.states[shard]
            after = TRANSITIONS.get((before, event))
            if after is None:
                raise ValueError(f"shard {shard}: no transition {before.value} --{event}-->")
            self.states[shard] = after
            if after not in WRITABLE:
                epochs.pop(shard, None)
            moved.append(shard)
        self.epochs = epochs
        self.counts[S.OWNED] = self.states.count(S.OWNED)
        return moved

    def taken(self, epochs: Mapping[int, int]) -> list[int]:
        """The store gave us these shards at these epochs: they are ``RECOVERING``."""
        self.epochs = {**self.epochs, **epochs}
        for shard in epochs:
            self.owners[shard] = self.node_id
        return self.move(epochs, "taken")

    def in_state(self, *states: ShardState) -> list[int]:
        return [s for s in range(SHARDS) if self.states[s] in states]

    def held(self) -> list[int]:
        """Shards whose lease we hold (all but ``FREE``)."""
        return self.in_state(*WRITABLE)

    def renewed(self, kept: Iterable[int], now: float, ttl: float) -> list[int]:
        """A renewal that began at local time ``now`` kept ``kept``; the shards we held and
        did not keep are lost (moved to ``FREE``), and returned."""
        kept = set(kept)
        lost = [s for s in self.held() if s not in kept]
        self.move(lost, "lost")
        self.valid_until = now + ttl - self.margin
        return lost

    def expired(self, now: float) -> list[int]:
        """Past ``valid_until`` with shards held: all of them are lost (returned)."""
        if now <= self.valid_until:
            return []
        return self.move(self.held(), "lost")

    # -- what others own ------------------------------------------------------------------

    def seen(self, owners: Mapping[int, str | None], peers: Mapping[str, Peer]) -> None:
        """The store's current owners of every shard (None: free or expired) and the live
        nodes; our own states are not changed by this (only ``renewed`` and ``move`` do). A
        peer that left (its row gone) stays known while it still holds leases: it is
        handing them over, and answers for them meanwhile."""
        for shard in range(SHARDS):
            self.owners[shard] = owners.get(shard)
        holding = set(self.owners)
        leaving = {n: p for n, p in self.peers.items() if n in holding}
        self.peers = {n: p for n, p in {**leaving, **peers}.items() if n != self.node_id}

    def forget_peer(self, node_id: str) -> None:
        """A peer that did not answer: wait for the store's next word on its shards."""
        self.peers.pop(node_id, None)

    def locate(self, key: ThreadKey) -> Where | Peer:
        """Where requests for ``key`` go now: here, a live peer, or nowhere yet (wait)."""
        shard = shard_of(key)
        state = self.states[shard]
        if state is S.OWNED:
            return Where.LOCAL
        if state is not S.FREE:
            return Where.WAIT
        owner = self.owners[shard]
        peer = self.peers.get(owner) if owner is not None else None
        return peer if peer is not None else Where.WAIT

    def is_local(self, key: ThreadKey) -> bool:
        return self.states[shard_of(key)] is S.OWNED

    @property
    def owned(self) -> int:
        return self.counts[S.OWNED]
