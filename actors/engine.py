"""The execution engine: one agent run, its tools, and the events they produce.

An agent is an async callable ``agent(run) -> str``. It reads ``run.context`` and ``run.text``,
reports progress with ``await run.think(text)``, calls tools with ``await run.call_tool(name,
**args)``, and returns the answer. The engine stamps every event from the frozen ``RunContext``
it was started with: an agent cannot name another thread, user or run, because it never names
one at all.

Run lifecycle (PROTOCOL.md): ``agent_started``, then the agent's events, then exactly one of
``agent_completed`` (it returned), ``agent_failed`` (it or a tool it did not catch raised) or
``agent_cancelled`` (its cancel scope was cancelled; the reason is set by whoever cancelled).
"""

from __future__ import annotations

import logging
import os
from typing import Any, Awaitable, Callable, Protocol

import attrs
import trio

from .errors import ToolError, Unstorable
from .messages import (
    AGENT_CANCELLED,
    AGENT_COMPLETED,
    AGENT_FAILED,
    AGENT_STARTED,
    AGENT_THINKING,
    TOOL_COMPLETED,
    TOOL_EXECUTING,
)

log = logging.getLogger("threadline.engine")

#: Bound on the terminal write when a run is torn down by cancellation (shutdown or a crash of
#: its thread): long enough for a group commit under load, short enough not to stall shutdown.
TERMINAL_WRITE_TIMEOUT = 5.0


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


Tool = Callable[..., Awaitable[Any]]
"""``async def tool(ctx: RunContext, **args) -> result``; the result must be JSON-able."""


@attrs.frozen(slots=True)
class ToolSpec:
    fn: Tool
    timeout: float


class ToolRegistry:
    """Named async tools, each with its own timeout (default ``default_timeout`` seconds)."""

    def __init__(self, default_timeout: float = 30.0) -> None:
        self.default_timeout = default_timeout
        self._tools: dict[str, ToolSpec] = {}

    def register(self, name: str, fn: Tool, *, timeout: float | None = None) -> None:
        self._tools[name] = ToolSpec(fn, self.default_timeout if timeout is None else timeout)

    def tool(self, name: str, *, timeout: float | None = None) -> Callable[[Tool], Tool]:
        """Decorator form of ``register``."""
        def deco(fn: Tool) -> Tool:
            self.register(name, fn, timeout=timeout)
            return fn
        return deco

    def get(self, name: str) -> ToolSpec | None:
        return self._tools.get(name)

    def names(self) -> list[str]:
        return sorted(self._tools)


class Emit(Protocol):
    async def __call__(self, ctx: RunContext, event: str, data: dict[str, Any]) -> None:
        """Store the event durably, then deliver it. Stamped from ``ctx`` by the thread."""


def describe(exc: BaseException) -> str:
    """A short, client-safe description of an exception."""
    if isinstance(exc, BaseExceptionGroup) and len(exc.exceptions) == 1:
        return describe(exc.exceptions[0])
    text = str(exc)
    if isinstance(exc, ToolError) and text:
        return text  # a tool's own, deliberate message
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


class Run:
    """What an agent sees of its run."""

    __slots__ = ("context", "text", "_emit", "_tools")

    def __init__(self, context: RunContext, text: str, emit: Emit, tools: ToolRegistry) -> None:
        self.context = context
        self.text = text
        self._emit = emit
        self._tools = tools

    async def think(self, text: str) -> None:
        """Emit ``agent_thinking``. Blocks until the event is durable."""
        await self._emit(self.context, AGENT_THINKING, {"text": text})

    async def call_tool(self, tool: str, **args: Any) -> Any:
        """Run a registered tool with its timeout; emits ``tool_executing`` and ``tool_completed``.

        Returns the tool's result. Raises ``ToolError`` when the tool is unknown, raises or
        times out (the ``tool_completed`` event then carries ``error``).
        """
        call_id = new_id("call")
        await self._emit(self.context, TOOL_EXECUTING, {"call_id": call_id, "tool": tool,
                                                        "args": args})
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
        await self._emit(self.context, TOOL_COMPLETED, done)
        if error is not None:
            raise ToolError(error)
        return result


Agent = Callable[[Run], Awaitable[Any]]


class RunControl:
    """The handle a thread keeps on its active run: its context and its cancel scope."""

    __slots__ = ("context", "text", "scope", "cancel_reason", "failure", "started")

    def __init__(self, context: RunContext, text: str) -> None:
        self.context = context
        self.text = text
        self.scope = trio.CancelScope()
        self.cancel_reason: str | None = None
        self.failure: str | None = None
        self.started = False  # its agent_started is stored

    def cancel(self, reason: str) -> None:
        """Cancel the run; it ends with ``agent_cancelled`` ``{reason}``. First reason wins."""
        if self.cancel_reason is None:
            self.cancel_reason = reason
        self.scope.cancel()


async def execute(control: RunControl, agent: Agent, tools: ToolRegistry, emit: Emit) -> str:
    """Run ``agent`` for ``control`` from ``agent_started`` to its terminal event.

    Returns the name of the terminal event. When the surrounding scope is cancelled (shutdown,
    a crash of the thread), the terminal event is still written, shielded and bounded by
    ``TERMINAL_WRITE_TIMEOUT``, and then ``Cancelled`` propagates.
    """
    ctx = control.context
    terminal: tuple[str, dict[str, Any]]
    try:
        # Outside the run's scope: a run cancelled while still queued (interrupt, shutdown)
        # still begins with agent_started, and its agent is then never called.
        await emit(ctx, AGENT_STARTED, {})
        control.started = True
        with control.scope:
            try:
                answer = await agent(Run(ctx, control.text, emit, tools))
            except Exception as exc:
                log.info("run %s of user %s, thread %s failed: %s", ctx.run_id, ctx.user_id,
                         ctx.thread_id, describe(exc), exc_info=exc)
                terminal = (AGENT_FAILED, {"error": describe(exc)})
            else:
                terminal = (AGENT_COMPLETED, {"text": "" if answer is None else str(answer)})
        if control.scope.cancelled_caught:
            terminal = (AGENT_CANCELLED, {"reason": control.cancel_reason or "cancel"})
    except trio.Cancelled:
        if control.failure is not None:
            terminal = (AGENT_FAILED, {"error": control.failure})
        else:
            terminal = (AGENT_CANCELLED, {"reason": control.cancel_reason or "shutdown"})
        with trio.CancelScope(shield=True) as shield:
            shield.deadline = trio.current_time() + TERMINAL_WRITE_TIMEOUT
            await emit(ctx, *terminal)
        raise
    try:
        await emit(ctx, *terminal)
    except Unstorable as exc:  # e.g. an answer with a NUL character: the run still ends
        terminal = (AGENT_FAILED, {"error": f"the answer could not be stored: {exc}"})
        await emit(ctx, *terminal)
    return terminal[0]
