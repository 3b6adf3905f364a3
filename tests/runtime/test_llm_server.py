"""tests/llm_server.py driven by the real ``openai.AsyncOpenAI`` client under trio: what the SDK
receives, what it raises, and which ways of leaving a stream really close the upstream socket."""

from __future__ import annotations

import json
from functools import partial
from typing import Any, AsyncIterator

import httpx2
import openai
import pytest
import trio

from tests.llm_conversation import conversation_problem
from tests.llm_server import Answer, Ending, Failure, LLMServer, ToolCall, open_llm_server

MESSAGES = [{"role": "user", "content": "hi"}]


@pytest.fixture
async def llm() -> AsyncIterator[LLMServer]:
    async with open_llm_server() as server:
        yield server


@pytest.fixture
async def client(llm: LLMServer) -> AsyncIterator[openai.AsyncOpenAI]:
    # `async with`: under trio the client's __del__ cannot close its pool (it needs asyncio).
    async with openai.AsyncOpenAI(base_url=llm.base_url, api_key="test", max_retries=0) as c:
        yield c


async def stream_of(client: openai.AsyncOpenAI, **kw: Any) -> Any:
    return await client.chat.completions.create(model="test-model", messages=MESSAGES,
                                                stream=True, **kw)


def assemble(chunks: list[Any]) -> tuple[str, dict[int, dict[str, Any]]]:
    """The text and the tool calls (by index) of a list of chunks, as an agent assembles them."""
    text, calls = "", {}
    for chunk in chunks:
        for choice in chunk.choices:
            text += choice.delta.content or ""
            for part in choice.delta.tool_calls or ():
                call = calls.setdefault(part.index, {"id": None, "name": "", "arguments": "",
                                                     "fragments": 0})
                call["id"] = part.id or call["id"]
                call["name"] += (part.function and part.function.name) or ""
                if part.function and part.function.arguments:
                    call["arguments"] += part.function.arguments
                    call["fragments"] += 1
    return text, calls


async def seen_leaving(llm: LLMServer) -> bool:
    with trio.move_on_after(5):
        await llm.requests[-1].disconnected.wait()
    return llm.requests[-1].disconnected.is_set()


async def test_a_streamed_text_arrives_piece_by_piece(llm, client):
    delay = 0.05
    llm.script(Answer(pieces=("Hel", "lo", " world"), delay=delay))
    start = trio.current_time()
    arrivals = []
    async with await stream_of(client) as stream:
        async for chunk in stream:
            arrivals.append((trio.current_time() - start, chunk))
    contents = [chunk.choices[0].delta.content for _, chunk in arrivals]
    assert contents == ["", "Hel", "lo", " world", None]
    assert arrivals[0][1].choices[0].delta.role == "assistant"
    assert [chunk.choices[0].finish_reason for _, chunk in arrivals][-1] == "stop"
    assert {chunk.object for _, chunk in arrivals} == {"chat.completion.chunk"}
    for k in (1, 2, 3):  # the k-th piece leaves the server k delays after the request came
        assert arrivals[k][0] >= k * delay - 1e-9
    (request,) = llm.requests
    assert request.body == {"model": "test-model", "messages": MESSAGES, "stream": True}
    assert request.headers["authorization"] == "Bearer test"
    assert llm.disconnects == 0


async def test_pieces_arrive_before_the_body_ends(llm, client):
    llm.script(Answer(pieces=("a", "b"), ending=Ending.HANG))
    async with await stream_of(client) as stream:
        got = [(await stream.__anext__()).choices[0].delta.content for _ in range(3)]
    assert got == ["", "a", "b"]  # while the server still holds the stream open


async def test_tool_call_fragments_assemble_by_index(llm, client):
    tools = [{"type": "function", "function": {"name": "add", "parameters": {"type": "object"}}}]
    llm.script(Answer(calls=[ToolCall("add", {"a": 1, "b": 2}, fragments=4, id="call_add"),
                             ToolCall("echo", '{"text": "hi"}', fragments=2)]))
    async with await stream_of(client, tools=tools) as stream:
        chunks = [chunk async for chunk in stream]
    text, calls = assemble(chunks)
    assert text == ""
    assert sorted(calls) == [0, 1]
    assert calls[0]["id"] == "call_add" and calls[1]["id"].startswith("call_")
    assert (calls[0]["name"], json.loads(calls[0]["arguments"])) == ("add", {"a": 1, "b": 2})
    assert (calls[1]["name"], json.loads(calls[1]["arguments"])) == ("echo", {"text": "hi"})
    assert (calls[0]["fragments"], calls[1]["fragments"]) == (4, 2)
    assert chunks[-1].choices[0].finish_reason == "tool_calls"
    assert llm.requests[0].body["tools"] == tools


