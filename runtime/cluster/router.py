"""Where a request goes in a cluster: to this node's actor, or forwarded to the owner's.

The router is the ``Gateway``'s ``Router`` (``actors/local.py``), given to the runtime at
construction (``open_runtime(route=...)``) and built over its ``LocalThreads``: every
``ThreadHandle`` call of a cluster node comes here. It asks the ``ShardTable`` where the
thread lives: here (an ``OWNED`` shard: the local actor, through ``local``, as without a
cluster), a live peer (the request is forwarded over the peer link, ``peers.py``, and its
answer or error comes back as it would locally), or nowhere yet (the shard is between
owners: wait until the table changes, and ask again).

Invariants:

- A request is sent again when it was never handled: ``NotOwner`` (the node asked does not
  own the shard), ``PeerUnreachable`` (no link), ``Fenced`` (the store refused the write: this
  node lost the shard), or a local ``ActorStopped`` for a shard this node no longer owns; and
  after ``PeerLost`` (the owner died while the request was out: maybe handled) when asking
  twice is harmless (``_repeatable``). Otherwise the caller gets ``ActorCrashed`` and retries a
  ``send`` with its ``client_msg_id``. All of it within one ask timeout, then ``AskTimeout``.
- A forwarded request is answered only by an owner: ``ask_owned`` (what the peer link calls)
  never forwards again, so a request crosses at most one link, and a stale table costs a retry,
  never a loop.
- A subscriber here of a thread owned here is wrapped in a ``Relay`` that knows the seq of the
  last event it passed on. When the shard leaves this node (handed over, or lost), the relay
  turns into a journal feed from that seq (``feeds.py``): the subscriber sees no gap and no
  duplicate, and is never told. A subscriber of a thread owned elsewhere gets ``Joined`` with
  the owner's last durable seq, then a feed.
"""

from __future__ import annotations

import logging
from typing import Any, Callable

import trio

from threadline.actors.errors import ActorCrashed, ActorStopped, AskTimeout, Fenced
from threadline.actors.local import LocalThreads
from threadline.actors.messages import (THREAD_DELETED, CancelRun, Decide, GetInfo, Joined,
                                        PostMessage, Regenerate, Subscribe, ThreadKey)
from threadline.actors.reply import Reply
from threadline.actors.stats import SECONDS_BUCKETS, Histogram

from .feeds import FeedHub
from .shards import Peer, ShardTable, Where
from .wire import NotOwner, PeerLost, PeerUnreachable

log = logging.getLogger("threadline.cluster")

RETRY_AFTER = 0.25  # seconds to wait for the table to change before asking again anyway


def _repeatable(make: Callable[[Reply[Any]], Any]) -> bool:
    """Whether asking twice does what asking once does: an info, a delete, a cancel that names
    its run, and a send or a regenerate with a ``client_msg_id`` (answered from the journal the
    second time); not a send or a regenerate without one (a second run), nor a cancel of "the
    active run" (which may be the next one by the second time), nor a decision (the first one
    stored wins: asked again, a decision stored the first time would be answered
    ``UnknownCall``)."""
    msg = make(Reply())
    if isinstance(msg, (PostMessage, Regenerate)):
        return msg.client_msg_id is not None
    if isinstance(msg, CancelRun):
        return msg.run_id is not None
    return not isinstance(msg, Decide)


class Relay:
    """A local subscriber as the thread actor sees it (see the header)."""

    __slots__ = ("router", "key", "inner", "position", "created_at")

    def __init__(self, router: Router, key: ThreadKey, inner: Any) -> None:
        self.router, self.key, self.inner, self.position = router, key, inner, 0
        self.created_at: float | None = None  # the thread's, from its ``Joined``

    def deliver(self, item: Any) -> None:
        self.inner.deliver(item)
        if isinstance(item, Joined):
            self.position, self.created_at = item.last_seq, item.created_at
        else:
            self.position = item.seq

    def dropped(self, key: ThreadKey, reason: str, *, overflow: bool) -> None:
        router = self.router
        if router._relays.get(self.inner) is not self:
            return  # unsubscribed meanwhile
        if not overflow and reason != THREAD_DELETED and router.moved(key):
            router.hub.attach(key, self.inner, self.position, self.created_at)
            return
        del router._relays[self.inner]
        self.inner.dropped(key, reason, overflow=overflow)


