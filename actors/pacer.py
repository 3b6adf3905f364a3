"""``Pacer``: one timer task for the many small deadlines of streamed answers.

A streamed answer must go out at most once per interval (``stream.py``), so each stream that
holds text needs a wake-up at ``last piece + interval``. With a task and a ``trio.sleep_until``
per stream, a thousand streams cost a thousand timers twenty times a second; trio registers,
expires and cancels each (about 47 µs of CPU apiece here, ``bench/README.md``). A pacer keeps the
deadlines in one heap, sleeps until the earliest in one cancel scope, and calls what is due in
one scheduling round.

Invariants:

- ``call_at(when, fn)`` calls ``fn()`` (synchronous, must not block) once, in the pacer's task,
  no earlier than ``when`` and in deadline order; deadlines are rounded up to ``GRAIN`` so that
  those close together share a wake-up (at most ``GRAIN`` late, never early).
- An ``fn`` that raises is logged and does not stop the pacer: the pacer serves every stream
  of the program, and one bug must not stop the others.
- ``sleep_until`` is ``trio.sleep_until`` on the same heap: one timer for many sleepers.
- There is one pacer per ``trio.run``, started on first use as a system task (``current_pacer``):
  nothing to wire through, and it ends with the run.
"""

from __future__ import annotations

import heapq
import logging
import math
from typing import Callable

import trio

log = logging.getLogger("threadline.pacer")

GRAIN = 0.002  # seconds: deadlines this close share a wake-up


class Pacer:
    __slots__ = ("_heap", "_count", "_scope")

    def __init__(self) -> None:
        self._heap: list[tuple[float, int, Callable[[], None]]] = []
        self._count = 0  # ties keep their order, and functions are never compared
        self._scope: trio.CancelScope | None = None

    def call_at(self, when: float, fn: Callable[[], None]) -> None:
        """Call ``fn()`` at trio time ``when`` or just after (see the header). Never blocks."""
        when = max(when, math.ceil(when / GRAIN) * GRAIN)  # the division may round down
        self._count += 1
        heapq.heappush(self._heap, (when, self._count, fn))
        scope = self._scope
        if scope is not None and when < scope.deadline:
            scope.deadline = when

    async def sleep_until(self, when: float) -> None:
        """``trio.sleep_until`` on the pacer's timer (at most ``GRAIN`` late): for code that
        sleeps often in many tasks at once, such as the echo agent's ``/stream``. Cancellable."""
        if when <= trio.current_time():
            await trio.lowlevel.checkpoint()
            return
        sleeper = _Sleeper(trio.lowlevel.current_task())
        self.call_at(when, sleeper.wake)

        def abort(_: object) -> trio.lowlevel.Abort:
            sleeper.task = None  # the entry stays in the heap, and wakes no one
            return trio.lowlevel.Abort.SUCCEEDED

        await trio.lowlevel.wait_task_rescheduled(abort)

    async def run(self) -> None:
        heap = self._heap
        while True:
            now = trio.current_time()
            while heap and heap[0][0] <= now:
                fn = heapq.heappop(heap)[2]
                try:
                    fn()
                except Exception:
                    log.exception("a paced call failed")
            with trio.CancelScope(deadline=heap[0][0] if heap else math.inf) as self._scope:
                await trio.sleep_forever()
            self._scope = None


class _Sleeper:
    __slots__ = ("task",)

    def __init__(self, task: trio.lowlevel.Task) -> None:
        self.task: trio.lowlevel.Task | None = task

    def wake(self) -> None:
        task, self.task = self.task, None
        if task is not None:
            trio.lowlevel.reschedule(task)


_PACER: trio.lowlevel.RunVar[Pacer] = trio.lowlevel.RunVar("threadline_pacer")


def current_pacer() -> Pacer:
    """This ``trio.run``'s pacer, started on first use."""
    try:
        return _PACER.get()
    except LookupError:
        pacer = Pacer()
        _PACER.set(pacer)
        trio.lowlevel.spawn_system_task(pacer.run, name="threadline.pacer")
        return pacer
