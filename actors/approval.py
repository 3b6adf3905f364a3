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
  and ``interrupt`` end it (``agent_cancelled``), ``reject`` is ``busy``. This process's wait
  is the run's task waiting in its thread's nursery: a run waiting when the server stops ends
  as any active run does (durable waits, that hold no task, are the next step: see the README).
"""

from __future__ import annotations

import math

import trio

from .errors import UnknownCall
from .reply import Reply

__all__ = ["Decision", "PendingApproval", "EXPIRED", "MAX_REASON_BYTES"]

EXPIRED = "expired"        # the reason of the server's own decision when a wait expires
MAX_REASON_BYTES = 1024    # PROTOCOL.md: a decision's reason is at most 1 KiB

Decision = tuple[bool, "str | None"]


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
