"""Tool calls that wait for a person's approval (PROTOCOL.md 1.1, "Tool approval").

A call that needs approval (the tool's registration says so, or the agent for one call) stores
``approval_requested`` and waits; nothing of the tool runs before a decision is stored. A
decision reaches the thread actor (``Decide``), which finds the call pending on its active run
and hands the decision over without waiting (``decide_nowait``); the run's own task then stores
``approval_decided`` (through its ``RunWriter``) and only then answers the decider: ``ok`` once
the decision is stored.

Invariants:

- The first decision wins: it is taken synchronously in the actor's task, so a second one, on
  any connection, is refused at once (``UnknownCall``), as is one for a call that is not
  pending (never asked, already decided, its run ended).
- A decider is always answered: ``ok`` once ``approval_decided`` is stored, or the error that
  kept it from being stored (the run was cancelled meanwhile: ``UnknownCall``; the store
  failed: ``JournalUnavailable``).
- An approval with an expiry is decided by the server when it passes (``approved: false``,
  ``reason: "expired"``), through the same path as a person's decision.
- While it waits the run is its thread's active run: ``enqueue`` waits behind it, ``cancel``
  and ``interrupt`` end it (``agent_cancelled``), ``reject`` is ``busy``. A resumable agent's
  run parks (``RunParked``, ``parking.py``): no task, and it outlives the process. Any other
  agent's run waits in its task, in its thread's nursery, and a stop ends it as any active run.
- A denial's ``tool_completed`` error is ``"denied: " + reason``, and ``"denied: no reason
  given"`` for a decision with no reason (or an empty one).
"""

from __future__ import annotations

import math
from typing import Any, Sequence

import attrs
import trio

from .errors import UnknownCall
from .journal import Journal, OpenRun
from .messages import (APPROVAL_DECIDED, APPROVAL_REQUESTED, TERMINAL_EVENTS, TOOL_COMPLETED,
                       TOOL_EXECUTING, Event)
from .reply import Reply
from .stats import ThreadStats

__all__ = ["Decision", "PendingApproval", "EXPIRED", "MAX_REASON_BYTES", "PriorCall", "RunParked",
           "Waiting", "count_decision", "decision_data", "denial", "prior_calls", "resumable",
           "run_events", "wait_of"]

EXPIRED = "expired"        # the reason of the server's own decision when a wait expires
MAX_REASON_BYTES = 1024    # PROTOCOL.md: a decision's reason is at most 1 KiB

Decision = tuple[bool, "str | None"]


def resumable(agent: Any) -> Any:
    """Mark ``agent`` resumable (a decorator): a call of it that waits for approval parks the
    run instead of holding a task (``RunParked``), and the agent is called again when the
    decision comes, with ``run.resumed`` set and ``run.transcript()`` holding what the run
    stored; ``run.call_tool`` answers the calls already made from the transcript (a tool that
    ran is never run again). An agent not marked keeps its task while it waits, and a restart
    ends such a run."""
    agent.resumable = True
    return agent


def is_resumable(agent: Any) -> bool:
    return bool(getattr(agent, "resumable", False))


class PendingApproval:
    """One tool call waiting for a decision (see the module header)."""

    __slots__ = ("call_id", "tool", "decided", "approved", "reason", "reply", "_event")

    def __init__(self, call_id: str, tool: str) -> None:
        self.call_id = call_id
        self.tool = tool
        self.decided = False
        self.approved = False
        self.reason: str | None = None
        self.reply: Reply[None] | None = None  # the decider's, answered once stored
        self._event = trio.Event()

    def decide_nowait(self, approved: bool, reason: str | None, reply: Reply[None]) -> None:
        """Take a decision for the waiting run; ``reply`` is answered once it is stored.
        Raises ``UnknownCall`` if a decision was taken already."""
        if self.decided:
            raise UnknownCall(f"tool call {self.call_id} was decided already")
        self.decided, self.approved, self.reason, self.reply = True, approved, reason, reply
        self._event.set()

    async def wait(self, deadline: float = math.inf) -> Decision:
        """The decision; at ``deadline`` (trio time), the server's: not approved, expired."""
        with trio.move_on_at(deadline):
            await self._event.wait()
        if not self.decided:
            self.decided, self.approved, self.reason = True, False, EXPIRED
        return self.approved, self.reason

    def stored(self) -> None:
        """``approval_decided`` is stored: the decider hears ``ok``."""
        reply, self.reply = self.reply, None
        if reply is not None:
            reply.set(None)

    def not_stored(self, error: BaseException) -> None:
        """The decision was not stored (the run ended, or the store failed): the decider hears
        why, as an error it can answer with."""
        reply, self.reply = self.reply, None
        if reply is not None:
            reply.fail(error if isinstance(error, Exception)
                       else UnknownCall(f"the run of tool call {self.call_id} ended"))


