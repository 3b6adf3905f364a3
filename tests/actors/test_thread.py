"""The ThreadActor through the embedding API: runs, strategies, cancel, tools, failures,
subscribers, restarts and shutdown; and its phases, on an actor of its own."""

from contextlib import asynccontextmanager
from typing import AsyncIterator

import attrs
import pytest
import trio
import trio.testing

from threadline.actors.agents import echo_agent, echo_tools
from threadline.actors.errors import Busy, SubscriberDropped, UnknownRun
from threadline.actors.mailbox import Mailbox
from threadline.actors.memory_journal import MemoryJournal
from threadline.actors.messages import Accepted, Event, GetInfo, PostMessage, Shutdown, ThreadKey
from threadline.actors.run_queue import Phase
from threadline.actors.subscription import Subscription
from threadline.actors.thread import ThreadActor, ThreadEnv
from threadline import Runtime, RuntimeConfig, ThreadHandle, open_runtime
from tests.helpers import (
    assert_gapless,
    assert_runs_well_formed,
    names,
    scripted_agent,
    test_tools,
    until_terminal,
)


def scripted(**kw):
    return open_runtime(agent=scripted_agent, tools=test_tools(), **kw)


@attrs.frozen
class Subscribed:
    """A runtime, one thread of user ada, and a subscription to that thread."""

    rt: Runtime
    thread: ThreadHandle
    sub: Subscription

    async def send_until_terminal(self, text: str, **kw) -> tuple[Accepted, list[Event]]:
        """Send ``text``; block until the subscription has had its run's terminal event."""
        acc = await self.thread.send(text, **kw)
        return acc, await until_terminal(self.sub, acc.run_id)


@asynccontextmanager
async def subscribed(thread_id: str = "main", *, echo: bool = False) -> AsyncIterator[Subscribed]:
    """A runtime with the scripted agent (with ``echo``, the default echo agent), subscribed
    to thread ``ada/<thread_id>``."""
    async with (open_runtime() if echo else scripted()) as rt:
        thread = rt.thread("ada", thread_id)
        async with thread.open_subscription() as sub:
            yield Subscribed(rt, thread, sub)


async def test_echo_run_follows_the_protocol():
    async with subscribed(echo=True) as t:
        acc, events = await t.send_until_terminal("hello", client_msg_id="c-1")
    assert names(events) == ["user_message", "agent_started", "agent_thinking", "agent_completed"]
    assert_gapless(events)
    assert all(e.run_id == acc.run_id and e.key == t.thread.key for e in events)
    assert events[0].data == {"message_id": acc.message_id, "text": "hello", "parent": None,
                              "client_msg_id": "c-1"}  # the first message: a root
    assert events[1].data == {"message_id": acc.message_id}  # the message it answers (1.1)
    assert events[0].seq == acc.seq == 1
    assert events[-1].data == {"text": "hello"}


async def test_echo_calc_uses_the_calculator_tool():
    async with subscribed(echo=True) as t:
        _, events = await t.send_until_terminal("/calc 2 * (3 + 4) - 1")
        _, failing = await t.send_until_terminal("/calc 1/0")
    assert names(events) == ["user_message", "agent_started", "agent_thinking", "tool_executing",
                             "tool_completed", "agent_completed"]
    executing, completed = events[3], events[4]
    assert executing.data["tool"] == "calculator"
    assert executing.data["args"] == {"expression": "2 * (3 + 4) - 1"}
    assert completed.data == {"call_id": executing.data["call_id"], "tool": "calculator",
                              "result": 13}
    assert events[-1].data == {"text": "13"}
    assert failing[4].data["error"] == "division by zero"
    assert failing[-1].event == "agent_completed"
    assert failing[-1].data == {"text": "error: division by zero"}


async def test_every_event_is_stamped_from_the_run_context():
    async with subscribed("t1") as t:
        acc, events = await t.send_until_terminal('tool:whoami:{}')
    assert events[-1].data["text"] == f"ada/t1/{acc.run_id}"
    assert {e.key for e in events} == {ThreadKey("ada", "t1")}


