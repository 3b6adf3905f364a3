"""The ThreadActor: one per ``(user_id, thread_id)``.

It owns the thread's sequence counter, its subscribers and its run queue, and runs agent runs
in its own nursery through the execution engine. It handles its mailbox in order.

Ordering and durability: every event is appended under the thread's append lock, the seq
assigned inside the lock, and the counter advanced only once the journal has the event; then
the event is delivered to the subscribers, still under the lock. So events reach subscribers
in seq order, only once durable, and a failed write leaves no gap. ``last_seq`` as told to a
new subscriber is always the last *durable* seq, so a write in flight at that moment is
delivered to it live: no gap and no duplicate between a replay and the live stream.
"""

from __future__ import annotations

import collections
import logging
import time
from typing import Any, Callable, Protocol

import attrs
import trio

from .engine import Agent, RunContext, RunControl, ToolRegistry, execute, new_id
from .errors import (
    ActorCrashed,
    ActorStopped,
    Busy,
    JournalUnavailable,
    MailboxFull,
    UnknownRun,
    Unstorable,
)
from .journal import Journal
from .mailbox import Mailbox
from .stats import RUN_SECONDS_BUCKETS, Histogram
from .messages import (
    AGENT_FAILED,
    AGENT_STARTED,
    TERMINAL_EVENTS,
    USER_MESSAGE,
    Accepted,
    CancelRun,
    Event,
    GetInfo,
    Joined,
    Passivate,
    PostMessage,
    Shutdown,
    Subscribe,
    ThreadInfo,
    ThreadKey,
    ThreadMessage,
    ThreadRequest,
    Unsubscribe,
)

log = logging.getLogger("threadline.thread")

#: Bound on the shielded wait for one journal write. The stores answer every write (with an
#: error when they fail); past this the store is wedged, and the thread restarts (its
#: supervisor reloads the last durable seq) rather than wait forever.
APPEND_TIMEOUT = 60.0


class JournalWedged(RuntimeError):
    """A journal write got no answer within ``APPEND_TIMEOUT``: restart the thread actor."""


class Subscriber(Protocol):
    """Whatever receives a thread's events: a session, an embedding program's subscription.

    Must be hashable by identity. Both methods are called from the thread's task and must not
    block.
    """

    def deliver(self, item: Event | Joined) -> None:
        """Queue ``item``; raise ``MailboxFull`` when full, ``ActorStopped`` when gone."""

    def dropped(self, key: ThreadKey, reason: str, *, overflow: bool) -> None:
        """The thread dropped this subscriber: ``overflow`` if its mailbox was full (it fell
        behind), else because the thread stopped. ``reason`` is for people."""


@attrs.define
class ThreadStats:
    """Counters over all thread actors of a runtime (for /metrics). Plain ints: one task."""

    events: int = 0
    runs_started: int = 0
    runs_active: int = 0
    runs_ended: dict[str, int] = attrs.Factory(dict)  # by terminal event
    run_seconds: Histogram = attrs.Factory(lambda: Histogram(RUN_SECONDS_BUCKETS))


@attrs.define
class ThreadEnv:
    """What every thread actor of a runtime shares."""

    journal: Journal
    agent: Agent
    tools: ToolRegistry
    clock: Callable[[], float] = time.time  # event timestamps: wall clock, seconds
    stats: ThreadStats = attrs.Factory(ThreadStats)


