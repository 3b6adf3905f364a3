"""A thread's parked run: a resumable agent's run waiting for a person's decision with no task
(``approval.py``), as its thread actor holds, restores, decides, cancels and expires it.

Invariants:

- A parked run is its thread's active run (``RunQueue.parked``): ``enqueue`` waits behind it,
  ``reject`` is ``busy``; it holds no task, no user slot, no agent coroutine. A thread whose
  only run is parked is idle and may be unloaded (``passivate``), unless its wait has an
  expiry: then it stays loaded to decide it in time.
- Everything a parked run needs is in the store: ``restore`` finds it again from the thread's
  open runs (``wait_of`` their events) whenever the thread is loaded, after a restart, a crash,
  an unload or, in a cluster, a move to another node. A wait whose expiry passed meanwhile is
  decided then; a decision stored whose run never went on (a crash right after it) resumes it.
- A decision is stored (``approval_decided``) before the decider hears ``ok``, and before the
  run resumes: its agent is called again with the run's stored events (``RunControl
  .transcript``). A cancel or interrupt ends a parked run with ``agent_cancelled`` at once; a
  shutdown leaves it parked (it outlives the process).
"""

from __future__ import annotations

import logging
import math
from typing import Any, Callable

import trio

from .approval import EXPIRED, Waiting, count_decision, decision_data, run_events, wait_of
from .errors import JournalUnavailable, UnknownCall
from .journal import Journal, OpenRun
from .history import answered_message
from .messages import (AGENT_CANCELLED, AGENT_FAILED, AGENT_STARTED,
                       APPROVAL_DECIDED, RUN_REQUESTS, Decide, Event, ThreadKey)
from .run_queue import RunQueue
from .run_writer import RunContext, RunControl, started_data
from .sequencer import Sequencer
from .stats import ThreadStats

log = logging.getLogger("threadline.thread")


async def restore(key: ThreadKey, journal: Journal, writes: Sequencer,
                  runs_of: Callable[[], RunQueue], stats: ThreadStats, parked: set[Any], *,
                  resumable: bool, restarted: bool) -> None:
    """The thread is loaded: take back its runs the store holds open and this actor does not:
    a waiting one (a resumable agent's) is parked again, or resumed if its decision is stored
    (or its expiry passed); any other is ended with ``agent_failed`` after a restart of the
    actor (its terminal write was lost as it went down). At a first load those are left to
    the start's recovery, which ran before. Costs a look-up only after a restart, or for a
    thread in ``parked``."""
    if not restarted and key not in parked:
        return
    parked.discard(key)
    runs = runs_of()
    held = runs.run_ids()
    for run in await journal.open_runs(key):
        if run.run_id in held:
            continue
        events = await run_events(journal, run) if resumable and run.started else []
        waiting = wait_of(events) if events else None
        if waiting is None or runs.active is not None:
            if restarted or (waiting is not None and runs.active is not None):
                await _close(writes, run, "internal error")
            continue
        control = await _control(journal, key, run, events)
        if waiting.decided is None and _expired(waiting, writes.clock):
            events.append(await _store_decision(writes, stats, run.run_id, waiting.call_id,
                                                False, EXPIRED))
            waiting = wait_of(events)
        if waiting is not None and waiting.decided is None:
            control.parked = waiting
            runs.active = control
            parked.add(key)
        else:
            control.transcript = events
            runs.put_first(control)


async def decide(writes: Sequencer, journal: Journal, runs: RunQueue, stats: ThreadStats,
                 msg: Decide) -> bool:
    """A decision for the parked run: stored, answered, and the run resumed. False when the
    parked run is not the one ``msg`` names (nothing done)."""
    control = runs.parked
    if control is None or control.context.run_id != msg.run_id:
        return False
    waiting = control.parked
    assert waiting is not None
    if waiting.call_id != msg.call_id:
        msg.reply.fail(UnknownCall(f"no tool call {msg.call_id} of run {msg.run_id} waits "
                                   "for a decision"))
        return True
    try:
        await _store_decision(writes, stats, msg.run_id, msg.call_id, msg.approved, msg.reason)
    except JournalUnavailable as exc:
        msg.reply.fail(exc)
        return True
    msg.reply.set(None)
    await _resume(writes.key, journal, runs, stats, control)
    return True


async def expire_due(writes: Sequencer, journal: Journal, runs: RunQueue,
                     stats: ThreadStats) -> None:
    """The parked run's expiry passed: the server's decision, not approved, and it resumes."""
    control = runs.parked
    if control is None or control.parked is None or not _expired(control.parked, writes.clock):
        return
    await _store_decision(writes, stats, control.context.run_id, control.parked.call_id,
                          False, EXPIRED)
    await _resume(writes.key, journal, runs, stats, control)


