"""``run.history`` with tool calls (``actors/history.py``): each answer carries its run's calls
in the order they were made, where they fell in the text, and what became of each (completed,
failed, denied, unfinished). Read back from real journals: runs written by a real runtime
on the memory store and SQLite, and stored event sequences a runtime writes rarely (a run
cancelled while a call waited, or between a denial and its ``tool_completed``)."""

from __future__ import annotations

import pytest
import trio

from tests.helpers import names
from threadline import open_runtime
from threadline.actors.errors import ToolDenied, ToolError
from threadline.actors.history import ToolUse, Turn, read_history
from threadline.actors.messages import TERMINAL_EVENTS, Event, ThreadKey
from threadline.actors.tools import ToolRegistry
from threadline.stores import open_journal

KEY = ThreadKey("ada", "main")


def bank() -> ToolRegistry:
    tools = ToolRegistry()

    async def transfer(ctx, amount: int, to: str) -> str:
        return f"sent {amount} to {to}"

    async def balance(ctx) -> dict:
        return {"balance": 1000}

    async def broken(ctx) -> None:
        raise RuntimeError("down")

    tools.register("transfer", transfer, needs_approval=True)
    tools.register("balance", balance)
    tools.register("broken", broken)
    return tools


async def banker(run) -> str | None:
    """Text, two calls in a row, text, a call that fails, text; the history it was given is
    written down."""
    SEEN.append(await run.history())
    await run.write("Let me check.")
    await run.call_tool("balance")
    try:
        await run.call_tool("transfer", amount=int(run.text), to="bob")
        await run.write(" Sent.")
    except ToolDenied as exc:
        await run.write(f" Not sent ({exc.reason}).")
    try:
        await run.call_tool("broken")
    except ToolError:
        await run.write(" The log is down.")
    return None


SEEN: list[list[Turn]] = []


@pytest.fixture(autouse=True)
def clear_seen():
    SEEN.clear()


async def talk(rt, text: str, decision: tuple[bool, str | None]) -> list[Event]:
    thread = rt.thread(KEY.user_id, KEY.thread_id)
    async with thread.open_subscription() as events:
        run = await thread.send(text)
        out = []
        with trio.fail_after(10):
            async for event in events:
                if event.run_id != run.run_id:
                    continue
                out.append(event)
                if event.event == "approval_requested":
                    await thread.decide(run.run_id, event.data["call_id"], *decision)
                if event.event in TERMINAL_EVENTS:
                    return out
    raise AssertionError("unreachable")


def call_ids(events: list[Event]) -> list[str]:
    return list(dict.fromkeys(e.data["call_id"] for e in events if "call_id" in e.data))


@pytest.mark.parametrize("store", ["memory", "sqlite"])
async def test_an_answer_carries_its_calls_in_order_with_their_place_and_outcome(tmp_path,
                                                                                  store):
    url = "memory" if store == "memory" else f"sqlite:///{tmp_path}/h.db"
    async with open_journal(url) as journal, open_runtime(journal=journal, agent=banker,
                                                          tools=bank()) as rt:
        first = await talk(rt, "500", (True, None))
        second = await talk(rt, "900", (False, "who is bob?"))
        third = await talk(rt, "1", (True, None))
        stored = await read_history(journal, KEY, third[0].run_id, limit=100)
    assert SEEN[2] == stored  # what the third run was given is what the journal holds
    user1, answer1, user2, answer2 = stored[:4]
    assert (user1.text, user1.calls, user2.text) == ("500", (), "900")
    assert answer1.text == "Let me check. Sent. The log is down." and answer1.outcome == (
        "completed")
    b, t, x = call_ids(first)
    assert answer1.calls == (
        ToolUse(b, "balance", {}, 13, "completed", result={"balance": 1000}),
        ToolUse(t, "transfer", {"amount": 500, "to": "bob"}, 13, "completed",
                result="sent 500 to bob"),
        ToolUse(x, "broken", {}, 19, "failed", error="RuntimeError: down"))
    assert "approval_decided" in names(second)
    b, t, x = call_ids(second)
    assert answer2.text == "Let me check. Not sent (who is bob?). The log is down."
    assert answer2.calls == (
        ToolUse(b, "balance", {}, 13, "completed", result={"balance": 1000}),
        ToolUse(t, "transfer", {"amount": 900, "to": "bob"}, 13, "denied",
                error="denied: who is bob?"),
        ToolUse(x, "broken", {}, 37, "failed", error="RuntimeError: down"))
    # Laid at ``at``, the calls fall where they happened in the text.
    assert answer2.text[:13] == "Let me check." and answer2.text[13:37] == (
        " Not sent (who is bob?).")


