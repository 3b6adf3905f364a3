"""The ThreadActor: one per ``(user_id, thread_id)``.

It owns the thread's sequence counter, its subscribers and its run queue (``run_queue``, where
its phases are written down). Its runner task writes each run through a ``RunWriter`` of its
own (``run_writer.py``), built over this actor's ``Sequencer`` and the run's ``RunControl``,
whose frozen context the actor makes from its own key: a run can write only into this thread. It handles its
mailbox in order: idle, it waits on it with no nursery and no runner task (at most 6 KB per
idle actor, docs/architecture.md); while runs wait or run, in a nursery that holds the runner
task.

Ordering and durability are the ``Sequencer``'s (``sequencer.py``): an event is numbered and
queued to the journal in one synchronous step, the next one queued while the last is being
stored, and delivered (``_stored``) only once the journal answers that it is durable, in seq
order; a failed write leaves no gap. ``last_seq`` as told to a new subscriber is always the
last *durable* seq, so a write in flight at that moment is delivered to it live: no gap and no
duplicate between a replay and the live stream.

One concept, the actor, in one module: its handlers share its numbering, its subscribers, its
run queue and the default parent, and each is short; what stands apart is elsewhere (the runs'
phases ``run_queue``, a run's events ``run_writer``, parked runs ``parking``, numbering
``sequencer``, reading the conversation ``history``).
"""

from __future__ import annotations

import logging
import math
from typing import Any, Protocol

import trio

from . import parking
from .approval import is_resumable
from .engine import new_id
from .errors import (ActorCrashed, ActorStopped, Busy, Fenced, JournalUnavailable,
                     MailboxFull, NotFound, ThreadReload, UnknownCall, UnknownRun, Unstorable)
from .attachments import Attachment
from .history import answered_message, message_of
from .journal import replay_page
from .mailbox import Mailbox
from .sequencer import Sequencer
from .run_queue import SHUTTING_DOWN, Phase, RunQueue, ThreadEnv, drain, run_queued
from .run_writer import RunContext, RunControl
from .usage import BudgetExceeded
from .messages import (AGENT_STARTED, ANSWER_REQUESTED, LATEST, RUN_REQUESTS, TERMINAL_EVENTS,
                       THREAD_DELETED, USER_MESSAGE, Accepted, CancelRun, Decide, DeleteThread,
                       Event, GetInfo, Joined, Passivate, PostMessage, Regenerate, Shutdown,
                       Subscribe, ThreadInfo, ThreadKey, ThreadMessage, ThreadRequest,
                       Unsubscribe)

log = logging.getLogger("threadline.thread")

CATCH_UP_PAGES = 4  # of events read back for subscribers after a reload (``_catch_up``)
RELOAD_PATIENCE = 30.0  # seconds a restarting actor waits for its store (``_load``)


__all__ = ["Subscriber", "ThreadActor", "ThreadEnv"]  # ThreadEnv: declared in ``run_queue``


class Subscriber(Protocol):
    """Whatever receives a thread's events: a session, an embedding program's subscription.

    Must be hashable by identity. Both methods are called from the thread's task and must not
    block.
    """

    def deliver(self, item: Event | Joined) -> None:
        """Queue ``item``; raise ``MailboxFull`` when full, ``ActorStopped`` when gone."""

    def dropped(self, key: ThreadKey, reason: str, *, overflow: bool) -> None:
        """The thread dropped this subscriber: ``overflow`` if its mailbox was full (it fell
        behind), else because the thread stopped, or was deleted: then ``reason`` is
        ``THREAD_DELETED`` (otherwise it is for people)."""


#: ``ThreadActor._newest`` before it is read from the store.
UNKNOWN: Any = object()