async def end_if_cancelled(writes: Sequencer, runs: RunQueue, stats: ThreadStats) -> None:
    """A cancel or an interrupt reached the parked run: it ends now, ``agent_cancelled``."""
    control = runs.parked
    if control is not None and control.cancel_reason is not None:
        await _end_parked(writes, runs, stats, control.cancel_reason)


async def end_queued(writes: Sequencer, runs: RunQueue | None, reason: str) -> None:
    """A stop with a parked run: the runs queued behind it, which no runner will take, end
    as a stop ends runs (``agent_started``, then ``agent_cancelled`` ``{reason}``); the parked
    run itself outlives the stop."""
    if runs is None or runs.parked is None or runs.runner_on:
        return
    for control in runs.take_pending():
        await writes.append(AGENT_STARTED, control.context.run_id,
                            started_data(control.context))
        await writes.append(AGENT_CANCELLED, control.context.run_id, {"reason": reason})


async def end_all(writes: Sequencer, runs: RunQueue | None, stats: ThreadStats,
                  reason: str) -> None:
    """The thread is deleted: the runs queued behind its parked run, and the parked run, end
    with ``agent_cancelled`` ``{reason}`` (as deletion ends an active run) before it goes."""
    await end_queued(writes, runs, reason)
    if runs is not None and runs.parked is not None:
        await _end_parked(writes, runs, stats, reason)


def deadline(runs: RunQueue | None, clock: Callable[[], float]) -> float:
    """The trio time at which the parked run's wait expires (``math.inf``: none)."""
    control = runs.parked if runs is not None else None
    expires_at = control.parked.expires_at if control is not None and control.parked else None
    if expires_at is None:
        return math.inf
    return trio.current_time() + max(0.0, expires_at - clock())


def forget(runs: RunQueue | None, stats: ThreadStats) -> None:
    """The actor stops (unloaded, or the process): its parked run stays in the store, and
    its thread in ``stats.parked`` (found again at the next load)."""


# -- inside -----------------------------------------------------------------------------------

async def _control(journal: Journal, key: ThreadKey, run: OpenRun,
                   events: list[Event]) -> RunControl:
    first = events[0] if events and events[0].event in RUN_REQUESTS else None
    message = await answered_message(journal, key, first) if first is not None else {}
    message_id = first.data.get("message_id") if first is not None else None
    context = RunContext(key.user_id, key.thread_id, run.run_id, str(message_id))
    control = RunControl.answering(context, message, first.seq if first else run.seq)
    control.started = any(e.event == AGENT_STARTED for e in events)
    control.resumable = True
    node = await journal.node(key, run.run_id)  # what it reported before the restart
    control.usage = node.usage if node is not None else None
    return control


def _expired(waiting: Waiting, clock: Callable[[], float]) -> bool:
    return waiting.expires_at is not None and clock() >= waiting.expires_at


async def _store_decision(writes: Sequencer, stats: ThreadStats, run_id: str, call_id: str,
                          approved: bool, reason: str | None) -> Event:
    """Store ``approval_decided`` (a person's decision, or the server's on expiry), count it
    and say so; the event stored. The run goes on next (``_resume``)."""
    event = await writes.append(APPROVAL_DECIDED, run_id,
                                decision_data(call_id, approved, reason))
    log.info("run %s: call %s %s; it goes on", run_id, call_id,
             count_decision(stats, approved, reason))
    return event


async def _end_parked(writes: Sequencer, runs: RunQueue, stats: ThreadStats,
                      reason: str) -> None:
    control = runs.parked
    assert control is not None
    name, data = control.terminal(AGENT_CANCELLED, {"reason": reason})
    await writes.append(name, control.context.run_id, data)
    runs.end_parked()  # once stored: a failed write leaves the run parked, as it is stored
    stats.parked.discard(writes.key)


async def _resume(key: ThreadKey, journal: Journal, runs: RunQueue, stats: ThreadStats,
                  control: RunControl) -> None:
    run = OpenRun(key, control.context.run_id, True, control.request_seq)
    control.transcript = await run_events(journal, run)
    runs.resume()
    stats.parked.discard(key)


async def _close(writes: Sequencer, run: OpenRun, error: str) -> None:
    if not run.started:
        await writes.append(AGENT_STARTED, run.run_id, {"message_id": run.message_id})
    await writes.append(AGENT_FAILED, run.run_id, {"error": error})
    log.warning("%s: run %s was left open as the thread restarted; ended it", run.key,
                run.run_id)
