"""Streaming (``run.write`` -> ``agent_delta``) and conversation memory (``run.history``),
through a real runtime: the thread actor, the engine, the journal, a subscription."""

from __future__ import annotations

from typing import Any, Awaitable, Callable

import pytest
import trio

from tests.helpers import HoldingJournal, answer_of
from threadline import RuntimeConfig, ToolRegistry, open_runtime
from threadline.actors.agents import echo_agent, echo_tools
from threadline.actors.history import Turn
from threadline.actors.memory_journal import MemoryJournal
from threadline.actors.stream import MAX_PENDING, PIECE_BYTES

Agent = Callable[[Any], Awaitable[Any]]


async def converse(agent: Agent, *texts: str, config: RuntimeConfig | None = None,
                   journal: MemoryJournal | None = None, until: int | None = None,
                   tools=None) -> list:
    """Send ``texts`` to thread ada/main and return its events until ``until`` runs ended."""
    async with open_runtime(agent=agent, config=config, journal=journal, tools=tools) as rt:
        thread = rt.thread("ada", "main")
        async with thread.open_subscription() as events:
            for text in texts:
                await thread.send(text)
            out, ended = [], 0
            async for event in events:
                out.append(event)
                ended += event.event in ("agent_completed", "agent_failed", "agent_cancelled")
                if ended == (until or len(texts)):
                    return out
    raise AssertionError("unreachable")


def deltas(events: list) -> list:
    return [e for e in events if e.event == "agent_delta"]


async def test_writes_become_deltas_and_a_none_answer_completes_with_them(autojump_clock):
    async def agent(run):
        for piece in ["Hel", "lo, ", "wörld", " 🌍"]:
            await run.write(piece)
            await trio.sleep(0.2)  # longer than the interval: one delta per write

    events = await converse(agent, "hi")
    assert [d.data for d in deltas(events)] == [
        {"offset": 0, "text": "Hel"}, {"offset": 3, "text": "lo, "},
        {"offset": 7, "text": "wörld"}, {"offset": 12, "text": " 🌍"}]  # code points
    assert events[-1].event == "agent_completed"
    assert events[-1].data == {"text": "Hello, wörld 🌍"} and answer_of(events) == "Hello, wörld 🌍"


async def test_fast_writes_are_coalesced_at_most_one_delta_per_interval(autojump_clock):
    async def agent(run):
        for i in range(200):  # 200 writes over 1 s
            await run.write(f"{i} ")
            await trio.sleep(0.005)

    config = RuntimeConfig(delta_interval=0.1)
    events = await converse(agent, "go", config=config)
    assert 5 <= len(deltas(events)) <= 12  # about 1 s / 0.1 s, never one per write
    assert answer_of(events) == "".join(f"{i} " for i in range(200)) == events[-1].data["text"]


async def test_a_piece_holds_at_most_4_kib_of_utf8_and_never_splits_a_code_point(autojump_clock):
    text = "é" * 3000 + "🌍" * 1500  # 6,000 + 6,000 bytes in one write

    async def agent(run):
        await run.write(text)

    events = await converse(agent, "big")
    pieces = [d.data["text"] for d in deltas(events)]
    assert len(pieces) >= 3 and all(len(p.encode()) <= PIECE_BYTES for p in pieces)
    assert "".join(pieces) == text == answer_of(events)


async def test_no_event_of_the_run_overtakes_text_written_before_it(autojump_clock):
    async def agent(run):
        await run.write("before the tool")
        await run.call_tool("calculator", expression="1+1")
        await run.write(", after it")
        await run.think("thinking")
        return "the final answer"

    events = await converse(agent, "x", config=RuntimeConfig(delta_interval=10.0),
                            tools=echo_tools())
    names = [e.event for e in events]
    assert names == ["user_message", "agent_started", "agent_delta", "tool_executing",
                     "tool_completed", "agent_delta", "agent_thinking", "agent_completed"]
    assert answer_of(events) == "before the tool, after it"
    assert events[-1].data == {"text": "the final answer"}  # a returned string wins


async def test_a_cancelled_run_stores_what_it_wrote_before_agent_cancelled(autojump_clock):
    async def agent(run):
        await run.write("partial ")
        await run.write("answer")
        await trio.sleep_forever()

    async with open_runtime(agent=agent, config=RuntimeConfig(delta_interval=60.0)) as rt:
        thread = rt.thread("ada", "main")
        async with thread.open_subscription() as events:
            accepted = await thread.send("go")
            await trio.sleep(1)
            await thread.cancel(accepted.run_id)
            got = []
            async for event in events:
                got.append(event)
                if event.event == "agent_cancelled":
                    break
    assert [e.event for e in got][-2:] == ["agent_delta", "agent_cancelled"]
    assert answer_of(got) == "partial answer"


async def test_an_unstorable_write_fails_the_run_and_the_thread_goes_on():
    async def agent(run):
        if run.text == "nul":
            await run.write("a\x00b")
        return "fine"

    events = await converse(agent, "nul", "next")
    failed = [e for e in events if e.event == "agent_failed"]
    assert len(failed) == 1 and "NUL" in failed[0].data["error"]
    assert events[-1].event == "agent_completed" and not deltas(events)


