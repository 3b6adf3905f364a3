"""The run queue without an actor: the phase table, the queue's decisions, the drain at
shutdown and the closing of a run whose journal failed."""

import itertools
from types import SimpleNamespace

import pytest
import trio

from threadline.actors.engine import RunContext
from threadline.actors.execution import RunControl
from threadline.actors.errors import Busy, Fenced, JournalUnavailable, UnknownRun
from threadline.actors.run_queue import (
    RUNNER_ON,
    SHUTTING_DOWN,
    TRANSITIONS,
    Phase,
    RunQueue,
    advance,
    drain,
)
from threadline.actors.run_writer import RunWriter

EVENTS = ("start", "end", "shutdown")


def control(run_id: str) -> RunControl:
    return RunControl(RunContext("ada", "main", run_id, f"msg_{run_id}"), "text")


async def close_lost_run(c: RunControl, append) -> None:
    """``RunWriter.close_lost`` over a sequencer whose ``append`` is ``append``."""
    await RunWriter(SimpleNamespace(append=append), c).close_lost()  # type: ignore[arg-type]


def queue_of(*run_ids: str) -> tuple[RunQueue, list[RunControl]]:
    runs, controls = RunQueue(), [control(r) for r in run_ids]
    for c in controls:
        runs.add(c, "enqueue")
    return runs, controls


# -- the phase table ------------------------------------------------------------------------


def test_the_phase_is_whether_a_runner_is_on_and_whether_shutdown_was_asked():
    for (phase, event), after in TRANSITIONS.items():
        runner_on = {"start": True, "end": False, "shutdown": phase in RUNNER_ON}[event]
        assert (after in RUNNER_ON) == runner_on, (phase, event)
        assert (after in SHUTTING_DOWN) == (phase in SHUTTING_DOWN or event == "shutdown")


def test_a_runner_starts_only_when_off_and_ends_only_when_on():
    for phase, event in itertools.product(Phase, EVENTS):
        legal = (event == "shutdown" or (event == "start") == (phase not in RUNNER_ON))
        if legal:
            assert advance(phase, event) is TRANSITIONS[(phase, event)]
        else:
            assert (phase, event) not in TRANSITIONS
            with pytest.raises(RuntimeError, match=f"'{event}' in phase {phase.value}"):
                advance(phase, event)


def test_a_life_idle_running_idle_running_draining_stopped():
    phase = Phase.IDLE
    seen = [phase]
    for event in ("start", "end", "start", "shutdown", "end"):
        phase = advance(phase, event)
        seen.append(phase)
    assert seen == [Phase.IDLE, Phase.RUNNING, Phase.IDLE, Phase.RUNNING, Phase.DRAINING,
                    Phase.STOPPED]


# -- the queue's decisions --------------------------------------------------------------------


def test_enqueued_runs_start_in_order_one_at_a_time():
    runs, (a, b) = queue_of("a", "b")
    assert len(runs) == 2 and runs.start_runner() and runs.phase is Phase.RUNNING
    assert not runs.start_runner()  # one runner at a time
    assert runs.start_next() is a and runs.active is a and len(runs) == 1
    with pytest.raises(RuntimeError, match="still active"):
        runs.start_next()
    runs.finish()
    assert runs.start_next() is b
    runs.finish()
    assert runs.start_next() is None and runs.active is None
    runs.runner_ended()
    assert runs.phase is Phase.IDLE and runs.idle and not runs.start_runner()


def test_interrupt_goes_first_and_cancels_the_active_run():
    runs, (a, b, c) = queue_of("a", "b", "c")
    runs.start_runner()
    runs.start_next()
    urgent = control("urgent")
    runs.add(urgent, "interrupt")
    assert a.cancel_reason == "interrupt" and a.scope.cancel_called
    runs.finish()
    assert [runs.start_next(), runs.finish(), runs.start_next()] == [urgent, None, b]
    assert b.cancel_reason is None and c.cancel_reason is None


def test_interrupt_with_nothing_active_only_goes_first():
    runs, (a,) = queue_of("a")
    first = control("first")
    runs.add(first, "interrupt")
    assert runs.start_next() is first and a.cancel_reason is None


def test_reject_admits_only_while_nothing_is_active_or_pending():
    runs = RunQueue()
    runs.admit("reject")
    runs.add(control("a"), "enqueue")
    with pytest.raises(Busy):
        runs.admit("reject")  # pending
    runs.start_next()
    with pytest.raises(Busy):
        runs.admit("reject")  # active
    runs.admit("enqueue")
    runs.admit("interrupt")
    runs.finish()
    runs.admit("reject")


