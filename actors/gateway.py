"""The way into thread actors: handles on users and threads.

A ``UserHandle`` can only reach its own user's threads: code that got it from an authenticated
identity (the WebSocket session does) cannot name another user's thread. ``ThreadHandle``
methods look the actor up (or activate it) on every call, so a handle stays valid across
passivation and restarts.

Every request goes through the gateway's ``Router``, fixed at construction: ``LocalThreads``
(``local.py``) when every thread lives in this process, or one built from above over it.
"""

from __future__ import annotations

from contextlib import asynccontextmanager
from typing import Any, AsyncIterator, Callable, Sequence, TypeVar

import attrs
import trio

from .tracing import NO_TRACING, Tracing
from .usage import NO_BUDGETS, Budgets, Spent
from .approval import MAX_REASON_BYTES
from .attachments import MAX_PER_MESSAGE
from .journal import Journal, replay_page
from .local import LocalThreads, Router
from .reply import Reply
from .messages import (
    LATEST,
    STRATEGIES,
    Accepted,
    CancelRun,
    Decide,
    DeleteThread,
    Event,
    GetInfo,
    Parent,
    PostMessage,
    Regenerate,
    Strategy,
    ThreadInfo,
    ThreadKey,
    is_thread_id,
    is_user_id,
)
from .subscription import Subscription
from .history import read_turns
from .tree import TurnView
from .stats import RuntimeStatistics, ThreadStats
from .thread import Subscriber

__all__ = ["Gateway", "LocalThreads", "Router", "ThreadHandle", "UserHandle"]

T = TypeVar("T")


class Gateway:
    """Requests to thread actors, through ``router``: by default ``local`` itself (every
    thread lives in this process); a router given at construction decides where each goes,
    and answers those it keeps here through ``local``."""

    def __init__(self, local: LocalThreads, journal: Journal, *, router: Router | None = None,
                 subscriber_capacity: int = 1000, stats: ThreadStats | None = None,
                 budgets: Budgets = NO_BUDGETS, tracing: Tracing = NO_TRACING) -> None:
        self.local = local
        self.budgets = budgets  # what ``UserHandle.usage`` reads (``usage.py``)
        self.tracing = tracing  # where the transport's request spans go (``tracing.py``)
        self.directory = local.directory
        self.journal = journal
        self.router: Router = router if router is not None else local
        self.stats = stats if stats is not None else ThreadStats()
        self.subscriber_capacity = subscriber_capacity

    @property
    def ask_timeout(self) -> float:
        return self.local.ask_timeout

    def statistics(self) -> RuntimeStatistics:
        d, t = self.directory, self.stats
        return RuntimeStatistics(
            actors_live=len(d), mailbox_messages=d.backlog.messages, activations=d.activations,
            passivations=d.passivations, failures=d.failures, runs_active=t.runs_active, runs_waiting=t.runs_waiting,
            attachment_bytes=t.attachment_bytes,
            approvals_requested=t.approvals_requested,
            approvals_decided=dict(t.approvals_decided), approvals_waiting=t.approvals_waiting + len(t.parked),
            runs_started=t.runs_started, runs_ended=dict(t.runs_ended), events_stored=t.events,
            run_seconds=t.run_seconds, tokens=dict(t.tokens),
            budget_refusals=self.budgets.refused, store=self.journal.statistics())

    def user(self, user_id: str) -> UserHandle:
        if not is_user_id(user_id):
            raise ValueError(f"invalid user id {user_id!r}")
        return UserHandle(self, user_id)

    async def ask(self, key: ThreadKey, make: Callable[[Reply[T]], Any]) -> T:
        """Ask the thread's actor, wherever the router says the thread lives."""
        return await self.router.ask(key, make)

    async def subscribe(self, key: ThreadKey, subscriber: Subscriber, since: int | None,
                        tag: object = None) -> int:
        return await self.router.subscribe(key, subscriber, since, tag)

    async def unsubscribe(self, key: ThreadKey, subscriber: Subscriber) -> None:
        """Remove ``subscriber`` from the thread, if the thread is live. Shielded and bounded
        by the ask timeout, so it can run in cleanup code."""
        await self.router.unsubscribe(key, subscriber)


