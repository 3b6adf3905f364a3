"""A run's execution: the ``RunControl`` a thread keeps on its active run, and ``execute``, which
takes a run from ``agent_started`` to exactly one terminal event.

Run lifecycle (PROTOCOL.md): ``agent_started``, then the agent's events, then exactly one of
``agent_completed`` (it returned), ``agent_failed`` (it or a tool it did not catch raised) or
``agent_cancelled`` (its cancel scope was cancelled; the reason is set by whoever cancelled).
What the agent wrote is queued before the terminal event, also when the run is cancelled, and
``agent_started`` is written exactly once, also when the store failed it (``close_lost_run``
in ``run_queue.py`` writes it again, before ``agent_failed``).

A failed run is logged once, on ``threadline.agent``, with its run id, user and thread. An
expected failure (``AgentError``: the model endpoint down or refusing, a tool's error the agent
did not catch) is one warning line saying what ``agent_failed`` says, without a traceback: an
operator reads it, there is no bug to find. Any other exception is a bug in the agent: an error
with its traceback.
"""

from __future__ import annotations

import logging
from typing import Any

import trio

from .engine import Agent, Emit, History, Run, RunContext, Submit, _no_history, describe
from .journal import Done
from .errors import AgentError, JournalUnavailable, JournalWedged, Unstorable
from .messages import AGENT_CANCELLED, AGENT_COMPLETED, AGENT_FAILED, AGENT_STARTED
from .stream import DEFAULT_INTERVAL
from .tools import ToolRegistry

log = logging.getLogger("threadline.engine")
agent_log = logging.getLogger("threadline.agent")  # how each run failed

#: Bound on the terminal write when a run is torn down by cancellation (shutdown or a crash of
#: its thread): long enough for a group commit under load, short enough not to stall shutdown.
TERMINAL_WRITE_TIMEOUT = 5.0


class RunControl:
    """The handle a thread keeps on its active run: its context and its cancel scope."""

    __slots__ = ("context", "text", "message_seq", "scope", "cancel_reason", "failure", "started")

    def __init__(self, context: RunContext, text: str, message_seq: int = 0) -> None:
        self.context = context
        self.text = text
        self.message_seq = message_seq  # of its user_message: history is what came before
        self.scope = trio.CancelScope()
        self.cancel_reason: str | None = None
        self.failure: str | None = None
        self.started = False  # its agent_started is stored

    def cancel(self, reason: str) -> None:
        """Cancel the run; it ends with ``agent_cancelled`` ``{reason}``. First reason wins."""
        if self.cancel_reason is None:
            self.cancel_reason = reason
        self.scope.cancel()


