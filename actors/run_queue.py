"""The runs of one thread: its run queue, the phase of its runner, and the runner's loop.

``RunQueue`` is state and decisions, with no I/O, no clock and no awaiting: the thread actor
asks it whether a strategy admits a run, where the run goes, when to start a runner task, which
run is next, which run a cancel names, and what a shutdown or a crash does to the runs it holds.
The awaiting is done with the I/O they are given by ``run_queued`` (the runner task: each run
through the engine, its events written by the thread's append), ``drain`` (shutdown) and
``close_lost_run``.

A thread actor makes its queue for its first run (an idle actor stays small: docs/architecture.md); until
then its phase is IDLE, and a shutdown stops it at once. The phase is two facts, whether a
runner task is on and whether shutdown was asked, and moves only by these events (any other
pair is a bug, and raises)::

    phase     event     next      what it means
    IDLE      start     RUNNING   runs wait: the actor opens a nursery and starts the runner
    RUNNING   end       IDLE      the runner found no run left (or a crash cancelled it); the
                                  actor closes the nursery: an idle actor has none, and no task
    IDLE      shutdown  STOPPED   nothing to wait for: the actor stops
    RUNNING   shutdown  DRAINING  no new run; the runs get the grace, then are cancelled
    DRAINING  end       STOPPED   the last run has ended: the actor stops
    DRAINING  shutdown  DRAINING  shutdown asked again (after a restart): the drain goes on
    STOPPED   shutdown  STOPPED   likewise, with nothing left to drain
    STOPPED   start     DRAINING  only after a crash while draining: the restarted actor runs
                                  what the crash left queued, still refusing new runs

Invariants:

- At most one run is active, and only while a runner is on. The runner takes the runs one at a
  time (``start_next``, then ``finish`` when that run has ended), in queue order; a taken run
  never returns. When none is left the runner ends (``runner_ended``): no idle task.
- ``enqueue`` puts a run last. ``interrupt`` puts it first (the runs queued before it keep their
  order) and cancels the active run with reason ``interrupt``. ``reject`` admits a run only
  while nothing is active or pending, else raises ``Busy``, before anything is stored.
- A client cancels only the active run (PROTOCOL.md): a pending run is "not active".
- Every accepted run gets a terminal event. Shutdown, when the grace is over, cancels every run
  held, active and pending, with reason ``shutdown``: a pending run so cancelled still begins
  with ``agent_started``, and its agent is never called (``engine.execute``). A crash of the
  actor fails the active run (``internal error``); the pending ones stay queued for the
  restarted actor. A run whose journal failed under it is ended by ``close_lost_run``.
"""

from __future__ import annotations

import collections
import enum
from contextlib import asynccontextmanager
from functools import partial
import logging
from typing import TYPE_CHECKING, Any, AsyncIterator, Awaitable, Callable

import trio

from .engine import RunContext
from .execution import RunControl, execute
from .journal import Done
from .history import read_history
from .errors import Busy, Fenced, JournalUnavailable, UnknownRun
from .messages import AGENT_FAILED, AGENT_STARTED, Event, Strategy, ThreadKey

if TYPE_CHECKING:
    from .thread import ThreadEnv

log = logging.getLogger("threadline.thread")

#: The retries of ``close_lost_run``: the first after this many seconds, each next one after
#: twice as long, never longer than ``LOST_RUN_MAX_DELAY``.
LOST_RUN_FIRST_DELAY = 0.1
LOST_RUN_MAX_DELAY = 5.0

Append = Callable[[str, str | None, dict[str, Any]], Awaitable[Event]]
"""``append(event_name, run_id, data)``: the thread's durable write of one event."""
Submit = Callable[[str, str | None, dict[str, Any], Done], Any]
"""``submit(event_name, run_id, data, done)``: queue one event without waiting."""


class Phase(enum.Enum):
    IDLE = "idle"
    RUNNING = "running"
    DRAINING = "draining"
    STOPPED = "stopped"


TRANSITIONS: dict[tuple[Phase, str], Phase] = {
    (Phase.IDLE, "start"): Phase.RUNNING,
    (Phase.RUNNING, "end"): Phase.IDLE,
    (Phase.IDLE, "shutdown"): Phase.STOPPED,
    (Phase.RUNNING, "shutdown"): Phase.DRAINING,
    (Phase.DRAINING, "end"): Phase.STOPPED,
    (Phase.DRAINING, "shutdown"): Phase.DRAINING,
    (Phase.STOPPED, "shutdown"): Phase.STOPPED,
    (Phase.STOPPED, "start"): Phase.DRAINING,
}
RUNNER_ON = frozenset({Phase.RUNNING, Phase.DRAINING})
SHUTTING_DOWN = frozenset({Phase.DRAINING, Phase.STOPPED})