@attrs.frozen
class UserHandle:
    """One user's view of the runtime."""

    gateway: Gateway
    user_id: str

    def thread(self, thread_id: str) -> ThreadHandle:
        if not is_thread_id(thread_id):
            raise ValueError(f"invalid thread id {thread_id!r}")
        return ThreadHandle(self.gateway, ThreadKey(self.user_id, thread_id))

    async def threads(self) -> list[ThreadInfo]:
        """The user's threads, most recently updated first (from the journal)."""
        return await self.gateway.journal.threads(self.user_id)

    async def usage(self) -> Spent:
        """The user's tokens this UTC day and month (two key look-ups in the journal) and the
        budget the user is held to (PROTOCOL.md 1.1 ``GET /v1/usage``)."""
        return await self.gateway.budgets.spent(self.gateway.journal, self.user_id)

    async def delete_all(self, concurrency: int = 16) -> int:
        """Delete every thread of this user (``ThreadHandle.delete``, ``concurrency`` at a
        time); the number deleted. Threads created meanwhile are not."""
        infos = await self.threads()
        limiter = trio.CapacityLimiter(concurrency)

        async def delete(thread: ThreadHandle) -> None:
            async with limiter:
                await thread.delete()

        async with trio.open_nursery() as nursery:
            for info in infos:
                nursery.start_soon(delete, ThreadHandle(self.gateway, info.key))
        return len(infos)


