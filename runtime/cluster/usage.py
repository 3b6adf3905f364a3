"""Per-user quotas across the nodes of a cluster: what each node's users use, told to the
others over the peer link, so that a user's connections, sends per second and stored threads
hold across every node without a database round trip per frame.

The node's one ``UserQuotas`` (``transport/quotas.py``, given to its server at construction)
does the counting, sans-IO; this module moves its reports. Every ``REPORT_INTERVAL`` the
``UsageReporter`` takes the node's report (``take_report``; nothing is sent when it is empty),
cuts it into ``wire.Usage`` frames of at most ``USAGE_FRAME`` bytes (``usage_frames``: a user
whose new threads do not fit goes over several, its connections in each and its sends in the
first) and queues them, one-way, on the link to every live peer. A peer's ``PeerServer`` hands
each to the ``UsageBook``, which counts it (``observe``) under the node id the link proved.

Reports go on the same multiplexed link as forwarded calls (as ``Follow`` does): one
connection per pair of nodes, one handshake, and a peer the node cannot reach for calls is one
it cannot count either. A report waits behind at most the frames queued before it, and a call
waits behind at most one ``USAGE_FRAME`` (64 KiB), never behind a whole report.

Invariants:

- Only a proved peer is counted: the server reads a ``Usage`` only after the HMAC handshake,
  and counts it under the node id that link's hello named (the frame names no node).
- A node's report counts while it is live and the link it last came on is open: when that
  link ends (a killed node's sockets are closed by its kernel: at once) or the node leaves the
  live list (``table.peers``: a node paused or cut off, within about a lease TTL), what it said
  is forgotten (``forget_node``). A report on a newer link supersedes the old link: the old
  one ending forgets nothing.
- A report names every user with a slot on its node, each time: a report lost (a link broken,
  a peer that could not take it within one interval) loses sends and new threads for that
  peer, never a slot for longer than one interval.

The bound (``quotas.py``'s, plus the trip): a user may get past a limit by what the other
nodes admit in one ``REPORT_INTERVAL`` and one link trip before they hear of each other (at
most N times the limit on N nodes, for that moment); after it the limits hold cluster-wide.
"""

from __future__ import annotations

import logging
from typing import Hashable, Mapping

import msgpack
import trio

from threadline.transport.quotas import REPORT_INTERVAL, UserQuotas, UserUsage

from .peers import PeerClients
from .shards import ShardTable
from .wire import PeerUnreachable, Usage, encode

log = logging.getLogger("threadline.cluster")

USAGE_FRAME = 64 * 1024  # bytes of one Usage frame's body, at most
_OVERHEAD = 16  # ["usage", {...}]: the array, the tag and the map's header


def _size(obj: object) -> int:
    return len(msgpack.packb(obj, use_bin_type=True))


def _parts(user_id: str, usage: UserUsage, room: int) -> list[UserUsage]:
    """``usage`` cut so that each part's entry takes at most ``room`` bytes (one thread id
    each at least): every part has the connections, the first the sends."""
    base = _size(user_id) + _size(usage.connections) + _size(usage.sends) + 6
    parts: list[UserUsage] = []
    threads: list[str] = []
    size = base
    for thread in usage.threads:
        cost = _size(thread)
        if threads and size + cost > room:
            parts.append(UserUsage(usage.connections, 0 if parts else usage.sends,
                                   tuple(threads)))
            threads, size = [], base
        threads.append(thread)
        size += cost
    parts.append(UserUsage(usage.connections, 0 if parts else usage.sends, tuple(threads)))
    return parts


def usage_frames(report: Mapping[str, UserUsage], budget: int = USAGE_FRAME) -> list[bytes]:
    """``report`` as ``Usage`` frames whose bodies are at most ``budget`` bytes (for a user id
    and thread id of sane length: one entry never needs more than one thread id). Counting
    every frame (``UserQuotas.observe``) counts the whole report."""
    room = budget - _OVERHEAD
    frames: list[bytes] = []
    users: dict[str, UserUsage] = {}
    size = 0
    for user_id, usage in report.items():
        for part in _parts(user_id, usage, room):
            cost = _size(user_id) + _size(part.to_wire())
            if users and (size + cost > room or user_id in users):
                frames.append(encode(Usage(users)))
                users, size = {}, 0
            users[user_id] = part
            size += cost
    if users:
        frames.append(encode(Usage(users)))
    return frames


class UsageBook:
    """The peers' reports as counted in ``quotas`` (``PeerServer`` calls ``observe`` for each
    ``Usage`` a proved peer sends and ``forget`` when its link ends). ``received``: the
    frames counted."""

    def __init__(self, quotas: UserQuotas) -> None:
        self.quotas = quotas
        self._links: dict[str, Hashable] = {}  # node id -> the link its last report came on
        self.received = 0

    def observe(self, link: Hashable, node_id: str, users: Mapping[str, UserUsage]) -> None:
        self._links[node_id] = link
        self.quotas.observe(node_id, users)
        self.received += 1

    def forget(self, link: Hashable) -> None:
        """``link`` ended: forget the node whose reports last came on it (if any)."""
        for node_id in [n for n, seen in self._links.items() if seen is link]:
            self.forget_node(node_id)

    def forget_node(self, node_id: str) -> None:
        self._links.pop(node_id, None)
        self.quotas.forget_node(node_id)


class UsageReporter:
    """Every ``interval``, this node's report to every live peer (see the header); forgets
    in ``book`` the nodes that left the live list. ``sent``: the frames queued."""

    def __init__(self, quotas: UserQuotas, table: ShardTable, clients: PeerClients,
                 book: UsageBook, interval: float = REPORT_INTERVAL) -> None:
        self.quotas = quotas
        self.table = table
        self.clients = clients
        self.book = book
        self.interval = interval
        self.sent = 0
        self._live: set[str] = set()

    async def run(self) -> None:
        next_at = trio.current_time()
        while True:
            next_at = max(next_at + self.interval, trio.current_time())
            await trio.sleep_until(next_at)
            await self.report()

    async def report(self) -> None:
        """One report to every live peer, each queued within ``interval`` or dropped there."""
        peers = dict(self.table.peers)
        for node_id in self._live - peers.keys():
            self.book.forget_node(node_id)
        self._live = set(peers)
        report = self.quotas.take_report()
        if not report or not peers:
            return
        frames = usage_frames(report)
        async with trio.open_nursery() as nursery:
            for peer in peers.values():
                nursery.start_soon(self._send, peer.node_id, peer.address, frames)

    async def _send(self, node_id: str, address: tuple[str, int], frames: list[bytes]) -> None:
        with trio.move_on_after(self.interval):
            try:
                await self.clients.send_usage(address, frames)
            except PeerUnreachable as exc:
                log.debug("reporting usage to %s failed: %s", node_id, exc)
                return
            self.sent += len(frames)