async def test_enqueue_runs_one_after_another(autojump_clock):
    async with subscribed() as t:
        first = await t.thread.send("sleep:5;think:one")
        second, events = await t.send_until_terminal("think:two")  # enqueue is the default
    assert_runs_well_formed(events)
    runs = [e.run_id for e in events if e.event in ("agent_started", "agent_completed")]
    assert runs == [first.run_id, first.run_id, second.run_id, second.run_id]


async def test_interrupt_cancels_the_active_run_and_starts_the_new_one(autojump_clock):
    async with subscribed() as t:
        first = await t.thread.send("think:working;sleep:100")
        await trio.sleep(1)
        second, events = await t.send_until_terminal("think:urgent", strategy="interrupt")
    assert_runs_well_formed(events)
    first_terminal = [e for e in events if e.run_id == first.run_id][-1]
    assert first_terminal.event == "agent_cancelled" and first_terminal.data == {"reason": "interrupt"}
    assert trio.current_time() < 100  # the first run did not sleep on
    assert events[-1].run_id == second.run_id and events[-1].event == "agent_completed"


async def test_reject_refuses_while_busy_and_stores_nothing(autojump_clock):
    async with scripted() as rt:
        thread = rt.thread("ada", "main")
        first = await thread.send("sleep:10")
        await trio.sleep(1)  # the run is sleeping now
        last = (await thread.info()).last_seq
        with pytest.raises(Busy):
            await thread.send("no", strategy="reject")
        assert (await thread.info()).last_seq == last
        await trio.sleep(20)
        ok = await thread.send("yes", strategy="reject")  # idle again: accepted
        assert ok.run_id != first.run_id


async def test_cancel_the_active_run(autojump_clock):
    async with subscribed() as t:
        acc = await t.thread.send("sleep:100")
        await trio.sleep(1)
        assert await t.thread.cancel() == acc.run_id
        events = await until_terminal(t.sub, acc.run_id)
        assert events[-1].event == "agent_cancelled" and events[-1].data == {"reason": "cancel"}
        with pytest.raises(UnknownRun):
            await t.thread.cancel()  # nothing active any more
        with pytest.raises(UnknownRun):
            await t.thread.cancel(acc.run_id)  # finished


async def test_cancel_names_only_the_active_run(autojump_clock):
    async with scripted() as rt:
        thread = rt.thread("ada", "main")
        active = await thread.send("sleep:100")
        queued = await thread.send("think:later")
        await trio.sleep(1)
        with pytest.raises(UnknownRun):
            await thread.cancel("run_nope")
        with pytest.raises(UnknownRun):
            await thread.cancel(queued.run_id)  # queued is not active (PROTOCOL.md)
        assert await thread.cancel(active.run_id) == active.run_id


async def test_client_msg_id_makes_send_idempotent():
    async with subscribed() as t:
        first, _ = await t.send_until_terminal("hi", client_msg_id="abc")
        again = await t.thread.send("hi", client_msg_id="abc")
        assert again == first
        other = await t.rt.thread("ada", "other").send("hi", client_msg_id="abc")
        assert other.key != first.key  # ids are per thread
        history = await t.thread.history()
        assert names(history).count("user_message") == 1
        assert names(history).count("agent_started") == 1


async def test_a_failing_tool_is_reported_and_the_agent_decides():
    async with subscribed() as t:
        _, events = await t.send_until_terminal("tool:boom")
        _, ok_events = await t.send_until_terminal('tool:add:{"a": 2, "b": 3}')  # it goes on
    executing, completed = events[2], events[3]
    assert (executing.event, completed.event) == ("tool_executing", "tool_completed")
    assert completed.data["call_id"] == executing.data["call_id"]
    assert completed.data["error"] == "RuntimeError: tool broke" and "result" not in completed.data
    assert events[-1].event == "agent_failed"  # the scripted agent does not catch ToolError
    assert events[-1].data == {"error": "tool broke"} or "tool broke" in events[-1].data["error"]
    assert ok_events[-1].data == {"text": "5"}


async def test_a_slow_tool_times_out(autojump_clock):
    async with subscribed() as t:
        _, events = await t.send_until_terminal('tool:slow:{"seconds": 60}')
    assert events[3].data["error"] == "tool 'slow' timed out after 1 s"
    assert events[-1].event == "agent_failed"
    assert trio.current_time() < 60


