"""The engine when its run is cancelled from outside (shutdown, a crash of the thread actor):
the terminal event is still written, after ``agent_started`` and after what the agent wrote,
also when the agent runs a nursery of its own. Driven directly: ``execute`` over a writer whose
sequencer records the events, in a cancel scope the test cancels."""

from __future__ import annotations

import trio

from threadline.actors.engine import Run, RunContext
from threadline.actors.execution import RunControl, execute
from threadline.actors.run_writer import RunWriter
from threadline.actors.tools import ToolRegistry


class Recorder:
    """A sequencer that records: queued in order, stored at once."""

    def __init__(self) -> None:
        self.events: list[tuple[str, dict]] = []

    def submit(self, event, run_id, data, done):
        self.events.append((event, data))
        done.set(None)

    async def append(self, event, run_id, data):
        self.events.append((event, data))


async def run_cancelled_after(agent, seconds: float, *, cancel_first: bool = False) -> list:
    recorder = Recorder()
    control = RunControl(RunContext("ada", "main", "run_1", "msg_1"), "go", 1)
    run = Run(RunWriter(recorder, control), ToolRegistry())  # type: ignore[arg-type]
    with trio.fail_after(60):  # virtual time: a run that never ends fails the test, not hangs
        with trio.CancelScope() as outer:
            if cancel_first:
                outer.cancel()
            with trio.move_on_after(seconds):
                await execute(run, agent)
    return recorder.events


async def test_an_agent_with_its_own_nursery_still_ends_with_a_terminal_event(autojump_clock):
    async def agent(run):
        async with trio.open_nursery() as mine:
            mine.start_soon(trio.sleep_forever)
            await run.write("partial")
            await trio.sleep_forever()

    events = await run_cancelled_after(agent, 1.0)
    assert [name for name, _ in events] == ["agent_started", "agent_delta", "agent_cancelled"]
    assert events[1][1] == {"offset": 0, "text": "partial"}
    assert events[2][1] == {"reason": "shutdown"}


async def test_a_run_cancelled_before_it_began_still_begins_with_agent_started(autojump_clock):
    async def agent(run):
        raise AssertionError("never called")

    events = await run_cancelled_after(agent, 1.0, cancel_first=True)
    assert [name for name, _ in events] == ["agent_started", "agent_cancelled"]
