"""The OpenAI-compatible agent, embedded: a real runtime, the real ``openai`` SDK, real HTTP and
server-sent events from the scripted server of ``tests/llm_server.py`` on loopback."""

from __future__ import annotations

import json
from contextlib import asynccontextmanager

import pytest
import trio

from tests.helpers import answer_of
from tests.llm_server import Answer, Ending, Failure, ToolCall, open_llm_server
from threadline import RuntimeConfig, ToolRegistry, open_runtime
from threadline.agents.openai import OpenAIAgent, OpenAIConfig

TERMINAL = ("agent_completed", "agent_failed", "agent_cancelled")


def weather_tools() -> ToolRegistry:
    tools = ToolRegistry()

    @tools.tool("weather")
    async def weather(ctx, city: str, unit: str = "C") -> dict:
        """The weather in a city."""
        if city == "Atlantis":
            raise ValueError("no such city")
        return {"city": city, "temp": 21, "unit": unit}

    return tools


@asynccontextmanager
async def agent_runtime(llm, *, tools=None, max_rounds=8, max_retries=0, **config):
    agent = OpenAIAgent(OpenAIConfig("test-model", system_prompt="Be brief.",
                                     base_url=llm.base_url, api_key="sk-test-secret",
                                     max_retries=max_retries, max_rounds=max_rounds))
    try:
        async with open_runtime(agent=agent, tools=tools or ToolRegistry(),
                                config=RuntimeConfig(**config)) as rt:
            yield rt
    finally:
        await agent.aclose()


async def turn(rt, text, user="ada", thread="main", attachments=()):
    """Send ``text`` (with ``attachments``); the run's events up to its terminal one."""
    handle = rt.thread(user, thread)
    async with handle.open_subscription() as events:
        accepted = await handle.send(text, attachments=list(attachments))
        out = []
        with trio.fail_after(30):
            async for event in events:
                if event.run_id == accepted.run_id:
                    out.append(event)
                    if event.event in TERMINAL:
                        return out
    raise AssertionError("unreachable")


async def test_an_answer_streams_and_completes_with_what_the_model_wrote():
    async with open_llm_server() as llm, agent_runtime(llm) as rt:
        llm.script(Answer(pieces=("Hel", "lo", ", Ada"), delay=0.1))
        events = await turn(rt, "hi")
    assert events[-1].event == "agent_completed" and events[-1].data == {
        "text": "Hello, Ada", "usage": {"input_tokens": 10, "output_tokens": 3,
                                        "cached_input_tokens": 0, "model": "test-model"}}
    assert answer_of(events) == "Hello, Ada" and len([e for e in events
                                                      if e.event == "agent_delta"]) == 3
    body = llm.requests[0].body
    assert body["model"] == "test-model" and body["stream"] is True
    assert body["stream_options"] == {"include_usage": True}
    assert body["messages"] == [{"role": "system", "content": "Be brief."},
                                {"role": "user", "content": "hi"}]
    assert llm.requests[0].headers["authorization"] == "Bearer sk-test-secret"


async def test_the_model_gets_the_threads_history_and_nothing_of_another_user():
    async with open_llm_server() as llm, agent_runtime(llm) as rt:
        llm.script(Answer(pieces=("first answer",)), Answer(pieces=("bob's answer",)),
                   Answer(pieces=("second answer",)))
        await turn(rt, "first question")
        await turn(rt, "bob's question", user="bob")  # the same thread id, another user
        await turn(rt, "second question")
    assert llm.requests[2].body["messages"] == [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "first question"},
        {"role": "assistant", "content": "first answer"},
        {"role": "user", "content": "second question"}]
    assert "bob" not in json.dumps(llm.requests[2].body)


async def test_a_tool_call_in_fragments_goes_through_the_registry_and_back_to_the_model():
    async with open_llm_server() as llm, agent_runtime(llm, tools=weather_tools()) as rt:
        llm.script(Answer(calls=(ToolCall("weather", {"city": "Oslo"}, fragments=4, id="c1"),
                                 ToolCall("weather", {"city": "Atlantis"}, id="c2"))),
                   Answer(pieces=("Oslo: 21 C",)))
        events = await turn(rt, "weather?")
    events = events[1:]  # after the user_message
    names = [e.event for e in events]
    assert names == ["agent_started", "tool_executing", "tool_completed", "tool_executing",
                     "tool_completed", "agent_delta", "agent_completed"]
    assert events[1].data["args"] == {"city": "Oslo"}
    assert events[2].data["result"] == {"city": "Oslo", "temp": 21, "unit": "C"}
    assert events[4].data["error"] == "ValueError: no such city"
    offered = llm.requests[0].body["tools"]
    assert offered == [{"type": "function", "function": {
        "name": "weather", "description": "The weather in a city.", "parameters": {
            "type": "object", "additionalProperties": False, "required": ["city"],
            "properties": {"city": {"type": "string"},
                           "unit": {"type": "string", "default": "C"}}}}}]
    second = llm.requests[1].body["messages"]
    assert second[-3]["tool_calls"][0]["function"] == {"name": "weather",
                                                      "arguments": '{"city": "Oslo"}'}
    assert second[-2] == {"role": "tool", "tool_call_id": "c1",
                          "content": json.dumps({"city": "Oslo", "temp": 21, "unit": "C"})}
    assert second[-1] == {"role": "tool", "tool_call_id": "c2",
                          "content": json.dumps({"error": "ValueError: no such city"})}
    assert events[-1].data["text"] == "Oslo: 21 C"


