"""A run's execution: ``execute``, which takes a run from ``agent_started`` to exactly one
terminal event.

Run lifecycle (PROTOCOL.md): ``agent_started``, then the agent's events, then exactly one of
``agent_completed`` (it returned), ``agent_failed`` (it or a tool it did not catch raised) or
``agent_cancelled`` (its cancel scope was cancelled; the reason is set by whoever cancelled).
``execute`` decides which; the run's ``RunWriter`` (``run_writer.py``) writes it, after what
the agent wrote, also when the run is cancelled, and ``agent_started`` exactly once, also when
the store failed it (``RunWriter.close_lost`` writes it again, before ``agent_failed``).

A failed run is logged once, on ``threadline.agent``, with its run id, user and thread. An
expected failure (``AgentError``: the model endpoint down or refusing, a tool's error the agent
did not catch) is one warning line saying what ``agent_failed`` says, without a traceback: an
operator reads it, there is no bug to find. Any other exception is a bug in the agent: an error
with its traceback.
"""

from __future__ import annotations

import logging

from .approval import RunParked
from .engine import Agent, Run, describe, writer_of
from .errors import AgentError, JournalUnavailable, JournalWedged, ThreadReload
from .messages import AGENT_CANCELLED, AGENT_COMPLETED, AGENT_FAILED
from .run_writer import TERMINAL_WRITE_TIMEOUT, RunContext, RunControl, Terminal
from .usage import BUDGET_EXCEEDED, BudgetExceeded

__all__ = ["PARKED", "TERMINAL_WRITE_TIMEOUT", "RunControl", "execute"]

PARKED = "parked"  # what ``execute`` returns for a run that waits for a decision, parked

log = logging.getLogger("threadline.engine")
agent_log = logging.getLogger("threadline.agent")  # how each run failed


async def execute(run: Run, agent: Agent) -> str:
    """Run ``agent`` for ``run`` from ``agent_started`` to its terminal event.

    Returns the name of the terminal event. What the agent wrote is stored before the terminal
    event, also when the run is cancelled. When the surrounding scope is cancelled (shutdown, a
    crash of the thread), the rest of the answer and the terminal event are still written,
    shielded and bounded by ``TERMINAL_WRITE_TIMEOUT``, and then ``Cancelled`` propagates.
    Raises ``JournalUnavailable`` when the journal failed under the run.
    """
    writer = writer_of(run)
    control = writer.control
    terminal: Terminal
    try:
        # Outside the run's scope: a run cancelled while still queued (interrupt, shutdown)
        # still begins with agent_started, and its agent is then never called.
        await writer.start()
        with control.scope:
            try:
                answer = await agent(run)
            except JournalWedged:
                writer.abandon_stream()  # its pieces would follow a run that is torn down
                raise  # not the agent's failure: the thread restarts
            except (JournalUnavailable, ThreadReload):
                raise  # the store failed under the run, not the agent: the runner closes it
            except RunParked:
                return PARKED  # no terminal event: a decision resumes the run
            except BudgetExceeded as exc:  # before a model call (``Run.model_call``)
                ctx = control.context
                agent_log.warning("run %s of %s/%s: %s", ctx.run_id, ctx.user_id,
                                  ctx.thread_id, exc)
                terminal = (AGENT_FAILED, {"error": BUDGET_EXCEEDED})
            except Exception as exc:
                _log_failure(control.context, exc)
                terminal = (AGENT_FAILED, {"error": describe(exc)})
            else:
                if answer is None:
                    answer = run.written or ""
                terminal = (AGENT_COMPLETED, {"text": str(answer)})
        if control.scope.cancelled_caught:
            terminal = (AGENT_CANCELLED, {"reason": control.cancel_reason or "cancel"})
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
        await writer.end_shielded(terminal)
        raise
    return await writer.end(terminal)


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
