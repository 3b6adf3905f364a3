"""What the actors need from storage: the ``Journal`` protocol and the rules every store shares.

``threadline.stores`` plugs in the durable journals (SQLite, PostgreSQL), ``memory_journal``
holds the one in memory; all of them pass the same contract suite, ``tests/journal_contract.py``.

What a store can hold is one rule for every store, ``check_storable``, applied before a write
is queued: a string with a NUL character (PostgreSQL's text and jsonb refuse it) or that is not
valid Unicode (a lone surrogate: no driver can encode it), a float that is not finite (jsonb
refuses NaN and Infinity), or data nested deeper than ``MAX_DEPTH``. Such a write raises
``Unstorable`` and stores nothing, in memory as in SQLite or PostgreSQL, so one user's bad
data never reaches a transaction it shares with other users' writes. Reads of a key or a
``client_msg_id`` that could never have been stored answer "nothing" (empty, 0, None).
"""

from __future__ import annotations

import json
import math
from typing import Any, Iterable, Protocol, Sequence

import attrs

from .errors import JournalUnavailable, Unstorable
from .stats import StoreStatistics
from .messages import (
    AGENT_STARTED,
    RUN_REQUESTS,
    TERMINAL_EVENTS,
    Accepted,
    Event,
    ThreadInfo,
    ThreadKey,
)
from .attachments import Attachment
from .tree import Node, Placed
from .usage import Usage

TITLE_LENGTH = 80  # code points of a thread's first message that are its title (PROTOCOL.md)


@attrs.frozen(slots=True)
class OpenRun:
    """A run whose first event (its ``user_message``, or a regenerate's ``answer_requested``)
    is stored but whose terminal event is not."""

    key: ThreadKey
    run_id: str
    started: bool  # its agent_started is stored
    seq: int = 0   # of its first event (0: unknown)
    message_id: str = ""  # of the user_message it answers ("": unknown)


class Done(Protocol):
    """Who hears how an ``append_nowait`` ended: exactly one call, never blocking."""

    def set(self, value: None) -> None:
        """The events are durable."""

    def fail(self, error: BaseException) -> None:
        """None of the events was stored; ``error`` says why."""