async def test_an_unknown_tool_is_an_error_event():
    async with subscribed() as t:
        _, events = await t.send_until_terminal("tool:nope")
    assert events[3].data["error"] == "unknown tool 'nope'"


async def test_a_raising_agent_fails_the_run_and_the_thread_goes_on():
    async with subscribed() as t:
        _, events = await t.send_until_terminal("think:x;raise:agent bug")
        _, more = await t.send_until_terminal("fine")
    assert events[-1].event == "agent_failed"
    assert events[-1].data == {"error": "ValueError: agent bug"}
    assert more[-1].event == "agent_completed"
    assert_gapless(events + more)


async def test_a_full_subscriber_is_dropped_and_told_why_and_slows_no_one():
    async with scripted() as rt:
        thread = rt.thread("ada", "main")
        async with thread.open_subscription(capacity=3) as slow, \
                thread.open_subscription() as fast:
            for i in range(3):
                await thread.send(f"think:{i}")
            events = []
            for _ in range(3):
                events += await until_terminal(fast)
            # The fast one saw all 3 runs; the slow one had room for 3 items only.
            assert len(events) == 12
            got = []
            with pytest.raises(SubscriberDropped) as info:
                async for e in slow:
                    got.append(e)
            assert "mailbox full" in info.value.reason
            assert_gapless(got)  # what it did get is gapless, and it knows where to resume
            resumed_from = slow.last_seq
        async with thread.open_subscription(since=resumed_from) as again:
            rest = [await again.next(5) for _ in range(12 - resumed_from)]
        assert_gapless(got + rest)


async def test_subscribe_since_replays_then_goes_live_without_gap_or_duplicate(autojump_clock):
    async with scripted() as rt:
        thread = rt.thread("ada", "main")
        await thread.send("think:a;think:b")
        await thread.send("think:c;sleep:5;think:d;sleep:5;think:e")
        await trio.sleep(1)  # the second run is streaming now
        async with thread.open_subscription(since=2) as sub:
            assert sub.joined_at >= 7
            events = await until_terminal(sub)  # the end of the first run, from the replay
            events += await until_terminal(sub)  # the second run, replayed then live
    assert_gapless(events, first=3)
    assert_runs_well_formed((await thread.history())[:])


async def test_a_bug_in_the_thread_actor_is_restarted_by_its_supervisor(autojump_clock):
    async with subscribed() as t:
        await t.send_until_terminal("think:one")
        ref = t.rt.directory.lookup(t.thread.key)
        ref.tell(object())  # not a message the actor knows: its loop raises TypeError
        await trio.testing.wait_all_tasks_blocked()
        assert t.rt.directory.lookup(t.thread.key) is ref  # restarted in place, same mailbox
        second, events = await t.send_until_terminal("think:two")  # the subscription survived
        assert second.seq == 5 and events[0].seq == 5
        assert t.rt.directory.failures == 0


async def test_a_crash_during_a_run_fails_that_run(autojump_clock):
    async with subscribed() as t:
        acc = await t.thread.send("think:x;sleep:10")
        await trio.sleep(1)
        t.rt.directory.lookup(t.thread.key).tell(object())
        events = await until_terminal(t.sub, acc.run_id)
        assert events[-1].event == "agent_failed" and events[-1].data == {"error": "internal error"}
        assert_runs_well_formed(await t.thread.history())


async def test_shutdown_gives_grace_then_cancels_active_and_queued_runs(autojump_clock):
    journal = MemoryJournal()
    config = RuntimeConfig(shutdown_grace=3.0)
    async with scripted(journal=journal, config=config) as rt:
        thread = rt.thread("ada", "main")
        quick = await thread.send("sleep:1;think:done")
        long = await thread.send("sleep:100")
        queued = await thread.send("think:never")
    history = await journal.read(ThreadKey("ada", "main"), 0)
    assert_runs_well_formed(history)
    terminal = {e.run_id: e for e in history if e.event.startswith("agent_") and
                e.event != "agent_started" and e.event != "agent_thinking"}
    assert terminal[quick.run_id].event == "agent_completed"  # finished within the grace
    assert terminal[long.run_id].data == {"reason": "shutdown"}
    assert terminal[queued.run_id].data == {"reason": "shutdown"}
    assert trio.current_time() < 10


