"""The execution engine, as an agent sees it: ``Run``, its tools, and the events they produce
(``execution.py`` runs it from ``agent_started`` to its terminal event).

An agent is an async callable ``agent(run) -> str | None``. It reads ``run.context``,
``run.text`` and ``await run.history()`` (the thread's earlier turns), reports progress with
``await run.think(text)``, calls tools with ``await run.call_tool(name, **args)``, streams its
answer with ``await run.write(text)`` (``agent_delta`` events, see ``stream.py``), and returns
the answer, or None to complete with what it wrote. The engine stamps every event from the
frozen ``RunContext`` it was started with: an agent cannot name another thread, user or run,
because it never names one at all.

Order within a run: before any other event of the run is queued, what the agent wrote is queued
(``AnswerStream.flush_nowait``; queuing is synchronous and gives the seq), so no event
overtakes text written earlier. Only the events the agent must know stored before it goes on
are awaited (a tool's ``tool_executing`` before the tool runs, its ``tool_completed``); the
others (``agent_started``, ``agent_thinking``, the pieces of the answer) are queued, and a
failure to store them fails the run's next awaited event.
"""

from __future__ import annotations

import logging
import os
from typing import Any, Awaitable, Callable, Protocol

import attrs
import trio

from .errors import AgentError, JournalUnavailable, ToolError
from .history import Turn
from .messages import AGENT_DELTA, AGENT_THINKING, TOOL_COMPLETED, TOOL_EXECUTING
from .journal import Done
from .stream import DEFAULT_INTERVAL, AnswerStream
from .tools import ToolRegistry

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


@attrs.frozen(slots=True)
class RunContext:
    """Who and what a run is for. Frozen: nothing downstream can re-address a run."""

    user_id: str
    thread_id: str
    run_id: str
    request_id: str


class Emit(Protocol):
    async def __call__(self, ctx: RunContext, event: str, data: dict[str, Any]) -> None:
        """Store the event durably, then deliver it. Stamped from ``ctx`` by the thread."""


class Submit(Protocol):
    def __call__(self, ctx: RunContext, event: str, data: dict[str, Any], done: Done) -> None:
        """Queue the event (stored, then delivered) without waiting; ``done`` hears whether
        it was stored. Raises, queuing nothing, when it cannot be queued."""


def describe(exc: BaseException) -> str:
    """A short, client-safe description of an exception."""
    if isinstance(exc, BaseExceptionGroup) and len(exc.exceptions) == 1:
        return describe(exc.exceptions[0])
    text = str(exc)
    if isinstance(exc, AgentError) and text:
        return text  # an agent's or a tool's own, deliberate message
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


History = Callable[[int], Awaitable[list[Turn]]]


async def _no_history(limit: int) -> list[Turn]:
    return []


