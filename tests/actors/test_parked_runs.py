"""A resumable agent's run that waits for approval parks: it holds no task while it waits, and
survives a graceful restart, the thread being unloaded, and its expiry passing while the server
was down; a decision (or a cancel) finds it again from the store. The echo agent's ``/confirm``
on a real SQLite store; virtual time where nothing outside the process is waited for."""

from __future__ import annotations

import time
from collections import Counter

import pytest
import trio

from tests.helpers import assert_runs_well_formed, names
from threadline import RuntimeConfig, open_runtime
from threadline.actors.approval import resumable
from threadline.actors.errors import ToolDenied, UnknownCall
from threadline.actors.messages import TERMINAL_EVENTS
from threadline.actors.tools import ToolRegistry
from threadline.stores import open_journal

RAN: Counter[str] = Counter()


def tools() -> ToolRegistry:
    registry = ToolRegistry()

    async def send_email(ctx, to: str) -> str:
        RAN[ctx.run_id] += 1
        return f"sent to {to}"

    async def lookup(ctx, name: str) -> str:
        RAN[f"lookup {ctx.run_id}"] += 1
        return f"{name}@example.org"

    registry.register("send_email", send_email, needs_approval=True, approval_timeout=1.0)
    registry.register("lookup", lookup)
    return registry


@resumable
async def mailer(run) -> str:
    """Looks an address up, then sends to it (which needs approval); resumed, it goes through
    the same calls: the lookup answers from the transcript, never run twice."""
    if not run.resumed:
        await run.think("looking up")
    address = await run.call_tool("lookup", name=run.text)
    try:
        return await run.call_tool("send_email", to=address)
    except ToolDenied as exc:
        return f"not sent: {exc.reason}"


async def events_of(journal, thread) -> list:
    return await journal.read(thread.key, 0, limit=10**6)


async def asked(journal, thread) -> dict:
    with trio.fail_after(10):
        while True:
            for event in await events_of(journal, thread):
                if event.event == "approval_requested":
                    return {"run_id": event.run_id, **event.data}
            await trio.sleep(0.01)


async def until_ended(journal, thread, run_id: str) -> list:
    with trio.fail_after(20):
        while True:
            events = [e for e in await events_of(journal, thread) if e.run_id == run_id]
            if events and events[-1].event in TERMINAL_EVENTS:
                return events
            await trio.sleep(0.01)


@pytest.fixture(autouse=True)
def clear():
    RAN.clear()


async def test_a_parked_run_survives_a_graceful_restart_and_goes_on_once(tmp_path):
    url = f"sqlite:///{tmp_path}/t.db"
    async with open_journal(url) as journal, open_runtime(journal=journal) as rt:
        thread = rt.thread("ada", "main")
        await thread.send("/confirm 6*7")
        call = await asked(journal, thread)
        await trio.sleep(0.1)
        stats = rt.statistics()
        assert stats.runs_active == 0 and stats.approvals_waiting == 1  # no task holds it
    async with open_journal(url) as journal, open_runtime(journal=journal) as rt:
        thread = rt.thread("ada", "main")
        await thread.decide(call["run_id"], call["call_id"], True)
        run = await until_ended(journal, thread, call["run_id"])
        with pytest.raises(UnknownCall):
            await thread.decide(call["run_id"], call["call_id"], False)
        events = await events_of(journal, thread)
    assert names(run) == ["user_message", "agent_started", "agent_thinking",
                          "approval_requested", "approval_decided", "tool_executing",
                          "tool_completed", "agent_completed"]
    assert run[-1].data == {"text": "42"}
    assert_runs_well_formed(events)


async def test_a_resumed_agent_never_runs_a_tool_twice_and_its_thread_unloads_while_it_waits(
        autojump_clock):
    registry = tools()
    registry.register("send_email", registry.get("send_email").fn, needs_approval=True)
    config = RuntimeConfig(passivate_after=10.0)
    async with open_journal("memory") as journal, open_runtime(  # virtual time: in memory
            journal=journal, agent=mailer, tools=registry, config=config) as rt:
        thread = rt.thread("ada", "main")
        accepted = await thread.send("bob")
        call = await asked(journal, thread)
        await trio.sleep(120)  # idle: the thread is unloaded, its run parked in the store
        # Unloaded, and still counted: it waits in the store.
        assert len(rt.directory) == 0 and rt.statistics().approvals_waiting == 1
        await thread.decide(call["run_id"], call["call_id"], True)
        run = await until_ended(journal, thread, accepted.run_id)
    assert run[-1].data == {"text": "sent to bob@example.org"}
    assert RAN == {f"lookup {accepted.run_id}": 1, accepted.run_id: 1}
    assert names(run).count("agent_thinking") == 1
    assert_runs_well_formed(await events_of(journal, thread))


async def test_an_expiry_that_passed_while_the_server_was_down_is_decided_at_load(tmp_path):
    url = f"sqlite:///{tmp_path}/t.db"
    async with open_journal(url) as journal, open_runtime(
            journal=journal, agent=mailer, tools=tools()) as rt:
        thread = rt.thread("ada", "main")
        accepted = await thread.send("bob")
        call = await asked(journal, thread)
        assert call["expires_at"] == pytest.approx(time.time() + 1.0, abs=0.5)
    await trio.sleep(1.2)  # down past the expiry (wall clock: a deadline in the store)
    async with open_journal(url) as journal, open_runtime(
            journal=journal, agent=mailer, tools=tools()) as rt:
        thread = rt.thread("ada", "main")
        await thread.info()  # loading the thread decides it
        run = await until_ended(journal, thread, accepted.run_id)
    decided = next(e for e in run if e.event == "approval_decided")
    assert decided.data == {"call_id": call["call_id"], "approved": False, "reason": "expired"}
    assert run[-1].data == {"text": "not sent: expired"} and accepted.run_id not in RAN


