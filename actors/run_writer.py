"""``RunWriter``: the one object that writes a run's events, from ``agent_started`` to its
terminal event. The run's ``RunContext`` (who and what it is for) and the ``RunControl`` its
thread keeps on it live here too.

The thread's runner builds one writer per run (``run_queue.run_queued``) from the thread's
``Sequencer`` and the run's ``RunControl``; the agent's ``Run`` (``engine.py``) and
``execute`` (``execution.py``) write through it and through nothing else. Every event is
stamped from the writer's frozen context (its run id) and the sequencer's key (its user and
thread), both made by the thread from its own key: a writer cannot write another run's events,
by construction, so nothing checks it per event.

Invariants:

- Order: before any other event of the run is queued, what the agent wrote is queued
  (``AnswerStream.flush_nowait``; queuing is synchronous and gives the seq), so no event
  overtakes text written earlier, the terminal one included.
- Only the events the agent must know stored before it goes on are awaited (``append``: a
  tool's ``tool_executing`` before the tool runs, its ``tool_completed``). ``agent_started``
  (``start``) and ``agent_thinking`` (``send``) are queued without waiting while fewer than
  ``MAX_QUEUED`` are on their way; the pieces of the answer are the stream's (``stream.py``),
  paced by the program's one ``Pacer`` and queued by the stream straight to the sequencer.
- The failure latch: when the store fails an event queued without waiting, the run writes
  nothing more (every later event, a piece included, raises ``JournalUnavailable``): later
  events would follow the last durable one, leaving the run without its beginning or its
  thinking. The runner answers by ``close_lost``: once the store is back, ``agent_failed``,
  after ``agent_started`` if that is what failed (``RunControl.started`` is unset then).
- Every awaited write is a cancellation point before it starts, and shielded once started (the
  sequencer's): a cancelled run writes nothing more of its own, and the end of the run is the
  writer's. ``end`` writes the terminal event after the rest of the answer, an ``Unstorable``
  answer ending ``agent_failed`` instead; ``end_shielded`` does the same for a run torn down by
  cancellation (shutdown, a crash of its thread), shielded and bounded by
  ``TERMINAL_WRITE_TIMEOUT``, writing ``agent_started`` first if it was never stored: a run
  cancelled before it ran still begins with it.
"""

from __future__ import annotations

import logging
import math
from typing import Any

import attrs
import trio

from .approval import (Decision, PendingApproval, RunParked, Waiting, count_decision,
                       decision_data)
from .errors import AgentError, Fenced, JournalUnavailable, JournalWedged, Unstorable
from .messages import (AGENT_DELTA, AGENT_FAILED, AGENT_STARTED, APPROVAL_DECIDED,
                       APPROVAL_REQUESTED)
from .pacer import Pacer
from .sequencer import Sequencer
from .stats import ThreadStats
from .stream import DEFAULT_INTERVAL, AnswerStream
from .usage import Usage

log = logging.getLogger("threadline.engine")

#: A run's events queued without waiting, at most (``send``; the pieces have their own bound).
MAX_QUEUED = 64
#: Bound on the terminal write when a run is torn down by cancellation (shutdown or a crash of
#: its thread): long enough for a group commit under load, short enough not to stall shutdown.
TERMINAL_WRITE_TIMEOUT = 5.0
#: The retries of ``close_lost``: the first after this many seconds, each next one after twice
#: as long, never longer than ``LOST_RUN_MAX_DELAY``.
LOST_RUN_FIRST_DELAY = 0.1
LOST_RUN_MAX_DELAY = 5.0

Terminal = tuple[str, dict[str, Any]]


@attrs.frozen(slots=True)
class RunContext:
    """Who and what a run is for. Frozen: nothing downstream can re-address a run."""

    user_id: str
    thread_id: str
    run_id: str
    request_id: str  # the id of the user_message the run answers


def started_data(context: RunContext) -> dict[str, Any]:
    """``agent_started``'s data: the message the run answers (PROTOCOL.md 1.1)."""
    return {"message_id": context.request_id}


