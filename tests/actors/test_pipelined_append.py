"""A thread queues its next events before the last ones are durable (``ThreadActor._submit``):
what a failed write does to the writes queued after it, through a real runtime and a journal
that fails where the test says."""

from __future__ import annotations

import pytest
import trio

from tests.helpers import HoldingJournal, answer_of
from threadline import open_runtime
from threadline.actors.errors import AskTimeout, JournalUnavailable
from threadline.actors.memory_journal import MemoryJournal
from threadline.actors.messages import Event, ThreadKey
from threadline.stores import open_journal
from threadline.actors.sequencer import APPEND_TIMEOUT


async def test_a_failed_piece_fails_what_was_queued_after_it_and_leaves_no_gap(autojump_clock):
    journal = HoldingJournal(lambda events: any(e.event == "agent_delta" for e in events))
    wrote_after_failure: list[BaseException] = []

    async def agent(run):
        if run.text != "stream":
            return f"echo {run.text}"
        for i in range(20):  # pieces queued, none stored: the store holds them
            await run.write(f"{i} ")
            await trio.sleep(0.06)
        await trio.sleep(1)  # the test fails the store here
        try:
            await run.write("more")
        except JournalUnavailable as exc:
            wrote_after_failure.append(exc)
            raise

    async with open_runtime(agent=agent, journal=journal) as rt:
        thread = rt.thread("ada", "main")
        async with thread.open_subscription() as events:
            await thread.send("stream")
            await trio.sleep(1.5)
            journal.fail_held(JournalUnavailable("disk gone"))
            got = []
            with trio.fail_after(30):
                async for event in events:
                    got.append(event)
                    if event.event in ("agent_completed", "agent_failed", "agent_cancelled"):
                        break
            # The run is closed once the store is back: one terminal event, after no delta.
            assert [e.event for e in got] == ["user_message", "agent_started", "agent_failed"]
            assert got[-1].data == {"error": "storage unavailable"}
            assert len(wrote_after_failure) == 1
            # The thread goes on, numbered after the last durable event.
            accepted = await thread.send("next")
            assert accepted.seq == got[-1].seq + 1
            async for event in events:
                got.append(event)
                if event.event == "agent_completed":
                    break
            assert got[-1].data == {"text": "echo next"}
    stored = await journal.read(got[0].key, 0)
    assert [e.seq for e in stored] == list(range(1, len(stored) + 1))  # gapless
    assert stored == got and answer_of(stored) == ""


async def test_a_subscriber_that_joins_while_pieces_are_in_flight_gets_them_live(autojump_clock):
    journal = HoldingJournal(lambda events: any(e.event == "agent_delta" for e in events))
    release = trio.Event()

    async def agent(run):
        await run.write("queued before the join")
        await release.wait()
        return None

    async with open_runtime(agent=agent, journal=journal) as rt:
        thread = rt.thread("ada", "main")
        await thread.send("go")
        await trio.sleep(1)  # the piece is queued, not durable: last_seq is before it
        async with thread.open_subscription(since=0) as events:
            journal.release()
            release.set()
            got = []
            with trio.fail_after(30):
                async for event in events:
                    got.append(event)
                    if event.event == "agent_completed":
                        break
    seqs = [e.seq for e in got]
    assert seqs == list(range(1, len(got) + 1))  # replay then live: no gap, no duplicate
    assert answer_of(got) == "queued before the join" == got[-1].data["text"]


class SilentOnce(MemoryJournal):
    """A store wedged on one write: it never answers the first user message."""

    swallowed = False

    def append_nowait(self, events, done):
        if not self.swallowed and events[0].event == "user_message":
            self.swallowed = True
            return
        super().append_nowait(events, done)


async def test_a_thread_whose_writers_wait_on_a_wedged_store_restarts(autojump_clock):
    journal = SilentOnce()
    async with open_runtime(journal=journal) as rt:
        thread = rt.thread("ada", "main")
        with pytest.raises(AskTimeout):  # the store never answers: the caller gives up first
            await thread.send("never stored")
        await trio.sleep(APPEND_TIMEOUT)  # then the actor's watch finds the store wedged
        with trio.fail_after(5):
            accepted = await thread.send("hello")  # a restarted actor, numbering from the store
        assert accepted.seq == 1
        first = (await journal.read(accepted.key, 0))[0]
        assert (first.seq, first.data["text"]) == (1, "hello")


