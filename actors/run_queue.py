"""The runs of one thread: its run queue, the phase of its runner, and the runner's loop.

``RunQueue`` is state and decisions, with no I/O, no clock and no awaiting: the thread actor
asks it whether a strategy admits a run, where the run goes, when to start a runner task, which
run is next, which run a cancel names, and what a shutdown or a crash does to the runs it holds.
The awaiting is done by ``run_queued`` (the runner task: for each run, in turn, a ``RunWriter``
over the thread's sequencer, ``run_writer.py``, and the agent's ``Run`` over it, through
``execute``) and ``drain`` (shutdown). ``ThreadEnv``, what every thread of a runtime shares, is
declared here, where the runs use it: the thread actor imports this module, never the reverse.

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
  with ``agent_started``, and its agent is never called (``execution.execute``). A crash of the
  actor fails the active run (``internal error``); the pending ones stay queued for the
  restarted actor. A run whose journal failed under it is ended by its writer
  (``RunWriter.close_lost``).
- A run holds one of its user's slots (``user_runs.py``) while it runs, from before its
  ``agent_started`` to its terminal event; a run cancelled while it waits for one runs
  without it (``_user_slot``).
"""

from __future__ import annotations

import collections
import enum
import logging
import time
from contextlib import asynccontextmanager
from functools import partial
from typing import Any, AsyncIterator, Callable

import attrs
import trio

from .engine import Agent, Run
from .errors import Busy, JournalUnavailable, UnknownRun
from .approval import is_resumable
from .attachments import for_run
from .execution import execute
from .history import read_history
from .journal import Journal
from .messages import AGENT_FAILED, Strategy
from .run_writer import RunControl, RunWriter
from .sequencer import Sequencer
from .stats import ThreadStats
from .stream import DEFAULT_INTERVAL
from .tools import ToolRegistry
from .tracing import NO_TRACING, Tracing, agent_name
from .usage import NO_BUDGETS, Budgets
from .user_runs import UserRuns

log = logging.getLogger("threadline.thread")


@attrs.define
class ThreadEnv:
    """What every thread actor of a runtime shares."""

    journal: Journal
    agent: Agent
    tools: ToolRegistry
    clock: Callable[[], float] = time.time  # event timestamps: wall clock, seconds
    stats: ThreadStats = attrs.Factory(ThreadStats)
    delta_interval: float = DEFAULT_INTERVAL  # agent_delta pacing (``stream.py``)
    user_runs: UserRuns = attrs.Factory(UserRuns)  # runs of one user at once (``user_runs.py``)
    budgets: Budgets = NO_BUDGETS  # tokens per user and period (``usage.py``)
    tracing: Tracing = NO_TRACING  # spans of runs, model and tool calls (``tracing.py``)

    @property
    def parked(self) -> set[Any]:
        """The threads with a parked run (``parking.py``; kept in ``stats``, which /metrics
        reads): found by the start's recovery, kept as runs park and go on, so that loading a
        thread costs no look-up unless it has one."""
        return self.stats.parked


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
        """No runner on and no run waiting for one (a parked run holds no runner)."""
        return not self._pending and self.phase not in RUNNER_ON

    @property
    def wants_runner(self) -> bool:
        """A runner is on, or runs wait for one and no parked run holds them back."""
        return self.phase in RUNNER_ON or (bool(self._pending) and self.parked is None)

    @property
    def parked(self) -> RunControl | None:
        """The active run, if it is parked (waiting for a decision, with no task)."""
        active = self.active
        return active if active is not None and active.parked is not None else None

    def resume(self) -> RunControl:
        """The parked run goes on: it runs next, before the runs queued behind it."""
        control = self.parked
        if control is None:
            raise RuntimeError("no parked run to resume")
        control.parked = None
        control.renew_scope()
        self.active = None
        self._pending.appendleft(control)
        return control

    def take_pending(self) -> list[RunControl]:
        """The runs waiting to run, taken out (nothing will run them: see ``parking``)."""
        pending, self._pending = list(self._pending), collections.deque()
        return pending

    def put_first(self, control: RunControl) -> None:
        """A run taken back from the store goes first (a decided wait, resumed)."""
        self._pending.appendleft(control)

    def end_parked(self) -> RunControl:
        """The parked run ended (its terminal event is written): the next may run."""
        control = self.parked
        if control is None:
            raise RuntimeError("no parked run to end")
        control.parked = None
        self.active = None
        return control

    def start_runner(self) -> bool:
        """True if a runner task must start now: runs wait, none is on and none is parked."""
        if self.phase in RUNNER_ON or not self._pending or self.parked is not None:
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
        if self.parked is not None:
            return None  # the runs behind it wait until it is decided
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
            if control is not None and control.parked is None:  # a parked run outlives a stop
                self._cancel(control, reason)

    def crashed(self) -> None:
        """The actor crashed: its active run will end with ``agent_failed`` as it unwinds."""
        if self.active is not None:
            self.active.failure = "internal error"


# -- the awaiting -----------------------------------------------------------------------------


async def run_queued(runs: RunQueue, sequencer: Sequencer, env: ThreadEnv) -> None:
    """The runner task: runs the pending runs one at a time until none is left, each written
    by its own ``RunWriter`` over the thread's ``sequencer``. A run whose journal failed under
    it is ended by its writer (``close_lost``)."""
    stats = env.stats
    try:
        while (control := runs.start_next()) is not None:
            writer = RunWriter(sequencer, control, interval=env.delta_interval,
                               stats=env.stats)
            control.resumable = is_resumable(env.agent)
            try:
                async with _user_slot(runs, env, control):
                    # Counted from here: a run waiting for its user's slot has not started.
                    stats.runs_started += 1
                    stats.runs_active += 1
                    started = trio.current_time()
                    try:
                        history = partial(read_history, env.journal, sequencer.key,
                                          control.context.run_id)
                        attachments = for_run(env.journal, control.context.user_id,
                                              control.attachments)
                        run = Run(writer, env.tools, history=history, attachments=attachments,
                                  budgets=env.budgets, tracing=env.tracing)
                        with env.tracing.run(control.context, control.traceparent,
                                             agent_name(env.agent)) as span:
                            outcome = await execute(run, env.agent)
                            span.set("threadline.run.outcome", outcome)
                            if outcome == AGENT_FAILED:
                                span.error(AGENT_FAILED)
                        # ``PARKED``: the run waits for a decision, with no task; its slot
                        # and the runner are let go, and it stays the thread's active run.
                    finally:
                        stats.runs_active -= 1
                        stats.run_seconds.observe(trio.current_time() - started)
            except JournalUnavailable as exc:
                ctx = control.context
                log.error("run %s of user %s, thread %s lost its journal: %s", ctx.run_id,
                          ctx.user_id, ctx.thread_id, exc)
                await writer.close_lost()
            finally:
                if control.parked is None:
                    runs.finish()
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
            env.stats.runs_waiting += 1
            try:
                await env.user_runs.acquire(user_id, control)
            finally:
                env.stats.runs_waiting -= 1
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
