"""Tool calls that wait for a person's approval (PROTOCOL.md 1.1), in one process, through the
embedding API: approve, deny, the first decision wins, unknown calls, cancel and interrupt of a
waiting run, expiry decided by the server, a rule that picks the calls, the echo agent's
``/confirm``. Virtual time; the memory journal and a real SQLite one."""

from __future__ import annotations

import time

import pytest
import trio

from tests.helpers import assert_runs_well_formed, names
from threadline import open_runtime
from threadline.actors.errors import ToolDenied, UnknownCall
from threadline.actors.messages import TERMINAL_EVENTS
from threadline.actors.tools import ToolRegistry
from threadline.stores import open_journal

RAN: list[dict] = []


def bank() -> ToolRegistry:
    tools = ToolRegistry()

    async def transfer(ctx, amount: int, to: str) -> str:
        RAN.append({"amount": amount, "to": to})
        return f"sent {amount} to {to}"

    async def lookup(ctx, name: str) -> str:
        return f"{name}: 42"

    tools.register("transfer", transfer, needs_approval=lambda ctx, args: args["amount"] > 100)
    tools.register("lookup", lookup)
    tools.register("wire", transfer, needs_approval=True, approval_timeout=60.0)
    return tools


async def banker(run) -> str:
    """``transfer:AMOUNT``, ``wire:AMOUNT``, ``lookup``: one tool call; a denial is answered."""
    tool, _, amount = run.text.partition(":")
    args = {"name": "ada"} if tool == "lookup" else {"amount": int(amount), "to": "bob"}
    try:
        return await run.call_tool(tool, **args)
    except ToolDenied as exc:
        return f"OK, I did not: {exc.reason}"


async def until_waiting(events, run_id: str) -> dict:
    """The approval_requested of ``run_id`` (its data)."""
    async for event in events:
        if event.run_id == run_id and event.event == "approval_requested":
            return event.data
    raise AssertionError("subscription ended")


async def until_end(events, run_id: str) -> list:
    seen = []
    async for event in events:
        if event.run_id == run_id:
            seen.append(event)
            if event.event in TERMINAL_EVENTS:
                return seen
    raise AssertionError("subscription ended")


@pytest.fixture(autouse=True)
def clear_ran():
    RAN.clear()


async def test_approved_the_tool_runs_once_and_the_run_completes(autojump_clock):
    async with open_runtime(agent=banker, tools=bank()) as rt:
        thread = rt.thread("ada", "main")
        async with thread.open_subscription() as events:
            run = await thread.send("transfer:500")
            asked = await until_waiting(events, run.run_id)
            assert asked["tool"] == "transfer" and asked["args"] == {"amount": 500, "to": "bob"}
            assert asked["expires_at"] is None and RAN == []  # nothing ran before the decision
            assert rt.statistics().approvals_waiting == 1
            await trio.sleep(3600)  # a person takes their time
            await thread.decide(run.run_id, asked["call_id"], True)
            rest = await until_end(events, run.run_id)
        assert names(rest) == ["approval_decided", "tool_executing", "tool_completed",
                               "agent_completed"]
        assert rest[0].data == {"call_id": asked["call_id"], "approved": True}
        assert rest[-1].data["text"] == "sent 500 to bob" and RAN == [{"amount": 500, "to": "bob"}]
        stats = rt.statistics()
        assert (stats.approvals_requested, stats.approvals_waiting,
                stats.approvals_decided) == (1, 0, {"approved": 1})


async def test_denied_the_tool_never_runs_and_the_agent_hears_why(autojump_clock):
    async with open_runtime(agent=banker, tools=bank()) as rt:
        thread = rt.thread("ada", "main")
        async with thread.open_subscription() as events:
            run = await thread.send("transfer:500")
            asked = await until_waiting(events, run.run_id)
            await thread.decide(run.run_id, asked["call_id"], False, "too much")
            rest = await until_end(events, run.run_id)
        assert names(rest) == ["approval_decided", "tool_completed", "agent_completed"]
        assert rest[1].data == {"call_id": asked["call_id"], "tool": "transfer",
                                "error": "denied: too much"}
        assert rest[-1].data["text"] == "OK, I did not: too much" and RAN == []


async def test_a_rule_picks_the_calls_and_small_ones_run_at_once(autojump_clock):
    async with open_runtime(agent=banker, tools=bank()) as rt:
        thread = rt.thread("ada", "main")
        async with thread.open_subscription() as events:
            run = await thread.send("transfer:50")
            assert "approval_requested" not in names(await until_end(events, run.run_id))
        assert RAN == [{"amount": 50, "to": "bob"}]