def test_cancel_names_only_the_active_run():
    runs, (a, b) = queue_of("a", "b")
    with pytest.raises(UnknownRun, match="^no active run$"):
        runs.cancel_active(None)
    runs.start_next()
    with pytest.raises(UnknownRun, match="no active run b"):
        runs.cancel_active("b")  # pending is not active (PROTOCOL.md)
    assert b.cancel_reason is None
    assert runs.cancel_active("a") == "a" and a.cancel_reason == "cancel"
    assert runs.cancel_active(None) == "a"  # no id: whichever is active


def test_shutdown_with_no_runner_stops_at_once():
    runs = RunQueue()
    assert runs.shutdown() is False and runs.phase is Phase.STOPPED


def test_shutdown_drains_and_the_cancel_reaches_every_run_held_first_reason_first():
    runs, (a, b, c) = queue_of("a", "b", "c")
    runs.start_runner()
    runs.start_next()
    runs.add(control("d"), "interrupt")  # a is cancelled with reason interrupt
    assert runs.shutdown() is True and runs.phase is Phase.DRAINING and not runs.idle
    runs.cancel_all("shutdown")
    assert a.cancel_reason == "interrupt"
    assert [x.cancel_reason for x in (b, c)] == ["shutdown", "shutdown"]
    runs.finish()
    runs.runner_ended()
    assert runs.phase is Phase.STOPPED


def test_a_crash_fails_the_active_run_and_keeps_the_pending_ones():
    runs, (a, b) = queue_of("a", "b")
    runs.crashed()  # nothing active: nothing to fail
    runs.start_runner()
    runs.start_next()
    runs.crashed()
    assert a.failure == "internal error" and b.failure is None
    runs.finish()
    runs.runner_ended()  # the crash cancelled the runner
    assert runs.phase is Phase.IDLE and len(runs) == 1 and runs.start_runner()


def test_a_restart_after_a_crash_while_draining_drains_what_was_left():
    runs, _ = queue_of("a", "b")
    runs.start_runner()
    runs.start_next()
    runs.shutdown()
    runs.finish()
    runs.runner_ended()  # crashed while draining
    assert runs.phase is Phase.STOPPED and len(runs) == 1
    assert runs.start_runner() and runs.phase is Phase.DRAINING


def test_the_runner_ending_wakes_whoever_waits_for_it():
    runs, _ = queue_of("a")
    runs.start_runner()
    runs.wake = trio.CancelScope()
    runs.runner_ended()
    assert runs.wake.cancel_called


# -- the awaiting -----------------------------------------------------------------------------


async def a_runner(runs: RunQueue) -> None:
    """Each run lasts until its scope is cancelled or 10 s have passed."""
    try:
        while (c := runs.start_next()) is not None:
            with c.scope:
                await trio.sleep(10)
            runs.finish()
    finally:
        runs.runner_ended()


async def test_drain_gives_the_grace_then_cancels(autojump_clock):
    runs, (a, b) = queue_of("a", "b")
    async with trio.open_nursery() as nursery:
        runs.start_runner()
        nursery.start_soon(a_runner, runs)
        await trio.sleep(1)
        await drain(runs, grace=3)
    assert trio.current_time() == 4
    assert (a.cancel_reason, b.cancel_reason) == ("shutdown", "shutdown")
    assert runs.phase is Phase.STOPPED


async def test_drain_ends_with_the_last_run_within_the_grace(autojump_clock):
    runs, (a,) = queue_of("a")
    async with trio.open_nursery() as nursery:
        runs.start_runner()
        nursery.start_soon(a_runner, runs)
        await drain(runs, grace=30)
    assert trio.current_time() == 10 and a.cancel_reason is None
    assert runs.phase is Phase.STOPPED and runs.wake is None


async def test_a_lost_run_is_closed_once_the_store_is_back_with_a_capped_backoff(autojump_clock):
    written, failures = [], iter(range(8))
    c = control("a")

    async def append(name, run_id, data):
        if next(failures, None) is not None:
            raise JournalUnavailable("down")
        written.append((name, run_id, data))

    await close_lost_run(c, append)
    assert written == [("agent_started", "a", {"message_id": "msg_a"}),
                       ("agent_failed", "a", {"error": "storage unavailable"})]
    assert c.started
    assert trio.current_time() == pytest.approx(0.1 + 0.2 + 0.4 + 0.8 + 1.6 + 3.2 + 5 + 5)


async def test_a_lost_run_that_had_started_gets_only_its_terminal_event():
    written = []
    c = control("a")
    c.started = True

    async def append(name, run_id, data):
        written.append(name)

    await close_lost_run(c, append)
    assert written == ["agent_failed"]


async def test_a_lost_run_of_a_thread_another_node_took_is_left_to_that_node(autojump_clock):
    attempts = []
    c = control("a")
    c.started = True

    async def append(name, run_id, data):
        attempts.append(name)
        raise Fenced("another node owns the thread now")

    await close_lost_run(c, append)  # returns at once: no retrying a write that cannot land
    assert attempts == ["agent_failed"] and trio.current_time() == 0