async def test_malformed_arguments_arrive_as_sent(llm, client):
    llm.script(Answer(pieces=("Let me add.",), calls=[ToolCall("add", '{"a": 1,', fragments=2)]))
    async with await stream_of(client) as stream:
        text, calls = assemble([chunk async for chunk in stream])
    assert text == "Let me add." and calls[0]["arguments"] == '{"a": 1,'
    with pytest.raises(json.JSONDecodeError):
        json.loads(calls[0]["arguments"])


async def test_an_unstreamed_request_gets_the_whole_completion(llm, client):
    llm.script(Answer(pieces=("I will ", "add."), calls=[ToolCall("add", {"a": 1})]))
    completion = await client.chat.completions.create(model="test-model", messages=MESSAGES)
    (choice,) = completion.choices
    assert (choice.message.content, choice.finish_reason) == ("I will add.", "tool_calls")
    (call,) = choice.message.tool_calls
    assert (call.function.name, json.loads(call.function.arguments)) == ("add", {"a": 1})


@pytest.mark.parametrize("status, error, code, tries", [
    (401, openai.AuthenticationError, "invalid_api_key", 1),  # never retried
    (429, openai.RateLimitError, "rate_limit_exceeded", 3),
    (500, openai.InternalServerError, None, 3),
])
async def test_error_statuses_raise_the_sdk_errors_after_its_retries(llm, client, status, error,
                                                                     code, tries):
    llm.script(*[Failure(status, f"no: {status}", retry_after=0.01)] * 3)
    with pytest.raises(error) as caught:
        await stream_of(client.with_options(max_retries=2))
    assert caught.value.status_code == status and caught.value.code == code
    assert caught.value.message == f"Error code: {status} - no: {status}"
    assert caught.value.request_id == f"req_{tries}"
    assert [r.headers["x-stainless-retry-count"] for r in llm.requests] == \
        [str(n) for n in range(tries)]


async def test_a_cut_stream_raises_a_connection_error_after_its_pieces(llm, client):
    llm.script(Answer(pieces=("a", "b"), ending=Ending.CUT))
    got = []
    with pytest.raises(openai.APIConnectionError) as caught:
        async with await stream_of(client) as stream:
            async for chunk in stream:
                got.append(chunk.choices[0].delta.content)
    assert got == ["", "a", "b"]
    assert not isinstance(caught.value, openai.APITimeoutError)
    assert isinstance(caught.value.__cause__, httpx2.RemoteProtocolError)


async def test_a_body_ending_without_done_ends_the_iteration_quietly(llm, client):
    llm.script(Answer(pieces=("a",), ending=Ending.END))
    async with await stream_of(client) as stream:
        chunks = [chunk async for chunk in stream]
    assert [chunk.choices[0].finish_reason for chunk in chunks] == [None, None]


async def test_a_stalled_stream_times_out_and_is_closed(llm, client):
    llm.script(Answer(pieces=("a",), ending=Ending.HANG))
    with pytest.raises(openai.APITimeoutError) as caught:
        async with await stream_of(client.with_options(timeout=0.5)) as stream:
            async for _ in stream:
                pass
    assert isinstance(caught.value.__cause__, httpx2.ReadTimeout)
    assert await seen_leaving(llm)


async def test_connection_refused_is_a_connection_error():
    async with open_llm_server() as gone:
        pass
    async with openai.AsyncOpenAI(base_url=gone.base_url, api_key="test", max_retries=0) as c:
        with pytest.raises(openai.APIConnectionError) as caught:
            await stream_of(c)
    assert isinstance(caught.value.__cause__, httpx2.ConnectError)


async def test_unscripted_and_unknown_requests_are_refused(llm, client):
    with pytest.raises(openai.InternalServerError, match="nothing scripted for request 1"):
        await stream_of(client)
    with pytest.raises(openai.NotFoundError):
        await client.models.list()
    assert len(llm.requests) == 1


CALL = {"id": "c1", "type": "function", "function": {"name": "f", "arguments": "{}"}}
ASKED = {"role": "assistant", "content": None, "tool_calls": [CALL]}
ANSWERED = {"role": "tool", "tool_call_id": "c1", "content": "42"}
USER = {"role": "user", "content": "hi"}