async def test_a_registered_schema_is_offered_as_given():
    tools = ToolRegistry()
    schema = {"type": "object", "properties": {"q": {"type": "string"}}, "required": ["q"]}
    tools.register("search", lambda ctx, **kw: None, schema=schema, description="Search.")
    async with open_llm_server() as llm, agent_runtime(llm, tools=tools) as rt:
        llm.script(Answer(pieces=("ok",)))
        await turn(rt, "x")
    assert llm.requests[0].body["tools"] == [
        {"type": "function", "function": {"name": "search", "description": "Search.",
                                          "parameters": schema}}]


async def test_cancel_mid_stream_closes_the_http_stream_to_the_model():
    async with open_llm_server() as llm, agent_runtime(llm, delta_interval=0.0) as rt:
        llm.script(Answer(pieces=("one ", "two ", "three"), delay=0.3, ending=Ending.HANG))
        thread = rt.thread("ada", "main")
        async with thread.open_subscription() as events:
            accepted = await thread.send("go")
            async for event in events:
                if event.event == "agent_delta":
                    break
            await thread.cancel(accepted.run_id)
            with trio.fail_after(5):
                await llm.requests[0].disconnected.wait()  # the server saw the client leave
                async for event in events:
                    if event.event == "agent_cancelled":
                        break
    assert llm.disconnects == 1


@pytest.mark.parametrize("failure, message", [
    (Failure(401), "the model endpoint answered 401 Unauthorized (the API key was refused)"),
    (Failure(429, retry_after=0.01), "the model endpoint answered 429 Too Many Requests (rate "
                                     "limited)"),
    (Failure(500), "the model endpoint answered 500 Internal Server Error"),
    (Failure(503), "the model endpoint answered 503 Service Unavailable"),
    (Answer(pieces=("half",), ending=Ending.CUT),
     "the connection to the model was lost in the middle of the answer"),
    (Answer(pieces=("half",), ending=Ending.END), "the model's answer was cut off"),
    (Answer(calls=(ToolCall("weather", '{"city": "Os', fragments=2),)),
     "the model sent a malformed call of tool 'weather'"),
])
async def test_an_upstream_failure_fails_the_run_with_a_clear_message_and_the_thread_goes_on(
        failure, message):
    async with open_llm_server() as llm, agent_runtime(llm, tools=weather_tools()) as rt:
        llm.script(failure, Answer(pieces=("fine again",)))
        failed = await turn(rt, "first")
        after = await turn(rt, "second")
    assert failed[-1].event == "agent_failed" and failed[-1].data["error"] == message
    assert after[-1].data["text"] == "fine again"
    assert "sk-test-secret" not in json.dumps([e.data for e in failed])


async def test_429_is_retried_by_the_sdk_before_it_fails_the_run():
    async with open_llm_server() as llm, agent_runtime(llm, max_retries=2) as rt:
        llm.script(Failure(429, retry_after=0.01), Failure(429, retry_after=0.01),
                   Answer(pieces=("third time",)))
        events = await turn(rt, "x")
    assert events[-1].data["text"] == "third time" and len(llm.requests) == 3


async def test_a_model_that_never_stops_calling_tools_is_stopped_after_max_rounds():
    async with open_llm_server() as llm, agent_runtime(llm, tools=weather_tools(),
                                                       max_rounds=2) as rt:
        llm.script(*[Answer(calls=(ToolCall("weather", {"city": "Oslo"}),))] * 2)
        events = await turn(rt, "loop")
    assert events[-1].data["error"] == "the model asked for tools 2 times without answering"
    assert len(llm.requests) == 2
    # The last round's calls are not run: no round is left to give their results to.
    assert [e.event for e in events].count("tool_executing") == 1


async def test_an_unreachable_endpoint_fails_the_run():
    async with open_llm_server() as llm:
        base_url = llm.base_url  # the server is gone once the block ends: nothing listens
    agent = OpenAIAgent(OpenAIConfig("m", base_url=base_url, api_key="k", max_retries=0))
    async with open_runtime(agent=agent) as rt:
        events = await turn(rt, "hello?")
    await agent.aclose()
    assert events[-1].data["error"] == "the model endpoint could not be reached"


async def test_text_of_a_later_round_starts_a_new_paragraph():
    async with open_llm_server() as llm, agent_runtime(llm, tools=weather_tools()) as rt:
        llm.script(Answer(pieces=("Let me check.",),
                          calls=(ToolCall("weather", {"city": "Oslo"}),)),
                   Answer(pieces=("It is 21 C.",)))
        events = await turn(rt, "weather?")
    assert events[-1].data["text"] == "Let me check.\n\nIt is 21 C."
    assert answer_of(events) == "Let me check.\n\nIt is 21 C."


async def test_shutdown_and_interrupt_close_the_http_stream_too():
    async with open_llm_server() as llm:
        llm.script(Answer(pieces=("one ",), ending=Ending.HANG),
                   Answer(pieces=("two ",), ending=Ending.HANG))
        async with agent_runtime(llm, shutdown_grace=0.2) as rt:
            thread = rt.thread("ada", "main")
            async with thread.open_subscription() as events:
                first = await thread.send("first")
                async for event in events:
                    if event.event == "agent_delta":
                        break
                await thread.send("second", strategy="interrupt")  # cancels the first
                with trio.fail_after(5):
                    await llm.requests[0].disconnected.wait()
                    async for event in events:
                        if event.event == "agent_delta" and event.run_id != first.run_id:
                            break
        # Leaving the runtime shut the second run down: its stream was closed as well.
        with trio.fail_after(5):
            await llm.requests[1].disconnected.wait()
    assert llm.disconnects == 2