@attrs.frozen
class ThreadHandle:
    """One thread. Every call may activate the thread actor (creating the thread if new)."""

    gateway: Gateway
    key: ThreadKey

    @property
    def thread_id(self) -> str:
        return self.key.thread_id

    async def subscribe(self, subscriber: Subscriber, since: int | None = None,
                        tag: object = None) -> int:
        """Add any ``Subscriber``; returns the thread's last seq at that moment. The subscriber
        gets ``Joined`` first; replaying ``since`` is its own business (see ``Subscription``)."""
        return await self.gateway.subscribe(self.key, subscriber, since, tag)

    async def unsubscribe(self, subscriber: Subscriber) -> None:
        await self.gateway.unsubscribe(self.key, subscriber)

    async def send(self, text: str, *, client_msg_id: str | None = None,
                   strategy: Strategy = "enqueue", parent: Parent = LATEST,
                   attachments: Sequence[str] = (), traceparent: str | None = None) -> Accepted:
        """Store a user message and queue its run; returns once the message is durable.

        ``parent`` (PROTOCOL.md 1.1, "The conversation tree") is the run the message follows:
        by default the thread's newest run (a plain conversation), None for a new root, or a
        run id of this thread: the ``parent`` of a message to edit makes a sibling of it.

        ``attachments`` (PROTOCOL.md 1.1): ids of the user's uploads (``attachments.py``), at
        most 10, stored with the message and given to its run (``run.attachments``).

        ``traceparent``: the W3C trace context of the request, which the run's span continues
        (``tracing.py``).

        Raises ``Busy`` (strategy ``reject`` while a run is active), ``NotFound`` (``parent``
        is no run of this thread, an attachment is not the user's or is another thread's),
        ``BudgetExceeded`` (the user's token budget is spent: ``usage.py``),
        ``JournalUnavailable``, ``ActorStopped``, ``AskTimeout``.
        """
        if strategy not in STRATEGIES:
            raise ValueError(f"strategy must be one of {STRATEGIES}")
        if len(attachments) > MAX_PER_MESSAGE:
            raise ValueError(f"at most {MAX_PER_MESSAGE} attachments a message")
        ids = tuple(dict.fromkeys(attachments))
        return await self.gateway.ask(
            self.key, lambda r: PostMessage(text, client_msg_id, strategy, r, parent, ids,
                                            traceparent))

    async def regenerate(self, message_id: str, *, client_msg_id: str | None = None,
                         strategy: Strategy = "enqueue",
                         traceparent: str | None = None) -> Accepted:
        """Ask for another answer to the stored user message ``message_id`` (PROTOCOL.md 1.1):
        a new run beside the earlier answers, queued as ``strategy`` says; returns once its
        ``answer_requested`` is durable (``Accepted.seq`` is that event's). The same
        ``client_msg_id`` again answers the same ``Accepted``. Raises ``NotFound`` (no such
        message in this thread), and what ``send`` raises."""
        if strategy not in STRATEGIES:
            raise ValueError(f"strategy must be one of {STRATEGIES}")
        return await self.gateway.ask(
            self.key, lambda r: Regenerate(message_id, client_msg_id, strategy, r, traceparent))

    async def turns(self, after: int = 0, limit: int = 100) -> list[TurnView]:
        """The thread's runs with ``seq > after`` (the seq of the event that asked for each),
        at most ``limit``, in seq order, as a client renders the tree (``tree.TurnView``).
        Read from the journal: never activates the actor."""
        return await read_turns(self.gateway.journal, self.key, after, limit)

    async def cancel(self, run_id: str | None = None) -> str:
        """Cancel the active run (or ``run_id``, if it is the active one); returns its id.
        Raises ``UnknownRun``. The run then ends with ``agent_cancelled`` (reason cancel)."""
        return await self.gateway.ask(self.key, lambda r: CancelRun(run_id, r))

    async def decide(self, run_id: str, call_id: str, approved: bool,
                     reason: str | None = None) -> None:
        """Decide a tool call of ``run_id`` waiting for approval (PROTOCOL.md 1.1); returns
        once ``approval_decided`` is stored, and the run goes on. Raises ``UnknownCall`` (no
        such call waits: never asked, decided already, its run ended), ``ValueError`` for a
        reason over 1 KiB."""
        if reason is not None and len(reason.encode()) > MAX_REASON_BYTES:
            raise ValueError(f"a reason is at most {MAX_REASON_BYTES} bytes")
        await self.gateway.ask(self.key, lambda r: Decide(run_id, call_id, bool(approved),
                                                           reason, r))

    async def info(self) -> ThreadInfo:
        return await self.gateway.ask(self.key, GetInfo)

    async def stored_info(self) -> ThreadInfo | None:
        """The thread's info from the journal, None if it does not exist. Never activates
        the actor (never creates the thread)."""
        return await self.gateway.journal.thread_info(self.key)

    async def delete(self) -> None:
        """Erase the thread: its active run is cancelled (``agent_cancelled``, reason
        ``deleted``), pending runs are dropped, every subscriber is dropped with
        ``THREAD_DELETED``, and its events and row leave the journal; returns once that is
        durable. The thread id can then be used again, from seq 1. Raises
        ``JournalUnavailable`` (nothing or not all was erased: ask again), ``ActorStopped``,
        ``AskTimeout``."""
        await self.gateway.ask(self.key, DeleteThread)

    async def replay_page(self, after: int, upto: int) -> list[Event]:
        """The next page of a replay (see ``threadline.actors.journal.replay_page``): empty only
        when the thread was deleted meanwhile."""
        return await replay_page(self.gateway.journal, self.key, after, upto)

    async def history(self, after: int = 0, *, upto: int | None = None,
                      limit: int = 1000) -> list[Event]:
        """Stored events with ``after < seq <= upto``, at most ``limit``."""
        return await self.gateway.journal.read(self.key, after, upto=upto, limit=limit)

    @asynccontextmanager
    async def open_subscription(self, since: int | None = None,
                                capacity: int | None = None) -> AsyncIterator[Subscription]:
        """Subscribe to the thread's events; iterate the result.

        With ``since``, stored events with ``seq > since`` come first, then live ones, with no
        gap and no duplicate. ``capacity`` bounds the buffered events (default from the config);
        a subscriber that falls that far behind is dropped: iterating then raises
        ``SubscriberDropped`` after the buffered events, and you resume with ``since``.
        """
        sub = Subscription(self.key, self.gateway.journal, since,
                           capacity or self.gateway.subscriber_capacity)
        sub.joined_at = await self.gateway.subscribe(self.key, sub, since)
        try:
            yield sub
        finally:
            await self.gateway.unsubscribe(self.key, sub)
