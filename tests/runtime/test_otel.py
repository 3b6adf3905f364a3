"""Tracing on OpenTelemetry (``threadline.otel``) end to end: a real server on loopback, real
WebSocket and HTTP clients, the OpenAI agent against the scripted model server, two cluster
nodes on the test PostgreSQL, and a real OTLP/HTTP receiver (``tests/otlp_receiver.py``).

The spans are read from the SDK's ``InMemorySpanExporter`` (or the receiver). A run's span ends
after its terminal event is delivered, so each test waits for the spans it reads (bounded).
"""

from __future__ import annotations

import json
import socket
from contextlib import asynccontextmanager
from typing import Any, AsyncIterator, Callable, Sequence

import pytest
import trio
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind, StatusCode

from tests.cluster.test_embedded_node import balanced, config, owned_by
from tests.helpers import scripted_agent, test_tools
from tests.llm_server import Answer, ToolCall, open_llm_server
from tests.otlp_receiver import open_otlp_receiver
from tests.servers import SECRET, http, token
from threadline import ToolRegistry, open_runtime, otel
from threadline.actors.messages import ThreadKey
from threadline.actors.tracing import NO_TRACING, Tracing, agent_name
from threadline.cluster import open_cluster_runtime
from threadline.otel import OtelTracing, open_tracing
from threadline.server import RunningServer, open_server
from threadline.transport.client import open_client
from threadline.transport.limits import Limits

TERMINAL = ("agent_completed", "agent_failed", "agent_cancelled")
CLIENT_TRACE = "4bf92f3577b34da6a3ce929d0e0e4736"
CLIENT_SPAN = "00f067aa0ba902b7"
TRACEPARENT = f"00-{CLIENT_TRACE}-{CLIENT_SPAN}-01"
RUN = "invoke_agent echo_agent"


# -- helpers -----------------------------------------------------------------------------------


@asynccontextmanager
async def traced_server(exporter: InMemorySpanExporter | None = None, *,
                        tracing: Tracing | None = None, **runtime: Any,
                        ) -> AsyncIterator[RunningServer]:
    """A runtime and its server on loopback, tracing to ``exporter`` (or through ``tracing``)."""
    async with open_tracing(exporter=exporter or InMemorySpanExporter()) as traced:
        async with open_runtime(tracing=tracing or traced, **runtime) as rt, \
                open_server(rt, port=0, secret=SECRET, limits=Limits(ping_interval=None)) as s:
            yield s


async def turn(client: Any, thread: str, text: str, traceparent: Any = None,
               ) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """A ``send`` frame (with ``traceparent`` if given): its ``accepted`` and its run's events."""
    frame: dict[str, Any] = {"type": "send", "thread_id": thread, "text": text}
    if traceparent is not None:
        frame["traceparent"] = traceparent
    accepted = await client.request(frame)
    frames = []
    with trio.fail_after(30):
        while not frames or frames[-1]["event"] not in TERMINAL:
            event = await client.next_event()
            if event.get("run_id") == accepted["run_id"]:
                frames.append(event)
    return accepted, frames


async def spans_until(exporter: InMemorySpanExporter,
                      done: Callable[[Sequence[ReadableSpan]], bool],
                      timeout: float = 15.0) -> Sequence[ReadableSpan]:
    with trio.fail_after(timeout):
        while not done(spans := exporter.get_finished_spans()):
            await trio.sleep(0.01)
    return spans


def named(spans: Sequence[ReadableSpan], name: str) -> list[ReadableSpan]:
    return [s for s in spans if s.name == name]


def one(spans: Sequence[ReadableSpan], name: str, **attributes: Any) -> ReadableSpan:
    found = [s for s in named(spans, name)
             if all(s.attributes.get(k) == v for k, v in attributes.items())]
    assert len(found) == 1, (name, attributes, [(s.name, dict(s.attributes)) for s in spans])
    return found[0]


def has(*names: str, **attributes: Any) -> Callable[[Sequence[ReadableSpan]], bool]:
    """Every one of ``names`` has ended (the first one with ``attributes``)."""
    def done(spans: Sequence[ReadableSpan]) -> bool:
        return all(any(s.name == n and (i or all(s.attributes.get(k) == v
                                                 for k, v in attributes.items()))
                       for s in spans) for i, n in enumerate(names))
    return done