class ThreadActor:
    __slots__ = ("key", "env", "_seq", "_created_at", "_updated_at", "_subscribers", "_queue",
                 "_active", "_runner_on", "_nursery", "_wake", "_lock", "_idle_since",
                 "_stopping", "_drained")

    def __init__(self, key: ThreadKey, env: ThreadEnv) -> None:
        self.key = key
        self.env = env
        self._seq = 0  # the last durable seq
        self._created_at = self._updated_at = 0.0
        self._subscribers: dict[Subscriber, None] | None = None  # an ordered set, made lazily
        # An empty deque is about 600 bytes; an idle actor has none (DESIGN.md: <= 6 KB each).
        self._queue: collections.deque[RunControl] | None = None
        self._active: RunControl | None = None
        self._runner_on = False
        self._nursery: trio.Nursery | None = None  # only while runs are active
        self._wake: trio.CancelScope | None = None
        self._lock: trio.Lock | None = None  # made on the first append: idle actors stay small
        self._idle_since = trio.current_time()
        self._stopping = False
        self._drained: trio.Event | None = None

    # -- what the directory asks ------------------------------------------------------------

    def idle_since(self) -> float | None:
        if self._subscribers or self._runner_on or self._queue:
            return None
        return self._idle_since

    def stopped(self, reason: str, unread: list[ThreadMessage]) -> None:
        for msg in unread:
            if isinstance(msg, ThreadRequest):
                msg.reply.fail(ActorStopped(f"thread stopped: {reason}"))
        subscribers, self._subscribers = self._subscribers, None
        for sub in subscribers or ():
            sub.dropped(self.key, f"thread stopped: {reason}", overflow=False)

    # -- the actor loop -----------------------------------------------------------------------

    async def run(self, mailbox: Mailbox) -> None:
        info = await self.env.journal.ensure_thread(self.key, self.env.clock())
        self._seq, self._created_at, self._updated_at = info.last_seq, info.created_at, info.updated_at
        msg: Any = None
        receive = mailbox.receive_channel.receive  # idle actors wait here: no wrapper frame
        try:
            while True:
                if self._queue:  # runs to do (also runs queued before a crash and restart)
                    if await self._busy(mailbox):
                        return
                    continue
                msg = await receive()
                if await self._handle(msg):
                    return
        except Exception:
            self._crashed(msg)
            raise

    async def _busy(self, mailbox: Mailbox) -> bool:
        """Handle the mailbox while runs are active, in a nursery that lives only that long:
        an idle actor has no nursery and no runner task (DESIGN.md: <= 6 KB per idle actor).
        Returns True to stop."""
        try:
            async with trio.open_nursery() as nursery:
                self._nursery = nursery
                self._ensure_runner()
                msg: Any = None
                try:
                    while self._runner_on:
                        # The runner cancels this scope when it finishes: the busy phase ends.
                        with trio.CancelScope() as self._wake:
                            msg = await mailbox.receive()
                        self._wake = None
                        if msg is None:
                            break
                        if await self._handle(msg):
                            return True
                        msg = None
                except Exception:
                    self._crashed(msg)  # inside the nursery: before the runner is cancelled
                    raise
        finally:
            self._nursery = self._wake = None
        return False

    def _crashed(self, msg: Any) -> None:
        """A bug in this actor: the active run will record agent_failed as the nursery
        unwinds, the caller gets an answer, and the supervisor restarts us."""
        if self._active is not None:
            self._active.failure = "internal error"
        if isinstance(msg, ThreadRequest):
            msg.reply.fail(ActorCrashed("thread actor crashed; restarting"))

    async def _handle(self, msg: Any) -> bool:
        """Handle one message; True means stop."""
        kind = type(msg)
        if kind is GetInfo:
            msg.reply.set(self.info())
        elif kind is PostMessage:
            await self._post(msg)
        elif kind is Subscribe:
            self._subscribe(msg)
        elif kind is Unsubscribe:
            subs = self._subscribers
            found = subs is not None and subs.pop(msg.subscriber, False) is None
            if not subs:
                self._idle_since = trio.current_time()
            msg.reply.set(found)
        elif kind is CancelRun:
            self._cancel(msg)
        elif kind is Passivate:
            return self.idle_since() is not None
        elif kind is Shutdown:
            await self._shutdown(msg.grace)
            return True
        else:
            raise TypeError(f"ThreadActor got an unknown message {msg!r}")
        return False

    def info(self) -> ThreadInfo:
        return ThreadInfo(self.key, self._seq, self._created_at, self._updated_at)

    # -- handlers -------------------------------------------------------------------------------

    async def _post(self, msg: PostMessage) -> None:
        reply = msg.reply
        if self._stopping:
            reply.fail(ActorStopped("the thread is shutting down"))
            return
        try:
            if msg.client_msg_id is not None:
                prior = await self.env.journal.find_message(self.key, msg.client_msg_id)
                if prior is not None:
                    reply.set(prior)  # idempotent retry: same answer, no second run
                    return
            if msg.strategy == "reject" and (self._active is not None or self._queue):
                reply.fail(Busy("a run is active on this thread"))
                return
            run_id, message_id = new_id("run"), new_id("msg")
            data: dict[str, Any] = {"message_id": message_id, "text": msg.text}
            if msg.client_msg_id is not None:
                data["client_msg_id"] = msg.client_msg_id
            event = await self._append(USER_MESSAGE, run_id, data)
        except (JournalUnavailable, Unstorable) as exc:
            reply.fail(exc)
            return
        control = RunControl(RunContext(self.key.user_id, self.key.thread_id, run_id, message_id),
                             msg.text)
        if self._queue is None:
            self._queue = collections.deque()
        if msg.strategy == "interrupt":
            self._queue.appendleft(control)  # next to run; runs queued before keep their order
            if self._active is not None:
                self._active.cancel("interrupt")
        else:
            self._queue.append(control)
        self._ensure_runner()
        reply.set(Accepted(self.key, message_id, run_id, event.seq))

    def _subscribe(self, msg: Subscribe) -> None:
        sub = msg.subscriber
        try:
            sub.deliver(Joined(self.key, self._seq, msg.tag))
        except (MailboxFull, ActorStopped) as exc:
            msg.reply.fail(exc)
            return
        if self._subscribers is None:
            self._subscribers = {}
        self._subscribers[sub] = None
        msg.reply.set(self._seq)

    def _cancel(self, msg: CancelRun) -> None:
        active = self._active
        if active is None or (msg.run_id is not None and msg.run_id != active.context.run_id):
            # PROTOCOL.md: only the active run can be cancelled; a queued one is "not active".
            msg.reply.fail(UnknownRun(f"no active run {msg.run_id or ''}".rstrip()))
            return
        active.cancel("cancel")
        msg.reply.set(active.context.run_id)

    async def _shutdown(self, grace: float) -> None:
        """Let the runs finish for ``grace`` seconds, then cancel them with reason shutdown."""
        self._stopping = True
        if not self._runner_on:
            return
        self._drained = trio.Event()
        with trio.move_on_after(grace):
            await self._drained.wait()
        for control in (self._active, *(self._queue or ())):
            if control is not None:
                control.cancel("shutdown")
        await self._drained.wait()

    # -- runs -----------------------------------------------------------------------------------

    def _ensure_runner(self) -> None:
        if not self._runner_on and self._nursery is not None:
            self._runner_on = True
            self._nursery.start_soon(self._runner)

    async def _runner(self) -> None:
        """Runs queued runs one at a time; exits when the queue is empty (no idle task)."""
        try:
            while self._queue:
                control = self._queue.popleft()
                self._active = control
                stats = self.env.stats
                stats.runs_started += 1
                stats.runs_active += 1
                started = trio.current_time()
                try:
                    await execute(control, self.env.agent, self.env.tools, self._emit)
                except JournalUnavailable as exc:
                    log.error("run %s of %s lost its journal: %s", control.context.run_id,
                              self.key, exc)
                    await self._close_lost_run(control)
                finally:
                    self._active = None
                    stats.runs_active -= 1
                    stats.run_seconds.observe(trio.current_time() - started)
        finally:
            self._runner_on = False
            self._idle_since = trio.current_time()
            if self._wake is not None:
                self._wake.cancel()
            if self._drained is not None:
                self._drained.set()

    async def _close_lost_run(self, control: RunControl) -> None:
        """The store failed under a run: once it is back, end the run with ``agent_failed``
        (after its ``agent_started``, if that is what failed), retrying with a backoff from
        0.1 s to 5 s. A shutdown meanwhile leaves it to the next start's recovery."""
        run_id, delay = control.context.run_id, 0.1
        while True:
            try:
                if not control.started:
                    await self._append(AGENT_STARTED, run_id, {})
                    control.started = True
                await self._append(AGENT_FAILED, run_id, {"error": "storage unavailable"})
                return
            except JournalUnavailable:
                await trio.sleep(delay)
                delay = min(delay * 2, 5.0)

    async def _emit(self, ctx: RunContext, event: str, data: dict[str, Any]) -> None:
        if ctx.user_id != self.key.user_id or ctx.thread_id != self.key.thread_id:
            raise RuntimeError(f"run {ctx.run_id} is not a run of {self.key}")
        # A cancelled run emits nothing more: every emit is a cancellation point (the append
        # below is shielded once it starts, and may not yield at all).
        await trio.lowlevel.checkpoint_if_cancelled()
        await self._append(event, ctx.run_id, data)

    async def _append(self, name: str, run_id: str | None, data: dict[str, Any]) -> Event:
        lock = self._lock
        if lock is None:
            lock = self._lock = trio.Lock()
        # trio.Lock.acquire() yields even when the lock is free: one scheduling round more per
        # event. Uncontended (the usual case), take it without; the journal write checkpoints.
        try:
            lock.acquire_nowait()
        except trio.WouldBlock:
            await lock.acquire()
        try:
            event = Event(self.key, self._seq + 1, name, run_id, self.env.clock(), data)
            # Shielded: once written, the write must finish (or fail as a whole) before a
            # cancelled caller moves on, or the counter would not match the journal. Bounded:
            # a write with no answer leaves the counter unknown, so the actor restarts.
            with trio.CancelScope(shield=True) as scope:
                scope.deadline = trio.current_time() + APPEND_TIMEOUT
                await self.env.journal.append((event,))
            if scope.cancelled_caught:
                raise JournalWedged(f"no answer from the journal within {APPEND_TIMEOUT:g} s")
            self._seq = event.seq
            self._updated_at = event.ts
            stats = self.env.stats
            stats.events += 1
            if name in TERMINAL_EVENTS:
                stats.runs_ended[name] = stats.runs_ended.get(name, 0) + 1
            self._deliver(event)
        finally:
            lock.release()
        return event

    def _deliver(self, event: Event) -> None:
        if not self._subscribers:
            return
        failed: list[tuple[Subscriber, str | None]] | None = None
        for sub in self._subscribers:
            try:
                sub.deliver(event)
            except MailboxFull:
                failed = failed or []
                failed.append((sub, f"mailbox full at seq {event.seq}"))
            except ActorStopped:
                failed = failed or []
                failed.append((sub, None))
        if failed:
            for sub, reason in failed:
                del self._subscribers[sub]
                if reason is not None:
                    log.info("dropping a subscriber of %s: %s", self.key, reason)
                    sub.dropped(self.key, reason, overflow=True)
            if not self._subscribers:
                self._idle_since = trio.current_time()