async def test_the_first_decision_wins_and_others_are_unknown_calls(autojump_clock):
    async with open_runtime(agent=banker, tools=bank()) as rt:
        thread = rt.thread("ada", "main")
        async with thread.open_subscription() as events:
            run = await thread.send("transfer:500")
            asked = await until_waiting(events, run.run_id)
            outcomes = []

            async def decide(approved: bool) -> None:
                try:
                    await thread.decide(run.run_id, asked["call_id"], approved)
                    outcomes.append(("ok", approved))
                except UnknownCall:
                    outcomes.append(("unknown_call", approved))

            async with trio.open_nursery() as nursery:  # two tabs at once
                nursery.start_soon(decide, True)
                nursery.start_soon(decide, False)
            rest = await until_end(events, run.run_id)
        assert sorted(o[0] for o in outcomes) == ["ok", "unknown_call"]
        winner = next(a for o, a in outcomes if o == "ok")
        decided = [e for e in rest if e.event == "approval_decided"]
        assert len(decided) == 1 and decided[0].data["approved"] is winner
        with pytest.raises(UnknownCall):  # its run has ended
            await thread.decide(run.run_id, asked["call_id"], True)
        with pytest.raises(UnknownCall):  # never asked
            await thread.decide(run.run_id, "call_nope", True)
        with pytest.raises(ValueError):
            await thread.decide(run.run_id, asked["call_id"], True, "x" * 1025)


@pytest.mark.parametrize("how", ["cancel", "interrupt"])
async def test_cancel_and_interrupt_end_a_waiting_run(autojump_clock, how):
    async with open_runtime(agent=banker, tools=bank()) as rt:
        thread = rt.thread("ada", "main")
        async with thread.open_subscription() as events:
            run = await thread.send("transfer:500")
            asked = await until_waiting(events, run.run_id)
            queued = await thread.send("lookup")  # enqueue: waits behind the waiting run
            if how == "cancel":
                await thread.cancel(run.run_id)
            else:
                queued = await thread.send("lookup", strategy="interrupt")
            rest = await until_end(events, run.run_id)
            assert rest[-1].event == "agent_cancelled"
            assert rest[-1].data == {"reason": how}
            await until_end(events, queued.run_id)
            with pytest.raises(UnknownCall):  # the pending approval needs no decision any more
                await thread.decide(run.run_id, asked["call_id"], True)
        assert RAN == []
        assert_runs_well_formed(await rt.journal.read(thread.key, 0))


async def test_an_expired_wait_is_decided_by_the_server(autojump_clock):
    async with open_runtime(agent=banker, tools=bank()) as rt:
        thread = rt.thread("ada", "main")
        async with thread.open_subscription() as events:
            before = time.time()
            run = await thread.send("wire:500")
            asked = await until_waiting(events, run.run_id)
            # Wall-clock seconds, 60 after it was asked (the tool's approval_timeout).
            assert before + 60 <= asked["expires_at"] <= time.time() + 60
            rest = await until_end(events, run.run_id)
        decided = rest[0]
        assert decided.event == "approval_decided"
        assert decided.data == {"call_id": asked["call_id"], "approved": False,
                                "reason": "expired"}
        assert rest[-1].data["text"] == "OK, I did not: expired" and RAN == []
        assert rt.statistics().approvals_decided == {"expired": 1}


async def test_a_busy_thread_rejects_while_a_run_waits(autojump_clock):
    from threadline.actors.errors import Busy

    async with open_runtime(agent=banker, tools=bank()) as rt:
        thread = rt.thread("ada", "main")
        async with thread.open_subscription() as events:
            run = await thread.send("transfer:500")
            await until_waiting(events, run.run_id)
            with pytest.raises(Busy):
                await thread.send("lookup", strategy="reject")


@pytest.mark.parametrize("store", ["memory", "sqlite"])
async def test_the_echo_agents_confirm(tmp_path, store):
    url = "memory" if store == "memory" else f"sqlite:///{tmp_path}/t.db"
    async with open_journal(url) as journal, open_runtime(journal=journal) as rt:
        thread = rt.thread("ada", "main")
        async with thread.open_subscription() as events:
            run = await thread.send("/confirm 6*7")
            asked = await until_waiting(events, run.run_id)
            assert asked["tool"] == "calculator" and asked["args"] == {"expression": "6*7"}
            await thread.decide(run.run_id, asked["call_id"], True)
            assert (await until_end(events, run.run_id))[-1].data == {"text": "42"}
            run = await thread.send("/confirm 1+1")
            asked = await until_waiting(events, run.run_id)
            await thread.decide(run.run_id, asked["call_id"], False, "not now")
            rest = await until_end(events, run.run_id)
        assert names(rest) == ["approval_decided", "tool_completed", "agent_completed"]
        assert rest[-1].data == {"text": "denied: not now"}
        assert_runs_well_formed(await journal.read(thread.key, 0))
