"""Tracing: the seam between the runtime and a tracing system, and the one that costs nothing.

The actors name what happens (a request that asks for a run, the run, each model call, each
tool call) through a ``Tracing`` given at construction; ``threadline.otel`` (the extra
``threadline[otel]``) implements it on OpenTelemetry, on the GenAI semantic conventions. This
module imports no tracing library: without the extra, ``NO_TRACING`` answers every call with
one shared object whose methods do nothing (a method call and a ``with`` per run, model call
and tool call; measured in bench/README.md).

How a trace crosses tasks, processes and nodes: as a W3C ``traceparent`` string. A request
span (a WebSocket ``send`` or ``regenerate``, an HTTP request) starts from the client's
``traceparent`` if it sent one and gives its own on (``Request.traceparent``) with the
message to the thread actor, to a cluster node the request is forwarded to included; the run's
span (``invoke_agent``) is that request's child, though it runs later, in the thread's runner
task; model and tool calls are the run span's children (they run in its task, or in tasks it
starts). ``NO_TRACING`` passes the client's ``traceparent`` on unchanged, so that a node that
does not trace does not break the trace of one that does.

Attribute names are the GenAI conventions' (``gen_ai.*``); the constants below are the ones
the agents set themselves. Prompt and answer text go on spans only when the operator opted in
(``capture_content``).
"""

from __future__ import annotations

import re
from typing import Any, ContextManager, Protocol

from .messages import ThreadKey
from .run_writer import RunContext

# GenAI semantic conventions (OpenTelemetry, gen-ai spans): what an agent sets on a model call.
REQUEST_MODEL = "gen_ai.request.model"
RESPONSE_MODEL = "gen_ai.response.model"
RESPONSE_ID = "gen_ai.response.id"
FINISH_REASONS = "gen_ai.response.finish_reasons"
INPUT_TOKENS = "gen_ai.usage.input_tokens"
OUTPUT_TOKENS = "gen_ai.usage.output_tokens"
INPUT_MESSAGES = "gen_ai.input.messages"    # opt-in only (``capture_content``)
OUTPUT_MESSAGES = "gen_ai.output.messages"  # opt-in only


_TRACEPARENT = re.compile(r"[0-9a-f]{2}-[0-9a-f]{32}-[0-9a-f]{16}-[0-9a-f]{2}")


def traceparent_of(value: Any) -> str | None:
    """``value`` if it is a W3C ``traceparent`` (version, trace id, parent id, flags in lower
    hex), else None: a malformed one is ignored, as the W3C recommendation says, never an
    error (it is no field of the protocol's)."""
    if isinstance(value, str) and len(value) == 55 and _TRACEPARENT.fullmatch(value):
        return value
    return None


def agent_name(agent: Any) -> str:
    """What ``invoke_agent`` names an agent: its ``agent_name``, else its function's name."""
    return str(getattr(agent, "agent_name", None) or getattr(agent, "__name__", None)
               or type(agent).__name__)


class Span(Protocol):
    """A span under way: attributes set, an error recorded. Never raises."""

    def set(self, key: str, value: Any) -> None: ...

    def error(self, kind: str, description: str | None = None) -> None:
        """The operation failed: ``error.type`` ``kind``, the span's status an error."""


class Request(Span, Protocol):
    """The span of a request that may ask for a run."""

    @property
    def traceparent(self) -> str | None:
        """What to hand on with the request (the thread actor, another node)."""


class Tracing(Protocol):
    """What the actors and the transport trace through (see the module header)."""

    #: Whether prompts and answers may go on spans (the operator's opt-in).
    capture_content: bool

    def request(self, name: str, traceparent: str | None,
                key: ThreadKey | None) -> ContextManager[Request]:
        """A request span (``name``: ``send``, ``regenerate``, ``POST /v1/...``) on the
        thread ``key`` (None: no thread), child of the client's ``traceparent`` if any."""

    def run(self, context: RunContext, traceparent: str | None,
            agent: str) -> ContextManager[Span]:
        """``invoke_agent {agent}``: one run of a thread, child of the request that asked."""

    def model_call(self, model: str, provider: str) -> ContextManager[Span]:
        """``chat {model}``: one call of a language model, in a run."""

    def tool_call(self, tool: str, call_id: str) -> ContextManager[Span]:
        """``execute_tool {tool}``: one tool call, in a run."""


class _Nothing:
    """The span of ``NO_TRACING``: one object, reused; it carries a client's ``traceparent``
    through a request unchanged (``_Passing``)."""

    __slots__ = ()
    traceparent: str | None = None

    def __enter__(self) -> _Nothing:
        return self

    def __exit__(self, *exc: object) -> None:
        return None

    def set(self, key: str, value: Any) -> None:
        pass

    def error(self, kind: str, description: str | None = None) -> None:
        pass


class _Passing(_Nothing):
    __slots__ = ("traceparent",)  # type: ignore[misc]

    def __init__(self, traceparent: str | None) -> None:
        self.traceparent = traceparent


_NOTHING = _Nothing()


class NoTracing:
    """Tracing that costs nothing (see the module header)."""

    capture_content = False

    def request(self, name: str, traceparent: str | None,
                key: ThreadKey | None) -> ContextManager[Request]:
        return _NOTHING if traceparent is None else _Passing(traceparent)

    def run(self, context: RunContext, traceparent: str | None,
            agent: str) -> ContextManager[Span]:
        return _NOTHING

    def model_call(self, model: str, provider: str) -> ContextManager[Span]:
        return _NOTHING

    def tool_call(self, tool: str, call_id: str) -> ContextManager[Span]:
        return _NOTHING


NO_TRACING: Tracing = NoTracing()
