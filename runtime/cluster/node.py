"""A cluster node: its lease rounds, its deadline, and its shards' recovery.

Every ``interval`` (a third of the TTL), and soon when woken (another node took or let go of
shards, the fence refused a write, a peer did not answer; at most one round per ``MIN_GAP``,
and after a failed round a backoff), the node runs a round: heartbeat,
renew the leases it holds, read who owns what; then take shards up to its fair share
(``ceil(1024 / live nodes)``), or hand over those above it. When another node's lease is
about to run out (its node died), the next round is timed just after that moment, so a dead
node's shards move about one TTL after its last renewal.

Invariants:

- Actors run only for ``OWNED`` shards (the directory's ``admit``). A taken shard is
  ``RECOVERING`` until the runs its last owner left open are closed (``agent_failed``, as
  after a restart), and only then ``OWNED``; a recovery the store failed is tried again at
  the next round.
- The local deadline is kept by its own task (``watch_expiry``), not by the rounds: a round
  can hang on a connection that stopped answering, and a node past its deadline must stop
  acting as owner whatever it is doing. Handing over and losing shards: ``handover.py``.
- A shard is never ``OWNED`` without its epoch in ``table.epochs``, and the writer's cache
  never keeps rows of a shard the node does not hold (``DurableJournal.forget``).
- Leaving (a graceful stop) hands every shard over and deletes the node's row, so the others
  take its shards at once rather than after the TTL.
"""

from __future__ import annotations

import logging
import math
import time
from collections import Counter
from typing import Any, Iterator

import psycopg
import trio

from prometheus_client.core import Metric

from threadline.actors.errors import JournalUnavailable
from threadline.recovery import close_open_runs

from . import figures, leases
from .config import ClusterConfig
from .fence import Fence
from .feeds import FeedHub
from .figures import ClusterStatistics
from .handover import Handover
from .interest import Announcer, events_channel
from .leases import LeaseConnection
from .router import Router
from .shards import ShardState, ShardTable, fair_share, shard_of
from .usage import UsageReporter
from .wakeup import Wakeup

log = logging.getLogger("threadline.cluster")

MIN_GAP = 0.2  # seconds between two rounds, however often the node is woken


