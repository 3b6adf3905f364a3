"""A hypothesis property over interleavings of decide, cancel, send (enqueue, interrupt,
reject) and the clock, on one thread whose every run asks approval for one call: every run
ends with exactly one terminal event, every approved call runs exactly once (unless a cancel or
an interrupt ended its run first) and no other call runs, every decision stored is the first one taken for its call, and a decision is answered
``ok`` exactly when it is stored. (Restarts come with durable waits; see test_approval.py.)"""

from __future__ import annotations

from collections import Counter, defaultdict

import trio
import trio.testing
from hypothesis import given, settings
from hypothesis import strategies as st

from tests.helpers import assert_runs_well_formed
from threadline import open_runtime
from threadline.actors.errors import Busy, ToolDenied, UnknownCall, UnknownRun
from threadline.actors.tools import ToolRegistry

def steps(ticks: list[float]) -> list[st.SearchStrategy]:
    """What a client does to the thread: send, decide one of the calls asked, cancel, wait."""
    return [st.tuples(st.just("send"), st.sampled_from(["enqueue", "interrupt", "reject"])),
            st.tuples(st.just("decide"), st.integers(0, 5), st.booleans()),
            st.tuples(st.just("cancel"), st.integers(0, 5)),
            st.tuples(st.just("tick"), st.sampled_from(ticks))]


operations = st.lists(st.one_of(*steps([0.0, 0.1, 1.0, 30.0])), max_size=25)


async def decide_asked(thread, journal, i: int, approved: bool,
                       answered: dict[tuple[str, str], bool]) -> None:
    """Decide the ``i``-th call asked on ``thread`` (if any); an ``ok`` is recorded once."""
    events = await journal.read(thread.key, 0, limit=10**6)
    calls = [(e.run_id, e.data["call_id"]) for e in events if e.event == "approval_requested"]
    if not calls:
        return
    run_id, call_id = calls[i % len(calls)]
    try:
        await thread.decide(run_id, call_id, approved)
        assert (run_id, call_id) not in answered, "two decisions stored for one call"
        answered[(run_id, call_id)] = approved
    except UnknownCall:
        pass


async def play(ops) -> None:
    ran: Counter[str] = Counter()
    tools = ToolRegistry()

    async def act(ctx, n: int) -> int:
        ran[ctx.run_id] += 1
        return n

    tools.register("act", act, needs_approval=True, approval_timeout=20.0)

    async def agent(run) -> str:
        try:
            return str(await run.call_tool("act", n=1))
        except ToolDenied as exc:
            return str(exc)

    async with open_runtime(agent=agent, tools=tools) as rt:
        thread = rt.thread("ada", "main")
        runs: list[str] = []
        answered: dict[tuple[str, str], bool] = {}  # (run, call) -> approved, when ok

        async with trio.open_nursery() as nursery:
            for op in ops:
                if op[0] == "send":
                    try:
                        runs.append((await thread.send("go", strategy=op[1])).run_id)
                    except Busy:
                        pass
                elif op[0] == "decide":
                    nursery.start_soon(decide_asked, thread, rt.journal, op[1], op[2], answered)
                elif op[0] == "cancel":
                    try:
                        await thread.cancel(runs[op[1] % len(runs)] if runs else None)
                    except UnknownRun:
                        pass
                else:
                    await trio.sleep(op[1])
            sends = sum(op[0] == "send" for op in ops)
            await trio.sleep(30 * (sends + 1))  # each wait expires (20 s) or was decided

        events = await rt.journal.read(thread.key, 0, limit=10**6)
    assert_runs_well_formed(events)
    decided = {(e.run_id, e.data["call_id"]): e.data for e in events
               if e.event == "approval_decided"}
    by_run = defaultdict(list)
    for e in events:
        by_run[e.run_id].append(e.event)
    for (run_id, call_id), data in decided.items():
        if data.get("reason") != "expired":
            assert answered.get((run_id, call_id)) == data["approved"]
    assert set(answered) <= set(decided)  # an ok is a stored decision
    for run_id, names_ in by_run.items():
        assert_one_run_of_the_tool(run_id, names_, decided, ran)


