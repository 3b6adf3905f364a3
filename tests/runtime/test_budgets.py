"""Usage and budgets (PROTOCOL.md 1.1), from outside: a real server on loopback, the echo
agent's ``/usage`` (6 input and 2 output tokens a run) and the OpenAI agent against the scripted
model server; the store's totals read back by ``GET /v1/usage``, across connections, a restart
and a period's end (an injected clock), and the budget held between model calls."""

from __future__ import annotations

import datetime
from contextlib import asynccontextmanager
from typing import Any, AsyncIterator, Callable

import pytest
import trio

from tests.llm_server import Answer, ToolCall, open_llm_server
from tests.servers import http, serving, token, until_run_ends
from threadline import RuntimeConfig
from threadline.actors.agents import echo_tools
from threadline.actors.usage import Budget
from threadline.agents.openai import OpenAIAgent, OpenAIConfig
from threadline.server import RunningServer
from threadline.stores import open_journal
from threadline.transport.client import BudgetExceeded, ServerError, open_client

ADA, BOB = token("ada"), token("bob")
USAGE = {"input_tokens": 6, "output_tokens": 2, "cached_input_tokens": 0, "model": "echo"}


def at(text: str) -> float:
    return datetime.datetime.fromisoformat(text).replace(
        tzinfo=datetime.timezone.utc).timestamp()


class Clock:
    """Wall-clock seconds a test sets."""

    def __init__(self, now: float) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


@asynccontextmanager
async def served(config: RuntimeConfig, *, store: str | None = None,
                 clock: Callable[[], float] | None = None, budget: Any = None,
                 agent: Any = None, tools: Any = None) -> AsyncIterator[RunningServer]:
    async with open_journal(store or "memory") as journal, serving(
            journal=journal, config=config, runtime={
                "clock": clock, "budget": budget, "agent": agent, "tools": tools}) as server:
        yield server


async def until_end(client, run_id: str) -> dict[str, Any]:
    return (await until_run_ends(client, run_id))[-1]


async def spend(client, thread: str = "main", times: int = 1) -> list[dict[str, Any]]:
    """``/usage`` ``times`` times, each run to its end: their terminal events."""
    ends = []
    for _ in range(times):
        accepted = await client.send(thread, "/usage")
        ends.append(await until_end(client, accepted["run_id"]))
    return ends


async def usage_of(server: RunningServer, tok: str = ADA) -> dict[str, Any]:
    status, _, body = await http(server, "GET", "/v1/usage", tok=tok)
    assert status == 200, body
    return body


async def test_usage_rides_the_terminal_event_and_adds_up_in_the_store():
    async with served(RuntimeConfig(tokens_per_day=1000)) as server:
        async with open_client(server.url, ADA) as client:
            await client.join("main")
            ends = await spend(client, times=2)
            echoed = await client.send("main", "no usage here")
            plain = await until_end(client, echoed["run_id"])
        assert [e["data"] for e in ends] == [{"text": "ok", "usage": USAGE}] * 2
        assert plain["data"] == {"text": "no usage here"}  # an answer that reported none
        assert await usage_of(server) == {
            "type": "usage", "day": {"input_tokens": 12, "output_tokens": 4, "budget": 1000},
            "month": {"input_tokens": 12, "output_tokens": 4, "budget": None}}
        assert (await usage_of(server, BOB))["day"] == {
            "input_tokens": 0, "output_tokens": 0, "budget": 1000}
        status, _, body = await http(server, "GET", "/metrics")
        metrics = body.decode()
        assert 'threadline_tokens_total{kind="input"} 12.0' in metrics
        assert 'threadline_tokens_total{kind="output"} 4.0' in metrics
        assert "threadline_budget_refusals_total 0.0" in metrics


async def test_a_spent_budget_refuses_send_and_regenerate_over_websocket_and_http():
    async with served(RuntimeConfig(tokens_per_day=20)) as server:
        async with open_client(server.url, ADA) as client:
            joined = await client.join("main")
            ends = await spend(client, times=3)  # 8, 16, 24 tokens: crossed by the third
            assert all(e["event"] == "agent_completed" for e in ends)
            info = await client.join("other")
            with pytest.raises(BudgetExceeded) as refused:
                await client.send("main", "/usage", client_msg_id="late")
            assert refused.value.code == "budget_exceeded"
            assert "day (20 tokens) is spent; it refills at" in refused.value.message
            assert info["last_seq"] == 0
        status, _, body = await http(server, "POST", "/v1/threads/main/messages", tok=ADA,
                                     body={"text": "hello"})
        assert status == 429 and body["code"] == "budget_exceeded", body
        status, _, body = await http(server, "GET", "/v1/threads/main/turns", tok=ADA)
        first = body["turns"][0]["message_id"]
        status, _, body = await http(
            server, "POST", f"/v1/threads/main/messages/{first}/regenerate", tok=ADA, body={})
        assert status == 429 and body["code"] == "budget_exceeded", body
        # Nothing was stored by any refusal: the thread holds the three turns only.
        status, _, body = await http(server, "GET", "/v1/threads/main", tok=ADA)
        assert body["last_seq"] == joined["last_seq"] + 3 * 4
        status, _, metrics = await http(server, "GET", "/metrics")
        assert "threadline_budget_refusals_total 3.0" in metrics.decode()


