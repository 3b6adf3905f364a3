"""Tracing on OpenTelemetry: ``open_tracing``, the ``Tracing`` of ``actors/tracing.py`` on the
OpenTelemetry SDK, its spans named and attributed by the GenAI semantic conventions
(``invoke_agent {agent}``, ``chat {model}``, ``execute_tool {tool}``). The extra ``otel``.

::

    async with open_tracing() as tracing:        # OTLP/HTTP, set by OTEL_EXPORTER_OTLP_*
        async with open_runtime(tracing=tracing) as rt: ...

Invariants:

- Tracing never breaks a run. Every call the runtime makes (a span opened, an attribute set,
  an error told, a span ended, a ``traceparent`` written) catches ``Exception``: the first
  failure is logged as a warning, the next ones at debug level, and the runtime gets a span
  that does nothing (``NO_TRACING``'s). A value OpenTelemetry cannot hold (a dict, a list of
  mixed types) is set as JSON; None is left out.
- The event loop never waits for a collector. The provider built here exports through a
  ``BatchSpanProcessor``: a span's end queues it, the processor's thread encodes and sends;
  a collector that is down costs spans, never runs. ``exporter=`` exports each span as it
  ends, in the event loop (``SimpleSpanProcessor``): for exporters that keep spans in memory.
- A trace crosses tasks, processes and nodes only as a W3C ``traceparent``. Request and run
  spans take their parent from it alone (none, or malformed: a new trace), never from the
  task's current context, which in an actor's task is whatever request happened to spawn it.
  The run span is current in the runner task for its block, so the agent's model and tool
  spans (in that task, or in tasks it starts: trio copies the context into each) are its
  children; they are current for their own blocks, so an embedding program's instrumentation
  (an HTTP client's) nests under them. A request span is not made current: its block may
  spawn a thread actor, which would inherit it for good. Each ``attach`` is detached in the
  same task, on the way out of its block.
- ``Request.traceparent`` is the request span's own context, also for a span a sampler chose
  not to record; with no valid one (a no-op provider) the client's goes on unchanged, as with
  ``NO_TRACING``.
- Cancellation is not an error: a ``trio.Cancelled`` (or a group of nothing else) leaving a
  span sets ``threadline.cancelled``, no status, no exception event. Another exception sets
  ``error.type`` (its class, unless an error was told already), the status ERROR and an
  exception event. A run's own failure is told by its outcome (``run_queue.py``).
- No prompt or answer text is put on a span here; ``capture_content`` (default: the variable
  ``OTEL_INSTRUMENTATION_GENAI_CAPTURE_MESSAGE_CONTENT`` is ``true``) tells agents they may.
- A provider built here is flushed and shut down on exit in a worker thread, shielded and
  bounded by ``SHUTDOWN_TIMEOUT`` (a collector that does not answer cannot hold the exit: the
  thread is left behind). A ``tracer_provider`` given stays the caller's, never shut down
  here. The global tracer provider is never set.
"""

from __future__ import annotations

import json
import logging
import os
from contextlib import asynccontextmanager
from typing import Any, AsyncIterator, ContextManager

import trio
from opentelemetry import context as otel_context
from opentelemetry import trace
from opentelemetry.context import Context
from opentelemetry.sdk.resources import SERVICE_NAME, Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import (BatchSpanProcessor, SimpleSpanProcessor,
                                            SpanExporter)
from opentelemetry.trace import SpanKind, Status, StatusCode
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

from threadline.actors.messages import ThreadKey
from threadline.actors.run_writer import RunContext
from threadline.actors.tracing import NO_TRACING, REQUEST_MODEL, Request, Span, Tracing

__all__ = ["CAPTURE_CONTENT_ENV", "SHUTDOWN_TIMEOUT", "OtelTracing", "open_tracing"]

log = logging.getLogger("threadline.otel")

CAPTURE_CONTENT_ENV = "OTEL_INSTRUMENTATION_GENAI_CAPTURE_MESSAGE_CONTENT"
SHUTDOWN_TIMEOUT = 5.0  # seconds to flush the spans left at exit, then they are dropped

# GenAI semantic conventions (gen-ai spans, agent spans) and ours.
OPERATION = "gen_ai.operation.name"
AGENT_NAME = "gen_ai.agent.name"
CONVERSATION_ID = "gen_ai.conversation.id"
PROVIDER = "gen_ai.provider.name"
TOOL_NAME = "gen_ai.tool.name"
TOOL_CALL_ID = "gen_ai.tool.call.id"
ERROR_TYPE = "error.type"
USER_ID = "threadline.user_id"
CANCELLED = "threadline.cancelled"