@pytest.mark.parametrize("messages, problem", [
    ([USER, ASKED, ANSWERED], None),
    ([USER, {**ASKED, "content": "Let me see."}, ANSWERED, {"role": "assistant",
                                                          "content": "42."}, USER], None),
    ([USER, {**ASKED, "tool_calls": [CALL, {**CALL, "id": "c2"}]}, ANSWERED,
      {**ANSWERED, "tool_call_id": "c2"}], None),
    ([USER, ASKED], "The following tool_call_ids did not have response messages: c1"),
    ([USER, ASKED, USER, ANSWERED], "did not have response messages: c1"),
    ([USER, {**ASKED, "tool_calls": [CALL, {**CALL, "id": "c2"}]}, ANSWERED, USER],
     "did not have response messages: c2"),
    ([USER, ANSWERED], "must be a response to a preceeding message with 'tool_calls'"),
    ([USER, ASKED, ANSWERED, ANSWERED], "must be a response to a preceeding"),
    ([USER, ASKED, {**ANSWERED, "content": None}], "messages[2].content"),
    ([USER, {"role": "assistant", "content": None}], "messages[1].content"),
    ([USER, {**ASKED, "tool_calls": [{"id": "c1", "function": {"name": "f"}}]}],
     "messages[1].tool_calls"),
    ([{"role": "robot", "content": "x"}], "messages[0].role"),
    ([], "non-empty array"),
])
def test_conversations_the_api_refuses_are_told_apart(messages, problem):
    found = conversation_problem(messages)
    assert found is None if problem is None else problem in found


async def test_a_conversation_the_api_refuses_gets_a_400_and_takes_no_answer(llm, client):
    llm.script(Answer(pieces=("fine",)))
    with pytest.raises(openai.BadRequestError, match="did not have response messages: c1"):
        await client.chat.completions.create(model="test-model", messages=[USER, ASKED],
                                             stream=True)
    assert "c1" in llm.requests[0].refused
    async with await client.chat.completions.create(
            model="test-model", messages=[USER, ASKED, ANSWERED], stream=True) as stream:
        text, _ = assemble([chunk async for chunk in stream])
    assert text == "fine" and llm.requests[1].refused is None


async def test_complete_streams_reuse_one_connection(llm, client):
    llm.script(Answer(pieces=("a",)), Answer(pieces=("b",)))
    for _ in range(2):
        async with await stream_of(client) as stream:
            assert [chunk async for chunk in stream][-1].choices[0].finish_reason == "stop"
    assert (llm.connections, llm.disconnects) == (1, 0)


async def close_it(stream: Any) -> None:
    await stream.__anext__()
    await stream.close()


async def leave_async_with(stream: Any) -> None:
    async with stream:
        await stream.__anext__()


async def cancel_between_chunks(stream: Any) -> None:
    with trio.CancelScope() as scope:
        async for _ in stream:
            scope.cancel()  # no close(): the cancelled read closes the connection


async def cancel_a_blocked_read(stream: Any) -> None:
    with trio.move_on_after(0.1):
        async for _ in stream:
            pass


@pytest.mark.parametrize("leave", [close_it, leave_async_with, cancel_between_chunks,
                                   cancel_a_blocked_read])
async def test_leaving_a_stream_closes_the_connection(llm, client, leave):
    llm.script(Answer(pieces=("a", "b"), ending=Ending.HANG))
    await leave(await stream_of(client))
    assert await seen_leaving(llm)
    assert llm.disconnects == 1


async def test_cancelling_inside_the_stream_helper_closes_the_connection(llm, client):
    llm.script(Answer(pieces=("a", "b"), ending=Ending.HANG))
    with trio.CancelScope() as scope:
        async with client.chat.completions.stream(model="test-model", messages=MESSAGES) as s:
            async for event in s:
                if event.type == "content.delta":
                    scope.cancel()
    assert await seen_leaving(llm)


async def test_cancelling_before_the_answer_starts_closes_the_connection(llm, client):
    llm.script(Answer(pieces=("a",), ending=Ending.HANG))  # unstreamed: nothing is sent
    async with trio.open_nursery() as nursery:
        nursery.start_soon(partial(client.chat.completions.create, model="test-model",
                                   messages=MESSAGES))
        with trio.fail_after(5):
            while not llm.requests:
                await trio.sleep(0.01)
        nursery.cancel_scope.cancel()
    assert await seen_leaving(llm)


async def test_breaking_out_of_the_loop_does_not_close_the_connection(llm, client):
    llm.script(Answer(pieces=("a", "b"), ending=Ending.HANG))
    stream = await stream_of(client)
    async for _ in stream:
        break
    await trio.sleep(0.1)
    assert not llm.requests[0].disconnected.is_set()  # the stream still holds the response
    await stream.close()
    assert await seen_leaving(llm)