def advance(phase: Phase, event: str) -> Phase:
    """The phase after ``event``; raises ``RuntimeError`` for a pair the table does not have."""
    try:
        return TRANSITIONS[(phase, event)]
    except KeyError:
        raise RuntimeError(f"run queue: {event!r} in phase {phase.value}") from None


class RunQueue:
    """The runs of one thread and the phase of its runner. ``len()`` counts the pending runs
    (not the active one)."""

    __slots__ = ("phase", "active", "wake", "queued", "_pending")

    def __init__(self) -> None:
        self.phase = Phase.IDLE
        self.active: RunControl | None = None
        # Whoever waits for the runner to end (the actor's busy loop, or ``drain``, never both
        # at once) waits in this scope; ``runner_ended`` cancels it.
        self.wake: trio.CancelScope | None = None
        # The active run waits for one of its user's slots (``user_runs.py``) in this scope;
        # cancelling the active run cancels the wait too (``_cancel``).
        self.queued: trio.CancelScope | None = None
        self._pending: collections.deque[RunControl] = collections.deque()

    def __len__(self) -> int:
        return len(self._pending)

    def _move(self, event: str) -> None:
        self.phase = advance(self.phase, event)

    # -- the runner ---------------------------------------------------------------------------

    @property
    def runner_on(self) -> bool:
        return self.phase in RUNNER_ON

    @property
    def idle(self) -> bool:
        """No runner on and no run waiting for one."""
        return not self._pending and self.phase not in RUNNER_ON

    def start_runner(self) -> bool:
        """True if a runner task must start now: runs wait and none is on."""
        if self.phase in RUNNER_ON or not self._pending:
            return False
        self._move("start")
        return True

    def runner_ended(self) -> None:
        """The runner task has ended: wake whoever waits for that."""
        self._move("end")
        if self.wake is not None:
            self.wake.cancel()

    def start_next(self) -> RunControl | None:
        """Make the next pending run the active one; None when none is pending."""
        if self.active is not None:
            raise RuntimeError(f"run {self.active.context.run_id} is still active")
        if self._pending:
            self.active = self._pending.popleft()
        return self.active

    def finish(self) -> None:
        """The active run has ended."""
        self.active = None

    # -- what the thread's requests do ----------------------------------------------------------

    def run_ids(self) -> set[str]:
        """The runs this queue holds, active and pending."""
        held = [*self._pending, *([self.active] if self.active is not None else [])]
        return {control.context.run_id for control in held}

    def admit(self, strategy: Strategy) -> None:
        """Raise ``Busy`` if ``strategy`` refuses a new run now."""
        if strategy == "reject" and (self.active is not None or self._pending):
            raise Busy("a run is active on this thread")

    def add(self, control: RunControl, strategy: Strategy) -> None:
        """Queue an admitted run as ``strategy`` says."""
        if strategy == "interrupt":
            self._pending.appendleft(control)
            if self.active is not None:
                self._cancel(self.active, "interrupt")
        else:
            self._pending.append(control)

    def cancel_active(self, run_id: str | None) -> str:
        """Cancel the active run (it must be ``run_id``, if that is given); returns its id.
        Raises ``UnknownRun`` when no such run is active."""
        active = self.active
        if active is None or (run_id is not None and run_id != active.context.run_id):
            raise UnknownRun(f"no active run {run_id or ''}".rstrip())
        self._cancel(active, "cancel")
        return active.context.run_id

    def _cancel(self, control: RunControl, reason: str) -> None:
        control.cancel(reason)
        if control is self.active and self.queued is not None:
            self.queued.cancel()  # it waits for a slot: it ends without running

    def shutdown(self) -> bool:
        """Shutdown was asked: no new runs. True if a runner is on, with runs to drain."""
        self._move("shutdown")
        return self.phase is Phase.DRAINING

    def cancel_all(self, reason: str) -> None:
        """Cancel every run held, active and pending (shutdown, once the grace is over)."""
        for control in (self.active, *self._pending):
            if control is not None:
                self._cancel(control, reason)

    def crashed(self) -> None:
        """The actor crashed: its active run will end with ``agent_failed`` as it unwinds."""
        if self.active is not None:
            self.active.failure = "internal error"


