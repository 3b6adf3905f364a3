"""Streamed answers over real sockets: a client that drops in the middle of an answer and comes
back with ``since`` (or joins late) ends with exactly the answer, over JSON and msgpack; the
answer survives ``kill -9`` of the server; ``threadline serve --agent openai`` streams what a
(scripted) model writes."""

from __future__ import annotations

import os

import pytest
import trio

from tests.llm_server import Answer, open_llm_server
from tests.servers import ServeProcess, serving, token
from threadline.transport.client import open_client

NUMBERS = 400  # /stream 400: two seconds of answer at 200 numbers a second
WHOLE = " ".join(map(str, range(1, NUMBERS + 1)))


class Answers:
    """What a client does with ``agent_delta``: lays each piece at its offset, skips the
    pieces it already has, and fails the test on a gap."""

    def __init__(self) -> None:
        self.text = ""
        self.last_seq = 0

    def take(self, frame: dict) -> None:
        assert frame["seq"] == self.last_seq + 1, "a gap or a duplicate in seq"
        self.last_seq = frame["seq"]
        if frame["event"] == "agent_delta":
            offset, piece = frame["data"]["offset"], frame["data"]["text"]
            assert offset <= len(self.text), f"a gap in the answer at {len(self.text)}"
            if offset == len(self.text):
                self.text += piece
            else:
                assert self.text[offset:offset + len(piece)] == piece


@pytest.mark.parametrize("encoding", ["json", "msgpack"])
@pytest.mark.parametrize("drop_after", [1, 3, 8])
async def test_a_client_that_drops_mid_answer_resumes_with_since_and_gets_the_whole_answer(
        encoding, drop_after):
    async with serving() as server:
        answer = Answers()
        async with open_client(server.url, token("ada"), encoding=encoding) as client:
            await client.join("main")
            await client.send("main", f"/stream {NUMBERS}")
            deltas = 0
            while deltas < drop_after:
                frame = await client.next_event(10)
                answer.take(frame)
                deltas += frame["event"] == "agent_delta"
        assert 0 < len(answer.text) < len(WHOLE)  # it left in the middle
        left_at = answer.last_seq
        await trio.sleep(0.2)  # the answer goes on without it
        async with open_client(server.url, token("ada"), encoding=encoding) as client:
            joined = await client.join("main", since=answer.last_seq)
            frame = {}
            while frame.get("event") != "agent_completed":
                frame = await client.next_event(20)
                answer.take(frame)
        assert joined["last_seq"] > left_at  # pieces it missed were stored meanwhile
        assert answer.text == WHOLE == frame["data"]["text"]


async def test_a_client_that_joins_in_the_middle_of_an_answer_replays_it_from_the_start():
    async with serving() as server:
        async with open_client(server.url, token("ada")) as writer:
            await writer.join("main")
            await writer.send("main", f"/stream {NUMBERS}")
            while (await writer.next_event(10))["event"] != "agent_delta":
                pass
            async with open_client(server.url, token("ada"), encoding="msgpack") as late:
                await late.join("main", since=0)
                answer, frame = Answers(), {}
                while frame.get("event") != "agent_completed":
                    frame = await late.next_event(20)
                    answer.take(frame)
    assert answer.text == WHOLE


async def test_an_answer_survives_kill_9_and_the_run_ends_failed(tmp_path):
    store = ("--store", f"sqlite:///{tmp_path}/t.db")
    server = ServeProcess(*store)
    seen = Answers()
    try:
        url = await server.ready()
        async with open_client(url, token("ada")) as client:
            await client.join("main")
            await client.send("main", "/stream 100000")  # far longer than the test
            while len(seen.text) < 200:
                seen.take(await client.next_event(10))
            server.kill()  # SIGKILL mid-answer
    finally:
        server.kill()
    server = ServeProcess(*store)
    try:
        url = await server.ready()
        async with open_client(url, token("ada")) as client:
            await client.join("main", since=0)
            replayed, frame = Answers(), {}
            while frame.get("event") not in ("agent_failed", "agent_completed"):
                frame = await client.next_event(10)
                replayed.take(frame)
    finally:
        server.kill()
    assert frame["event"] == "agent_failed"  # start-up recovery closed the open run
    # Every piece a client saw is there again, and what follows it continues the numbers.
    assert replayed.text.startswith(seen.text)
    assert " ".join(map(str, range(1, 100_001))).startswith(replayed.text)


async def test_serve_with_the_openai_agent_streams_what_the_model_writes():
    async with open_llm_server() as llm:
        llm.script(Answer(pieces=("Hello", " from", " the", " model"), delay=0.05))
        env = {"OPENAI_BASE_URL": llm.base_url, "OPENAI_API_KEY": "sk-test-never-logged"}
        server = ServeProcess("--agent", "openai", "--model", "test-model", "--store", "memory",
                              "--log", "debug", env=env)
        try:
            url = await server.ready()
            answer = Answers()
            async with open_client(url, token("ada")) as client:
                await client.join("main")
                await client.send("main", "hi")
                frame = {}
                while frame.get("event") != "agent_completed":
                    frame = await client.next_event(20)
                    answer.take(frame)
        finally:
            server.kill()
        assert answer.text == "Hello from the model" == frame["data"]["text"]
        assert llm.requests[0].body["model"] == "test-model"
        assert "sk-test-never-logged" not in server.proc.stderr.read()


@pytest.mark.skipif(not os.environ.get("THREADLINE_LLM_URL"),
                    reason="THREADLINE_LLM_URL (and THREADLINE_LLM_MODEL, OPENAI_API_KEY) name a "
                           "real OpenAI-compatible endpoint to try")
async def test_a_real_endpoint_answers():
    from threadline import open_runtime
    from threadline.agents.openai import OpenAIAgent, OpenAIConfig

    agent = OpenAIAgent(OpenAIConfig(os.environ.get("THREADLINE_LLM_MODEL", "gpt-4o-mini"),
                                     base_url=os.environ["THREADLINE_LLM_URL"]))
    try:
        async with open_runtime(agent=agent) as rt:
            thread = rt.thread("ada", "main")
            async with thread.open_subscription() as events:
                await thread.send("Answer with the single word: yes")
                with trio.fail_after(60):
                    async for event in events:
                        if event.event in ("agent_completed", "agent_failed"):
                            break
    finally:
        await agent.aclose()
    assert event.event == "agent_completed" and event.data["text"].strip()


async def test_a_since_beyond_the_threads_end_counts_as_up_to_date_and_misses_nothing():
    async with serving() as server:
        async with open_client(server.url, token("ada")) as client:
            joined = await client.join("main", since=999)  # remembers more than the server has
            assert joined["last_seq"] == 0
            await client.send("main", "hello")
            answer, frame = Answers(), {}
            while frame.get("event") != "agent_completed":
                frame = await client.next_event(10)
                answer.take(frame)  # from seq 1: every live event is delivered
    assert frame["data"] == {"text": "hello"}
