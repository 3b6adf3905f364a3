"""Tools: named async functions an agent may call, each with a timeout and a JSON Schema.

``run.call_tool(name, **args)`` (``engine.py``) runs one and records ``tool_executing`` and
``tool_completed``. A tool is ``async def tool(ctx: RunContext, **args) -> result``, where the
result is JSON-able. What a tool takes may be given as a JSON Schema when it is registered (a
language model is offered it); without one, an agent that needs it derives it from the
function's signature (``threadline.agents.tool_schema``).
"""

from __future__ import annotations

from typing import Any, Awaitable, Callable

import attrs

Tool = Callable[..., Awaitable[Any]]
"""``async def tool(ctx: RunContext, **args) -> result``; the result must be JSON-able."""


@attrs.frozen(slots=True)
class ToolSpec:
    fn: Tool
    timeout: float
    schema: dict[str, Any] | None = None  # JSON Schema of the arguments, if given
    description: str | None = None


class ToolRegistry:
    """Named async tools, each with its own timeout (default ``default_timeout`` seconds)."""

    def __init__(self, default_timeout: float = 30.0) -> None:
        self.default_timeout = default_timeout
        self._tools: dict[str, ToolSpec] = {}

    def register(self, name: str, fn: Tool, *, timeout: float | None = None,
                 schema: dict[str, Any] | None = None, description: str | None = None) -> None:
        """Register ``fn`` as ``name``; ``schema`` and ``description`` say what it takes and
        does, for a language model (both optional: see the module header)."""
        self._tools[name] = ToolSpec(fn, self.default_timeout if timeout is None else timeout,
                                     schema, description)

    def tool(self, name: str, *, timeout: float | None = None,
             schema: dict[str, Any] | None = None,
             description: str | None = None) -> Callable[[Tool], Tool]:
        """Decorator form of ``register``."""
        def deco(fn: Tool) -> Tool:
            self.register(name, fn, timeout=timeout, schema=schema, description=description)
            return fn
        return deco

    def get(self, name: str) -> ToolSpec | None:
        return self._tools.get(name)

    def names(self) -> list[str]:
        return sorted(self._tools)