# -- the awaiting -----------------------------------------------------------------------------


async def run_queued(runs: RunQueue, key: ThreadKey, env: ThreadEnv, append: Append,
                     submit: Submit) -> None:
    """The runner task: runs the pending runs one at a time until none is left. A run whose
    journal failed under it is ended by ``close_lost_run``. ``submit`` queues the pieces of
    a streamed answer, which nothing waits for."""

    def check(ctx: RunContext) -> None:
        if ctx.user_id != key.user_id or ctx.thread_id != key.thread_id:
            raise RuntimeError(f"run {ctx.run_id} is not a run of {key}")

    def submit_nowait(ctx: RunContext, event: str, data: dict[str, Any], done: Done) -> None:
        check(ctx)
        submit(event, ctx.run_id, data, done)

    async def emit(ctx: RunContext, event: str, data: dict[str, Any]) -> None:
        check(ctx)
        # A cancelled run emits nothing more: every emit is a cancellation point (the append
        # below is shielded once it starts, and may not yield at all).
        await trio.lowlevel.checkpoint_if_cancelled()
        await append(event, ctx.run_id, data)

    stats = env.stats
    try:
        while (control := runs.start_next()) is not None:
            stats.runs_started += 1
            stats.runs_active += 1
            started = trio.current_time()
            try:
                async with _user_slot(runs, env, control):
                    await execute(control, env.agent, env.tools, emit, submit=submit_nowait,
                                  history=partial(read_history, env.journal, key,
                                                  control.message_seq),
                                  interval=env.delta_interval)
            except JournalUnavailable as exc:
                ctx = control.context
                log.error("run %s of user %s, thread %s lost its journal: %s", ctx.run_id,
                          ctx.user_id, ctx.thread_id, exc)
                await close_lost_run(control, append)
            finally:
                runs.finish()
                stats.runs_active -= 1
                stats.run_seconds.observe(trio.current_time() - started)
    finally:
        runs.runner_ended()


@asynccontextmanager
async def _user_slot(runs: RunQueue, env: ThreadEnv, control: RunControl) -> AsyncIterator[None]:
    """Hold one of the run's user's slots (``user_runs.py``) while it runs. A run cancelled
    while it waits runs without one: ``execute`` ends it at once, its agent never called. The
    run itself is outside the waiting scope, so a cancel that races with the slot being given
    reaches the run through its own scope only."""
    user_id, held = control.context.user_id, False
    with trio.CancelScope() as runs.queued:
        if control.cancel_reason is None:
            await env.user_runs.acquire(user_id, control)
            held = True
    runs.queued = None
    try:
        yield
    finally:
        if held:
            env.user_runs.release(user_id, control)


async def _until_runner_ends(runs: RunQueue) -> None:
    """Block until no runner is on."""
    if runs.runner_on:
        try:
            with trio.CancelScope() as runs.wake:
                await trio.sleep_forever()
        finally:
            runs.wake = None


async def drain(runs: RunQueue, grace: float, reason: str = "shutdown") -> None:
    """Shutdown (or deletion, with ``reason`` ``deleted`` and no grace): refuse new runs, let
    those held finish for ``grace`` seconds, then cancel them with ``reason``. Blocks until the
    runner has ended."""
    if runs.shutdown():
        with trio.move_on_after(grace):
            await _until_runner_ends(runs)
        runs.cancel_all(reason)
        await _until_runner_ends(runs)


async def close_lost_run(control: RunControl, append: Append) -> None:
    """The store failed under a run: once it is back, end the run with ``agent_failed``
    (after its ``agent_started``, if that is what failed), retrying with a backoff from
    ``LOST_RUN_FIRST_DELAY`` to ``LOST_RUN_MAX_DELAY``. Blocks until written; a shutdown
    meanwhile leaves the run to the next start's recovery, and a ``Fenced`` write (this
    process lost the right to write the thread) to its new writer's."""
    run_id, delay = control.context.run_id, LOST_RUN_FIRST_DELAY
    while True:
        try:
            if not control.started:
                await append(AGENT_STARTED, run_id, {})
                control.started = True
            await append(AGENT_FAILED, run_id, {"error": "storage unavailable"})
            return
        except Fenced:
            return  # another writer has the thread now: its recovery ends the run
        except JournalUnavailable:
            await trio.sleep(delay)
            delay = min(delay * 2, LOST_RUN_MAX_DELAY)
