"""The OpenAI-compatible agent and tool approval (issue 21, 2.2 and 2.4): a model calls a tool
that needs a person's approval, the test decides through ``ThreadHandle.decide``, and the model
gets the tool's result or the denial as the tool's answer and completes; later turns send the
model the earlier tool calls with their results and denials. A real runtime, the real ``openai``
SDK, real HTTP on loopback to the scripted server of ``tests/llm_server.py``, which refuses (400)
a conversation the real API would refuse (``tests/llm_conversation.py``)."""

from __future__ import annotations

import json
from contextlib import asynccontextmanager

import pytest
import trio

from tests.helpers import names
from tests.llm_server import Answer, ToolCall, open_llm_server
from threadline import ToolRegistry, open_runtime
from threadline.actors.messages import TERMINAL_EVENTS
from threadline.agents.openai import OpenAIAgent, OpenAIConfig

RAN: list[dict] = []
SYSTEM = {"role": "system", "content": "Be brief."}
TRANSFER = {"amount": 500, "to": "bob"}


@pytest.fixture(autouse=True)
def clear_ran():
    RAN.clear()


def bank(approval_timeout: float | None = None) -> ToolRegistry:
    tools = ToolRegistry()

    @tools.tool("transfer", needs_approval=True, approval_timeout=approval_timeout)
    async def transfer(ctx, amount: int, to: str) -> str:
        """Send money."""
        RAN.append({"amount": amount, "to": to})
        return f"sent {amount} to {to}"

    @tools.tool("balance")
    async def balance(ctx) -> dict:
        """The account's balance."""
        return {"balance": 1000}

    return tools


@asynccontextmanager
async def bank_runtime(llm, *, history_turns=50, approval_timeout=None):
    agent = OpenAIAgent(OpenAIConfig("test-model", system_prompt="Be brief.",
                                     base_url=llm.base_url, api_key="sk-test", max_retries=0,
                                     history_turns=history_turns))
    try:
        async with open_runtime(agent=agent, tools=bank(approval_timeout)) as rt:
            yield rt
    finally:
        await agent.aclose()


async def turn(rt, text, decision=None):
    """Send ``text``; when the run asks for approval, decide ``(approved, reason)`` (None: do not
    decide, "cancel": cancel the run). The run's events after its message, and the
    ``approval_requested`` data (None if none was asked)."""
    thread = rt.thread("ada", "main")
    asked = None
    async with thread.open_subscription() as events:
        accepted = await thread.send(text)
        out = []
        with trio.fail_after(30):
            async for event in events:
                if event.run_id != accepted.run_id or event.event == "user_message":
                    continue
                out.append(event)
                if event.event == "approval_requested":
                    asked = event.data
                    if decision == "cancel":
                        await thread.cancel(accepted.run_id)
                    elif decision is not None:
                        await thread.decide(accepted.run_id, asked["call_id"], *decision)
                if event.event in TERMINAL_EVENTS:
                    return out, asked
    raise AssertionError("unreachable")


def called(call_id: str, tool: str, args: dict) -> dict:
    return {"id": call_id, "type": "function",
            "function": {"name": tool, "arguments": json.dumps(args)}}


def denial(reason: str) -> str:
    return json.dumps({"error": f"denied: {reason}", "denied": True})


def sent(llm, number: int) -> list[dict]:
    """The messages of request ``number``, which the server took (not refused)."""
    request = llm.requests[number]
    assert request.refused is None, request.refused
    return request.body["messages"]


async def test_approved_the_model_gets_the_tools_result_and_completes():
    async with open_llm_server() as llm, bank_runtime(llm) as rt:
        llm.script(Answer(calls=(ToolCall("transfer", TRANSFER, id="m1"),)),
                   Answer(pieces=("Sent 500 to bob.",)))
        events, asked = await turn(rt, "send 500 to bob", decision=(True, None))
    assert [n for n in names(events) if n != "agent_delta"] == [
        "agent_started", "approval_requested", "approval_decided", "tool_executing",
        "tool_completed", "agent_completed"]
    assert asked["tool"] == "transfer" and asked["args"] == TRANSFER
    assert RAN == [TRANSFER] and events[-1].data["text"] == "Sent 500 to bob."
    assert len(llm.requests) == 2  # the model is asked again only once the tool has run
    # The run parked while it waited, and went on from its stored events: the call's id is the
    # journal's now (ids only have to match within one conversation).
    call_id = asked["call_id"]
    assert sent(llm, 1)[-2:] == [
        {"role": "assistant", "content": None, "tool_calls": [called(call_id, "transfer",
                                                                     TRANSFER)]},
        {"role": "tool", "tool_call_id": call_id, "content": json.dumps("sent 500 to bob")}]