class Router:
    def __init__(self, local: LocalThreads, table: ShardTable, peers: Any, hub: FeedHub,
                 wake: Callable[[], None]) -> None:
        self.local = local
        self.table = table
        self.peers = peers  # ``PeerClients``
        self.hub = hub
        self.wake = wake    # ask the node for a lease round now
        self.closing = False
        self._changed = trio.Event()
        self._relays: dict[Any, Relay] = {}
        self.forwarded = self.retries = 0
        self.forward_seconds = Histogram(SECONDS_BUCKETS)

    def table_changed(self) -> None:
        self._changed.set()
        self._changed = trio.Event()

    def moved(self, key: ThreadKey) -> bool:
        """Whether ``key``'s actor here stopped because its shard left (not the node)."""
        return not self.closing and not self.table.is_local(key)

    # -- requests ----------------------------------------------------------------------------

    async def ask(self, key: ThreadKey, make: Callable[[Reply[Any]], Any]) -> Any:
        deadline = trio.current_time() + self.local.ask_timeout
        while True:
            where = self.table.locate(key)
            try:
                if where is Where.LOCAL:
                    return await self.local.ask(key, make)
                if isinstance(where, Peer):
                    with trio.move_on_at(deadline) as scope:
                        return await self._forward(where, key, make)
                    if scope.cancelled_caught:
                        raise AskTimeout("the thread's owner did not answer in time")
            except (NotOwner, PeerUnreachable, Fenced) as exc:
                self._retrying(where, exc)
            except PeerLost as exc:
                self._retrying(where, exc)
                if not _repeatable(make):
                    raise ActorCrashed("the node that owns this thread went away while "
                                       "answering: it may have been done; read the thread's "
                                       "events, or send again with the same client_msg_id"
                                       ) from None
            except ActorStopped as exc:
                if isinstance(exc, ActorCrashed) or self.table.is_local(key) or self.closing:
                    raise
                self._retrying(where, exc)
            if trio.current_time() >= deadline:
                raise AskTimeout("no node owns this thread at the moment; ask again")
            with trio.move_on_at(min(deadline, trio.current_time() + RETRY_AFTER)):
                await self._changed.wait()

    def _retrying(self, where: Where | Peer, exc: Exception) -> None:
        self.retries += 1
        if isinstance(where, Peer) and isinstance(exc, (PeerUnreachable, PeerLost)):
            self.table.forget_peer(where.node_id)
        self.wake()

    async def _forward(self, peer: Peer, key: ThreadKey, make: Callable[[Reply[Any]], Any]
                       ) -> Any:
        started = trio.current_time()
        result = await self.peers.call(peer.address, key, make(Reply()))
        self.forwarded += 1
        self.forward_seconds.observe(trio.current_time() - started)
        return result

    async def ask_owned(self, key: ThreadKey, make: Callable[[Reply[Any]], Any]) -> Any:
        """A request forwarded by a peer: answered here if this node owns the thread, else
        ``NotOwner``; never forwarded again."""
        if not self.table.is_local(key):
            raise NotOwner(f"node {self.table.node_id} does not own this thread")
        try:
            return await self.local.ask(key, make)
        except Fenced:
            raise NotOwner(f"node {self.table.node_id} lost this thread's shard") from None
        except ActorStopped as exc:
            if isinstance(exc, ActorCrashed) or self.table.is_local(key):
                raise
            raise NotOwner(f"node {self.table.node_id} handed this thread over") from None

    # -- subscriptions -------------------------------------------------------------------------

    async def subscribe(self, key: ThreadKey, subscriber: Any, since: int | None,
                        tag: object) -> int:
        if self.table.locate(key) is Where.LOCAL:
            relay = Relay(self, key, subscriber)
            self._relays[subscriber] = relay
            try:
                return await self.local.ask(
                    key, lambda r: Subscribe(relay, since, tag, r))
            except (ActorStopped, Fenced) as exc:
                self._relays.pop(subscriber, None)
                if isinstance(exc, ActorCrashed) or self.table.is_local(key) or self.closing:
                    raise
            except BaseException:
                self._relays.pop(subscriber, None)
                raise
        info = await self.ask(key, GetInfo)  # the owner makes the thread if it is new
        subscriber.deliver(Joined(key, info.last_seq, tag, info.created_at))
        self.hub.attach(key, subscriber, info.last_seq, info.created_at)
        return info.last_seq

    async def unsubscribe(self, key: ThreadKey, subscriber: Any) -> None:
        relay = self._relays.pop(subscriber, None)
        self.hub.detach(subscriber)
        if relay is not None:
            await self.local.unsubscribe(key, relay)