def trace_of(span: ReadableSpan) -> str:
    return f"{span.context.trace_id:032x}"


def parent_of(span: ReadableSpan) -> str | None:
    return None if span.parent is None else f"{span.parent.span_id:016x}"


def id_of(span: ReadableSpan) -> str:
    return f"{span.context.span_id:016x}"


def child_of(child: ReadableSpan, parent: ReadableSpan) -> bool:
    return trace_of(child) == trace_of(parent) and parent_of(child) == id_of(parent)


def text_on(spans: Sequence[ReadableSpan]) -> str:
    """Every attribute and event of ``spans``, as one string (to look for content in)."""
    return json.dumps([[s.name, dict(s.attributes), [(e.name, dict(e.attributes))
                                                     for e in s.events]] for s in spans],
                      default=str)


# -- spans of a WebSocket send: the request, the run, the tool, the model call -----------------


async def test_a_send_is_a_request_span_whose_child_is_the_run_with_its_tool_and_model_spans():
    exporter = InMemorySpanExporter()
    async with traced_server(exporter) as server, \
            open_client(server.url, token("ada")) as client:
        await client.join("main")
        accepted, frames = await turn(client, "main", "/calc 1+2")
        assert frames[-1]["data"] == {"text": "3"}
        call_id = next(f["data"]["call_id"] for f in frames if f["event"] == "tool_executing")
        usage, _ = await turn(client, "main", "/usage")
        spans = await spans_until(exporter, has(RUN, RUN, **{
            "threadline.run_id": usage["run_id"]}))
    run = one(spans, RUN, **{"threadline.run_id": accepted["run_id"]})
    send = next(s for s in named(spans, "send") if child_of(run, s))
    tool = one(spans, "execute_tool calculator")
    assert send.parent is None and send.kind is SpanKind.SERVER  # no traceparent: a new trace
    assert dict(send.attributes) == {"threadline.user_id": "ada",
                                     "gen_ai.conversation.id": "main"}
    assert run.kind is SpanKind.INTERNAL and child_of(tool, run)
    assert dict(run.attributes) == {
        "gen_ai.operation.name": "invoke_agent", "gen_ai.agent.name": "echo_agent",
        "gen_ai.conversation.id": "main", "threadline.user_id": "ada",
        "threadline.run_id": accepted["run_id"],
        "threadline.message_id": accepted["message_id"],
        "threadline.run.outcome": "agent_completed"}
    assert run.status.status_code is StatusCode.UNSET
    assert tool.kind is SpanKind.INTERNAL and dict(tool.attributes) == {
        "gen_ai.operation.name": "execute_tool", "gen_ai.tool.name": "calculator",
        "gen_ai.tool.call.id": call_id}
    # /usage goes through run.model_call and run.report_usage: a chat span with the tokens.
    usage_run = one(spans, RUN, **{"threadline.run_id": usage["run_id"]})
    chat = one(spans, "chat echo")
    assert child_of(chat, usage_run) and chat.kind is SpanKind.CLIENT
    assert dict(chat.attributes) == {
        "gen_ai.operation.name": "chat", "gen_ai.request.model": "echo",
        "gen_ai.provider.name": "threadline", "gen_ai.usage.input_tokens": len("/usage"),
        "gen_ai.usage.output_tokens": 2}
    assert trace_of(usage_run) != trace_of(run)  # each request its own trace
    resource = dict(run.resource.attributes)
    assert resource["service.name"] == "threadline"


async def test_a_failing_tool_is_an_error_on_its_span_not_on_the_run():
    exporter = InMemorySpanExporter()
    async with traced_server(exporter, agent=scripted_agent, tools=test_tools()) as server, \
            open_client(server.url, token("ada")) as client:
        await client.join("t")
        accepted, frames = await turn(client, "t", 'tool:boom:{}')
        assert frames[-1]["event"] == "agent_failed"
        spans = await spans_until(exporter, has("invoke_agent scripted_agent"))
    tool = one(spans, "execute_tool boom")
    run = one(spans, "invoke_agent scripted_agent")
    assert tool.attributes["error.type"] == "tool_error"
    assert tool.status.status_code is StatusCode.ERROR
    assert "tool broke" in tool.status.description
    assert run.attributes["error.type"] == "agent_failed"
    assert run.status.status_code is StatusCode.ERROR


