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


#: Whether one call needs a person's approval: ``needs_approval(ctx, args) -> bool``.
ApprovalRule = Callable[[Any, dict[str, Any]], bool]


@attrs.frozen(slots=True)
class ToolSpec:
    fn: Tool
    timeout: float
    schema: dict[str, Any] | None = None  # JSON Schema of the arguments, if given
    description: str | None = None
    needs_approval: bool | ApprovalRule = False  # PROTOCOL.md 1.1, "Tool approval"
    approval_timeout: float | None = None        # seconds a decision may take; None: no limit

    def approval_needed(self, ctx: Any, args: dict[str, Any]) -> bool:
        """Whether this call waits for a person first. A rule that raises asks (the safe
        side: an action is never taken because its check broke)."""
        rule = self.needs_approval
        if not callable(rule):
            return bool(rule)
        try:
            return bool(rule(ctx, args))
        except Exception:
            return True


class ToolRegistry:
    """Named async tools, each with its own timeout (default ``default_timeout`` seconds)."""

    def __init__(self, default_timeout: float = 30.0) -> None:
        self.default_timeout = default_timeout
        self._tools: dict[str, ToolSpec] = {}

    def register(self, name: str, fn: Tool, *, timeout: float | None = None,
                 schema: dict[str, Any] | None = None, description: str | None = None,
                 needs_approval: bool | ApprovalRule = False,
                 approval_timeout: float | None = None) -> None:
        """Register ``fn`` as ``name``; ``schema`` and ``description`` say what it takes and
        does, for a language model (both optional: see the module header).
        ``needs_approval``: every call (True), or the calls a rule ``(ctx, args) -> bool``
        picks, wait for a person's decision before the tool runs; ``approval_timeout``: seconds
        after which the server decides "not approved" (default: no limit)."""
        if approval_timeout is not None and not approval_timeout > 0:
            raise ValueError("approval_timeout must be a number of seconds > 0")
        self._tools[name] = ToolSpec(fn, self.default_timeout if timeout is None else timeout,
                                     schema, description, needs_approval, approval_timeout)

    def tool(self, name: str, *, timeout: float | None = None,
             schema: dict[str, Any] | None = None, description: str | None = None,
             needs_approval: bool | ApprovalRule = False,
             approval_timeout: float | None = None) -> Callable[[Tool], Tool]:
        """Decorator form of ``register``."""
        def deco(fn: Tool) -> Tool:
            self.register(name, fn, timeout=timeout, schema=schema, description=description,
                          needs_approval=needs_approval, approval_timeout=approval_timeout)
            return fn
        return deco

    def get(self, name: str) -> ToolSpec | None:
        return self._tools.get(name)

    def names(self) -> list[str]:
        return sorted(self._tools)