async def test_a_retry_of_a_stored_message_is_answered_even_once_the_budget_is_spent():
    async with served(RuntimeConfig(tokens_per_day=8)) as server:
        async with open_client(server.url, ADA) as client:
            await client.join("main")
            first = await client.send("main", "/usage", client_msg_id="c-1")
            await until_end(client, first["run_id"])
            again = await client.send("main", "/usage", client_msg_id="c-1")
            same = ("message_id", "run_id", "seq")
            assert [again[k] for k in same] == [first[k] for k in same]  # nothing new
            with pytest.raises(BudgetExceeded):
                await client.send("main", "/usage", client_msg_id="c-2")


async def test_the_budget_holds_across_the_users_connections_and_threads_not_other_users():
    async with served(RuntimeConfig(tokens_per_day=16)) as server:
        async with open_client(server.url, ADA) as one, open_client(server.url, ADA) as two, \
                open_client(server.url, BOB) as bob:
            await one.join("a")
            await two.join("b")
            await bob.join("a")
            await spend(one, "a")
            await spend(two, "b")
            for client, thread in ((one, "a"), (two, "b")):
                with pytest.raises(BudgetExceeded):
                    await client.send(thread, "/usage")
            assert (await spend(bob, "a"))[0]["event"] == "agent_completed"


async def test_a_day_budget_refills_at_midnight_utc_and_a_month_budget_at_the_month_end():
    clock = Clock(at("2026-12-31T23:59:50"))
    config = RuntimeConfig(tokens_per_day=8, tokens_per_month=24)
    async with served(config, clock=clock) as server:
        async with open_client(server.url, ADA) as client:
            await client.join("main")
            await spend(client)
            with pytest.raises(BudgetExceeded) as refused:
                await client.send("main", "/usage")
            assert refused.value.message.endswith("refills at 2027-01-01T00:00:00Z")
            clock.now = at("2027-01-01T00:00:01")  # a new day, and a new month
            await spend(client)
            assert (await usage_of(server))["month"]["input_tokens"] == 6
            clock.now = at("2027-01-02T10:00:00")
            await spend(client)
            clock.now = at("2027-01-03T10:00:00")
            await spend(client)  # the month holds 24 now
            clock.now = at("2027-01-04T10:00:00")  # a new day, the month still spent
            with pytest.raises(BudgetExceeded) as refused:
                await client.send("main", "/usage")
            assert "month (24 tokens)" in refused.value.message
            assert refused.value.message.endswith("refills at 2027-02-01T00:00:00Z")
            clock.now = at("2027-02-01T00:00:00")
            await spend(client)


async def test_totals_and_the_budget_survive_a_restart(tmp_path):
    store = f"sqlite:///{tmp_path / 't.db'}"
    config = RuntimeConfig(tokens_per_day=16)
    async with served(config, store=store) as server:
        async with open_client(server.url, ADA) as client:
            await client.join("main")
            await spend(client, times=2)
    async with served(config, store=store) as server:
        assert (await usage_of(server))["day"] == {
            "input_tokens": 12, "output_tokens": 4, "budget": 16}
        async with open_client(server.url, ADA) as client:
            await client.join("main")
            with pytest.raises(BudgetExceeded):
                await client.send("main", "/usage")


async def test_a_per_user_budget_from_the_embedding_programs_hook():
    async def plans(user_id: str) -> Budget | None:
        await trio.lowlevel.checkpoint()  # a plan may come from the program's database
        return Budget(tokens_per_day=8) if user_id == "ada" else None

    async with served(RuntimeConfig(tokens_per_day=1000), budget=plans) as server:
        async with open_client(server.url, ADA) as ada, open_client(server.url, BOB) as bob:
            await ada.join("main")
            await bob.join("main")
            await spend(ada)
            with pytest.raises(BudgetExceeded):
                await ada.send("main", "/usage")
            await spend(bob, times=2)  # bob's plan is the operator's: 1,000 a day
        assert (await usage_of(server))["day"]["budget"] == 8
        assert (await usage_of(server, BOB))["day"]["budget"] == 1000