async def test_a_cancelled_run_is_no_error_and_records_no_exception():
    exporter = InMemorySpanExporter()
    async with traced_server(exporter, agent=scripted_agent, tools=test_tools()) as server, \
            open_client(server.url, token("ada")) as client:
        await client.join("t")
        accepted = await client.send("t", 'tool:slow:{"seconds": 30}')
        with trio.fail_after(30):
            while (await client.next_event())["event"] != "tool_executing":
                pass
        await client.cancel("t")
        with trio.fail_after(30):
            while (await client.next_event())["event"] != "agent_cancelled":
                pass
        spans = await spans_until(exporter, has("invoke_agent scripted_agent"))
    tool = one(spans, "execute_tool slow")
    run = one(spans, "invoke_agent scripted_agent", **{"threadline.run_id": accepted["run_id"]})
    assert tool.attributes["threadline.cancelled"] is True
    assert tool.status.status_code is StatusCode.UNSET and not tool.events
    assert "error.type" not in tool.attributes
    assert run.attributes["threadline.run.outcome"] == "agent_cancelled"
    assert run.status.status_code is StatusCode.UNSET and not run.events


# -- a client's traceparent --------------------------------------------------------------------


async def test_a_clients_traceparent_on_a_send_frame_is_the_parent_of_the_request_span():
    exporter = InMemorySpanExporter()
    async with traced_server(exporter) as server, \
            open_client(server.url, token("ada")) as client:
        await client.join("main")
        accepted, _ = await turn(client, "main", "hello", TRACEPARENT)
        spans = await spans_until(exporter, has(RUN))
    send, run = one(spans, "send"), one(spans, RUN)
    assert trace_of(send) == CLIENT_TRACE and parent_of(send) == CLIENT_SPAN
    assert send.parent.is_remote and child_of(run, send)


async def test_a_traceparent_header_on_post_messages_is_the_parent_of_the_request_span():
    exporter = InMemorySpanExporter()
    route = "POST /v1/threads/{thread_id}/messages"
    async with traced_server(exporter) as server:
        status, _, answer = await http(server, "POST", "/v1/threads/main/messages",
                                       tok=token("ada"), body={"text": "hello"},
                                       headers={"traceparent": TRACEPARENT})
        assert status == 200, answer
        spans = await spans_until(exporter, has(route, RUN))
    request, run = one(spans, route), one(spans, RUN)
    assert trace_of(request) == CLIENT_TRACE and parent_of(request) == CLIENT_SPAN
    assert request.kind is SpanKind.SERVER and child_of(run, request)
    assert run.attributes["threadline.run_id"] == answer["run_id"]
    assert request.attributes["http.request.method"] == "POST"
    assert request.attributes["http.route"] == "/v1/threads/{thread_id}/messages"
    assert request.attributes["gen_ai.conversation.id"] == "main"


async def test_a_regenerate_frame_and_route_continue_the_clients_trace():
    exporter = InMemorySpanExporter()
    route = "POST /v1/threads/{thread_id}/messages/{message_id}/regenerate"
    other = TRACEPARENT.replace(CLIENT_SPAN, "1" * 16)
    async with traced_server(exporter) as server, \
            open_client(server.url, token("ada")) as client:
        await client.join("main")
        first, _ = await turn(client, "main", "hello")
        again = await client.request({"type": "regenerate", "thread_id": "main",
                                      "message_id": first["message_id"],
                                      "traceparent": TRACEPARENT})
        status, _, answer = await http(
            server, "POST", f"/v1/threads/main/messages/{first['message_id']}/regenerate",
            tok=token("ada"), headers={"traceparent": other})
        assert status == 200, answer
        spans = await spans_until(exporter, has(RUN, **{"threadline.run_id": answer["run_id"]}))
        spans = await spans_until(exporter, has(RUN, **{"threadline.run_id": again["run_id"]}))
    frame, request = one(spans, "regenerate"), one(spans, route)
    assert parent_of(frame) == CLIENT_SPAN and parent_of(request) == "1" * 16
    assert child_of(one(spans, RUN, **{"threadline.run_id": again["run_id"]}), frame)
    assert child_of(one(spans, RUN, **{"threadline.run_id": answer["run_id"]}), request)