async def test_denied_the_model_gets_the_denial_as_the_tools_answer_and_says_so():
    async with open_llm_server() as llm, bank_runtime(llm) as rt:
        llm.script(Answer(calls=(ToolCall("transfer", TRANSFER, id="m1"),)),
                   Answer(pieces=("OK, I did not send it.",)))
        events, asked = await turn(rt, "send 500 to bob", decision=(False, "not today"))
    assert [n for n in names(events) if n != "agent_delta"] == [
        "agent_started", "approval_requested", "approval_decided", "tool_completed",
        "agent_completed"]
    assert events[3].data["error"] == "denied: not today"
    assert events[-1].data["text"] == "OK, I did not send it." and RAN == []
    assert sent(llm, 1)[-1] == {"role": "tool", "tool_call_id": asked["call_id"],
                                "content": denial("not today")}


async def test_an_expired_approval_reaches_the_model_as_a_denial():
    async with open_llm_server() as llm, bank_runtime(llm, approval_timeout=0.2) as rt:
        llm.script(Answer(calls=(ToolCall("transfer", TRANSFER, id="m1"),)),
                   Answer(pieces=("Nobody approved it in time.",)))
        events, _ = await turn(rt, "send 500 to bob")  # nobody decides
    assert events[-1].data["text"] == "Nobody approved it in time." and RAN == []
    assert sent(llm, 1)[-1]["content"] == denial("expired")


async def test_the_next_turn_after_a_denial_shows_the_model_its_call_and_the_denial():
    async with open_llm_server() as llm, bank_runtime(llm) as rt:
        llm.script(Answer(calls=(ToolCall("transfer", TRANSFER, id="m1"),)),
                   Answer(pieces=("OK, I did not send it.",)),
                   Answer(pieces=("Because it was refused.",)))
        _, asked = await turn(rt, "send 500 to bob", decision=(False, "not today"))
        events, _ = await turn(rt, "why not?")
    assert events[-1].data["text"] == "Because it was refused."
    call_id = asked["call_id"]  # the journal's id: the model's own (m1) is not stored
    assert sent(llm, 2) == [
        SYSTEM, {"role": "user", "content": "send 500 to bob"},
        {"role": "assistant", "content": None,
         "tool_calls": [called(call_id, "transfer", TRANSFER)]},
        {"role": "tool", "tool_call_id": call_id, "content": denial("not today")},
        {"role": "assistant", "content": "OK, I did not send it."},
        {"role": "user", "content": "why not?"}]


async def test_earlier_turns_keep_text_calls_results_and_denials_in_the_order_they_happened():
    async with open_llm_server() as llm, bank_runtime(llm) as rt:
        llm.script(
            # Turn 1: text and two calls in one round (one approved), then the answer.
            Answer(pieces=("Let me check.",), calls=(ToolCall("balance", {}, id="m1"),
                                                     ToolCall("transfer", TRANSFER, id="m2"))),
            Answer(pieces=("Done: sent.",)),
            # Turn 2: a call denied, then the answer.
            Answer(calls=(ToolCall("transfer", {"amount": 900, "to": "eve"}, id="m3"),)),
            Answer(pieces=("Not sent.",)),
            Answer(pieces=("Twice.",)))
        first, asked1 = await turn(rt, "pay bob", decision=(True, None))
        _, asked2 = await turn(rt, "pay eve", decision=(False, "who is eve?"))
        await turn(rt, "how many transfers?")
    assert first[-1].data["text"] == "Let me check.\n\nDone: sent."
    balance_id = next(e.data["call_id"] for e in first if e.event == "tool_executing"
                      and e.data["tool"] == "balance")
    id1, id2 = asked1["call_id"], asked2["call_id"]
    assert sent(llm, 4) == [
        SYSTEM, {"role": "user", "content": "pay bob"},
        {"role": "assistant", "content": "Let me check.",
         "tool_calls": [called(balance_id, "balance", {}), called(id1, "transfer", TRANSFER)]},
        {"role": "tool", "tool_call_id": balance_id, "content": json.dumps({"balance": 1000})},
        {"role": "tool", "tool_call_id": id1, "content": json.dumps("sent 500 to bob")},
        {"role": "assistant", "content": "Done: sent."},
        {"role": "user", "content": "pay eve"},
        {"role": "assistant", "content": None,
         "tool_calls": [called(id2, "transfer", {"amount": 900, "to": "eve"})]},
        {"role": "tool", "tool_call_id": id2, "content": denial("who is eve?")},
        {"role": "assistant", "content": "Not sent."},
        {"role": "user", "content": "how many transfers?"}]
    assert RAN == [TRANSFER]