def ev(seq: int, event: str, run_id: str, **data) -> Event:
    if event == "user_message":  # as a thread writes it: a plain conversation
        data = {"message_id": f"m-{run_id}", "parent": PARENT.get(seq), **data}
    return Event(KEY, seq, event, run_id, 1.0 + seq, data)


PARENT = {11: "r1", 17: "r2", 5: "r1"}  # the messages below follow the run before them


async def stored(journal, *events: Event, reader: str = "r-next") -> list[Turn]:
    """The history of a run whose message follows the last run of ``events``."""
    await journal.ensure_thread(KEY, 1.0)
    last = events[-1].run_id
    seq = events[-1].seq + 1
    await journal.append([*events, Event(KEY, seq, "user_message", reader, 1.0 + seq,
                                          {"message_id": "m-next", "text": "?", "parent": last})])
    return await read_history(journal, KEY, reader, limit=100)


@pytest.mark.parametrize("store", ["memory", "sqlite"])
async def test_calls_a_run_left_without_outcome_are_unfinished_and_a_stored_denial_counts(
        tmp_path, store):
    url = "memory" if store == "memory" else f"sqlite:///{tmp_path}/h.db"
    args = {"amount": 5, "to": "bob"}
    async with open_journal(url) as journal:
        turns = await stored(
            journal,
            # r1: cancelled while waiting for approval; then a call denied whose tool_completed
            # was never stored (cancelled in between), then one cancelled while running.
            ev(1, "user_message", "r1", text="pay"),
            ev(2, "agent_started", "r1"),
            ev(3, "agent_delta", "r1", text="On it.", offset=0),
            ev(4, "approval_requested", "r1", call_id="c1", tool="transfer", args=args,
               expires_at=None),
            ev(5, "approval_requested", "r1", call_id="c2", tool="transfer", args=args,
               expires_at=None),
            ev(6, "approval_decided", "r1", call_id="c2", approved=False),
            ev(7, "tool_executing", "r1", call_id="c3", tool="balance", args={}),
            ev(8, "tool_completed", "r1", call_id="c9", tool="balance", result=1),  # no start
            ev(9, "agent_cancelled", "r1", reason="cancelled"),
            # Nothing after a run's terminal event is its own.
            ev(10, "tool_executing", "r1", call_id="c4", tool="balance", args={}),
            ev(11, "user_message", "r2", text="again"),
            ev(12, "agent_started", "r2"),
            ev(13, "approval_requested", "r2", call_id="c5", tool="transfer", args=args,
               expires_at=None),
            ev(14, "approval_decided", "r2", call_id="c5", approved=False, reason="expired"),
            ev(15, "tool_completed", "r2", call_id="c5", tool="transfer",
               error="denied: expired"),
            ev(16, "agent_completed", "r2", text="Expired."),
            ev(17, "user_message", "r3", text="still going"),
            ev(18, "tool_executing", "r3", call_id="c6", tool="balance", args={}))
    assert [(t.role, t.text, t.outcome) for t in turns] == [
        ("user", "pay", None), ("assistant", "On it.", "cancelled"),
        ("user", "again", None), ("assistant", "Expired.", "completed"),
        ("user", "still going", None)]  # a run still going has no answer yet
    assert turns[1].calls == (
        ToolUse("c1", "transfer", args, 6, "unfinished"),
        ToolUse("c2", "transfer", args, 6, "denied", error="denied: no reason given"),
        ToolUse("c3", "balance", {}, 6, "unfinished"))
    assert turns[3].calls == (ToolUse("c5", "transfer", args, 0, "denied",
                                      error="denied: expired"),)


async def test_the_limit_counts_turns_and_keeps_the_calls_of_those_it_keeps():
    async with open_journal("memory") as journal:
        turns = await stored(
            journal,
            ev(1, "user_message", "r1", text="one"),
            ev(2, "tool_executing", "r1", call_id="c1", tool="balance", args={}),
            ev(3, "tool_completed", "r1", call_id="c1", tool="balance", result=1),
            ev(4, "agent_completed", "r1", text="1"),
            ev(5, "user_message", "r2", text="two"),
            ev(6, "tool_executing", "r2", call_id="c2", tool="balance", args={}),
            ev(7, "tool_completed", "r2", call_id="c2", tool="balance", result=2),
            ev(8, "agent_completed", "r2", text="2"))
        last = await read_history(journal, KEY, "r-next", limit=1)
    assert len(turns) == 4 and last == turns[-1:]
    assert last[0].calls == (ToolUse("c2", "balance", {}, 0, "completed", result=2),)