class RunControl:
    """The handle a thread keeps on its run: its context and its cancel scope."""

    __slots__ = ("context", "text", "request_seq", "scope", "cancel_reason", "failure", "started",
                 "approvals", "resumable", "parked", "transcript", "attachments", "usage",
                 "traceparent")

    def __init__(self, context: RunContext, text: str, request_seq: int = 0) -> None:
        self.context = context
        self.text = text
        self.request_seq = request_seq  # of the event that asked for it (its first)
        self.scope = trio.CancelScope()
        self.cancel_reason: str | None = None
        self.failure: str | None = None
        self.started = False  # its agent_started is stored (or queued, and not failed)
        self.approvals: dict[str, PendingApproval] = {}  # its tool calls waiting for a person
        self.resumable = False  # its agent parks while it waits (``approval.RunParked``)
        self.parked: Waiting | None = None  # parked: no task, waiting for a decision
        self.transcript: list[Any] | None = None  # a resumed run's stored events
        self.attachments: list[dict[str, Any]] = []  # its message's (``user_message`` data)
        self.usage: Usage | None = None  # what its agent reported (``Run.report_usage``)
        self.traceparent: str | None = None  # of the request that asked for it

    @classmethod
    def answering(cls, context: RunContext, message: dict[str, Any],
                  request_seq: int) -> RunControl:
        """The control of a run that answers the message whose ``user_message`` data is
        ``message``: its text and its attachments."""
        control = cls(context, str(message.get("text", "")), request_seq)
        listed = message.get("attachments")
        control.attachments = [a for a in listed if isinstance(a, dict)] if isinstance(
            listed, list) else []
        return control

    def renew_scope(self) -> None:
        """A fresh cancel scope, for a parked run resumed (its old one was entered once)."""
        self.scope = trio.CancelScope()

    def terminal(self, name: str, data: dict[str, Any]) -> Terminal:
        """A terminal event of the run: its ``usage`` added, when its agent reported any
        (PROTOCOL.md 1.1: on every terminal event, a cancelled or failed run's too)."""
        if self.usage is not None:
            data["usage"] = self.usage.wire()
        return name, data

    def cancel(self, reason: str) -> None:
        """Cancel the run; it ends with ``agent_cancelled`` ``{reason}``. First reason wins."""
        if self.cancel_reason is None:
            self.cancel_reason = reason
        self.scope.cancel()


def describe(exc: BaseException) -> str:
    """A short, client-safe description of an exception."""
    if isinstance(exc, BaseExceptionGroup) and len(exc.exceptions) == 1:
        return describe(exc.exceptions[0])
    text = str(exc)
    if isinstance(exc, AgentError) and text:
        return text  # an agent's or a tool's own, deliberate message
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