class Journal(Protocol):
    """Durable, ordered storage of thread events.

    Every async method may block (it awaits I/O) and may raise when the store fails; a failed
    ``append`` stores none of its events.
    """

    def append_nowait(self, events: Sequence[Event], done: Done) -> None:
        """Queue ``events`` (as ``append``) and return at once; ``done`` hears the outcome
        once they are durable or failed, possibly before this returns. Outcomes come in the
        order the writes were queued, so a writer may queue the next events of a thread
        before the previous ones are durable: if one fails, those queued after it in the
        same thread do not follow its seq, and fail too (``ValueError``). Data that
        ``check_storable`` refuses fails at once, out of that order: a pipelining writer
        checks first. Never raises."""

    async def ensure_thread(self, key: ThreadKey, now: float) -> ThreadInfo:
        """The thread's info, creating the thread (``last_seq`` 0, both times ``now``) if new;
        answered after every write queued before it (a restarted writer starts from the
        truth)."""

    async def append(self, events: Sequence[Event]) -> None:
        """Store ``events`` (all of one thread, consecutive seqs following its last seq,
        stored or queued) atomically, and return once they are durable. Raises ``ValueError`` on a seq that does
        not follow, and ``Unstorable`` (a ``ValueError`` too) on data no store can hold
        (``check_storable``), storing nothing."""

    async def read(self, key: ThreadKey, after: int, upto: int | None = None,
                   limit: int = 1000, max_bytes: int | None = None) -> list[Event]:
        """Events with ``after < seq <= upto`` in seq order, at most ``limit``; with
        ``max_bytes``, only the first ones whose data adds up to at most ``max_bytes`` (its JSON
        text as the store holds it, ``data_bytes`` in memory), and always the first one: a
        page holds at most ``max(max_bytes, the first event's data)``, whatever the events'
        sizes, and the store reads no more than that for it."""

    async def run_events(self, key: ThreadKey, run_id: str, after: int = 0) -> list[Event]:
        """One run's events with ``seq > after``, in seq order: the store filters them (a run
        waiting for a decision may have thousands of other runs' events after its own)."""

    async def last_seq(self, key: ThreadKey) -> int:
        """The thread's last seq, 0 for a thread with no event or that does not exist."""

    async def find_message(self, key: ThreadKey, client_msg_id: str) -> Accepted | None:
        """The ``Accepted`` of the stored ``user_message`` or ``answer_requested`` of this
        thread with this ``client_msg_id``, if any."""

    # The conversation tree (``tree.py``): every store keeps one ``Node`` per run, written with
    # the events that make and change it; each read costs O(what it returns) through indexes.

    async def node(self, key: ThreadKey, run_id: str) -> Node | None:
        """The node of run ``run_id`` of this thread, if stored."""

    async def message_node(self, key: ThreadKey, message_id: str) -> Node | None:
        """The node of the run that came with the ``user_message`` ``message_id`` (the first
        to answer it), if this thread holds that message."""

    async def newest_node(self, key: ThreadKey) -> Node | None:
        """The node with the greatest ``seq``: the run asked for last (the default parent)."""

    async def branch(self, key: ThreadKey, run_id: str, limit: int) -> list[Node]:
        """The node of ``run_id`` and its ancestors, nearest first, at most ``limit`` of them:
        the path from the root to that run's message, read backwards by walking parents."""

    async def node_events(self, key: ThreadKey, nodes: Sequence[Node]) -> list[Event]:
        """In seq order, once each: every node's ``user_message``, and the events of every
        node's run that has ended (by ``run_id``, between its ``started_seq``, or its ``seq``
        if it has none, and its ``ended_seq``)."""

    async def turns(self, key: ThreadKey, after: int, limit: int) -> list[Placed]:
        """The nodes with ``seq > after``, at most ``limit``, in seq order, each with its
        places among its siblings."""

    async def threads(self, user_id: str) -> list[ThreadInfo]:
        """The user's threads, most recently updated first."""

    async def threads_page(self, user_id: str, limit: int,
                           before: tuple[float, str] | None = None) -> list[ThreadInfo]:
        """At most ``limit + 1`` of the user's threads ordered by ``(updated_at, thread_id)``
        descending, only those strictly below ``before`` if given (a keyset page: the ``+ 1``
        says whether another page follows). Costs O(page), not O(the user's threads). A
        ``before`` whose thread id could never have been stored answers nothing."""

    async def thread_info(self, key: ThreadKey) -> ThreadInfo | None:
        """The thread's info, None if it does not exist (never creates it)."""

    async def delete_thread(self, key: ThreadKey) -> bool:
        """Erase the thread: its events, its row, its open runs and its client message ids;
        True if it existed. Ordered after every write queued before it (a thread's last events
        are erased too) and durable when it returns; the key can then be created again, from
        seq 1. Never touches another key (another user's thread of the same id)."""

    async def open_runs(self, key: ThreadKey | None = None) -> list[OpenRun]:
        """Every run with a stored ``user_message`` and no stored terminal event (of ``key``'s
        thread only, if given); a thread's in the order their messages were stored."""

    # Attachments (``attachments.py``): a user's files, in chunks, beside the events.

    async def begin_upload(self, user_id: str, attachment_id: str, name: str,
                           content_type: str, now: float) -> None:
        """Record an upload under way: invisible to ``attachment`` until finished."""

    async def write_chunk(self, user_id: str, attachment_id: str, n: int, data: bytes,
                          quota: int) -> None:
        """Store chunk ``n`` (from 0) of an upload under way, durably, and count its bytes
        against the user's; ``LimitReached`` (nothing stored) if they would pass ``quota``."""

    async def finish_upload(self, user_id: str, attachment_id: str, size: int,
                            sha256: str) -> Attachment:
        """The upload is whole: from now on it is visible, durably."""

    async def abort_upload(self, user_id: str, attachment_id: str) -> None:
        """Erase an upload under way (its chunks, its record, its bytes from the count)."""

    async def claim_attachments(self, user_id: str, thread_id: str,
                                attachment_ids: Sequence[str]) -> list[Attachment]:
        """Make the user's finished attachments the thread's, all or none, durably (before
        the message that names them is stored): their records, or ``NotFound`` when one is
        missing, unfinished or another thread's. Two claims of one attachment at once: one
        wins."""

    async def attachment(self, user_id: str, attachment_id: str) -> Attachment | None:
        """The user's finished attachment ``attachment_id``, None for any other (another
        user's included)."""

    async def attachment_chunks(self, user_id: str, attachment_id: str, first: int,
                                count: int) -> list[bytes]:
        """Chunks ``first`` to ``first + count - 1`` of the user's finished attachment (fewer
        at its end; none for another's)."""

    async def attachment_bytes(self, user_id: str) -> int:
        """The bytes the user's attachments hold in the store, uploads under way included."""

    async def stored_attachment_bytes(self) -> int:
        """The bytes every user's attachments hold in the store (``/metrics``)."""

    async def sweep_attachments(self, now: float, unsent_ttl: float,
                                upload_ttl: float) -> int:
        """Erase the attachments never sent ``unsent_ttl`` seconds after their upload, and
        the uploads never finished ``upload_ttl`` seconds after they began; how many."""

    async def delete_user_attachments(self, user_id: str) -> int:
        """Erase every attachment of the user (sent or not); how many."""

    # Tokens (``usage.py``): a report is added to the run's node and to the user's totals of
    # the periods it falls in, in one transaction; reading a user's totals is key look-ups.

    async def record_usage(self, key: ThreadKey, run_id: str, day: str, month: str,
                           usage: Usage) -> None:
        """Add ``usage`` to run ``run_id``'s node (if stored) and to the user's totals of the
        periods ``day`` and ``month`` (``Periods`` keys); stored before it returns."""

    async def usage_totals(self, user_id: str, day: str, month: str) -> tuple[Usage, Usage]:
        """The user's totals for the periods ``day`` and ``month`` (zero where none)."""

    async def delete_user_usage(self, user_id: str) -> None:
        """Erase the user's totals (``delete-user``; deleting a thread keeps them: what was
        spent stays spent)."""

    def statistics(self) -> StoreStatistics | None:
        """The store's figures (never blocks), or None for a store that keeps none."""