class FailsOnce(MemoryJournal):
    """A store that fails the first write of one event name (an outage of one moment)."""

    def __init__(self, name: str) -> None:
        super().__init__()
        self.name = name
        self.failed = False

    def append_nowait(self, events, done):
        if not self.failed and events[0].event == self.name:
            self.failed = True
            done.fail(JournalUnavailable("blip"))
            return
        super().append_nowait(events, done)


@pytest.mark.parametrize("name", ["agent_started", "agent_thinking", "agent_delta"])
async def test_a_queued_event_the_store_fails_ends_the_run_well_formed(name, autojump_clock):
    # agent_started, agent_thinking and the pieces are queued without waiting: when the store
    # fails one, the run writes nothing more, and the thread ends it with agent_failed, after
    # an agent_started (written again if that is what failed).
    async def agent(run):
        await run.think("hmm")
        await trio.sleep(1)
        await run.write("hello")
        await trio.sleep(1)
        await run.write(" world")
        return None

    journal = FailsOnce(name)
    async with open_runtime(agent=agent, journal=journal) as rt:
        thread = rt.thread("ada", "main")
        accepted = await thread.send("hi")
        await trio.sleep(10)
        events = await journal.read(accepted.key, 0)
    names = [e.event for e in events]
    assert names[:2] == ["user_message", "agent_started"] and names.count("agent_started") == 1
    assert names[-1] == "agent_failed" and names.count("agent_failed") == 1
    assert [e.seq for e in events] == list(range(1, len(events) + 1))
    assert name not in names[2:]  # nothing after the failure but the run's end


async def test_a_long_write_paced_slowly_is_not_taken_for_a_wedged_store(autojump_clock):
    # One write of 1.8M code points takes minutes to go out at 4 KiB per 50 ms: the writer
    # waits for room all that time, but the store stores a piece every 50 ms.
    async def agent(run):
        await run.write("字" * 1_800_000)
        await run.write("end")
        return None

    journal = MemoryJournal()
    async with open_runtime(agent=agent, journal=journal) as rt:
        thread = rt.thread("ada", "main")
        accepted = await thread.send("hi")
        await trio.sleep(300)
        events = await journal.read(accepted.key, 0, limit=10_000)
    assert events[-1].event == "agent_completed"
    assert len(events[-1].data["text"]) == 1_800_003 == len(answer_of(events))


async def test_a_subscriber_that_raises_harms_no_other_thread(tmp_path):
    # Delivery runs in the durable store's writer task: a bug in one subscriber is contained
    # there, and the batch it shared with other users' writes stays theirs.
    class Buggy:
        def deliver(self, item):
            if isinstance(item, Event):
                raise RuntimeError("subscriber bug")

        def dropped(self, key, reason, *, overflow):
            pass

    async def agent(run):
        return "ok"

    async with open_journal(f"sqlite:///{tmp_path}/t.db") as journal:
        async with open_runtime(agent=agent, journal=journal) as rt:
            mallory = rt.thread("mallory", "t")
            await mallory.subscribe(Buggy())
            for i in range(3):
                async with trio.open_nursery() as nursery:
                    nursery.start_soon(mallory.send, f"m{i}")
                    for k in range(5):
                        nursery.start_soon(rt.thread("bob", f"t{k}").send, f"b{i}")
                with trio.fail_after(10):
                    while len(await journal.read(ThreadKey("bob", "t4"), 0)) < 3 * (i + 1):
                        await trio.sleep(0.01)
            for key in [ThreadKey("mallory", "t"), *(ThreadKey("bob", f"t{k}") for k in range(5))]:
                names = [e.event for e in await journal.read(key, 0)]
                assert names == ["user_message", "agent_started", "agent_completed"] * 3, key


async def test_writes_queued_behind_a_fenced_one_fail_as_fenced_too():
    # A cluster node whose lease was taken over: the router sends a request that got Fenced to
    # the thread's new owner, so the writes that fail because of it must say so too.
    from threadline.actors.errors import Fenced
    from threadline.actors.reply import Reply
    from threadline.actors.sequencer import Sequencer

    key = ThreadKey("ada", "main")
    journal = HoldingJournal(lambda events: True)
    await journal.ensure_thread(key, 0.0)
    seq = Sequencer(key, journal, lambda: 1.0, lambda event: None)
    seq.start(0)
    first, second = Reply(), Reply()
    seq.submit("user_message", "r1", {"message_id": "m1", "text": "a"}, first)
    seq.submit("agent_started", "r1", {}, second)
    journal.fail_held(Fenced("another node owns the thread now"))
    for reply in (first, second):
        with pytest.raises(Fenced):
            await reply.wait()