_PROPAGATOR = TraceContextTextMapPropagator()
_NOTHING = NO_TRACING.tool_call("", "")  # its one span that does nothing
_SCALARS = (str, bool, int, float)
_warned = False


def _failed() -> None:
    """Tracing failed (the caller goes on): said once as a warning, then at debug level."""
    global _warned
    log.log(logging.DEBUG if _warned else logging.WARNING,
            "tracing failed; the runtime goes on without this span", exc_info=True)
    _warned = True


def _value(value: Any) -> Any:
    """``value`` as an attribute OpenTelemetry holds: a scalar, a sequence of one scalar type,
    else JSON; None for None (left out)."""
    if value is None or isinstance(value, _SCALARS):
        return value
    if isinstance(value, (list, tuple)) and value and all(
            type(v) is type(value[0]) and isinstance(v, _SCALARS) for v in value):
        return tuple(value)
    return json.dumps(value, default=str, ensure_ascii=False)


def _cancelled(exc: BaseException) -> bool:
    if isinstance(exc, BaseExceptionGroup):
        return all(_cancelled(e) for e in exc.exceptions)
    return isinstance(exc, trio.Cancelled)


def _parent(traceparent: str | None) -> Context:
    """The context a request or run span starts from: the ``traceparent``'s, else none."""
    return _PROPAGATOR.extract({"traceparent": traceparent}) if traceparent else Context()


class _Span:
    """An OpenTelemetry span under a ``with``: made current for the block if ``current``."""

    __slots__ = ("span", "_current", "_token", "_errored")

    def __init__(self, span: trace.Span, current: bool) -> None:
        self.span, self._current, self._errored = span, current, False
        self._token: object | None = None

    def __enter__(self) -> _Span:
        if self._current:
            try:
                self._token = otel_context.attach(trace.set_span_in_context(self.span))
            except Exception:
                _failed()
        return self

    def __exit__(self, kind: object, exc: BaseException | None, tb: object) -> None:
        try:
            if exc is not None:
                if _cancelled(exc):
                    self.span.set_attribute(CANCELLED, True)
                else:
                    if not self._errored:  # else the error told says more
                        self.span.set_attribute(ERROR_TYPE, type(exc).__qualname__)
                        self.span.set_status(Status(StatusCode.ERROR, str(exc)[:200] or None))
                    self.span.record_exception(exc)
        except Exception:
            _failed()
        try:
            if self._token is not None:
                otel_context.detach(self._token)  # type: ignore[arg-type]
            self.span.end()
        except Exception:
            _failed()
        return None  # the exception, if any, goes on

    def set(self, key: str, value: Any) -> None:
        try:
            value = _value(value)
            if value is not None:
                self.span.set_attribute(key, value)
        except Exception:
            _failed()

    def error(self, kind: str, description: str | None = None) -> None:
        try:
            self._errored = True
            self.span.set_attribute(ERROR_TYPE, kind)
            self.span.set_status(Status(StatusCode.ERROR, description))
        except Exception:
            _failed()


class _Request(_Span):
    """A request's span: never current (see the module header)."""

    __slots__ = ("_given",)

    def __init__(self, span: trace.Span, given: str | None) -> None:
        super().__init__(span, current=False)
        self._given = given

    @property
    def traceparent(self) -> str | None:
        try:
            carrier: dict[str, str] = {}
            _PROPAGATOR.inject(carrier, context=trace.set_span_in_context(self.span))
            return carrier.get("traceparent") or self._given
        except Exception:
            _failed()
            return self._given