@pytest.mark.parametrize("malformed", [
    f"00-{CLIENT_TRACE.upper()}-{CLIENT_SPAN}-01",  # upper-case hex
    f"00-{CLIENT_TRACE}-{CLIENT_SPAN}",              # no flags
    f"00-{CLIENT_TRACE}-{CLIENT_SPAN}-01-extra",     # too long
    "not a traceparent", 42, {"trace": CLIENT_TRACE}])
async def test_a_malformed_traceparent_is_ignored_and_starts_a_new_trace(malformed):
    exporter = InMemorySpanExporter()
    async with traced_server(exporter) as server, \
            open_client(server.url, token("ada")) as client:
        await client.join("main")
        _, frames = await turn(client, "main", "hello", malformed)
        assert frames[-1]["event"] == "agent_completed"
        if isinstance(malformed, str):
            status, _, _ = await http(server, "POST", "/v1/threads/main/messages",
                                      tok=token("ada"), body={"text": "again"},
                                      headers={"traceparent": malformed})
            assert status == 200
        spans = await spans_until(exporter, lambda s: len(named(s, RUN)) == (
            2 if isinstance(malformed, str) else 1))
    requests = [s for s in spans if s.kind is SpanKind.SERVER]
    assert requests and all(s.parent is None and trace_of(s) != CLIENT_TRACE for s in requests)
    assert all(any(child_of(run, r) for r in requests) for run in named(spans, RUN))


async def test_a_client_trace_not_sampled_records_nothing_and_the_run_goes_on():
    exporter = InMemorySpanExporter()
    async with traced_server(exporter) as server, \
            open_client(server.url, token("ada")) as client:
        await client.join("main")
        _, frames = await turn(client, "main", "/calc 2*3", TRACEPARENT[:-2] + "00")
        await turn(client, "main", "hello")  # after it: the first run's spans ended first
        await spans_until(exporter, has(RUN))
    spans = exporter.get_finished_spans()
    assert frames[-1]["data"] == {"text": "6"}
    assert all(trace_of(s) != CLIENT_TRACE for s in spans)
    assert not named(spans, "execute_tool calculator")


# -- NO_TRACING and a failing tracer -----------------------------------------------------------


class RunParents:
    """``NO_TRACING`` for everything, that notes the traceparent each run was given."""

    capture_content = False

    def __init__(self) -> None:
        self.parents: list[str | None] = []

    def request(self, name: str, traceparent: str | None, key: ThreadKey | None) -> Any:
        return NO_TRACING.request(name, traceparent, key)

    def run(self, context: Any, traceparent: str | None, agent: str) -> Any:
        self.parents.append(traceparent)
        return NO_TRACING.run(context, traceparent, agent)

    def model_call(self, model: str, provider: str) -> Any:
        return NO_TRACING.model_call(model, provider)

    def tool_call(self, tool: str, call_id: str) -> Any:
        return NO_TRACING.tool_call(tool, call_id)


async def test_no_tracing_passes_a_clients_traceparent_on_unchanged():
    with NO_TRACING.request("send", TRACEPARENT, ThreadKey("ada", "main")) as span:
        assert span.traceparent == TRACEPARENT
    with NO_TRACING.request("send", None, None) as span:
        assert span.traceparent is None
    recorder = RunParents()
    async with traced_server(tracing=recorder) as server, \
            open_client(server.url, token("ada")) as client:
        await client.join("main")
        await turn(client, "main", "hello", TRACEPARENT)
        await turn(client, "main", "hello")
        other = TRACEPARENT.replace(CLIENT_SPAN, "1" * 16)
        status, _, answer = await http(server, "POST", "/v1/threads/main/messages",
                                       tok=token("ada"), body={"text": "hi"},
                                       headers={"traceparent": other})
        assert status == 200, answer
        await turn(client, "main", "after")  # a thread runs its runs in order
    assert recorder.parents == [TRACEPARENT, None, other, None]