class Run:
    """What an agent sees of its run."""

    __slots__ = ("context", "text", "latch", "_emit", "_tools", "_history", "_submit",
                 "_interval", "_stream")

    def __init__(self, context: RunContext, text: str, emit: Emit, tools: ToolRegistry, *,
                 history: History = _no_history, submit: Submit | None = None,
                 interval: float = DEFAULT_INTERVAL) -> None:
        self.context = context
        self.text = text
        self.latch = Latch()  # the run's events queued without waiting
        self._emit = emit
        self._tools = tools
        self._history = history
        self._submit = submit
        self._interval = interval
        self._stream: AnswerStream | None = None  # made at the first write

    @property
    def tools(self) -> ToolRegistry:
        """The tools this run may call (e.g. to offer them to a language model)."""
        return self._tools

    @property
    def written(self) -> str | None:
        """What the run has written with ``write`` so far; None if it never wrote."""
        return None if self._stream is None else self._stream.text

    async def history(self, limit: int = 100) -> list[Turn]:
        """The thread's last ``limit`` turns before this run's message, oldest first
        (``history.py``). Reads the journal."""
        return await self._history(limit)

    async def write(self, text: str) -> None:
        """Append ``text`` to the answer; clients see it as ``agent_delta`` events. Does not
        wait for the text to be stored (see ``stream.py``). Raises ``Unstorable``."""
        stream = self._stream
        if stream is None:
            if self._submit is None:
                raise RuntimeError("this run cannot stream: it was started without ``submit``")
            stream = self._stream = AnswerStream(self._submit_delta, interval=self._interval)
        await stream.write(text)

    async def think(self, text: str) -> None:
        """Emit ``agent_thinking``. Queued without waiting for the store while fewer than
        ``MAX_QUEUED`` of the run's events are on their way (else it waits like any event): it
        is stored and delivered before any later event of the run, and if the store fails it,
        the run writes nothing more and the thread ends it. Raises ``Unstorable``."""
        if self._submit is None or self.latch.pending >= MAX_QUEUED:
            await self._event(AGENT_THINKING, {"text": text})
            return
        await trio.lowlevel.checkpoint()
        self.latch.check()
        if self._stream is not None:
            self._stream.flush_nowait()
        self._submit(self.context, AGENT_THINKING, {"text": text}, self.latch.queued())

    def _submit_delta(self, data: dict[str, Any], done: Done) -> None:
        self.latch.check()
        self._submit(self.context, AGENT_DELTA, data, done)  # type: ignore[misc]

    async def _event(self, event: str, data: dict[str, Any]) -> None:
        """Write one event of the run after everything written before it."""
        self.latch.check()
        if self._stream is not None:
            self._stream.flush_nowait()
        await self._emit(self.context, event, data)

    def abandon_stream(self) -> None:
        """Write nothing more of the answer (``AnswerStream.abandon``)."""
        if self._stream is not None:
            self._stream.abandon()

    def end_stream(self) -> None:
        """Queue what is still pending of the answer; nothing more is written (the engine
        calls this when the agent is done, before the terminal event)."""
        if self._stream is not None:
            self._stream.close()

    async def call_tool(self, tool: str, /, **args: Any) -> Any:
        """Run a registered tool with its timeout; emits ``tool_executing`` and ``tool_completed``.

        Returns the tool's result. Raises ``ToolError`` when the tool is unknown, raises or
        times out (the ``tool_completed`` event then carries ``error``).
        """
        call_id = new_id("call")
        await self._event(TOOL_EXECUTING, {"call_id": call_id, "tool": tool, "args": args})
        spec = self._tools.get(tool)
        error: str | None = None
        result: Any = None
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
        done: dict[str, Any] = {"call_id": call_id, "tool": tool}
        if error is None:
            done["result"] = result
        else:
            done["error"] = error
        await self._event(TOOL_COMPLETED, done)
        if error is not None:
            raise ToolError(error)
        return result


Agent = Callable[[Run], Awaitable[Any]]


#: A run's events queued without waiting, at most (``think``; the pieces have their own bound).
MAX_QUEUED = 64


class Latch:
    """A run's events queued without waiting for the store (``agent_started``,
    ``agent_thinking``): how many are on their way, and the first that failed. After a
    failure the run writes nothing more (``check`` raises ``JournalUnavailable``, which the
    thread answers by ending the run with ``agent_failed`` once the store is back, writing
    ``agent_started`` first if that is what failed): later events would follow the last durable
    one, leaving the run without its beginning or its thinking."""

    __slots__ = ("pending", "error")

    def __init__(self) -> None:
        self.pending = 0
        self.error: BaseException | None = None

    def queued(self) -> _Queued:
        self.pending += 1
        return _Queued(self)

    def check(self) -> None:
        if self.error is not None:
            raise JournalUnavailable(f"an event of this run was not stored: "
                                     f"{describe(self.error)}") from self.error


class _Queued:
    """The outcome of one event a ``Latch`` counts (``Done``)."""

    __slots__ = ("latch",)

    def __init__(self, latch: Latch) -> None:
        self.latch = latch

    def set(self, _: Any) -> None:
        self.latch.pending -= 1

    def fail(self, error: BaseException) -> None:
        self.latch.pending -= 1
        if self.latch.error is None:
            self.latch.error = error