async def test_an_expiry_while_loaded_is_decided_on_time(tmp_path):
    url = f"sqlite:///{tmp_path}/t.db"
    async with open_journal(url) as journal, open_runtime(
            journal=journal, agent=mailer, tools=tools()) as rt:
        thread = rt.thread("ada", "main")
        accepted = await thread.send("bob")
        run = await until_ended(journal, thread, accepted.run_id)
    assert run[-1].data == {"text": "not sent: expired"}


@pytest.mark.parametrize("how", ["cancel", "interrupt"])
async def test_a_parked_run_is_cancelled_and_interrupted_at_once(tmp_path, how):
    url = f"sqlite:///{tmp_path}/t.db"
    async with open_journal(url) as journal, open_runtime(journal=journal) as rt:
        thread = rt.thread("ada", "main")
        await thread.send("/confirm 1+1")
        call = await asked(journal, thread)
        behind = await thread.send("behind")  # enqueue: waits behind the parked run
        if how == "cancel":
            assert await thread.cancel(call["run_id"]) == call["run_id"]
        else:
            await thread.send("now", strategy="interrupt")
        run = await until_ended(journal, thread, call["run_id"])
        assert run[-1].event == "agent_cancelled" and run[-1].data == {"reason": how}
        await until_ended(journal, thread, behind.run_id)  # every run behind it ran
        with pytest.raises(UnknownCall):
            await thread.decide(call["run_id"], call["call_id"], True)
        assert_runs_well_formed(await events_of(journal, thread))


async def test_a_shutdown_leaves_a_parked_run_open_and_a_plain_agent_s_is_ended(tmp_path):
    """A run parked outlives a stop; a plain (not resumable) agent's wait is ended by the
    shutdown as any active run is (``agent_cancelled``, reason shutdown)."""
    url = f"sqlite:///{tmp_path}/t.db"

    async def plain(run) -> str:
        return await run.call_tool("send_email", to="x")

    async with open_journal(url) as journal, open_runtime(
            journal=journal, agent=plain, tools=tools(),
            config=RuntimeConfig(shutdown_grace=0.1)) as rt:
        thread = rt.thread("ada", "plain")
        await thread.send("x")
        await asked(journal, thread)
    async with open_journal(url) as journal:
        run = await events_of(journal, thread)
        assert run[-1].event == "agent_cancelled"


async def test_messages_queued_behind_a_parked_run_never_hide_its_decision(tmp_path):
    """From a red-team pass: with hundreds of messages queued behind a waiting run, its
    decision lay past what was read back of the run, so the run parked again and a second
    decision was taken too. The store now gives a run's own events, however many follow."""
    url = f"sqlite:///{tmp_path}/t.db"
    async with open_journal(url) as journal, open_runtime(journal=journal) as rt:
        thread = rt.thread("ada", "main")
        await thread.send("/confirm 6*7")
        call = await asked(journal, thread)
        for i in range(300):
            await thread.send(f"queued {i} " + "x" * 4000)
    async with open_journal(url) as journal, open_runtime(journal=journal) as rt:
        thread = rt.thread("ada", "main")
        await thread.decide(call["run_id"], call["call_id"], False, "first")
        run = await until_ended(journal, thread, call["run_id"])
        assert run[-1].data == {"text": "denied: first"}
        with pytest.raises(UnknownCall):
            await thread.decide(call["run_id"], call["call_id"], True, "second")
        events = await events_of(journal, thread)
    assert sum(e.event == "approval_decided" for e in events) == 1


async def test_after_a_restart_waiting_runs_are_counted_and_expired_ones_decided_untouched(
        tmp_path):
    """From a red-team pass: after a restart an expired wait stayed undecided until something
    loaded its thread, and threadline_approvals_waiting read 0 though runs waited."""
    url = f"sqlite:///{tmp_path}/t.db"
    async with open_journal(url) as journal, open_runtime(
            journal=journal, agent=mailer, tools=tools()) as rt:
        first = await rt.thread("ada", "e1").send("bob")
        second = await rt.thread("ada", "e2").send("eve")
        await asked(journal, rt.thread("ada", "e1"))
        await asked(journal, rt.thread("ada", "e2"))
        assert rt.statistics().approvals_waiting == 2
    await trio.sleep(1.2)  # both expire while the server is down
    async with open_journal(url) as journal, open_runtime(
            journal=journal, agent=mailer, tools=tools()) as rt:
        for thread, accepted in ((rt.thread("ada", "e1"), first), (rt.thread("ada", "e2"), second)):
            run = await until_ended(journal, thread, accepted.run_id)  # nothing asked of them
            assert run[-1].data == {"text": "not sent: expired"}
        assert rt.statistics().approvals_waiting == 0


async def test_deleting_a_thread_ends_its_parked_run_and_those_behind_it_first(tmp_path):
    from threadline.actors.subscription import SubscriberDropped

    url = f"sqlite:///{tmp_path}/t.db"
    async with open_journal(url) as journal, open_runtime(journal=journal) as rt:
        thread = rt.thread("ada", "main")
        seen = []
        async with thread.open_subscription() as events:
            waiting = await thread.send("/confirm 2+2")
            await asked(journal, thread)
            behind = await thread.send("behind")
            await thread.delete()
            try:
                async for event in events:
                    seen.append((event.run_id, event.event, event.data))
            except SubscriberDropped:
                pass
        assert (waiting.run_id, "agent_cancelled", {"reason": "deleted"}) in seen
        assert (behind.run_id, "agent_cancelled", {"reason": "deleted"}) in seen
        assert rt.statistics().approvals_waiting == 0