class RunWriter:
    """Writes one run's events (see the module header)."""

    __slots__ = ("control", "context", "pending", "error", "_sequencer", "_interval", "_pacer",
                 "_stream", "_stats")

    def __init__(self, sequencer: Sequencer, control: RunControl, *,
                 interval: float = DEFAULT_INTERVAL, pacer: Pacer | None = None,
                 stats: ThreadStats | None = None) -> None:
        self.control = control
        self.context = control.context
        self.pending = 0  # events queued without waiting, on their way to the store
        self.error: BaseException | None = None  # the first of them that failed: the latch
        self._sequencer = sequencer
        self._interval = interval
        self._pacer = pacer
        self._stream: AnswerStream | None = None  # made at the first write
        self._stats = stats if stats is not None else ThreadStats()

    def count_tokens(self, usage: Usage) -> None:
        """Count a report in the runtime's figures (``threadline_tokens_total``)."""
        tokens = self._stats.tokens
        tokens["input"] += usage.input_tokens
        tokens["output"] += usage.output_tokens
        tokens["cached_input"] += usage.cached_input_tokens

    @property
    def key(self) -> Any:
        """The run's thread (its ``ThreadKey``)."""
        return self._sequencer.key

    @property
    def journal(self) -> Any:
        """The store the run's thread writes (its ``Journal``): what ``Run`` reads back."""
        return self._sequencer.journal

    # -- what the agent's ``Run`` writes --------------------------------------------------------

    @property
    def written(self) -> str | None:
        """What the run has written with ``write`` so far; None if it never wrote."""
        if self._stream is None and self.control.transcript:
            if any(e.event == AGENT_DELTA for e in self.control.transcript):
                return self._answer().text
        return None if self._stream is None else self._stream.text

    async def write(self, text: str) -> None:
        """Append ``text`` to the answer (``AnswerStream.write``: waits only for room)."""
        await self._answer().write(text)

    def _answer(self) -> AnswerStream:
        stream = self._stream
        if stream is None:
            stream = self._stream = AnswerStream(self._sequencer, self.context.run_id,
                                                 interval=self._interval, pacer=self._pacer)
            if self.error is not None:
                stream.stop(self._lost())
            transcript = self.control.transcript
            if transcript:  # resumed: the answer goes on where its stored pieces end
                stream.continue_from("".join(e.data.get("text", "") for e in transcript
                                             if e.event == AGENT_DELTA))
        return stream

    async def send(self, event: str, data: dict[str, Any]) -> None:
        """Queue ``event`` without waiting for the store while fewer than ``MAX_QUEUED`` of the
        run's events are on their way (else ``append``). Raises ``Unstorable``, or
        ``JournalUnavailable`` once the latch is set."""
        if self.pending >= MAX_QUEUED:
            await self.append(event, data)
            return
        await trio.lowlevel.checkpoint()
        self._check()
        if self._stream is not None:
            self._stream.flush_nowait()
        self._sequencer.submit(event, self.context.run_id, data, self._queued())

    async def append(self, event: str, data: dict[str, Any]) -> None:
        """Write ``event`` after everything written before it, and wait until it is stored."""
        self._check()
        if self._stream is not None:
            self._stream.flush_nowait()
        await self._store(event, data)

    async def request_approval(self, call_id: str, tool: str, args: dict[str, Any],
                               timeout: float | None) -> Decision:
        """Store ``approval_requested``, wait for a decision (``approval.py``; after
        ``timeout`` seconds, the server's: not approved, expired), store ``approval_decided``
        and answer the decider. The decision. A cancellation point."""
        expires_at = None if timeout is None else self._sequencer.clock() + timeout
        await self.append(APPROVAL_REQUESTED, {"call_id": call_id, "tool": tool, "args": args,
                                               "expires_at": expires_at})
        ctx = self.context
        log.info("run %s of %s/%s waits for approval of tool %s (call %s)", ctx.run_id,
                 ctx.user_id, ctx.thread_id, tool, call_id)
        stats = self._stats
        stats.approvals_requested += 1
        if self.control.resumable:  # park: the decision resumes the run (``approval.py``)
            await self.park(call_id, tool, expires_at)
        pending = self.control.approvals[call_id] = PendingApproval(call_id, tool)
        stats.approvals_waiting += 1
        try:
            deadline = math.inf if timeout is None else trio.current_time() + timeout
            approved, reason = await pending.wait(deadline)
            await self.append(APPROVAL_DECIDED, decision_data(call_id, approved, reason))
        except BaseException as exc:
            pending.not_stored(exc)
            raise
        finally:
            del self.control.approvals[call_id]
            stats.approvals_waiting -= 1
        pending.stored()
        log.info("run %s: call %s %s", self.context.run_id, call_id,
                 count_decision(stats, approved, reason))
        return approved, reason

    async def park(self, call_id: str, tool: str, expires_at: float | None = None) -> None:
        """Park the run on ``call_id`` (never returns: raises ``RunParked``). What the agent
        wrote is queued first; its thread keeps the run as its active one, with no task."""
        if self._stream is not None:
            self._stream.flush_nowait()
        self.control.parked = Waiting(call_id, tool, expires_at)
        self._stats.parked.add(self._sequencer.key)
        raise RunParked(call_id)

    # -- the beginning and the end of the run ----------------------------------------------------

    async def start(self) -> None:
        """Queue ``agent_started`` without waiting (the latch counts it); a resumed run's is
        stored already. A cancellation point."""
        await trio.lowlevel.checkpoint_if_cancelled()
        if self.control.transcript is not None and self.control.started:
            return
        self.control.started = True  # before: a journal may answer (and fail it) inside submit
        self._sequencer.submit(AGENT_STARTED, self.context.run_id, started_data(self.context),
                               self._queued(start=True))

    def abandon_stream(self) -> None:
        """Write nothing more of the answer (``AnswerStream.abandon``): the run is torn down by
        a wedged store, its thread restarts, and recovery closes the run."""
        if self._stream is not None:
            self._stream.abandon()

    async def end(self, terminal: Terminal) -> str:
        """Queue the rest of the answer, then write ``terminal``; an answer that cannot be
        stored ends ``agent_failed``. Returns the terminal event written. Raises
        ``JournalUnavailable`` when an event of the run was not stored (``close_lost``)."""
        terminal = self.control.terminal(*self._end_stream(terminal))
        try:
            await self._store(*terminal)
        except Unstorable as exc:  # e.g. an answer with a NUL character: the run still ends
            terminal = self.control.terminal(
                AGENT_FAILED, {"error": f"the answer could not be stored: {exc}"})
            await self._store(*terminal)
        return terminal[0]

    async def end_shielded(self, terminal: Terminal) -> None:
        """``end`` for a run torn down by cancellation: shielded, bounded by
        ``TERMINAL_WRITE_TIMEOUT``, and after ``agent_started`` if that was never stored."""
        with trio.CancelScope(shield=True) as shield:
            shield.deadline = trio.current_time() + TERMINAL_WRITE_TIMEOUT
            if not self.control.started:  # cancelled before agent_started was stored
                await self._store(AGENT_STARTED, started_data(self.context))
                self.control.started = True
            terminal = self.control.terminal(*self._end_stream(terminal))
            await self._store(*terminal)

    async def close_lost(self) -> None:
        """The store failed under the run: once it is back, end the run with ``agent_failed``
        (after its ``agent_started``, if that is what failed), retrying with a backoff from
        ``LOST_RUN_FIRST_DELAY`` to ``LOST_RUN_MAX_DELAY``. Blocks until written; a shutdown
        meanwhile leaves the run to the next start's recovery, and a ``Fenced`` write (this
        process lost the right to write the thread) to its new writer's."""
        control, delay = self.control, LOST_RUN_FIRST_DELAY
        append, run_id = self._sequencer.append, self.context.run_id
        while True:
            try:
                if not control.started:
                    await append(AGENT_STARTED, run_id, started_data(self.context))
                    control.started = True
                name, data = control.terminal(AGENT_FAILED, {"error": "storage unavailable"})
                await append(name, run_id, data)
                return
            except Fenced:
                return  # another writer has the thread now: its recovery ends the run
            except JournalUnavailable:
                await trio.sleep(delay)
                delay = min(delay * 2, LOST_RUN_MAX_DELAY)

    # -- inside -----------------------------------------------------------------------------------

    async def _store(self, event: str, data: dict[str, Any]) -> None:
        # A cancelled run writes nothing more: every write is a cancellation point (the append
        # below is shielded once it starts, and may not yield at all).
        await trio.lowlevel.checkpoint_if_cancelled()
        await self._sequencer.append(event, self.context.run_id, data)

    def _end_stream(self, terminal: Terminal) -> Terminal:
        """Queue the rest of the answer; the terminal event to write after it. Raises
        ``JournalUnavailable`` when an event of the run was not stored."""
        self._check()
        if self._stream is None:
            return terminal
        try:
            self._stream.close()
        except (JournalUnavailable, JournalWedged):
            raise  # the journal is gone or wedged: the runner closes the run or restarts
        except Exception as exc:
            return (AGENT_FAILED, {"error": f"the answer could not be stored: {describe(exc)}"})
        return terminal

    def _check(self) -> None:
        if self.error is not None:
            raise self._lost()

    def _lost(self) -> JournalUnavailable:
        assert self.error is not None
        lost = JournalUnavailable(f"an event of this run was not stored: {describe(self.error)}")
        lost.__cause__ = self.error
        return lost

    def _queued(self, *, start: bool = False) -> _Queued:
        self.pending += 1
        return _Queued(self, start)

    def _failed(self, error: BaseException, start: bool) -> None:
        self.pending -= 1
        if start:
            self.control.started = False  # close_lost writes it again, before agent_failed
        if self.error is None:
            self.error = error
            if self._stream is not None:  # its next piece would follow the failed event
                self._stream.stop(self._lost())


class _Queued:
    """The outcome of one event queued without waiting (``Done``)."""

    __slots__ = ("writer", "start")

    def __init__(self, writer: RunWriter, start: bool) -> None:
        self.writer = writer
        self.start = start

    def set(self, _: Any) -> None:
        self.writer.pending -= 1

    def fail(self, error: BaseException) -> None:
        self.writer._failed(error, self.start)