class BrokenTracer:
    """A tracer that fails: every span it starts, or every call on the spans it starts."""

    def __init__(self, at_start: bool) -> None:
        self.at_start = at_start

    def start_span(self, *args: Any, **kwargs: Any) -> Any:
        if self.at_start:
            raise RuntimeError("tracer broke")
        return BrokenSpan()


class BrokenSpan:
    def __getattr__(self, name: str) -> Any:
        raise RuntimeError(f"span broke at {name}")


@pytest.mark.parametrize("at_start", [True, False])
async def test_a_tracer_that_fails_breaks_no_run_and_the_traceparent_still_goes_on(at_start):
    tracing = OtelTracing(BrokenTracer(at_start))  # type: ignore[arg-type]
    async with traced_server(tracing=tracing) as server, \
            open_client(server.url, token("ada")) as client:
        await client.join("main")
        for text, answer in (("/calc 1+2", "3"), ("/usage", "ok"), ("hello", "hello")):
            _, frames = await turn(client, "main", text, TRACEPARENT)
            assert frames[-1]["event"] == "agent_completed"
            assert frames[-1]["data"]["text"] == answer
        status, _, _ = await http(server, "POST", "/v1/threads/main/messages",
                                  tok=token("ada"), body={"text": "hi"},
                                  headers={"traceparent": TRACEPARENT})
        assert status == 200
    with tracing.request("send", TRACEPARENT, None) as span:
        span.set("k", {"a": 1})
        span.error("kind")
        assert span.traceparent == TRACEPARENT


# -- the OpenAI agent: a chat span per model round ---------------------------------------------


def weather_tools() -> ToolRegistry:
    tools = ToolRegistry()

    @tools.tool("weather")
    async def weather(ctx, city: str) -> dict:
        """The weather in a city."""
        return {"city": city, "temp": 21}

    return tools


@pytest.mark.parametrize("capture", [False, True])
async def test_the_openai_agent_has_a_chat_span_per_model_round(capture):
    from threadline.agents.openai import OpenAIAgent, OpenAIConfig

    exporter = InMemorySpanExporter()
    question, answer = "What is the weather in Oslo?", "Oslo: 21 degrees and sunny"
    async with open_llm_server() as llm, \
            open_tracing(exporter=exporter, capture_content=capture) as tracing:
        llm.script(Answer(calls=(ToolCall("weather", {"city": "Oslo"}, id="c1"),),
                          tokens=(31, 7, 0)),
                   Answer(pieces=(answer,), tokens=(52, 9, 0)))
        agent = OpenAIAgent(OpenAIConfig("test-model", system_prompt="Be brief.",
                                         base_url=llm.base_url, api_key="sk-test",
                                         max_retries=0))
        try:
            async with open_runtime(agent=agent, tools=weather_tools(), tracing=tracing) as rt:
                thread = rt.thread("ada", "main")
                async with thread.open_subscription() as events:
                    accepted = await thread.send(question)
                    seen = []
                    with trio.fail_after(30):
                        async for event in events:
                            seen.append(event)
                            if event.run_id == accepted.run_id and event.event in TERMINAL:
                                break
                assert event.event == "agent_completed" and event.data["text"] == answer
        finally:
            await agent.aclose()
    spans = exporter.get_finished_spans()  # the runtime has closed: every span has ended
    run = one(spans, "invoke_agent " + agent_name(agent))
    chats = named(spans, "chat test-model")
    assert len(chats) == 2 and all(child_of(c, run) for c in chats)
    rounds = zip(sorted(chats, key=lambda s: s.start_time), ("tool_calls", "stop"),
                 ((31, 7), (52, 9)))
    for chat, reason, (tokens_in, tokens_out) in rounds:
        assert chat.kind is SpanKind.CLIENT
        assert chat.attributes["gen_ai.operation.name"] == "chat"
        assert chat.attributes["gen_ai.request.model"] == "test-model"
        assert chat.attributes["gen_ai.provider.name"] == "openai"
        assert chat.attributes["gen_ai.usage.input_tokens"] == tokens_in
        assert chat.attributes["gen_ai.usage.output_tokens"] == tokens_out
        assert tuple(chat.attributes["gen_ai.response.finish_reasons"]) == (reason,)
        assert chat.attributes["gen_ai.response.model"] == "test-model"
        assert chat.attributes["gen_ai.response.id"].startswith("chatcmpl-")
        assert ("gen_ai.input.messages" in chat.attributes) is capture
        assert ("gen_ai.output.messages" in chat.attributes) is capture
        assert chat.status.status_code is StatusCode.UNSET
    tool = one(spans, "execute_tool weather")
    # The runtime's call id (the tool events'), not the model's ("c1").
    call_id = next(e.data["call_id"] for e in seen if e.event == "tool_executing")
    assert tool.attributes["gen_ai.tool.call.id"] == call_id and child_of(tool, run)
    seen = text_on(spans)  # no prompt and no answer on any span, unless the operator opted in
    assert all((text in seen) is capture for text in (question, answer, "Be brief"))


