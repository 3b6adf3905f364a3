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
"""

from __future__ import annotations

import logging
from collections import defaultdict
from typing import TYPE_CHECKING, Iterable

import psycopg
import trio

from threadline.actors.messages import ThreadKey

from . import leases
from .shards import ShardState, shard_of

if TYPE_CHECKING:
    from .node import Node

log = logging.getLogger("threadline.cluster")

POLL = 0.05  # seconds between two looks at which actors have stopped


def actors_by_shard(node: Node, shards: Iterable[int]) -> dict[int, list[ThreadKey]]:
    chosen = set(shards)
    found: dict[int, list[ThreadKey]] = defaultdict(list)
    for ref in node.runtime.directory.refs():
        shard = shard_of(ref.key)
        if shard in chosen:
            found[shard].append(ref.key)
    return found


def tell_stop(node: Node, keys: Iterable[ThreadKey], grace: float) -> None:
    directory = node.runtime.directory
    for key in keys:
        ref = directory.lookup(key)
        if ref is not None:
            node.runtime.stop_actor(ref, grace)  # a full mailbox gets it once there is room


async def until_stopped(node: Node, keys: list[ThreadKey], timeout: float) -> None:
    directory = node.runtime.directory
    with trio.move_on_after(timeout):
        while any(key in directory for key in keys):
            await trio.sleep(POLL)


async def release(node: Node, shards: list[int], grace: float) -> None:
    """Hand ``shards`` (``OWNED``, or already ``RELEASING``) over; their runs get ``grace``
    seconds, then ``agent_cancelled``."""
    table = node.table
    # Only those still held: a round may have lost some since they were chosen.
    shards = [s for s in shards if table.states[s] in (ShardState.OWNED, ShardState.RELEASING)]
    if not shards:
        return
    held = {s: table.epochs[s] for s in shards}
    table.move([s for s in shards if table.states[s] is ShardState.OWNED], "release")
    node.changed()
    busy = actors_by_shard(node, shards)
    await let_go(node, [s for s in shards if s not in busy], held)
    for keys in busy.values():
        tell_stop(node, keys, grace)
    directory = node.runtime.directory
    with trio.move_on_after(grace + 10.0):
        while busy:
            await trio.sleep(POLL)
            done = [s for s, keys in busy.items() if not any(k in directory for k in keys)]
            for s in done:
                del busy[s]
            await let_go(node, done, held)
    await let_go(node, list(busy), held)  # stragglers: fenced from now on
    log.info("handed over %d shard(s); own %d", len(shards), table.owned)


async def let_go(node: Node, shards: list[int], held: dict[int, int]) -> None:
    if not shards:
        return
    try:
        await node.leases.run(leases.release, node.table.node_id,
                              {s: held[s] for s in shards})
    except psycopg.Error as exc:
        log.warning("releasing %d shards failed (%s): their leases run out instead",
                    len(shards), type(exc).__name__)
    table = node.table
    moved = table.move([s for s in shards if table.states[s] is ShardState.RELEASING],
                       "released")
    chosen = set(shards)
    node.journal.forget(lambda key: shard_of(key) in chosen)
    node.released += len(moved)
    node.changed()


def gone(node: Node, shards: list[int]) -> None:
    """Shards lost (already ``FREE`` in the table): forget their rows and stop their actors
    now, with no grace (they cannot write any more)."""
    chosen = set(shards)
    node.lost += len(shards)
    node.journal.forget(lambda key: shard_of(key) in chosen)
    for keys in actors_by_shard(node, chosen).values():
        tell_stop(node, keys, 0.0)
    node.changed()
