"""What the actors need from storage (the ``Journal`` protocol), and an in-memory journal.

``runtime/`` plugs in the durable journals (SQLite, PostgreSQL); all of them pass the same
contract suite, ``tests/journal_contract.py``.
"""

from __future__ import annotations

from typing import Protocol, Sequence

import trio

import attrs

from .errors import JournalUnavailable
from .messages import (
    AGENT_STARTED,
    TERMINAL_EVENTS,
    USER_MESSAGE,
    Accepted,
    Event,
    ThreadInfo,
    ThreadKey,
)


@attrs.frozen(slots=True)
class OpenRun:
    """A run whose ``user_message`` is stored but whose terminal event is not."""

    key: ThreadKey
    run_id: str
    started: bool  # its agent_started is stored


class Journal(Protocol):
    """Durable, ordered storage of thread events.

    Every method may block (it awaits I/O) and may raise when the store fails; a failed
    ``append`` stores none of its events.
    """

    async def ensure_thread(self, key: ThreadKey, now: float) -> ThreadInfo:
        """The thread's info, creating the thread (``last_seq`` 0, both times ``now``) if new."""

    async def append(self, events: Sequence[Event]) -> None:
        """Store ``events`` (all of one thread, consecutive seqs following its ``last_seq``)
        atomically, and return once they are durable. Raises ``ValueError`` on a seq that does
        not follow, storing nothing."""

    async def read(self, key: ThreadKey, after: int, upto: int | None = None,
                   limit: int = 1000) -> list[Event]:
        """Events with ``after < seq <= upto`` in seq order, at most ``limit``."""

    async def last_seq(self, key: ThreadKey) -> int:
        """The thread's last seq, 0 for a thread with no event or that does not exist."""

    async def find_message(self, key: ThreadKey, client_msg_id: str) -> Accepted | None:
        """The stored ``user_message`` of this thread with this ``client_msg_id``, if any."""

    async def threads(self, user_id: str) -> list[ThreadInfo]:
        """The user's threads, most recently updated first."""

    async def open_runs(self) -> list[OpenRun]:
        """Every run with a stored ``user_message`` and no stored terminal event; a thread's
        in the order their messages were stored."""


REPLAY_PAGE = 500  # events read per page when a subscriber catches up


def replay_start(since: int | None, last_seq: int) -> int:
    """The seq after which a subscriber that joined with ``since`` when the thread was at
    ``last_seq`` needs the stored events: none without ``since``; and a ``since`` beyond the
    thread's end (the client claims events that do not exist) counts as up to date, so that no
    live event is mistaken for one already seen."""
    return last_seq if since is None else min(since, last_seq)


async def replay_page(journal: Journal, key: ThreadKey, after: int, upto: int) -> list[Event]:
    """The next page of a replay: stored events ``after < seq <= upto``, never empty. Raises
    ``JournalUnavailable`` if the journal has none: it lost events it acknowledged, and
    going on would leave a gap."""
    page = await journal.read(key, after, upto=upto, limit=REPLAY_PAGE)
    if not page:
        raise JournalUnavailable(f"events {after}..{upto} of {key} are missing")
    return page


def accepted_of(event: Event) -> Accepted:
    """The ``Accepted`` answer that a stored ``user_message`` event stands for."""
    assert event.event == USER_MESSAGE and event.run_id is not None
    return Accepted(event.key, event.data["message_id"], event.run_id, event.seq)


class _MemoryThread:
    __slots__ = ("info", "events", "by_client_id")

    def __init__(self, info: ThreadInfo) -> None:
        self.info = info
        self.events: list[Event] = []
        self.by_client_id: dict[str, Event] = {}


def run_transition(event: Event) -> str | None:
    """What an event does to its run's open/closed state: ``"open"`` (its ``user_message``),
    ``"start"`` (``agent_started``), ``"close"`` (a terminal event) or None. Every journal
    tracks open runs by this one rule."""
    if event.run_id is None:
        return None
    if event.event == USER_MESSAGE:
        return "open"
    if event.event == AGENT_STARTED:
        return "start"
    if event.event in TERMINAL_EVENTS:
        return "close"
    return None


def track_open_runs(open_runs: dict[tuple[ThreadKey, str], bool], events: Sequence[Event]) -> None:
    """Keep ``{(key, run_id): started}`` of open runs up to date with appended events."""
    for ev in events:
        transition = run_transition(ev)
        run = (ev.key, ev.run_id)
        if transition == "open":
            open_runs[run] = False  # type: ignore[index]
        elif transition == "start" and run in open_runs:
            open_runs[run] = True  # type: ignore[index]
        elif transition == "close":
            open_runs.pop(run, None)  # type: ignore[arg-type]


class MemoryJournal:
    """The ``Journal`` contract in memory: for tests, benchmarks and embedding without storage.

    Nothing survives the process. Every method is a checkpoint, as a real store's would be.
    """

    def __init__(self) -> None:
        self._threads: dict[ThreadKey, _MemoryThread] = {}
        self._open_runs: dict[tuple[ThreadKey, str], bool] = {}

    async def ensure_thread(self, key: ThreadKey, now: float) -> ThreadInfo:
        await trio.lowlevel.checkpoint()
        t = self._threads.get(key)
        if t is None:
            t = self._threads[key] = _MemoryThread(ThreadInfo(key, 0, now, now))
        return t.info

    async def append(self, events: Sequence[Event]) -> None:
        await trio.lowlevel.checkpoint()
        if not events:
            return
        key = events[0].key
        t = self._threads.get(key)
        if t is None:
            raise ValueError(f"unknown thread {key}")
        expected = t.info.last_seq
        for ev in events:
            expected += 1
            if ev.key != key or ev.seq != expected:
                raise ValueError(f"event {ev.key}/{ev.seq} does not follow seq {expected - 1}")
        t.events.extend(events)
        for ev in events:
            cid = ev.data.get("client_msg_id") if ev.event == USER_MESSAGE else None
            if cid is not None:
                t.by_client_id.setdefault(cid, ev)
        track_open_runs(self._open_runs, events)
        last = events[-1]
        t.info = ThreadInfo(key, last.seq, t.info.created_at, max(t.info.updated_at, last.ts))

    async def read(self, key: ThreadKey, after: int, upto: int | None = None,
                   limit: int = 1000) -> list[Event]:
        await trio.lowlevel.checkpoint()
        t = self._threads.get(key)
        if t is None:
            return []
        end = len(t.events) if upto is None else min(upto, len(t.events))
        start = max(after, 0)
        return t.events[start:min(end, start + limit)] if start < end else []

    async def last_seq(self, key: ThreadKey) -> int:
        await trio.lowlevel.checkpoint()
        t = self._threads.get(key)
        return t.info.last_seq if t is not None else 0

    async def find_message(self, key: ThreadKey, client_msg_id: str) -> Accepted | None:
        await trio.lowlevel.checkpoint()
        t = self._threads.get(key)
        ev = t.by_client_id.get(client_msg_id) if t is not None else None
        return accepted_of(ev) if ev is not None else None

    async def threads(self, user_id: str) -> list[ThreadInfo]:
        await trio.lowlevel.checkpoint()
        infos = [t.info for k, t in self._threads.items() if k.user_id == user_id]
        return sorted(infos, key=lambda i: (i.updated_at, i.key.thread_id), reverse=True)

    async def open_runs(self) -> list[OpenRun]:
        await trio.lowlevel.checkpoint()
        return [OpenRun(key, run_id, started) for (key, run_id), started in self._open_runs.items()]
