"""The execution engine, as an agent sees it: ``Run``, its tools, and the events they produce
(``execution.py`` runs it from ``agent_started`` to its terminal event).

An agent is an async callable ``agent(run) -> str | None``. It reads ``run.context``,
``run.text`` and ``await run.history()`` (the thread's earlier turns), reports progress with
``await run.think(text)``, calls tools with ``await run.call_tool(name, **args)``, streams its
answer with ``await run.write(text)`` (``agent_delta`` events, see ``stream.py``), and returns
the answer, or None to complete with what it wrote. An agent that calls a language model wraps
each call in ``async with run.model_call(model)`` (the user's token budget is checked first, and
the call is a span: ``usage.py``, ``tracing.py``) and reports what it used with ``await
run.report_usage(...)``: stored at once in the user's totals, and summed on the terminal event.

``Run`` is that API and nothing more: every event it produces is written by the run's
``RunWriter`` (``run_writer.py``), which stamps it from the frozen ``RunContext`` the run was
made with, keeps the order (text written earlier is queued before any later event), and knows
which events are awaited and which only queued. An agent cannot name another thread, user or
run, because it never names one at all.
"""

from __future__ import annotations

import logging
import os
from contextlib import asynccontextmanager
from typing import Any, AsyncIterator, Awaitable, Callable, Sequence

import trio

from .approval import PriorCall, denial, prior_calls
from .attachments import RunAttachment, read_bytes
from .errors import ToolDenied, ToolError
from .history import Turn
from .messages import AGENT_THINKING, TOOL_COMPLETED, TOOL_EXECUTING, Event
from .run_writer import RunContext, RunWriter, describe
from .tools import ToolRegistry
from .tracing import INPUT_TOKENS, NO_TRACING, OUTPUT_TOKENS, Span, Tracing
from .usage import NO_BUDGETS, Budgets, Periods, Usage, reported

__all__ = ["Agent", "History", "Run", "RunContext", "ToolRegistry", "describe", "new_id"]

log = logging.getLogger("threadline.engine")



# Ids: 96 random bits each, so an id tells nothing (a counter told a user how many messages
# others sent between two of theirs) and cannot be guessed. Drawn from urandom in bulk: a
# syscall per id was 2% of the server's CPU (measured), one per 256 ids is noise.
_ID_HEX = 24
_ID_BULK = 256
_id_pool: list[str] = []