# -- spans to a real OTLP/HTTP receiver, configured by the environment -------------------------


async def test_spans_reach_an_otlp_receiver_set_by_the_environment_only(monkeypatch):
    async with open_otlp_receiver() as receiver:
        monkeypatch.setenv("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", receiver.endpoint)
        monkeypatch.setenv("OTEL_SERVICE_NAME", "threadline-tests")
        monkeypatch.delenv("OTEL_INSTRUMENTATION_GENAI_CAPTURE_MESSAGE_CONTENT", raising=False)
        async with open_tracing() as tracing:
            assert tracing.capture_content is False
            async with open_runtime(tracing=tracing) as rt, \
                    open_server(rt, port=0, secret=SECRET,
                                limits=Limits(ping_interval=None)) as server, \
                    open_client(server.url, token("ada")) as client:
                await client.join("main")
                accepted, _ = await turn(client, "main", "/calc 1+2", TRACEPARENT)
        # Leaving open_tracing flushed the batch: everything has arrived.
        spans = receiver.spans
    assert receiver.refused == 0
    by_name = {s.name: s for s in spans}
    assert set(by_name) == {"send", RUN, "execute_tool calculator"}
    send, run, tool = by_name["send"], by_name[RUN], by_name["execute_tool calculator"]
    assert send.trace_id == run.trace_id == tool.trace_id == CLIENT_TRACE
    assert send.parent_span_id == CLIENT_SPAN and send.kind == "SERVER"
    assert run.parent_span_id == send.span_id and tool.parent_span_id == run.span_id
    assert run.attributes["threadline.run_id"] == accepted["run_id"]
    assert run.attributes["gen_ai.operation.name"] == "invoke_agent"
    assert tool.attributes["gen_ai.tool.name"] == "calculator"
    assert all(s.resource["service.name"] == "threadline-tests" for s in spans)


async def test_capture_content_defaults_to_the_genai_variable(monkeypatch):
    monkeypatch.setenv("OTEL_INSTRUMENTATION_GENAI_CAPTURE_MESSAGE_CONTENT", "True")
    async with open_tracing(exporter=InMemorySpanExporter()) as tracing:
        assert tracing.capture_content is True
    async with open_tracing(exporter=InMemorySpanExporter(), capture_content=False) as tracing:
        assert tracing.capture_content is False
    monkeypatch.setenv("OTEL_INSTRUMENTATION_GENAI_CAPTURE_MESSAGE_CONTENT", "false")
    async with open_tracing(exporter=InMemorySpanExporter()) as tracing:
        assert tracing.capture_content is False


async def test_a_collector_that_is_down_costs_spans_not_runs(monkeypatch):
    with socket.socket() as s:  # a port on loopback that nothing listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", f"http://127.0.0.1:{port}/v1/traces")
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_TRACES_TIMEOUT", "1")
    with trio.fail_after(60):
        async with open_tracing() as tracing, open_runtime(tracing=tracing) as rt:
            thread = rt.thread("ada", "main")
            async with thread.open_subscription() as events:
                for i in range(3):
                    accepted = await thread.send(f"/calc {i}+1")
                    async for event in events:
                        if event.run_id == accepted.run_id and event.event in TERMINAL:
                            assert event.data == {"text": str(i + 1)}
                            break


