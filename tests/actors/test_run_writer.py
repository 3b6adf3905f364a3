"""A run's writer without an actor: a real ``Sequencer`` over a memory journal that holds or
fails the writes the test picks. What it writes is stamped from its run, the answer's pieces
are queued straight to the sequencer, and the failure latch stops everything after a failed
queued event, the pieces of a stream already going included."""

from __future__ import annotations

import pytest
import trio

from tests.helpers import HoldingJournal
from threadline.actors.engine import Run
from threadline.actors.errors import JournalUnavailable
from threadline.actors.messages import Event, ThreadKey
from threadline.actors.run_writer import MAX_QUEUED, RunContext, RunControl, RunWriter
from threadline.actors.sequencer import Sequencer
from threadline.actors.tools import ToolRegistry

KEY = ThreadKey("ada", "main")


async def writer_over(journal: HoldingJournal) -> tuple[RunWriter, list[Event]]:
    await journal.ensure_thread(KEY, 1.0)
    stored: list[Event] = []
    sequencer = Sequencer(KEY, journal, lambda: 1.0, stored.append)
    sequencer.start(0)
    control = RunControl(RunContext(KEY.user_id, KEY.thread_id, "run_1", "msg_1"), "hi")
    return RunWriter(sequencer, control), stored


async def test_every_event_is_stamped_with_the_run_and_text_goes_before_the_next_event(
        autojump_clock):
    writer, stored = await writer_over(HoldingJournal())
    run = Run(writer, ToolRegistry())
    await writer.start()
    await run.write("hello")
    await run.think("hmm")  # the text written before it is queued first
    await trio.sleep(1)
    assert await writer.end(("agent_completed", {"text": run.written})) == "agent_completed"
    assert [(e.event, e.run_id) for e in stored] == [
        ("agent_started", "run_1"), ("agent_delta", "run_1"), ("agent_thinking", "run_1"),
        ("agent_completed", "run_1")]
    assert writer.control.started and writer.pending == 0


async def test_events_are_queued_without_waiting_up_to_max_queued(autojump_clock):
    journal = HoldingJournal(lambda events: True)
    writer, stored = await writer_over(journal)
    await writer.start()
    for i in range(MAX_QUEUED - 1):
        await writer.send("agent_thinking", {"text": str(i)})
    assert writer.pending == MAX_QUEUED and not stored
    async with trio.open_nursery() as nursery:
        nursery.start_soon(writer.send, "agent_thinking", {"text": "waits"})
        await trio.sleep(1)
        assert writer.pending == MAX_QUEUED  # the next one waits until it is stored
        journal.release()
    assert len(stored) == MAX_QUEUED + 1 and writer.pending == 0


async def test_a_failed_queued_event_stops_the_stream_already_going(autojump_clock):
    journal = HoldingJournal(lambda events: events[0].event == "agent_thinking")
    writer, stored = await writer_over(journal)
    await writer.start()
    await writer.write("before ")
    await trio.sleep(1)
    await writer.send("agent_thinking", {"text": "hmm"})
    journal.fail_held(JournalUnavailable("blip"))
    assert writer.error is not None and writer.control.started
    await writer.write("after")  # buffered: its piece fails, and the next write raises
    await trio.sleep(1)
    with pytest.raises(JournalUnavailable):
        await writer.write("more")
    with pytest.raises(JournalUnavailable):  # the runner then closes the run
        await writer.end(("agent_completed", {"text": "x"}))
    await writer.close_lost()
    assert [e.event for e in stored] == ["agent_started", "agent_delta", "agent_failed"]
    assert stored[-1].data == {"error": "storage unavailable"}


async def test_a_failed_agent_started_is_written_again_before_agent_failed(autojump_clock):
    journal = HoldingJournal(lambda events: events[0].event == "agent_started")
    writer, stored = await writer_over(journal)
    await writer.start()
    journal.fail_held(JournalUnavailable("blip"))
    assert not writer.control.started
    await writer.close_lost()
    assert [e.event for e in stored] == ["agent_started", "agent_failed"]
    assert [e.seq for e in stored] == [1, 2]


async def test_a_run_torn_down_before_it_began_still_begins_with_agent_started(autojump_clock):
    writer, stored = await writer_over(HoldingJournal())
    with trio.CancelScope() as scope:
        scope.cancel()
        await writer.end_shielded(("agent_cancelled", {"reason": "shutdown"}))
    assert [e.event for e in stored] == ["agent_started", "agent_cancelled"]