async def execute(control: RunControl, agent: Agent, tools: ToolRegistry, emit: Emit, *,
                  history: History = _no_history, submit: Submit | None = None,
                  interval: float = DEFAULT_INTERVAL) -> str:
    """Run ``agent`` for ``control`` from ``agent_started`` to its terminal event.

    ``history`` reads the thread's earlier turns; ``submit`` queues the pieces of a streamed
    answer (without it, ``run.write`` raises); ``interval`` paces ``agent_delta``.
    Returns the name of the terminal event. What the agent wrote is stored before the terminal
    event, also when the run is cancelled. When the surrounding scope is cancelled (shutdown, a
    crash of the thread), the rest of the answer and the terminal event are still written,
    shielded and bounded by ``TERMINAL_WRITE_TIMEOUT``, and then ``Cancelled`` propagates.
    Raises ``JournalUnavailable`` when the journal failed under the run.
    """
    ctx = control.context
    run = Run(ctx, control.text, emit, tools, history=history, submit=submit, interval=interval)
    terminal: tuple[str, dict[str, Any]]
    try:
        # Outside the run's scope: a run cancelled while still queued (interrupt, shutdown)
        # still begins with agent_started, and its agent is then never called.
        await _start(control, run, emit, submit)
        with control.scope:
            try:
                answer = await agent(run)
            except JournalWedged:
                run.abandon_stream()  # its pieces would follow a run that is torn down
                raise  # not the agent's failure: the thread restarts
            except Exception as exc:
                _log_failure(ctx, exc)
                terminal = (AGENT_FAILED, {"error": describe(exc)})
            else:
                if answer is None:
                    answer = run.written or ""
                terminal = (AGENT_COMPLETED, {"text": str(answer)})
        if control.scope.cancelled_caught:
            terminal = (AGENT_CANCELLED, {"reason": control.cancel_reason or "cancel"})
        terminal = _end_stream(run, terminal)
    except BaseException as exc:
        # Cancelled from outside (shutdown, a crash of the thread): a bare ``Cancelled``, or a
        # group of them when the agent had a nursery of its own. An ``Exception`` (the journal
        # failed, ...) is the caller's to handle.
        if isinstance(exc, Exception):
            raise
        if control.failure is not None:
            terminal = (AGENT_FAILED, {"error": control.failure})
        else:
            terminal = (AGENT_CANCELLED, {"reason": control.cancel_reason or "shutdown"})
        with trio.CancelScope(shield=True) as shield:
            shield.deadline = trio.current_time() + TERMINAL_WRITE_TIMEOUT
            if not control.started:  # cancelled before agent_started was stored
                await emit(ctx, AGENT_STARTED, {})
                control.started = True
            terminal = _end_stream(run, terminal)
            await emit(ctx, *terminal)
        raise
    try:
        await emit(ctx, *terminal)
    except Unstorable as exc:  # e.g. an answer with a NUL character: the run still ends
        terminal = (AGENT_FAILED, {"error": f"the answer could not be stored: {exc}"})
        await emit(ctx, *terminal)
    return terminal[0]


def _log_failure(ctx: RunContext, exc: Exception) -> None:
    """One line for an expected failure; a bug's traceback with it."""
    if _expected(exc):
        agent_log.warning("run %s of %s/%s: %s", ctx.run_id, ctx.user_id, ctx.thread_id,
                          describe(exc))
    else:
        agent_log.error("run %s of %s/%s failed: %s", ctx.run_id, ctx.user_id, ctx.thread_id,
                        describe(exc), exc_info=exc)


def _expected(exc: BaseException) -> bool:
    """An ``AgentError``, or a group (an agent's own nursery) of nothing else."""
    if isinstance(exc, BaseExceptionGroup):
        return all(_expected(e) for e in exc.exceptions)
    return isinstance(exc, AgentError)


async def _start(control: RunControl, run: Run, emit: Emit, submit: Submit | None) -> None:
    """Write ``agent_started``; queued without waiting when the thread can (``run.latch``
    counts it), ``control.started`` then unset if the store fails it."""
    if submit is None:
        await emit(control.context, AGENT_STARTED, {})
        control.started = True
    else:
        await trio.lowlevel.checkpoint_if_cancelled()  # as emit: a cancellation point
        control.started = True  # before: a journal may answer (and fail it) inside submit
        submit(control.context, AGENT_STARTED, {}, _Started(control, run.latch.queued()))


class _Started:
    """The outcome of a queued ``agent_started`` (``Done``)."""

    __slots__ = ("control", "queued")

    def __init__(self, control: RunControl, queued: Done) -> None:
        self.control = control
        self.queued = queued

    def set(self, value: Any) -> None:
        self.queued.set(value)

    def fail(self, error: BaseException) -> None:
        self.control.started = False  # close_lost_run writes it again, before agent_failed
        self.queued.fail(error)




def _end_stream(run: Run, terminal: tuple[str, dict[str, Any]]) -> tuple[str, dict[str, Any]]:
    """Queue the rest of the streamed answer; the terminal event to write after it. Raises
    ``JournalUnavailable`` when an event of the run was not stored (the thread ends it)."""
    run.latch.check()
    try:
        run.end_stream()
    except (JournalUnavailable, JournalWedged):
        raise  # the journal is gone or wedged: the thread closes the run or restarts
    except Exception as exc:
        return (AGENT_FAILED, {"error": f"the answer could not be stored: {describe(exc)}"})
    return terminal