class Node:
    """Built by ``start.open_cluster_runtime`` once everything it drives exists: the runtime
    (its directory admits only ``table``'s local shards, its gateway routes through
    ``router``), the fenced ``journal``, the feeds, the announcer, the peer link (at
    ``peer_address``). ``wakeup`` is set by whoever wants a round soon (the fence, the
    router, a notification); ``nursery`` hosts the handovers, which outlast a round."""

    def __init__(self, config: ClusterConfig, table: ShardTable, runtime: Any, journal: Any,
                 fence: Fence, lease_connection: LeaseConnection, hub: FeedHub,
                 router: Router, announcer: Announcer, wakeup: Wakeup, nursery: trio.Nursery,
                 *, peer_address: str, http_url: str = "",
                 usage: UsageReporter | None = None) -> None:
        self.config = config
        self.table = table
        self.runtime = runtime
        self.journal = journal
        self.fence = fence
        self.leases = lease_connection
        self.hub = hub
        self.router = router
        self.announcer = announcer
        self.nursery = nursery
        self.peer_address = peer_address
        self.http_url = http_url
        self.usage = usage  # what tells the peers this node's users' use (for the figures)
        self.handover = Handover(table, runtime.directory, runtime.stop_actor, lease_connection,
                                 journal, self.changed)
        self.events_channel = events_channel(table.node_id)
        self.started_at = time.time()
        self._wakeup = wakeup
        self._loop_scope = trio.CancelScope()
        self._looping = False
        self._loop_done = trio.Event()
        self._round_lock = trio.Lock()
        self.leaving = False
        self.handing_over = False
        self._free_before: set[int] = set()
        self._peers_before: set[str] = set()
        self._soonest: float | None = None
        self._backoff = 0.0  # seconds to wait after a failed round (0: the last one worked)
        self.rounds = self.failures = self.taken = 0
        self.nodes_live = 1

    # -- waking ------------------------------------------------------------------------------

    def wake(self) -> None:
        self._wakeup.set()

    def changed(self) -> None:
        self.router.table_changed()

    def on_notify(self, channel: str, payload: str) -> None:
        if channel == self.events_channel:
            self.hub.notified(payload)
        else:
            self.wake()

    def on_listening(self) -> None:
        self.hub.mark_all()  # notifications sent while we were not listening are lost
        self.wake()

    # -- rounds ------------------------------------------------------------------------------

    async def run_loop(self) -> None:
        """Rounds until ``leave``: every ``interval``, sooner when woken (at most one per
        ``MIN_GAP``), later after a failure (a backoff up to ``interval``). A round that fails
        with a bug is logged; the next one runs."""
        self._looping = True
        try:
            with self._loop_scope:
                while True:
                    delay = self.config.interval
                    if self._soonest is not None:
                        delay = max(MIN_GAP, min(delay, self._soonest + 0.05))
                    if self._backoff:
                        await trio.sleep(self._backoff)
                    else:
                        with trio.move_on_after(delay):
                            await self._wakeup.wait()
                    await trio.sleep(MIN_GAP if self._wakeup.is_set() else 0)
                    self._wakeup.clear()
                    try:
                        await self.round()
                    except Exception:
                        log.exception("a lease round failed")
        finally:
            self._loop_done.set()

    async def watch_expiry(self) -> None:
        """Drop every shard when the local deadline passes with no renewal, whatever a round
        is doing (one can hang on a connection that stopped answering)."""
        while True:
            deadline = self.table.valid_until
            if deadline > trio.current_time():
                await trio.sleep_until(deadline + 0.01)
            expired = self.table.expired(trio.current_time())
            if expired:
                log.warning("no lease renewal for %g s: dropping %d shards",
                            self.config.lease_ttl, len(expired))
                self.handover.gone(expired)
            await trio.sleep(MIN_GAP)  # past the deadline, nothing held: until a renewal

    async def round(self) -> None:
        async with self._round_lock:
            await self._round()

    async def _round(self) -> None:
        table, config = self.table, self.config
        began = trio.current_time()
        try:
            rnd = await self.leases.run(leases.renew, table.node_id, self.peer_address,
                                        self.http_url, self.started_at, config.lease_ttl,
                                        dict(table.epochs), not self.leaving)
        except psycopg.Error as exc:
            self.failures += 1
            if not self._backoff:
                log.warning("lease round failed (%s); trying again with a backoff",
                            type(exc).__name__)
            self._backoff = min(config.interval, max(0.5, self._backoff * 2))
            return
        if self._backoff:
            log.info("lease rounds work again")
            self._backoff = 0.0
        self.rounds += 1
        lost = table.renewed(rnd.kept, began, config.lease_ttl)
        if lost:
            log.warning("lost %d shards to another node", len(lost))
            self.handover.gone(lost)
        table.seen(rnd.owners, rnd.peers)
        self.nodes_live = max(1, len(rnd.peers))
        self._soonest = None if rnd.soonest_expiry is None else rnd.soonest_expiry - rnd.now
        self.changed()
        if set(rnd.peers) - {table.node_id} - self._peers_before:
            self.announcer.changed()  # a node new to us: tell it what we follow
        self._peers_before = set(rnd.peers) - {table.node_id}
        if self.leaving:
            return  # renew what is still held while it is handed over; take nothing
        await self._recover(table.in_state(ShardState.RECOVERING))  # a recovery that failed
        fair = fair_share(self.nodes_live)
        held = len(table.held())
        # Shards free for two rounds in a row (rounding, a node that cannot take its share):
        # each node takes its part of them, over its fair share if need be.
        orphans = len(self._free_before & set(rnd.free))
        self._free_before = set(rnd.free)
        want = max(fair - held, math.ceil(orphans / self.nodes_live))
        if want > 0 and rnd.free:
            await self._take(want, rnd.expired_owners)
        elif held > fair and not self.handing_over:
            # In a task of its own: stopping actors takes up to the grace period, and rounds
            # must go on renewing meanwhile.
            self.handing_over = True
            self.nursery.start_soon(self._hand_over, self._choose(
                table.in_state(ShardState.OWNED), held - fair))

    async def _hand_over(self, shards: list[int]) -> None:
        try:
            await self.handover.release(shards, self.config.handover_grace)
        finally:
            self.handing_over = False

    async def _take(self, count: int, expired_owners: list[str]) -> None:
        try:
            taken = await self.leases.run(leases.take, self.table.node_id,
                                          self.config.lease_ttl, count)
            if len(taken) < count and expired_owners:
                # Some expired leases are locked by their old owner's stuck transaction.
                ended = await self.leases.run(leases.end_stuck, expired_owners,
                                              self.config.stuck_after)
                if ended:
                    log.warning("ended %d stuck transactions of nodes whose leases ran out "
                                "(%s)", ended, ", ".join(expired_owners))
                    self.wake()
        except psycopg.Error as exc:
            self.failures += 1
            log.warning("taking shards failed: %s", type(exc).__name__)
            return
        if taken:
            self.table.taken(taken)
            self.taken += len(taken)
            shards = set(taken)
            self.journal.forget(lambda key: shard_of(key) in shards)
            self.changed()
            await self._recover(sorted(shards))

    async def _recover(self, shards: list[int]) -> None:
        """Close the runs the last owner of ``shards`` (``RECOVERING``) left open, then own
        them. A store that fails meanwhile leaves them ``RECOVERING``: the next round tries
        again (their leases are renewed meanwhile; their requests wait)."""
        if not shards:
            return
        chosen = set(shards)
        # Actors of ours from an earlier hold of these shards (lost, then taken back) are
        # stopping: the new ones start only after them. Bounded well within a round, so that
        # the renewals go on; one still stopping after that is refused by the seq check.
        await self.handover.until_stopped([r.key for r in self.runtime.directory.refs()
                                           if shard_of(r.key) in chosen],
                                          self.config.interval / 2)
        try:
            closed = await close_open_runs(self.journal, only=lambda k: shard_of(k) in chosen,
                                           parked=self.runtime.parked)
        except (JournalUnavailable, ValueError) as exc:  # ValueError: a seq that moved meanwhile
            log.warning("recovering %d shards failed (%s): the next round tries again",
                        len(shards), exc)
            return
        self.table.move([s for s in shards if self.table.states[s] is ShardState.RECOVERING],
                        "recovered")
        log.info("took %d shard(s); closed %d run(s) left open by their last owner; own %d",
                 len(shards), closed, self.table.owned)
        self.changed()

    def _choose(self, owned: list[int], count: int) -> list[int]:
        """The ``count`` shards with the fewest live actors: the cheapest to hand over."""
        live = Counter(shard_of(ref.key) for ref in self.runtime.directory.refs())
        return sorted(owned, key=lambda s: (live[s], s))[:count]

    async def leave(self, grace: float) -> None:
        """Hand every shard over and leave the cluster (a graceful stop); runs get ``grace``
        seconds. Rounds go on renewing what is still held meanwhile, and take nothing more.
        Calling it again does nothing more."""
        self.leaving = True
        with trio.move_on_after(self.config.lease_ttl):
            # A round under way (a take, with its recovery) ends first; then one that takes
            # this node's row away: the others share its shards out among themselves.
            await self.round()
        table = self.table
        # Shards not yet recovered go too: their next owner recovers them.
        table.move(table.in_state(ShardState.RECOVERING), "recovered")
        await self.handover.release(table.in_state(ShardState.OWNED, ShardState.RELEASING),
                                    grace)
        self._loop_scope.cancel()
        if self._looping and not self._loop_done.is_set():
            await self._loop_done.wait()
        try:
            await self.leases.run(leases.leave, self.table.node_id, self.started_at)
        except psycopg.Error:
            pass

    def statistics(self) -> ClusterStatistics:
        router, hub = self.router, self.hub
        return ClusterStatistics(
            node_id=self.table.node_id, shards_owned=self.table.owned,
            nodes_live=self.nodes_live, lease_rounds=self.rounds, lease_failures=self.failures,
            shards_taken=self.taken, shards_released=self.handover.released,
            shards_lost=self.handover.lost,
            forwarded=router.forwarded, forward_seconds=router.forward_seconds,
            retries=router.retries, fenced_writes=self.fence.refused,
            notifications_sent=self.fence.notifications,
            notifications_received=hub.notifications, feeds=len(hub), feed_reads=hub.reads,
            feed_events=hub.delivered, peers=tuple(sorted(self.table.peers)),
            usage_reports_sent=self.usage.sent if self.usage else 0,
            usage_reports_received=self.usage.book.received if self.usage else 0)

    def metrics(self) -> Iterator[Metric]:
        """The node's ``/metrics`` families (``open_server(extra_metrics=...)``)."""
        return figures.families(self.statistics())

    def health(self) -> dict[str, object]:
        """The node's ``/healthz`` fields (``open_server(extra_health=...)``)."""
        return figures.health(self.statistics())