def assert_one_run_of_the_tool(run_id, names_, decided, ran) -> None:
    """The tool of an approved call runs once, unless its run was cancelled first (a cancel
    or an interrupt racing the decision); never for a call not approved, never twice."""
    approved = any(a.get("approved") if isinstance(a, dict) else a
                   for (r, _), a in decided.items() if r == run_id)
    executed = names_.count("tool_executing")
    assert ran[run_id] == executed <= (1 if approved else 0), (run_id, names_)
    if approved and names_[-1] != "agent_cancelled":
        assert executed == 1, (run_id, names_)


@settings(max_examples=60, deadline=None)
@given(operations)
def test_approval_under_random_interleavings(ops):
    trio.run(play, ops, clock=trio.testing.MockClock(autojump_threshold=0))


# -- with restarts: a resumable agent's runs park, and outlive the runtime ----------------------

restarting = st.lists(st.one_of(*steps([0.0, 0.1, 1.0]), st.just(("restart",))), max_size=20)


async def play_restarts(ops) -> None:
    from threadline.actors.approval import resumable
    from threadline.actors.memory_journal import MemoryJournal

    ran: Counter[str] = Counter()
    tools = ToolRegistry()

    async def act(ctx, n: int) -> int:
        ran[ctx.run_id] += 1
        return n

    tools.register("act", act, needs_approval=True)

    @resumable
    async def agent(run) -> str:
        try:
            return str(await run.call_tool("act", n=1))
        except ToolDenied as exc:
            return str(exc)

    journal = MemoryJournal()  # what outlives each runtime: the store
    runs: list[str] = []
    answered: dict[tuple[str, str], bool] = {}
    ops = list(ops) + [("end",)]
    i = 0
    while i < len(ops):
        async with open_runtime(journal=journal, agent=agent, tools=tools) as rt:
            thread = rt.thread("ada", "main")
            while i < len(ops):
                op, i = ops[i], i + 1
                if op[0] in ("restart", "end"):
                    break
                if op[0] == "send":
                    try:
                        runs.append((await thread.send("go", strategy=op[1])).run_id)
                    except Busy:
                        pass
                elif op[0] == "decide":
                    await decide_asked(thread, journal, op[1], op[2], answered)
                elif op[0] == "cancel":
                    try:
                        await thread.cancel(runs[op[1] % len(runs)] if runs else None)
                    except UnknownRun:
                        pass
                else:
                    await trio.sleep(op[1])
            await trio.sleep(5)  # decided runs go on before the runtime closes
            if op[0] == "end":  # decide what still waits: every run ends
                for _ in range(10):
                    events = await journal.read(thread.key, 0, limit=10**6)
                    decided = {e.data["call_id"] for e in events
                               if e.event == "approval_decided"}
                    waiting = [(e.run_id, e.data["call_id"]) for e in events
                               if e.event == "approval_requested"
                               and e.data["call_id"] not in decided]
                    if not waiting:
                        break
                    for run_id, call_id in waiting:
                        try:
                            await thread.decide(run_id, call_id, True)
                            answered[(run_id, call_id)] = True
                        except UnknownCall:
                            pass
                    await trio.sleep(5)
    events = await journal.read(thread.key, 0, limit=10**6)
    assert_runs_well_formed(events)
    by_run = defaultdict(list)
    for e in events:
        by_run[e.run_id].append(e.event)
    decided = {(e.run_id, e.data["call_id"]): e.data["approved"] for e in events
               if e.event == "approval_decided"}
    assert decided == answered  # every stored decision was answered ok, and only those
    for run_id, names_ in by_run.items():
        assert_one_run_of_the_tool(run_id, names_, decided, ran)


@settings(max_examples=40, deadline=None)
@given(restarting)
def test_approval_with_restarts_under_random_interleavings(ops):
    trio.run(play_restarts, ops, clock=trio.testing.MockClock(autojump_threshold=0))