async def test_a_run_cancelled_while_waiting_leaves_a_call_answered_as_unfinished():
    async with open_llm_server() as llm, bank_runtime(llm) as rt:
        llm.script(Answer(calls=(ToolCall("transfer", TRANSFER, id="m1"),)),
                   Answer(pieces=("Shall I try again?",)))
        cancelled, asked = await turn(rt, "send 500 to bob", decision="cancel")
        events, _ = await turn(rt, "hello?")
    assert cancelled[-1].event == "agent_cancelled" and RAN == []
    # The API refuses a call left unanswered: the server would have answered 400.
    assert events[-1].data["text"] == "Shall I try again?"
    assert sent(llm, 1)[2:4] == [
        {"role": "assistant", "content": None,
         "tool_calls": [called(asked["call_id"], "transfer", TRANSFER)]},
        {"role": "tool", "tool_call_id": asked["call_id"], "content": json.dumps(
            {"error": "no result: the run ended before this call finished"})}]


async def test_the_history_limit_bounds_earlier_tool_calls_too():
    async with open_llm_server() as llm, bank_runtime(llm, history_turns=2) as rt:
        llm.script(Answer(calls=(ToolCall("transfer", TRANSFER, id="m1"),)),
                   Answer(pieces=("Not sent.",)),
                   Answer(pieces=("Hi.",)), Answer(pieces=("Bye.",)))
        await turn(rt, "send 500 to bob", decision=(False, "no"))
        await turn(rt, "hi")
        await turn(rt, "bye")
    assert sent(llm, 3) == [SYSTEM, {"role": "user", "content": "hi"},
                            {"role": "assistant", "content": "Hi."},
                            {"role": "user", "content": "bye"}]


async def test_a_waiting_run_of_the_openai_agent_survives_a_restart_and_the_model_gets_the_result(
        tmp_path):
    """The OpenAI agent is resumable: its run parks while the person decides; the server is
    stopped and started again on the same store; the decision resumes it, the tool runs once,
    and the model is asked again with its own call and the tool's result."""
    from threadline.stores import open_journal

    url = f"sqlite:///{tmp_path}/t.db"
    async with open_llm_server() as llm:
        llm.script(Answer(pieces=("Sending it.",), calls=(ToolCall("transfer", TRANSFER),)),
                   Answer(pieces=("Done: sent.",)))
        agent = OpenAIAgent(OpenAIConfig("test-model", system_prompt="Be brief.",
                                         base_url=llm.base_url, api_key="sk-test",
                                         max_retries=0))
        try:
            async with open_journal(url) as journal, open_runtime(
                    journal=journal, agent=agent, tools=bank()) as rt:
                thread = rt.thread("ada", "main")
                accepted = await thread.send("pay bob 500")
                with trio.fail_after(30):
                    while True:
                        events = await journal.read(thread.key, 0)
                        asked = [e for e in events if e.event == "approval_requested"]
                        if asked:
                            break
                        await trio.sleep(0.05)
                await trio.sleep(0.1)
                assert rt.statistics().runs_active == 0  # parked: no task, no model stream
            async with open_journal(url) as journal, open_runtime(
                    journal=journal, agent=agent, tools=bank()) as rt:
                thread = rt.thread("ada", "main")
                await thread.decide(accepted.run_id, asked[0].data["call_id"], True)
                with trio.fail_after(30):
                    while True:
                        events = [e for e in await journal.read(thread.key, 0)
                                  if e.run_id == accepted.run_id]
                        if events[-1].event in TERMINAL_EVENTS:
                            break
                        await trio.sleep(0.05)
        finally:
            await agent.aclose()
        assert events[-1].event == "agent_completed"
        assert events[-1].data["text"] == "Sending it.\n\nDone: sent."
        # The call before the restart counts too: its tokens were kept in the run's node.
        assert events[-1].data["usage"] == {"input_tokens": 20, "output_tokens": 3,
                                            "cached_input_tokens": 0, "model": "test-model"}
        assert RAN == [TRANSFER]
        assert names(events).count("tool_executing") == 1
        second = llm.requests[-1].body["messages"]
        assert [m["role"] for m in second] == ["system", "user", "assistant", "tool"]
        assert second[2]["tool_calls"][0]["function"]["name"] == "transfer"
        assert json.loads(second[3]["content"]) == "sent 500 to bob"