# -- the OpenAI agent: usage as the API sends it, a budget between model calls ------------------

def openai_agent(llm) -> OpenAIAgent:
    return OpenAIAgent(OpenAIConfig("test-model", base_url=llm.base_url, api_key="sk-test",
                                    max_retries=0))


async def test_the_openai_agent_sums_every_round_and_a_crossed_budget_stops_the_next_call():
    async with open_llm_server() as llm:
        agent = openai_agent(llm)
        llm.script(Answer(calls=(ToolCall("calculator", {"expression": "6*7"}),),
                          tokens=(30, 5, 12)),
                   Answer(pieces=("42",), tokens=(40, 1, 30)),
                   # The next run: its first call crosses the budget of 120 (76 + 50 > 120).
                   Answer(calls=(ToolCall("calculator", {"expression": "1+1"}),),
                          tokens=(45, 5, 0)),
                   Answer(pieces=("never asked",)))
        try:
            async with served(RuntimeConfig(tokens_per_day=120), agent=agent,
                              tools=echo_tools()) as server:
                async with open_client(server.url, ADA) as client:
                    await client.join("main")
                    first = await client.send("main", "what is 6*7?")
                    done = await until_end(client, first["run_id"])
                    second = await client.send("main", "and 1+1?")
                    stopped = await until_end(client, second["run_id"])
                    with pytest.raises(BudgetExceeded):
                        await client.send("main", "and 2+2?")
        finally:
            await agent.aclose()
    assert done["data"] == {"text": "42", "usage": {
        "input_tokens": 70, "output_tokens": 6, "cached_input_tokens": 42,
        "model": "test-model"}}
    # The second run's first call ran to its end (its tool too), then no second call.
    assert stopped["event"] == "agent_failed" and stopped["data"] == {
        "error": "budget_exceeded", "usage": {"input_tokens": 45, "output_tokens": 5,
                                              "cached_input_tokens": 0,
                                              "model": "test-model"}}
    assert len(llm.requests) == 3
    assert all(r.body["stream_options"] == {"include_usage": True} for r in llm.requests)


async def test_a_cancelled_stream_carries_the_usage_of_the_calls_that_ended():
    async with open_llm_server() as llm:
        agent = openai_agent(llm)
        llm.script(Answer(calls=(ToolCall("calculator", {"expression": "2+2"}),),
                          tokens=(11, 3, 0)),
                   Answer(pieces=("thinking", " on", " and on"), delay=5.0))
        try:
            async with served(RuntimeConfig(), agent=agent, tools=echo_tools()) as server:
                async with open_client(server.url, ADA) as client:
                    await client.join("main")
                    accepted = await client.send("main", "count")
                    while (await client.next_event(timeout=20))["event"] != "agent_delta":
                        pass
                    await client.cancel("main", accepted["run_id"])
                    cancelled = await until_end(client, accepted["run_id"])
                usage = await usage_of(server)
        finally:
            await agent.aclose()
    assert cancelled["event"] == "agent_cancelled"
    assert cancelled["data"]["usage"] == {"input_tokens": 11, "output_tokens": 3,
                                          "cached_input_tokens": 0, "model": "test-model"}
    assert usage["day"]["input_tokens"] == 11  # the cut call sent no usage: none counted


async def test_an_endpoint_without_stream_usage_reports_nothing_and_is_not_asked():
    async with open_llm_server() as llm:
        agent = OpenAIAgent(OpenAIConfig("test-model", base_url=llm.base_url,
                                         api_key="sk-test", stream_usage=False))
        llm.script(Answer(pieces=("hi",)))
        try:
            async with served(RuntimeConfig(), agent=agent) as server:
                async with open_client(server.url, ADA) as client:
                    await client.join("main")
                    accepted = await client.send("main", "hello")
                    end = await until_end(client, accepted["run_id"])
        finally:
            await agent.aclose()
    assert end["data"] == {"text": "hi"} and "stream_options" not in llm.requests[0].body


async def test_a_send_refused_by_the_budget_is_an_error_the_client_can_tell_apart():
    async with served(RuntimeConfig(tokens_per_day=1)) as server:
        async with open_client(server.url, ADA) as client:
            await client.join("main")
            await spend(client)
            with pytest.raises(ServerError) as refused:
                await client.send("main", "hi")
    assert isinstance(refused.value, BudgetExceeded) and refused.value.code == "budget_exceeded"