# -- waits that hold no task: a resumable agent's run parks ---------------------------------------

class RunParked(BaseException):
    """Raised out of a resumable agent's ``call_tool`` once ``approval_requested`` is stored:
    the run parks (its task ends, nothing of it stays in memory but its ``RunControl``), and a
    decision resumes it: its agent is called again with ``run.resumed`` and the run's stored
    events (``run.transcript()``). A ``BaseException``, so that an agent's ``except
    Exception`` does not swallow it."""


@attrs.frozen(slots=True)
class Waiting:
    """What a run's stored events say of its wait (``wait_of``)."""

    call_id: str
    tool: str
    expires_at: float | None          # wall-clock seconds, or None for no limit
    decided: Decision | None = None   # stored, and not yet acted on (no tool event after it)


@attrs.frozen(slots=True)
class PriorCall:
    """A tool call of a run, as the run's stored events tell it (``prior_calls``)."""

    call_id: str
    tool: str
    args: dict[str, Any]
    expires_at: float | None = None  # of its approval, if it asked one
    executing: bool = False
    decided: Decision | None = None
    completed: dict[str, Any] | None = None


def prior_calls(events: Sequence[Event]) -> list[PriorCall]:
    """The tool calls of a run's stored events (in seq order), in the order they were made:
    the one reading of a run's call events that a resumed run (``Run.call_tool``) and a wait
    (``wait_of``) share."""
    calls: dict[str, PriorCall] = {}
    for event in events:
        data = event.data
        call_id = data.get("call_id")
        if not isinstance(call_id, str):
            continue  # every event of a call names it: an event without one is not a call's
        if event.event in (APPROVAL_REQUESTED, TOOL_EXECUTING) and call_id not in calls:
            calls[call_id] = PriorCall(call_id, str(data.get("tool")), data.get("args") or {},
                                       data.get("expires_at"))
        if call_id not in calls:
            continue
        call = calls[call_id]
        if event.event == TOOL_EXECUTING:
            calls[call_id] = attrs.evolve(call, executing=True)
        elif event.event == APPROVAL_DECIDED:
            calls[call_id] = attrs.evolve(call, decided=(bool(data.get("approved")),
                                                         data.get("reason")))
        elif event.event == TOOL_COMPLETED:
            calls[call_id] = attrs.evolve(call, completed=dict(data))
    return list(calls.values())


def wait_of(events: Sequence[Event]) -> Waiting | None:
    """The wait of a run whose stored events are ``events`` (in seq order): its last call that
    asked approval and that no ``tool_executing``/``tool_completed`` followed, if the run has
    no terminal event; None when it is not waiting."""
    if any(event.event in TERMINAL_EVENTS for event in events):
        return None
    waiting = [c for c in prior_calls(events) if not c.executing and c.completed is None]
    if not waiting:
        return None
    call = waiting[-1]
    return Waiting(call.call_id, call.tool, call.expires_at, call.decided)


def denial(reason: str | None) -> str:
    """The ``tool_completed`` error (and ``ToolDenied``'s message) of a call not approved."""
    return f"denied: {reason or 'no reason given'}"


def decision_data(call_id: str, approved: bool, reason: str | None) -> dict[str, Any]:
    """The data of ``approval_decided``."""
    data: dict[str, Any] = {"call_id": call_id, "approved": approved}
    if reason is not None:
        data["reason"] = reason
    return data


def count_decision(stats: ThreadStats, approved: bool, reason: str | None) -> str:
    """Count a stored decision by outcome (``approved``, ``denied``, ``expired``); the outcome."""
    outcome = "approved" if approved else EXPIRED if reason == EXPIRED else "denied"
    stats.approvals_decided[outcome] = stats.approvals_decided.get(outcome, 0) + 1
    return outcome


async def run_events(journal: Journal, run: OpenRun) -> list[Event]:
    """The stored events of an open run, from its ``user_message`` on (the store filters them:
    other runs' events after it, thousands of messages queued behind a waiting run, cost no
    memory here)."""
    return await journal.run_events(run.key, run.run_id, max(0, run.seq - 1))
