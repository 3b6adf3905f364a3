"""Shards leaving a node: handed over (their actors stop, then their leases go) or lost (their
actors stop at once; the fence refuses whatever they still try to write).

Invariants:

- A shard's lease is let go only once none of its actors is left on this node, or the grace
  period and ten more seconds have passed (an actor stuck beyond that writes nothing any more:
  its epoch is gone from the table the fence reads).
- Shards with no live actor are let go at once, and the others one by one as their actors
  finish: a handover holds back only the threads that still have work, never all of them
  until the slowest run ends.
- A shard let go or lost is forgotten by the writer's cache, and the router is told, in the
  same step.

``Handover`` is given what it acts on at construction (the table, the directory and how to
stop an actor, the lease connection, the journal, what to call when the table changed), not
the node: the node owns it, and this module does not know the node.
"""

from __future__ import annotations

import logging
from collections import defaultdict
from typing import Any, Callable, Iterable

import psycopg
import trio

from threadline.actors.directory import Directory
from threadline.actors.mailbox import ActorRef
from threadline.actors.messages import ThreadKey

from . import leases
from .leases import LeaseConnection
from .shards import ShardState, ShardTable, shard_of

log = logging.getLogger("threadline.cluster")

POLL = 0.05  # seconds between two looks at which actors have stopped


class Handover:
    def __init__(self, table: ShardTable, directory: Directory[ThreadKey],
                 stop_actor: Callable[[ActorRef, float], None], lease_connection: LeaseConnection,
                 journal: Any, changed: Callable[[], None]) -> None:
        self.table = table
        self.directory = directory
        self.stop_actor = stop_actor  # ``Runtime.stop_actor``: never blocks
        self.leases = lease_connection
        self.journal = journal        # ``DurableJournal``: ``forget``
        self.changed = changed        # the table changed: tell the router
        self.released = self.lost = 0

    def actors_by_shard(self, shards: Iterable[int]) -> dict[int, list[ThreadKey]]:
        chosen = set(shards)
        found: dict[int, list[ThreadKey]] = defaultdict(list)
        for ref in self.directory.refs():
            shard = shard_of(ref.key)
            if shard in chosen:
                found[shard].append(ref.key)
        return found

    def tell_stop(self, keys: Iterable[ThreadKey], grace: float) -> None:
        for key in keys:
            ref = self.directory.lookup(key)
            if ref is not None:
                self.stop_actor(ref, grace)  # a full mailbox gets it once there is room

    async def until_stopped(self, keys: list[ThreadKey], timeout: float) -> None:
        with trio.move_on_after(timeout):
            while any(key in self.directory for key in keys):
                await trio.sleep(POLL)

    async def release(self, shards: list[int], grace: float) -> None:
        """Hand ``shards`` (``OWNED``, or already ``RELEASING``) over; their runs get
        ``grace`` seconds, then ``agent_cancelled``."""
        table = self.table
        # Only those still held: a round may have lost some since they were chosen.
        shards = [s for s in shards
                  if table.states[s] in (ShardState.OWNED, ShardState.RELEASING)]
        if not shards:
            return
        held = {s: table.epochs[s] for s in shards}
        table.move([s for s in shards if table.states[s] is ShardState.OWNED], "release")
        self.changed()
        busy = self.actors_by_shard(shards)
        await self._let_go([s for s in shards if s not in busy], held)
        for keys in busy.values():
            self.tell_stop(keys, grace)
        directory = self.directory
        with trio.move_on_after(grace + 10.0):
            while busy:
                await trio.sleep(POLL)
                done = [s for s, keys in busy.items() if not any(k in directory for k in keys)]
                for s in done:
                    del busy[s]
                await self._let_go(done, held)
        await self._let_go(list(busy), held)  # stragglers: fenced from now on
        log.info("handed over %d shard(s); own %d", len(shards), table.owned)

    async def _let_go(self, shards: list[int], held: dict[int, int]) -> None:
        if not shards:
            return
        table = self.table
        try:
            await self.leases.run(leases.release, table.node_id, {s: held[s] for s in shards})
        except psycopg.Error as exc:
            log.warning("releasing %d shards failed (%s): their leases run out instead",
                        len(shards), type(exc).__name__)
        moved = table.move([s for s in shards if table.states[s] is ShardState.RELEASING],
                           "released")
        chosen = set(shards)
        self.journal.forget(lambda key: shard_of(key) in chosen)
        self.released += len(moved)
        self.changed()

    def gone(self, shards: list[int]) -> None:
        """Shards lost (already ``FREE`` in the table): forget their rows and stop their
        actors now, with no grace (they cannot write any more)."""
        chosen = set(shards)
        self.lost += len(shards)
        self.journal.forget(lambda key: shard_of(key) in chosen)
        for keys in self.actors_by_shard(chosen).values():
            self.tell_stop(keys, 0.0)
        self.changed()