class OtelTracing:
    """The ``Tracing`` on one OpenTelemetry tracer (see the module header)."""

    def __init__(self, tracer: trace.Tracer, capture_content: bool = False) -> None:
        self.tracer, self.capture_content = tracer, capture_content

    def request(self, name: str, traceparent: str | None,
                key: ThreadKey | None) -> ContextManager[Request]:
        try:
            attributes: dict[str, Any] = {} if key is None else {
                USER_ID: key.user_id, CONVERSATION_ID: key.thread_id}
            method, _, route = name.partition(" ")
            if route.startswith("/"):  # an HTTP request: "POST /v1/threads/{thread_id}/..."
                attributes["http.request.method"], attributes["http.route"] = method, route
            span = self.tracer.start_span(name, context=_parent(traceparent),
                                          kind=SpanKind.SERVER, attributes=attributes)
            return _Request(span, traceparent)
        except Exception:
            _failed()
            return NO_TRACING.request(name, traceparent, key)

    def run(self, context: RunContext, traceparent: str | None,
            agent: str) -> ContextManager[Span]:
        return self._start(f"invoke_agent {agent}", SpanKind.INTERNAL, {
            OPERATION: "invoke_agent", AGENT_NAME: agent, CONVERSATION_ID: context.thread_id,
            USER_ID: context.user_id, "threadline.run_id": context.run_id,
            "threadline.message_id": context.request_id}, _parent(traceparent))

    def model_call(self, model: str, provider: str) -> ContextManager[Span]:
        return self._start(f"chat {model}", SpanKind.CLIENT, {
            OPERATION: "chat", REQUEST_MODEL: model, PROVIDER: provider})

    def tool_call(self, tool: str, call_id: str) -> ContextManager[Span]:
        return self._start(f"execute_tool {tool}", SpanKind.INTERNAL, {
            OPERATION: "execute_tool", TOOL_NAME: tool, TOOL_CALL_ID: call_id})

    def _start(self, name: str, kind: SpanKind, attributes: dict[str, Any],
               parent: Context | None = None) -> ContextManager[Span]:
        """A span made current for its block; ``parent`` None: the current span's child."""
        try:
            span = self.tracer.start_span(name, context=parent, kind=kind,
                                          attributes=attributes)
            return _Span(span, current=True)
        except Exception:
            _failed()
            return _NOTHING


def _resource(service_name: str | None) -> Resource:
    """``service.name``: ``service_name``, else the environment's (``OTEL_SERVICE_NAME``,
    ``OTEL_RESOURCE_ATTRIBUTES``), else ``threadline``."""
    resource = Resource.create({} if service_name is None else {SERVICE_NAME: service_name})
    if str(resource.attributes.get(SERVICE_NAME, "")).startswith("unknown_service"):
        resource = resource.merge(Resource({SERVICE_NAME: "threadline"}))
    return resource


async def _shut_down(provider: TracerProvider) -> None:
    def close() -> None:
        provider.force_flush(int(SHUTDOWN_TIMEOUT * 1000))
        provider.shutdown()

    with trio.move_on_after(SHUTDOWN_TIMEOUT) as scope:
        scope.shield = True
        try:
            await trio.to_thread.run_sync(close, abandon_on_cancel=True)
        except Exception:
            log.warning("the tracer provider failed to shut down", exc_info=True)
    if scope.cancelled_caught:
        log.warning("spans not exported within %g s of the exit were dropped", SHUTDOWN_TIMEOUT)


@asynccontextmanager
async def open_tracing(*, exporter: SpanExporter | None = None,
                       tracer_provider: trace.TracerProvider | None = None,
                       capture_content: bool | None = None,
                       service_name: str | None = None) -> AsyncIterator[Tracing]:
    """The ``Tracing`` for ``open_runtime(tracing=...)`` (see the module header).

    Spans go to ``tracer_provider`` if given (the embedding program's, left running on exit);
    else to a provider built here with resource ``service.name`` ``service_name``, exporting to
    ``exporter`` (one span at a time, in the event loop: an in-memory one) if given, else in
    batches to the OTLP/HTTP exporter set by the ``OTEL_EXPORTER_OTLP_*`` variables.
    ``capture_content``: whether agents may put prompts and answers on spans. Raises
    ``ValueError`` when both ``exporter`` and ``tracer_provider`` are given."""
    if exporter is not None and tracer_provider is not None:
        raise ValueError("give an exporter or a tracer_provider, not both")
    if capture_content is None:
        capture_content = os.environ.get(CAPTURE_CONTENT_ENV, "").strip().lower() == "true"
    owned: TracerProvider | None = None
    if tracer_provider is None:
        owned = tracer_provider = TracerProvider(resource=_resource(service_name),
                                                 shutdown_on_exit=False)
        if exporter is None:
            from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

            owned.add_span_processor(BatchSpanProcessor(OTLPSpanExporter()))
        else:
            owned.add_span_processor(SimpleSpanProcessor(exporter))
    try:
        yield OtelTracing(tracer_provider.get_tracer("threadline"), capture_content)
    finally:
        if owned is not None:
            await _shut_down(owned)