def new_id(prefix: str) -> str:
    if not _id_pool:
        raw = os.urandom(_ID_HEX // 2 * _ID_BULK).hex()
        _id_pool.extend(raw[i:i + _ID_HEX] for i in range(0, len(raw), _ID_HEX))
    return f"{prefix}_{_id_pool.pop()}"


History = Callable[[int], Awaitable[list[Turn]]]


async def _no_history(limit: int) -> list[Turn]:
    return []


class Run:
    """What an agent sees of its run; its events are written by its ``RunWriter``."""

    __slots__ = ("context", "text", "attachments", "tracing", "_writer", "_tools", "_history",
                 "_prior", "_budgets", "_call", "_call_usage")

    def __init__(self, writer: RunWriter, tools: ToolRegistry, *,
                 history: History = _no_history,
                 attachments: Sequence[RunAttachment] = (), budgets: Budgets = NO_BUDGETS,
                 tracing: Tracing = NO_TRACING) -> None:
        self.context = writer.context
        self.text = writer.control.text
        #: The attachments of the message the run answers (PROTOCOL.md 1.1): each one's
        #: name, type and size, and ``await a.read()`` for its bytes.
        self.attachments = list(attachments)
        #: Where the run's spans go (``tracing.py``): ``tracing.capture_content`` says
        #: whether an agent may put prompts and answers on them.
        self.tracing = tracing
        self._writer = writer
        self._tools = tools
        self._history = history
        self._budgets = budgets
        self._call: Span | None = None  # the model call under way (``model_call``)
        self._call_usage = Usage()  # what it reported so far (a call may report in parts)
        transcript = writer.control.transcript
        self._prior = None if transcript is None else prior_calls(transcript)

    @property
    def resumed(self) -> bool:
        """The run was parked waiting for a decision, and goes on now: this agent is called
        again (a resumable agent's contract, ``approval.resumable``)."""
        return self._writer.control.transcript is not None

    def transcript(self) -> list[Event]:
        """The run's own events stored before it was resumed (empty for a run not resumed):
        what it wrote, the tools it called and their results, the approval and its decision."""
        return list(self._writer.control.transcript or ())

    @property
    def tools(self) -> ToolRegistry:
        """The tools this run may call (e.g. to offer them to a language model)."""
        return self._tools

    @property
    def written(self) -> str | None:
        """What the run has written with ``write`` so far; None if it never wrote."""
        return self._writer.written

    async def history(self, limit: int = 100) -> list[Turn]:
        """The thread's last ``limit`` turns before this run's message, oldest first
        (``history.py``). Reads the journal."""
        return await self._history(limit)

    async def read_attachment(self, attachment_id: str) -> bytes:
        """The bytes of an attachment of this run's thread (one named by a ``Turn`` of
        ``history``, say); empty for one that is gone, another thread's or another user's.
        Reads the journal: its record, then its chunks (``attachments.read_bytes``)."""
        journal = self._writer.journal
        user_id = self.context.user_id
        found = await journal.attachment(user_id, attachment_id)
        if found is None or found.thread_id != self.context.thread_id:
            return b""
        return await read_bytes(journal, user_id, attachment_id)

    @asynccontextmanager
    async def model_call(self, model: str, provider: str = "openai") -> AsyncIterator[Span]:
        """Around one call of a language model: the user's budget is checked first (spent:
        ``BudgetExceeded``, and the run ends ``agent_failed`` ``budget_exceeded`` without
        calling the model; ``usage.py``), and the call is a ``chat {model}`` span
        (``tracing.py``), on which ``report_usage`` puts the tokens; the agent may set more
        (``FINISH_REASONS``, ...). Reads the journal when budgets are set."""
        await self._budgets.check(self._writer.journal, self.context.user_id)
        with self.tracing.model_call(model, provider) as span:
            self._call, self._call_usage = span, Usage()
            try:
                yield span
            finally:
                self._call = None

    async def report_usage(self, *, input_tokens: int = 0, output_tokens: int = 0,
                           cached_input_tokens: int = 0, model: str | None = None) -> None:
        """Count what a model call used (the model's own counts; call it once per call, or
        per part of one): summed into the run's terminal event, stored at once in the user's
        totals for the day and month that budgets and ``GET /v1/usage`` read, and put on the
        model call's span. Raises ``ValueError`` for a count that is not an integer from 0,
        ``JournalUnavailable`` when the store failed (nothing of it is counted)."""
        usage = reported(input_tokens, output_tokens, cached_input_tokens, model)
        control = self._writer.control
        periods = Periods.at(self._budgets.clock())
        await self._writer.journal.record_usage(self._writer.key, self.context.run_id,
                                                periods.day, periods.month, usage)
        self._budgets.counted(self.context.user_id, periods, usage)
        control.usage = usage if control.usage is None else control.usage + usage
        self._writer.count_tokens(usage)
        if self._call is not None:
            call = self._call_usage = self._call_usage + usage
            self._call.set(INPUT_TOKENS, call.input_tokens)
            self._call.set(OUTPUT_TOKENS, call.output_tokens)

    async def write(self, text: str) -> None:
        """Append ``text`` to the answer; clients see it as ``agent_delta`` events. Does not
        wait for the text to be stored (see ``stream.py``). Raises ``Unstorable``."""
        await self._writer.write(text)

    async def think(self, text: str) -> None:
        """Emit ``agent_thinking``. Queued without waiting for the store while fewer than
        ``MAX_QUEUED`` of the run's events are on their way (else it waits like any event): it
        is stored and delivered before any later event of the run, and if the store fails it,
        the run writes nothing more and the thread ends it. Raises ``Unstorable``."""
        await self._writer.send(AGENT_THINKING, {"text": text})

    async def call_tool(self, tool: str, /, *, approval: bool | None = None, **args: Any) -> Any:
        """Run a registered tool with its timeout; emits ``tool_executing`` and ``tool_completed``.

        Returns the tool's result. Raises ``ToolError`` when the tool is unknown, raises or
        times out (the ``tool_completed`` event then carries ``error``). A call that needs a
        person's approval (the tool's registration, or ``approval=True`` for this call; False
        skips it) first stores ``approval_requested`` and waits for the decision
        (``approval.py``); denied (or expired), the tool never runs: ``tool_completed`` carries
        ``"denied: " + reason`` and ``ToolDenied`` is raised.
        """
        spec = self._tools.get(tool)
        prior = self._next_prior(tool, args)
        if prior is not None:  # a call this run made before it parked: never made twice
            call_id, replayed = prior.call_id, await self._replay(prior)
            if replayed is not _RUN:
                return replayed
        else:
            call_id = new_id("call")
        if prior is None and (approval if approval is not None else (
                spec is not None and spec.approval_needed(self.context, args))):
            timeout = spec.approval_timeout if spec is not None else None
            approved, reason = await self._writer.request_approval(call_id, tool, args, timeout)
            if not approved:
                await self._deny(call_id, tool, reason)
        await self._writer.append(TOOL_EXECUTING, {"call_id": call_id, "tool": tool,
                                                   "args": args})
        error: str | None = None
        result: Any = None
        with self.tracing.tool_call(tool, call_id) as span:
            if spec is None:
                error = f"unknown tool {tool!r}"
            else:
                try:
                    with trio.fail_after(spec.timeout):
                        result = await spec.fn(self.context, **args)
                except trio.TooSlowError:
                    error = f"tool {tool!r} timed out after {spec.timeout:g} s"
                except Exception as exc:  # the tool's failure is the run's data, not our crash
                    error = describe(exc)
            if error is not None:
                span.error("tool_error", error)
        done: dict[str, Any] = {"call_id": call_id, "tool": tool}
        if error is None:
            done["result"] = result
        else:
            done["error"] = error
        await self._writer.append(TOOL_COMPLETED, done)
        if error is not None:
            raise ToolError(error)
        return result


    def _next_prior(self, tool: str, args: dict[str, Any]) -> PriorCall | None:
        """The first call of the transcript not replayed yet that this one is (same tool,
        same arguments), taken; None for a new call. (An agent that rebuilds its past rounds
        from the transcript calls only the call it parked on again: the OpenAI agent.)"""
        prior = self._prior
        for i, call in enumerate(prior or ()):
            if call.tool == tool and call.args == args:
                return prior.pop(i)  # type: ignore[union-attr]
        return None

    async def _replay(self, prior: PriorCall) -> Any:
        """What a call made before the run parked gives now: its stored result or error, the
        denial stored for it, or ``_RUN``: approved and not run yet, so run it now."""
        writer, done = self._writer, prior.completed
        if done is not None:
            if "error" not in done:
                return done.get("result")
            if prior.decided is not None and not prior.decided[0]:
                raise ToolDenied(done["error"], prior.decided[1])
            raise ToolError(done["error"])
        if prior.executing:  # the tool ran, or began to, when the server stopped
            error = f"tool {prior.tool!r} was interrupted by a restart"
            await writer.append(TOOL_COMPLETED, {"call_id": prior.call_id, "tool": prior.tool,
                                                 "error": error})
            raise ToolError(error)
        if prior.decided is None:  # still waiting: park again
            await writer.park(prior.call_id, prior.tool)
        approved, reason = prior.decided  # type: ignore[misc]
        if not approved:
            await self._deny(prior.call_id, prior.tool, reason)
        return _RUN

    async def _deny(self, call_id: str, tool: str, reason: str | None) -> None:
        """A call not approved: its ``tool_completed`` says so, and ``ToolDenied`` is raised."""
        error = denial(reason)
        await self._writer.append(TOOL_COMPLETED, {"call_id": call_id, "tool": tool,
                                                   "error": error})
        raise ToolDenied(error, reason)


_RUN = object()  # ``Run._replay``: the call is approved and runs now


def writer_of(run: Run) -> RunWriter:
    """The writer of ``run`` (for ``execute``, which ends the run; not for agents)."""
    return run._writer


Agent = Callable[[Run], Awaitable[Any]]