def slow_for_deltas() -> HoldingJournal:
    """A store that takes no delta until released (it holds what comes after them too)."""
    return HoldingJournal(lambda events: any(e.event == "agent_delta" for e in events))


async def test_write_waits_once_too_much_is_unwritten(autojump_clock):
    journal = slow_for_deltas()
    written = 0

    async def agent(run):
        nonlocal written
        for _ in range(100):
            await run.write("x" * 4096)
            written += 4096

    async with open_runtime(agent=agent, journal=journal) as rt:
        thread = rt.thread("ada", "main")
        async with thread.open_subscription() as events:
            await thread.send("go")
            await trio.sleep(5)  # the store takes no delta: the agent must be held back
            assert written <= MAX_PENDING + PIECE_BYTES + 4096
            journal.release()
            got = []
            async for event in events:
                got.append(event)
                if event.event == "agent_completed":
                    break
    assert written == 409_600 and answer_of(got) == "x" * 409_600


async def test_history_is_the_threads_earlier_turns_oldest_first():
    seen: dict[tuple[str, str], list[Turn]] = {}  # (user, message) -> its history

    async def agent(run):
        seen[(run.context.user_id, run.text)] = await run.history()
        if run.text == "cancel me":
            await run.write("half an ans")
            await trio.sleep_forever()
        if run.text == "break":
            await run.write("before the break")
            raise RuntimeError("broken")
        await run.write(f"re: {run.text}")

    async with open_runtime(agent=agent) as rt:
        other = rt.thread("bob", "main")  # another user's same-named thread
        await other.send("bob's secret")
        thread = rt.thread("ada", "main")
        async with thread.open_subscription() as events:
            await thread.send("one")
            running = await thread.send("cancel me")
            async for event in events:
                if event.event == "agent_delta" and event.run_id == running.run_id:
                    break
            await thread.cancel(running.run_id)
            for text in ("break", "two", "three"):
                await thread.send(text)
            ended = 0
            with trio.fail_after(10):
                async for event in events:  # "break" fails, "two" and "three" complete
                    ended += event.event in ("agent_completed", "agent_failed")
                    if ended == 3:
                        break
    last = seen[("ada", "three")]
    assert [(t.role, t.text, t.outcome) for t in last] == [
        ("user", "one", None), ("assistant", "re: one", "completed"),
        ("user", "cancel me", None), ("assistant", "half an ans", "cancelled"),
        ("user", "break", None), ("assistant", "before the break", "failed"),
        ("user", "two", None), ("assistant", "re: two", "completed")]
    assert seen[("ada", "one")] == [] == seen[("bob", "bob's secret")]  # never its own
    assert [t.text for t in seen[("ada", "cancel me")]] == ["one", "re: one"]
    assert not any("bob" in t.text for (user, _), turns in seen.items() if user == "ada"
                   for t in turns)


async def test_history_limit_keeps_the_latest_turns():
    seen: list[list[Turn]] = []

    async def agent(run):
        seen.append(await run.history(limit=3))
        return f"re: {run.text}"

    await converse(agent, *[f"m{i}" for i in range(6)])
    assert [t.text for t in seen[-1]] == ["re: m3", "m4", "re: m4"]


async def test_echo_streams_numbers_on_slash_stream(autojump_clock):
    events = await converse(echo_agent, "/stream 450")
    expected = " ".join(str(i) for i in range(1, 451))
    assert answer_of(events) == expected == events[-1].data["text"]
    assert 10 <= len(deltas(events)) <= 60  # 450 numbers at 200/s over 2.25 s, 50 ms apart
    assert [e.event for e in events[:3]] == ["user_message", "agent_started", "agent_thinking"]


@pytest.mark.parametrize("text", ["/stream 0", "/stream 100001", "/stream x", "/stream 5 6"])
async def test_echo_answers_a_bad_stream_command_as_text(text):
    events = await converse(echo_agent, text)
    assert events[-1].data == {"text": text} and not deltas(events)


async def test_two_tasks_writing_past_the_bound_both_go_on_once_the_store_does(autojump_clock):
    journal = slow_for_deltas()

    async def agent(run):
        async def writer(letter: str) -> None:
            for _ in range(40):
                await run.write(letter * 4096)

        async with trio.open_nursery() as nursery:
            nursery.start_soon(writer, "a")
            nursery.start_soon(writer, "b")

    async with open_runtime(agent=agent, journal=journal) as rt:
        thread = rt.thread("ada", "main")
        async with thread.open_subscription() as events:
            await thread.send("go")
            await trio.sleep(5)  # both writers now wait for room
            journal.release()
            got = []
            with trio.fail_after(60):
                async for event in events:
                    got.append(event)
                    if event.event in ("agent_completed", "agent_failed"):
                        break
    answer = answer_of(got)
    assert got[-1].event == "agent_completed" and got[-1].data["text"] == answer
    assert answer.count("a") == answer.count("b") == 40 * 4096


async def test_a_tool_may_take_an_argument_named_tool():
    tools = ToolRegistry()

    @tools.tool("pick")
    async def pick(ctx, tool: str) -> str:
        return f"picked {tool}"

    async def agent(run):
        return await run.call_tool("pick", tool="hammer")

    events = await converse(agent, "x", tools=tools)
    assert events[-1].data == {"text": "picked hammer"}