async def test_full_thread_mailbox_is_backpressure_not_loss(autojump_clock):
    config = RuntimeConfig(mailbox_capacity=2)
    async with open_runtime(agent=echo_agent, tools=echo_tools(), config=config) as rt:
        thread = rt.thread("ada", "main")
        accepted = []

        async def send(i):
            accepted.append(await thread.send(f"m{i}"))

        async with trio.open_nursery() as n:
            for i in range(20):
                n.start_soon(send, i)
        assert sorted(a.seq for a in accepted) == sorted({a.seq for a in accepted})
        assert len(accepted) == 20


async def test_closing_the_runtime_does_not_cancel_the_code_that_closes_it(autojump_clock):
    reached = []
    async with subscribed() as t:
        acc = await t.thread.send("sleep:100")
        await t.rt.aclose(grace=1)
        await trio.sleep(5)  # the caller goes on after aclose, uncancelled
        events = await until_terminal(t.sub, acc.run_id)
        reached.append(events[-1].data)
    assert reached == [{"reason": "shutdown"}]


async def test_a_run_ending_while_a_request_is_handled_leaves_the_actor_sound(autojump_clock):
    # Runs end while requests are being handled, over and over: the actor moves between its
    # idle and busy phases without losing or duplicating anything.
    async with scripted() as rt:
        thread = rt.thread("ada", "main")
        for i in range(30):
            await thread.send(f"sleep:{(i % 3) * 0.001}")
            await thread.info()
            await trio.sleep((i % 4) * 0.0005)
        await trio.sleep(5)
        info = await thread.info()
        history = await thread.history()
        assert info.last_seq == len(history) == 30 * 3  # user_message, started, completed
        assert_runs_well_formed(history)
        assert rt.directory.failures == 0 and rt.directory.activations == 1


async def test_shutdown_reaches_an_actor_whose_mailbox_is_full(autojump_clock):
    config = RuntimeConfig(mailbox_capacity=2, shutdown_grace=1.0)
    async with scripted(config=config) as rt:
        thread = rt.thread("ada", "main")
        acc = await thread.send("sleep:100")
        ref = rt.directory.lookup(thread.key)
        from threadline.actors.messages import GetInfo
        from threadline.actors.reply import Reply
        ref.tell(GetInfo(Reply()))
        ref.tell(GetInfo(Reply()))  # full now
    history = await rt.journal.read(thread.key, 0)
    assert history[-1].run_id == acc.run_id and history[-1].data == {"reason": "shutdown"}


async def test_the_phase_follows_the_runs_and_an_idle_actor_holds_no_task(autojump_clock):
    key = ThreadKey("ada", "main")
    env = ThreadEnv(MemoryJournal(), scripted_agent, test_tools())
    actor, mailbox = ThreadActor(key, env), Mailbox(10)

    def post(text):
        return mailbox.ask(lambda reply: PostMessage(text, None, "enqueue", reply))

    async with trio.open_nursery() as nursery:
        nursery.start_soon(actor.run, mailbox)
        (task,) = nursery.child_tasks
        await mailbox.ask(GetInfo)
        assert actor.phase is Phase.IDLE and task.child_nurseries == []
        await post("sleep:5")
        await trio.testing.wait_all_tasks_blocked()
        assert actor.phase is Phase.RUNNING and actor.idle_since() is None
        assert [len(n.child_tasks) for n in task.child_nurseries] == [1]  # the runner
        await trio.sleep(10)
        assert actor.phase is Phase.IDLE and actor.idle_since() is not None
        assert task.child_nurseries == []
        late = await post("sleep:100")
        mailbox.tell(Shutdown(grace=1))
        await trio.testing.wait_all_tasks_blocked()
        assert actor.phase is Phase.DRAINING
    assert actor.phase is Phase.STOPPED and trio.current_time() < 20
    history = await env.journal.read(key, 0)
    assert history[-1].run_id == late.run_id and history[-1].data == {"reason": "shutdown"}