REPLAY_PAGE = 500  # events read per page when a subscriber catches up...
REPLAY_BYTES = 1024 * 1024  # ...and at most this much data (or one event): events are
                                # up to 1 MiB, and a storm of replays must not hold 500 each


def data_bytes(data: Any) -> int:
    """The size of an event's data as the SQL stores write it: compact JSON in UTF-8 (what the
    memory journal counts against ``read``'s ``max_bytes``)."""
    return len(json.dumps(data, separators=(",", ":"), ensure_ascii=False,
                          default=str).encode("utf-8", "surrogatepass"))


def replay_start(since: int | None, last_seq: int) -> int:
    """The seq after which a subscriber that joined with ``since`` when the thread was at
    ``last_seq`` needs the stored events: none without ``since``; and a ``since`` beyond the
    thread's end (the client claims events that do not exist) counts as up to date, so that no
    live event is mistaken for one already seen."""
    return last_seq if since is None else min(since, last_seq)


async def replay_page(journal: Journal, key: ThreadKey, after: int, upto: int) -> list[Event]:
    """The next page of a replay: stored events ``after < seq <= upto``, at most
    ``REPLAY_PAGE`` of them and ``REPLAY_BYTES`` of data (or one event). Empty only when the
    thread was deleted meanwhile (it is gone, or was created again and is shorter than
    ``upto``): the subscriber is being dropped with ``THREAD_DELETED``, and ends its replay
    as that drop does. Raises ``JournalUnavailable`` if the thread still holds ``upto``
    events and the journal has none of these: it lost events it acknowledged, and going on
    would leave a gap."""
    page = await journal.read(key, after, upto=upto, limit=REPLAY_PAGE, max_bytes=REPLAY_BYTES)
    if not page:
        info = await journal.thread_info(key)
        if info is None or info.last_seq < upto:
            return []
        raise JournalUnavailable(f"events {after}..{upto} of {key} are missing")
    return page


MAX_DEPTH = 100  # nesting of an event's data; deeper (or a cycle) is refused, not recursed into