class ThreadActor:
    __slots__ = ("key", "env", "_writes", "_created_at", "_updated_at", "_subscribers", "_runs",
                 "_idle_since", "_loaded", "_newest")

    def __init__(self, key: ThreadKey, env: ThreadEnv) -> None:
        self.key = key
        self.env = env
        self._writes = Sequencer(key, env.journal, env.clock, self._stored)
        self._created_at = self._updated_at = 0.0
        self._subscribers: dict[Subscriber, None] | None = None  # an ordered set, made lazily
        self._runs: RunQueue | None = None  # made for the first run: idle actors stay small
        self._idle_since = trio.current_time()
        self._loaded = False  # started once: a restart compares the store with what it saw
        # The run of the latest ``Accepted``: a message's default parent (``tree.py``). Read
        # from the store at the first send after each start, kept as runs are asked for.
        self._newest: str | None = UNKNOWN

    @property
    def phase(self) -> Phase:
        return Phase.IDLE if self._runs is None else self._runs.phase

    def _run_queue(self) -> RunQueue:
        if self._runs is None:
            self._runs = RunQueue()
        return self._runs

    # -- what the directory asks ------------------------------------------------------------

    def idle_since(self) -> float | None:
        busy = self._subscribers or (self._runs is not None and not self._runs.idle) or (
            parking.deadline(self._runs, self.env.clock) < math.inf)  # it decides in time
        return None if busy else self._idle_since

    def stopped(self, reason: str, unread: list[ThreadMessage]) -> None:
        parking.forget(self._runs, self.env.stats)
        for msg in unread:
            if isinstance(msg, ThreadRequest):
                msg.reply.fail(ActorStopped(f"thread stopped: {reason}"))
        subscribers, self._subscribers = self._subscribers, None
        for sub in subscribers or ():
            sub.dropped(self.key, f"thread stopped: {reason}", overflow=False)

    # -- the actor loop -----------------------------------------------------------------------

    async def run(self, mailbox: Mailbox) -> None:
        had = self._writes.seq  # after a restart: the last seq this actor saw stored
        self._newest = UNKNOWN
        info = await self._load()
        self._writes.start(info.last_seq)
        self._created_at, self._updated_at = info.created_at, info.updated_at
        if self._loaded and info.last_seq != had:
            await self._catch_up(had, info.last_seq)
        await parking.restore(self.key, self.env.journal, self._writes, self._run_queue,
                              self.env.stats, self.env.parked,
                              resumable=is_resumable(self.env.agent), restarted=self._loaded)
        self._loaded = True
        msg: Any = None
        receive = mailbox.receive_channel.receive  # idle actors wait here: no wrapper frame
        try:
            while True:
                if self._runs is not None and self._runs.wants_runner:  # runs wait (also
                    if await self._busy(mailbox, self._runs):        # after a restart)
                        return
                    continue
                if (deadline := parking.deadline(self._runs, self.env.clock)) < math.inf:
                    with trio.move_on_at(deadline):
                        msg = await receive()
                    if msg is None:  # the parked run's wait expired (a deadline: runs exist)
                        if self._runs is not None:
                            await parking.expire_due(self._writes, self.env.journal,
                                                     self._runs, self.env.stats)
                        continue
                else:
                    msg = await receive()
                mailbox.took()
                if await self._handle(msg):
                    return
                msg = None
                self._check_numbering()
        except Exception:
            self._crashed(msg)
            raise

    async def _busy(self, mailbox: Mailbox, runs: RunQueue) -> bool:
        """Handle the mailbox while a runner is on, in a nursery that holds it. True: stop."""
        async with trio.open_nursery() as nursery:
            msg: Any = None
            try:
                while True:
                    if runs.start_runner():
                        nursery.start_soon(self._runner, runs)
                    elif not runs.runner_on:
                        return False
                    with trio.CancelScope() as runs.wake:  # cancelled as the runner ends
                        msg = await mailbox.receive()
                    runs.wake = None
                    if msg is not None and await self._handle(msg):
                        return True
                    msg = None
                    self._check_numbering()
            except Exception:
                self._crashed(msg)  # inside the nursery: before the runner is cancelled
                raise

    async def _runner(self, runs: RunQueue) -> None:
        try:
            await run_queued(runs, self._writes, self.env)
        finally:
            self._idle_since = trio.current_time()
            if runs.parked is not None:  # found again from the store when next loaded
                self.env.parked.add(self.key)

    async def _load(self) -> ThreadInfo:
        """The thread's row in the store. A restart (the store's copy changed, a commit's
        answer was lost in an outage) waits an outage out, up to ``RELOAD_PATIENCE`` seconds,
        rather than crash-loop and drop its subscribers; a first start fails at once."""
        delay, deadline = 0.1, trio.current_time() + RELOAD_PATIENCE
        while True:
            try:
                return await self.env.journal.ensure_thread(self.key, self.env.clock())
            except Fenced:
                raise  # another writer has the thread now
            except JournalUnavailable:
                if not self._loaded or trio.current_time() + delay > deadline:
                    raise
            await trio.sleep(delay)
            delay = min(2 * delay, 2.0)

    def _check_numbering(self) -> None:
        """Restart from the store's state now if the numbering disagrees with it (a write of
        this thread met a conflict), rather than at the next request's expense."""
        if (why := self._writes.mismatch) is not None:
            raise ThreadReload(f"the store's copy of the thread differs ({why})")

    async def _catch_up(self, had: int, last_seq: int) -> None:
        """After a restart, when the store holds more than this actor saw stored (a commit
        whose answer was lost, another writer): read it back, at most ``CATCH_UP_PAGES``
        pages. The subscribers get it; a user message among it whose run never started (its
        ``accepted`` was lost with the commit's answer; a retry with its ``client_msg_id``
        answers it) is queued to run, so that it is answered and its run ends. Past the
        pages, or if the thread is shorter than what they had (erased and written anew), the
        subscribers are dropped as fallen behind and resume with ``since`` (a WebSocket
        client: close 1013, then ``join`` with ``since``)."""
        after, pages = had, 0
        unstarted: dict[str, Event] = {}
        while last_seq > had and after < last_seq and pages < CATCH_UP_PAGES:
            events = await replay_page(self.env.journal, self.key, after, last_seq)
            for event in events:
                self._deliver(event)
                if event.event in RUN_REQUESTS and event.run_id is not None:
                    unstarted[event.run_id] = event
                elif event.event == AGENT_STARTED:
                    unstarted.pop(event.run_id or "", None)
            after, pages = events[-1].seq, pages + 1
        known = set() if self._runs is None else self._runs.run_ids()
        for run_id, event in unstarted.items():
            if run_id not in known:
                context = RunContext(self.key.user_id, self.key.thread_id, run_id,
                                     event.data["message_id"])
                message = await answered_message(self.env.journal, self.key, event)
                self._run_queue().add(RunControl.answering(context, message, event.seq),
                                      "enqueue")
        if after != last_seq:
            subscribers, self._subscribers = self._subscribers, None
            for sub in subscribers or ():
                sub.dropped(self.key, "reloaded from the store", overflow=True)

    def _crashed(self, msg: Any) -> None:
        """A bug in this actor: the active run will record agent_failed as the nursery
        unwinds, the caller gets an answer, and the supervisor restarts us."""
        if self._runs is not None:
            self._runs.crashed()
        if isinstance(msg, ThreadRequest):
            msg.reply.fail(ActorCrashed("thread actor crashed; restarting"))

    async def _handle(self, msg: Any) -> bool:
        """Handle one message; True means stop."""
        kind = type(msg)
        if kind is GetInfo:
            msg.reply.set(self.info())
        elif kind is PostMessage:
            await self._post(msg)
        elif kind is Regenerate:
            await self._regenerate(msg)
        elif kind is Subscribe:
            self._subscribe(msg)
        elif kind is Unsubscribe:
            subs = self._subscribers
            found = subs is not None and subs.pop(msg.subscriber, False) is None
            if not subs:
                self._idle_since = trio.current_time()
            msg.reply.set(found)
        elif kind is Decide:
            if not await parking.decide(self._writes, self.env.journal, self._run_queue(),
                                        self.env.stats, msg):
                self._decide(msg)
        elif kind is CancelRun:
            try:
                msg.reply.set(self._run_queue().cancel_active(msg.run_id))
            except UnknownRun as exc:
                msg.reply.fail(exc)
            await parking.end_if_cancelled(self._writes, self._run_queue(), self.env.stats)
        elif kind is Passivate:
            return self.idle_since() is not None
        elif kind is Shutdown:
            if self._runs is not None:  # else no run ever: nothing to drain
                await drain(self._runs, msg.grace)
                await parking.end_queued(self._writes, self._runs, "shutdown")
            return True
        elif kind is DeleteThread:
            await self._delete(msg)
            return True
        else:
            raise TypeError(f"ThreadActor got an unknown message {msg!r}")
        return False

    async def _delete(self, msg: DeleteThread) -> None:
        """Cancel the runs (pending ones too: they are erased with the rest), then erase the
        thread in the journal (queued after every write of the runs), then tell the
        subscribers. The actor stops after this, whatever the outcome: on a failed erasure
        its subscribers are dropped as by any stop, and the caller may ask again."""
        if self._runs is not None:
            await drain(self._runs, 0.0, "deleted")
            await parking.end_all(self._writes, self._runs, self.env.stats, "deleted")
        try:
            await self.env.journal.delete_thread(self.key)
        except JournalUnavailable as exc:
            msg.reply.fail(exc)
            return
        subscribers, self._subscribers = self._subscribers, None
        for sub in subscribers or ():
            sub.dropped(self.key, THREAD_DELETED, overflow=False)
        msg.reply.set(None)

    def _decide(self, msg: Decide) -> None:
        """Hand a decision to the active run's call waiting for it (``approval.py``): the run
        stores it and answers ``msg``. ``UnknownCall`` when no such call waits."""
        active = self._runs.active if self._runs is not None else None
        pending = None
        if active is not None and active.context.run_id == msg.run_id:
            pending = active.approvals.get(msg.call_id)
        try:
            if pending is None:
                raise UnknownCall(f"no tool call {msg.call_id} of run {msg.run_id} waits for "
                                  "a decision")
            pending.decide_nowait(msg.approved, msg.reason, msg.reply)
        except UnknownCall as exc:
            msg.reply.fail(exc)

    def info(self) -> ThreadInfo:
        return ThreadInfo(self.key, self._writes.seq, self._created_at, self._updated_at)

    # -- handlers, and the append every event goes through ---------------------------------------

    async def _post(self, msg: PostMessage) -> None:
        """A user message: stored (``user_message``, with its ``parent``), then its run
        queued. ``NotFound``: its parent is no run of this thread."""
        parent = msg.parent

        async def place() -> tuple[str, dict[str, Any], dict[str, Any]]:
            nonlocal parent
            if parent is LATEST:
                parent = await self._newest_run()
            elif parent is not None and parent != self._newest and (
                    await self.env.journal.node(self.key, parent)) is None:
                raise NotFound(f"no run {parent} in thread {self.key.thread_id!r}")
            message_id = new_id("msg")
            data: dict[str, Any] = {"message_id": message_id, "text": msg.text,
                                    "parent": parent}
            if msg.attachments:
                data["attachments"] = [a.wire() for a in await self._attachments(msg)]
            return message_id, data, data

        await self._ask_run(msg, USER_MESSAGE, place)

    async def _attachments(self, msg: PostMessage) -> list[Attachment]:
        """The message's attachments, made this thread's before the message is stored (the
        store checks each is the user's, finished, and unsent or this thread's, for all at
        once: ``NotFound`` otherwise, and nothing is stored)."""
        return await self.env.journal.claim_attachments(self.key.user_id, self.key.thread_id,
                                                        msg.attachments)

    async def _regenerate(self, msg: Regenerate) -> None:
        """Another answer to a stored message: ``answer_requested`` stored, then the run
        queued (it answers the message's text). ``NotFound``: no such message here."""

        async def place() -> tuple[str, dict[str, Any], dict[str, Any]]:
            message = await message_of(self.env.journal, self.key, msg.message_id)
            if message is None:
                raise NotFound(f"no message {msg.message_id} in thread "
                               f"{self.key.thread_id!r}")
            return msg.message_id, {"message_id": msg.message_id}, message.data

        await self._ask_run(msg, ANSWER_REQUESTED, place)

    async def _ask_run(self, msg: PostMessage | Regenerate, event_name: str,
                       place: Any) -> None:
        """What a send and a regenerate share: refused while shutting down, answered from the
        store for a ``client_msg_id`` seen before, admitted by the strategy, the event that
        asks for the run (``place()``: its message id, its data, and the data of the message
        the run answers) stored, the run queued, and ``Accepted``."""
        reply = msg.reply
        if self.phase in SHUTTING_DOWN:
            reply.fail(ActorStopped("the thread is shutting down"))
            return
        try:
            if msg.client_msg_id is not None:
                prior = await self.env.journal.find_message(self.key, msg.client_msg_id)
                if prior is not None:
                    reply.set(prior)  # idempotent retry: same answer, no second run
                    return
            if (budgets := self.env.budgets).enabled:  # else no coroutine on a send's path
                await budgets.check(self.env.journal, self.key.user_id)
            self._run_queue().admit(msg.strategy)
            message_id, data, message = await place()
            if msg.client_msg_id is not None:
                data["client_msg_id"] = msg.client_msg_id
            run_id = new_id("run")
            event = await self._writes.append(event_name, run_id, data)
        except (Busy, JournalUnavailable, Unstorable, NotFound, BudgetExceeded) as exc:
            reply.fail(exc)
            return
        self._newest = run_id
        context = RunContext(self.key.user_id, self.key.thread_id, run_id, message_id)
        control = RunControl.answering(context, message, event.seq)
        control.traceparent = msg.traceparent
        self._run_queue().add(control, msg.strategy)
        if msg.strategy == "interrupt":  # a parked run has no task to cancel: it ends here
            await parking.end_if_cancelled(self._writes, self._run_queue(), self.env.stats)
        reply.set(Accepted(self.key, message_id, run_id, event.seq))

    async def _newest_run(self) -> str | None:
        """The default parent: the run of the latest ``Accepted`` (None: the thread has none)."""
        if self._newest is UNKNOWN:
            node = await self.env.journal.newest_node(self.key)
            self._newest = node.run_id if node is not None else None
        return self._newest

    def _subscribe(self, msg: Subscribe) -> None:
        sub = msg.subscriber
        try:
            sub.deliver(Joined(self.key, self._writes.seq, msg.tag, self._created_at))
        except (MailboxFull, ActorStopped) as exc:
            msg.reply.fail(exc)
            return
        if self._subscribers is None:
            self._subscribers = {}
        self._subscribers[sub] = None
        msg.reply.set(self._writes.seq)

    def _stored(self, event: Event) -> None:
        """The journal stored ``event`` (called by the ``Sequencer``, in seq order)."""
        self._updated_at = event.ts
        stats = self.env.stats
        stats.events += 1
        if event.event in TERMINAL_EVENTS:
            stats.runs_ended[event.event] = stats.runs_ended.get(event.event, 0) + 1
        self._deliver(event)

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

