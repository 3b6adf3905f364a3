"""The ThreadActor through the embedding API: runs, strategies, cancel, tools, failures,
subscribers, restarts and shutdown."""

import pytest
import trio
import trio.testing

from threadline.actors.agents import echo_agent, echo_tools
from threadline.actors.errors import Busy, SubscriberDropped, UnknownRun
from threadline.actors.journal import MemoryJournal
from threadline.actors.messages import ThreadKey
from threadline import RuntimeConfig, open_runtime
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


async def test_echo_run_follows_the_protocol():
    async with open_runtime() as rt:
        thread = rt.thread("ada", "main")
        async with thread.open_subscription() as sub:
            acc = await thread.send("hello", client_msg_id="c-1")
            events = await until_terminal(sub, acc.run_id)
    assert names(events) == ["user_message", "agent_started", "agent_thinking", "agent_completed"]
    assert_gapless(events)
    assert all(e.run_id == acc.run_id and e.key == thread.key for e in events)
    assert events[0].data == {"message_id": acc.message_id, "text": "hello", "client_msg_id": "c-1"}
    assert events[0].seq == acc.seq == 1
    assert events[-1].data == {"text": "hello"}


async def test_echo_calc_uses_the_calculator_tool():
    async with open_runtime() as rt:
        thread = rt.thread("ada", "main")
        async with thread.open_subscription() as sub:
            acc = await thread.send("/calc 2 * (3 + 4) - 1")
            events = await until_terminal(sub, acc.run_id)
            failed = await thread.send("/calc 1/0")
            failing = await until_terminal(sub, failed.run_id)
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
    async with scripted() as rt:
        thread = rt.thread("ada", "t1")
        async with thread.open_subscription() as sub:
            acc = await thread.send('tool:whoami:{}')
            events = await until_terminal(sub, acc.run_id)
    assert events[-1].data["text"] == f"ada/t1/{acc.run_id}"
    assert {e.key for e in events} == {ThreadKey("ada", "t1")}


async def test_enqueue_runs_one_after_another(autojump_clock):
    async with scripted() as rt:
        thread = rt.thread("ada", "main")
        async with thread.open_subscription() as sub:
            first = await thread.send("sleep:5;think:one")
            second = await thread.send("think:two")  # enqueue is the default
            events = await until_terminal(sub, second.run_id)
    assert_runs_well_formed(events)
    runs = [e.run_id for e in events if e.event in ("agent_started", "agent_completed")]
    assert runs == [first.run_id, first.run_id, second.run_id, second.run_id]


async def test_interrupt_cancels_the_active_run_and_starts_the_new_one(autojump_clock):
    async with scripted() as rt:
        thread = rt.thread("ada", "main")
        async with thread.open_subscription() as sub:
            first = await thread.send("think:working;sleep:100")
            await trio.sleep(1)
            second = await thread.send("think:urgent", strategy="interrupt")
            events = await until_terminal(sub, second.run_id)
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
    async with scripted() as rt:
        thread = rt.thread("ada", "main")
        async with thread.open_subscription() as sub:
            acc = await thread.send("sleep:100")
            await trio.sleep(1)
            assert await thread.cancel() == acc.run_id
            events = await until_terminal(sub, acc.run_id)
        assert events[-1].event == "agent_cancelled" and events[-1].data == {"reason": "cancel"}
        with pytest.raises(UnknownRun):
            await thread.cancel()  # nothing active any more
        with pytest.raises(UnknownRun):
            await thread.cancel(acc.run_id)  # finished


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
    async with scripted() as rt:
        thread = rt.thread("ada", "main")
        async with thread.open_subscription() as sub:
            first = await thread.send("hi", client_msg_id="abc")
            await until_terminal(sub, first.run_id)
            again = await thread.send("hi", client_msg_id="abc")
            assert again == first
            other = await rt.thread("ada", "other").send("hi", client_msg_id="abc")
            assert other.key != first.key  # ids are per thread
        history = await thread.history()
        assert names(history).count("user_message") == 1
        assert names(history).count("agent_started") == 1


async def test_a_failing_tool_is_reported_and_the_agent_decides():
    async with scripted() as rt:
        thread = rt.thread("ada", "main")
        async with thread.open_subscription() as sub:
            acc = await thread.send("tool:boom")
            events = await until_terminal(sub, acc.run_id)
            # The thread goes on.
            ok = await thread.send('tool:add:{"a": 2, "b": 3}')
            ok_events = await until_terminal(sub, ok.run_id)
    executing, completed = events[2], events[3]
    assert (executing.event, completed.event) == ("tool_executing", "tool_completed")
    assert completed.data["call_id"] == executing.data["call_id"]
    assert completed.data["error"] == "RuntimeError: tool broke" and "result" not in completed.data
    assert events[-1].event == "agent_failed"  # the scripted agent does not catch ToolError
    assert events[-1].data == {"error": "tool broke"} or "tool broke" in events[-1].data["error"]
    assert ok_events[-1].data == {"text": "5"}


async def test_a_slow_tool_times_out(autojump_clock):
    async with scripted() as rt:
        thread = rt.thread("ada", "main")
        async with thread.open_subscription() as sub:
            acc = await thread.send('tool:slow:{"seconds": 60}')
            events = await until_terminal(sub, acc.run_id)
    assert events[3].data["error"] == "tool 'slow' timed out after 1 s"
    assert events[-1].event == "agent_failed"
    assert trio.current_time() < 60


async def test_an_unknown_tool_is_an_error_event():
    async with scripted() as rt:
        thread = rt.thread("ada", "main")
        async with thread.open_subscription() as sub:
            acc = await thread.send("tool:nope")
            events = await until_terminal(sub, acc.run_id)
    assert events[3].data["error"] == "unknown tool 'nope'"


async def test_a_raising_agent_fails_the_run_and_the_thread_goes_on():
    async with scripted() as rt:
        thread = rt.thread("ada", "main")
        async with thread.open_subscription() as sub:
            bad = await thread.send("think:x;raise:agent bug")
            events = await until_terminal(sub, bad.run_id)
            good = await thread.send("fine")
            more = await until_terminal(sub, good.run_id)
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
    async with scripted() as rt:
        thread = rt.thread("ada", "main")
        async with thread.open_subscription() as sub:
            first = await thread.send("think:one")
            await until_terminal(sub, first.run_id)
            ref = rt.directory.lookup(thread.key)
            ref.tell(object())  # not a message the actor knows: its loop raises TypeError
            await trio.testing.wait_all_tasks_blocked()
            assert rt.directory.lookup(thread.key) is ref  # restarted in place, same mailbox
            second = await thread.send("think:two")
            events = await until_terminal(sub, second.run_id)  # the subscription survived
        assert second.seq == 5 and events[0].seq == 5
        assert rt.directory.failures == 0


async def test_a_crash_during_a_run_fails_that_run(autojump_clock):
    async with scripted() as rt:
        thread = rt.thread("ada", "main")
        async with thread.open_subscription() as sub:
            acc = await thread.send("think:x;sleep:10")
            await trio.sleep(1)
            rt.directory.lookup(thread.key).tell(object())
            events = await until_terminal(sub, acc.run_id)
        assert events[-1].event == "agent_failed" and events[-1].data == {"error": "internal error"}
        assert_runs_well_formed(await thread.history())


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
    async with scripted() as rt:
        thread = rt.thread("ada", "main")
        async with thread.open_subscription() as sub:
            acc = await thread.send("sleep:100")
            await rt.aclose(grace=1)
            await trio.sleep(5)  # the caller goes on after aclose, uncancelled
            events = await until_terminal(sub, acc.run_id)
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
