"""``Sequencer``: a thread's event numbering and its pipelined writes to the journal.

Invariants:

- ``submit`` gives an event the next seq and queues it to the journal in one synchronous step,
  so the order in which the thread's tasks submit is the seq order, and no lock is held across
  a write: the next event is queued while the last one is being stored.
- The journal answers writes in the order they were queued (``Journal.append_nowait``). "Stored"
  advances ``seq``, the last *durable* seq, and hands the event to ``on_stored`` (the actor
  delivers it): so subscribers get events in seq order and only once durable.
- A failed write breaks its chain: the writes queued after it do not follow its seq, so the
  journal refuses them too (their writers get ``JournalUnavailable``). The next event follows
  the last durable one: no failure leaves a gap. Data no store can hold is refused before a seq
  is taken (``check_storable``), so a refusal never breaks a chain.
- A plain ``ValueError`` at the head of a chain (the journal's "does not follow") or a
  ``StoreConflict`` (the store holds that seq already: another writer, or a commit whose answer
  was lost) means the numbering disagrees with the journal: ``mismatch`` is set and every later
  ``submit`` raises, so the thread restarts at once (``ThreadReload``), reloading the last seq
  (``start``) from the store, which forgot its cached copy of the thread's row.
- Delivery runs in whatever task the journal answers from (a durable store's writer): a bug in
  it is logged and contained here, never handed to the journal, whose batch holds other
  threads' writes; the writer waiting on the event is answered all the same.
- A writer that waits (``append``) waits shielded (it must know whether its event is stored)
  and bounded: while writers wait, the sequencer looks every ``APPEND_TIMEOUT`` seconds whether
  the journal answered anything of this thread (stored or failed) since the last look; if not,
  the store is wedged, and the writers that were already waiting at the last look get
  ``JournalWedged`` (the thread restarts; its supervisor reloads the last durable seq, which a
  journal answers only after the writes queued before). One pacer entry per waiting thread,
  not a trio deadline per write: a deadline costs a timer each (bench/README.md).
"""

from __future__ import annotations

import logging
from functools import partial
from typing import Any, Callable

import trio

from .errors import Fenced, JournalUnavailable, JournalWedged, StoreConflict, ThreadReload
from .journal import Done, Journal, check_storable
from .messages import Event, ThreadKey
from .pacer import current_pacer
from .reply import Reply

log = logging.getLogger("threadline.thread")

#: Seconds writers may wait with nothing of their thread stored before the store counts as
#: wedged (see the header).
APPEND_TIMEOUT = 60.0


class Sequencer:
    __slots__ = ("key", "journal", "clock", "on_stored", "seq", "_next", "_chain", "_waiting",
                 "_watched", "_answers", "_mismatch", "_fenced")

    def __init__(self, key: ThreadKey, journal: Journal, clock: Callable[[], float],
                 on_stored: Callable[[Event], None]) -> None:
        self.key = key
        self.journal = journal
        self.clock = clock
        self.on_stored = on_stored
        self.seq = 0     # the last durable seq
        self._next = 0   # the last seq given to the journal (durable or on its way)
        self._chain = 0  # bumped at a failed write: the writes queued after it fail too
        self._waiting: set[Reply[Event]] | None = None  # writers waiting for durability
        self._watched = False  # a ``_watch`` is in the pacer
        self._answers = 0      # writes the journal answered, stored or failed: progress
        self._mismatch: BaseException | None = None  # numbering disagrees with the journal
        self._fenced = False   # the last chain broke on ``Fenced``: the thread is elsewhere

    def start(self, last_seq: int) -> None:
        """Number from ``last_seq``, the journal's last seq for the thread (at every start of
        the actor, restarts included: what an earlier start queued is answered by then)."""
        self.seq = self._next = last_seq
        self._chain += 1
        self._mismatch = None

    @property
    def mismatch(self) -> BaseException | None:
        """Why the numbering disagrees with the journal, or None (see the header)."""
        return self._mismatch

    def submit(self, name: str, run_id: str | None, data: dict[str, Any],
               then: Reply[Event] | Done | None = None) -> Event:
        """Queue the next event and return it, without waiting; ``then`` hears how it ended.
        Raises ``Unstorable`` (nothing queued, no seq used)."""
        if self._mismatch is not None:
            raise ThreadReload(f"the numbering of {self.key} disagrees with the journal: "
                               f"{self._mismatch}")
        event = Event(self.key, self._next + 1, name, run_id, self.clock(), data)
        check_storable((event,))
        self._next = event.seq
        self.journal.append_nowait((event,), _Write(self, event, self._chain, then))
        return event

    async def append(self, name: str, run_id: str | None, data: dict[str, Any]) -> Event:
        """``submit``, and wait until the event is durable (or raise why it is not)."""
        reply: Reply[Event] = Reply()
        self.submit(name, run_id, data, reply)
        if reply.done:  # the memory journal answers at once
            return await reply.wait_uncancellable()
        waiting = self._waiting
        if waiting is None:
            waiting = self._waiting = set()
        waiting.add(reply)
        if not self._watched:
            self._watch()
        try:
            event = await reply.wait_uncancellable()
        finally:
            waiting.discard(reply)
        return event

    def _watch(self, answers: int | None = None,
               waited: frozenset[Reply[Event]] = frozenset()) -> None:
        if answers is not None:  # the pacer's call
            self._watched = False
            waiting = self._waiting
            if not waiting:
                return
            if answers == self._answers:
                wedged = JournalWedged(f"no answer from the journal within {APPEND_TIMEOUT:g} s")
                for reply in waiting & waited:
                    reply.fail(wedged)
                if not waiting:
                    return
        self._watched = True
        current_pacer().call_at(trio.current_time() + APPEND_TIMEOUT,
                                partial(self._watch, self._answers, frozenset(self._waiting or ())))

    def _stored(self, event: Event) -> None:
        self.seq = event.seq
        self._answers += 1
        try:
            self.on_stored(event)
        except Exception:  # a bug in delivery: contained here (see the header)
            log.exception("delivering event %d of %s failed", event.seq, self.key)

    def _lost(self, chain: int, error: BaseException) -> BaseException:
        """A write failed; returns the error its writer gets (see the header)."""
        self._answers += 1
        if chain != self._chain:
            # Fenced too when the write that broke the chain was: it is why, and it tells the
            # caller that the request may go where the thread lives now.
            kind = Fenced if self._fenced else JournalUnavailable
            lost = kind("an earlier event of this thread was not stored")
            lost.__cause__ = error
            return lost
        # Answers come in order: everything before this write is stored.
        self._fenced = isinstance(error, Fenced)
        self._chain += 1
        self._next = self.seq
        if type(error) is ValueError or isinstance(error, StoreConflict):  # a wrong count
            self._mismatch = error
        return error


class _Write:
    """One event on its way to the journal (``Done``): tells the sequencer, then ``then``."""

    __slots__ = ("owner", "event", "chain", "then")

    def __init__(self, owner: Sequencer, event: Event, chain: int,
                 then: Reply[Event] | Done | None) -> None:
        self.owner: Sequencer | None = owner
        self.event = event
        self.chain = chain
        self.then = then

    def set(self, _: None) -> None:
        owner, self.owner = self.owner, None
        if owner is not None:  # once: a journal may answer a failed batch again
            owner._stored(self.event)
            if self.then is not None:
                self.then.set(self.event)  # type: ignore[arg-type]

    def fail(self, error: BaseException) -> None:
        owner, self.owner = self.owner, None
        if owner is not None:
            error = owner._lost(self.chain, error)
            if self.then is not None:
                self.then.fail(error)