def unstorable_reason(s: str) -> str | None:
    """What makes a string unstorable, or None. O(1) for ASCII (the usual case: a flag and a
    memchr); a UTF-8 encode only for other strings."""
    if s.isascii():
        return "a NUL character" if "\x00" in s else None
    if "\x00" in s:
        return "a NUL character"
    try:
        s.encode("utf-8")
    except UnicodeEncodeError:
        return "a lone surrogate (not valid Unicode)"
    return None


def storable_key(key: ThreadKey) -> bool:
    """Whether a thread could have been stored under ``key`` (reads of any other are empty)."""
    return unstorable_reason(key.user_id) is None and unstorable_reason(key.thread_id) is None


def _data_problem(value: Any, depth: int) -> str | None:
    # This runs for every event: plain JSON-like data (dicts of short ASCII strings, mostly)
    # takes the inline fast path ("isascii" is a flag, "in" a memchr); the rest, and
    # subclasses, the general one.
    kind = type(value)
    if kind is str:
        return None if value.isascii() and "\x00" not in value else unstorable_reason(value)
    if kind is int or kind is bool or value is None:
        return None
    if kind is dict or isinstance(value, dict):
        if depth >= MAX_DEPTH:
            return f"data nested more than {MAX_DEPTH} deep"
        for k, v in value.items():
            if type(k) is str and not (k.isascii() and "\x00" not in k):
                problem = unstorable_reason(k)
                if problem is not None:
                    return problem
            if type(v) is str and v.isascii() and "\x00" not in v:
                continue
            problem = _data_problem(v, depth + 1)
            if problem is not None:
                return problem
        return None
    if kind is list or kind is tuple or isinstance(value, (list, tuple)):
        if depth >= MAX_DEPTH:
            return f"data nested more than {MAX_DEPTH} deep"
        for v in value:
            problem = _data_problem(v, depth + 1)
            if problem is not None:
                return problem
        return None
    if isinstance(value, str):
        return unstorable_reason(value)
    if isinstance(value, float) and not math.isfinite(value):
        return f"a number that is not finite ({value})"
    return None  # anything else is JSON-encoded with str(); a batch that fails on it is split


def check_storable(events: Iterable[Event]) -> None:
    """Raise ``Unstorable`` (a short message, safe to show the client) if any event holds what
    no store can hold: see the module header. Walks the thread key, event name, run id and
    the data's keys and values; no I/O, never blocks, bounded by ``MAX_DEPTH``. About 1 µs
    for a typical event."""
    for ev in events:
        key = ev.key
        # One string for the four names: a lone surrogate stays one when concatenated (Python
        # never pairs them), so the concatenation is storable exactly when each part is.
        names = f"{ev.event}{key.user_id}{key.thread_id}{ev.run_id or ''}"
        if not (names.isascii() and "\x00" not in names):
            problem = unstorable_reason(names)
            if problem is not None:
                raise Unstorable(f"cannot store the event's name, run or thread: it holds "
                                 f"{problem}")
        problem = _data_problem(ev.data, 0)
        if problem is not None:
            raise Unstorable(f"cannot store the {ev.event} event: it holds {problem}")


def check_storable_key(key: ThreadKey) -> None:
    """``Unstorable`` if no thread can be stored under ``key``."""
    for what, text in (("user id", key.user_id), ("thread id", key.thread_id)):
        problem = unstorable_reason(text)
        if problem is not None:
            raise Unstorable(f"cannot store the {what}: it holds {problem}")


def accepted_of(event: Event) -> Accepted:
    """The ``Accepted`` answer that a stored ``user_message`` or ``answer_requested`` event
    stands for."""
    assert event.event in RUN_REQUESTS and event.run_id is not None
    return Accepted(event.key, event.data["message_id"], event.run_id, event.seq)


def run_transition(event: Event) -> str | None:
    """What an event does to its run's open/closed state: ``"open"`` (its ``user_message``,
    or a regenerate's ``answer_requested``), ``"start"`` (``agent_started``), ``"close"`` (a
    terminal event) or None. Every journal tracks open runs, and the tree's nodes, by this
    one rule."""
    if event.run_id is None:
        return None
    if event.event in RUN_REQUESTS:
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
