"""Start-up recovery: after a crash, no run stays open.

A graceful stop ends active runs with ``agent_cancelled`` (reason ``shutdown``). After a crash
(``kill -9``, power loss) the journal can hold runs with no terminal event; before serving, each
gets ``agent_failed`` ``{"error": "server restarted"}`` (after an ``agent_started``, if it never
started), so that every run in the journal has exactly one terminal event; with the ``usage``
its agent reported before the crash, kept in its node (PROTOCOL.md 1.1).
"""

from __future__ import annotations

import logging
import time
from collections import defaultdict
from typing import Callable

from threadline.actors.approval import run_events, wait_of
from threadline.actors.journal import Journal, OpenRun
from threadline.actors.messages import AGENT_FAILED, AGENT_STARTED, Event, ThreadKey

log = logging.getLogger("threadline.recovery")

RESTARTED = {"error": "server restarted"}


async def close_open_runs(journal: Journal, clock: Callable[[], float] = time.time,
                          only: Callable[[ThreadKey], bool] | None = None,
                          parked: set[ThreadKey] | None = None) -> int:
    """Close every open run (of the threads ``only`` names, if given: a cluster node, those of
    the shards it just took); returns how many. Runs before any of their thread actors is
    active. With ``parked`` (the agent is resumable: ``approval.resumable``), a run waiting for
    a decision is not closed: its thread goes into ``parked``, and parks it again when it is
    loaded (``parking.restore``)."""
    runs = [r for r in await journal.open_runs() if only is None or only(r.key)]
    if parked is not None:
        # A waiting run has started; the runs queued behind it (thousands, maybe) have not,
        # and cost no read.
        waiting = [r for r in runs
                   if r.started and wait_of(await run_events(journal, r)) is not None]
        parked.update(r.key for r in waiting)
        runs = [r for r in runs if r not in waiting]
        if waiting:
            log.info("%d runs wait for a decision, in %d threads: kept", len(waiting),
                     len({r.key for r in waiting}))
    by_thread: dict[ThreadKey, list[OpenRun]] = defaultdict(list)
    for run in runs:
        by_thread[run.key].append(run)
    for key, open_runs in by_thread.items():
        seq = await journal.last_seq(key)
        events = []
        for run in open_runs:
            now = clock()
            if not run.started:
                seq += 1
                events.append(Event(key, seq, AGENT_STARTED, run.run_id, now,
                                    {"message_id": run.message_id}))
            seq += 1
            data = dict(RESTARTED)
            node = await journal.node(key, run.run_id) if run.started else None
            if node is not None and node.usage is not None:  # what it reported before
                data["usage"] = node.usage.wire()
            events.append(Event(key, seq, AGENT_FAILED, run.run_id, now, data))
        await journal.append(events)
    if runs:
        log.warning("closed %d runs left open by a crash, in %d threads", len(runs), len(by_thread))
    return len(runs)