async def test_a_collector_that_never_answers_holds_the_exit_only_so_long(monkeypatch, caplog):
    """The provider's flush at exit is abandoned after ``SHUTDOWN_TIMEOUT`` (here 0.2 s; the
    exporter would wait 3 s for its answer): what was not sent is dropped, and said."""
    monkeypatch.setattr(otel, "SHUTDOWN_TIMEOUT", 0.2)

    async def silent(stream: trio.SocketStream) -> None:
        async with stream:
            await trio.sleep_forever()  # reads nothing, answers nothing, until cancelled

    async with trio.open_nursery() as nursery:
        listeners = await nursery.start(trio.serve_tcp, silent, 0)
        port = listeners[0].socket.getsockname()[1]
        monkeypatch.setenv("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT",
                           f"http://127.0.0.1:{port}/v1/traces")
        monkeypatch.setenv("OTEL_EXPORTER_OTLP_TRACES_TIMEOUT", "3")
        with trio.fail_after(30):
            async with open_tracing() as tracing, open_runtime(tracing=tracing) as rt:
                thread = rt.thread("ada", "main")
                async with thread.open_subscription() as events:
                    accepted = await thread.send("hello")
                    async for event in events:
                        if event.run_id == accepted.run_id and event.event in TERMINAL:
                            break
        nursery.cancel_scope.cancel()
    assert "spans not exported within 0.2 s of the exit were dropped" in caplog.text


async def test_a_tracer_provider_given_is_used_and_left_running():
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import SimpleSpanProcessor

    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    for _ in range(2):  # open twice: the first exit did not shut the provider down
        async with open_tracing(tracer_provider=provider) as tracing, \
                open_runtime(tracing=tracing) as rt:
            thread = rt.thread("ada", "main")
            async with thread.open_subscription() as events:
                accepted = await thread.send("hello")
                with trio.fail_after(30):
                    async for event in events:
                        if event.run_id == accepted.run_id and event.event in TERMINAL:
                            break
    assert len(named(exporter.get_finished_spans(), RUN)) == 2
    provider.shutdown()
    with pytest.raises(ValueError):
        async with open_tracing(exporter=exporter, tracer_provider=provider):
            pass


# -- a cluster: the run on the owner node continues the entry node's trace ---------------------


@pytest.mark.parametrize("entry_traced", [True, False])
async def test_a_request_forwarded_to_the_owner_node_continues_the_trace(pg_dsn, entry_traced):
    """A WebSocket send on node A of a thread node B owns: B's run span is the child of A's
    request span; with A untraced (NO_TRACING), of the client's span directly."""
    on_a, on_b = InMemorySpanExporter(), InMemorySpanExporter()
    with trio.fail_after(90):
        async with open_tracing(exporter=on_a) as traced_a, \
                open_tracing(exporter=on_b) as traced_b, \
                open_cluster_runtime(config(pg_dsn, "a"),
                                     tracing=traced_a if entry_traced else NO_TRACING) as a, \
                open_cluster_runtime(config(pg_dsn, "b"), tracing=traced_b) as b, \
                open_server(a.runtime, port=0, secret=SECRET,
                            limits=Limits(ping_interval=None)) as server:
            await balanced([a, b])
            thread = owned_by(b, "ada")
            async with open_client(server.url, token("ada")) as client:
                await client.join(thread)
                accepted, frames = await turn(client, thread, "/calc 1+2", TRACEPARENT)
                assert frames[-1]["data"] == {"text": "3"}
            on_b_spans = await spans_until(on_b, has(RUN, "execute_tool calculator"))
    on_a_spans = on_a.get_finished_spans()
    run = one(on_b_spans, RUN, **{"threadline.run_id": accepted["run_id"]})
    assert child_of(one(on_b_spans, "execute_tool calculator"), run)
    assert trace_of(run) == CLIENT_TRACE and run.parent.is_remote
    assert not named(on_a_spans, RUN) and not named(on_b_spans, "send")
    if entry_traced:
        send = one(on_a_spans, "send")
        assert parent_of(send) == CLIENT_SPAN and child_of(run, send)
    else:
        assert not on_a_spans and parent_of(run) == CLIENT_SPAN
