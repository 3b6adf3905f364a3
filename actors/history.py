"""A thread's conversation so far, as an agent sees it (``run.history``): read from the journal.

Invariants:

- Only the run's own thread is read: the key comes from the run's frozen ``RunContext``, never
  from an argument, so no call can reach another thread or user.
- Turns come in conversation order, oldest first: each user message, then the answer of the run
  it started, once that run has ended. Runs are taken in the order of their messages, so two
  messages queued back to back read as ``user, assistant, user, assistant``.
- An answer is ``agent_completed``'s ``text``; for a run that failed or was cancelled, the text
  it had streamed (its ``agent_delta`` pieces, laid at their offsets), possibly empty.
- Only what precedes the run's own message counts: the run's message (``run.text``), later
  messages and runs still going on are not history.
- The read is bounded by what is asked: the journal is read backwards a page at a time, only
  until ``limit`` turns are complete (with the streamed pieces of those turns).
"""

from __future__ import annotations

from typing import Literal

import attrs

from .journal import Journal
from .messages import (
    AGENT_CANCELLED,
    AGENT_COMPLETED,
    AGENT_DELTA,
    AGENT_FAILED,
    USER_MESSAGE,
    Event,
    ThreadKey,
)

PAGE = 500  # events per read, going backwards
_OUTCOMES: dict[str, Literal["completed", "failed", "cancelled"]] = {
    AGENT_COMPLETED: "completed", AGENT_FAILED: "failed", AGENT_CANCELLED: "cancelled"}


@attrs.frozen(slots=True)
class Turn:
    """One turn of a conversation. ``outcome`` is None for a user's turn."""

    role: Literal["user", "assistant"]
    text: str
    run_id: str
    seq: int  # of the event it comes from: the user_message, or the run's terminal event
    outcome: Literal["completed", "failed", "cancelled"] | None = None


def turns_of(events: list[Event], before: int) -> list[Turn]:
    """The turns in ``events`` (ascending seq) of the runs whose messages precede seq
    ``before``. A run whose message is not among the events is left out (its answer could be
    incomplete), and a run that has not ended has no answer yet."""
    messages: dict[str, Turn] = {}
    answers: dict[str, Turn] = {}
    pieces: dict[str, list[str]] = {}
    lengths: dict[str, int] = {}
    for e in events:
        run_id = e.run_id or ""
        if e.event == USER_MESSAGE:
            if e.seq < before:
                messages[run_id] = Turn("user", e.data.get("text", ""), run_id, e.seq)
        elif e.event == AGENT_DELTA and run_id in messages:
            text = e.data.get("text", "")
            if lengths.get(run_id, 0) == e.data.get("offset"):  # as a client lays pieces
                pieces.setdefault(run_id, []).append(text)
                lengths[run_id] = lengths.get(run_id, 0) + len(text)
        elif e.event in _OUTCOMES and run_id in messages:
            text = e.data.get("text") if e.event == AGENT_COMPLETED else None
            if text is None:
                text = "".join(pieces.get(run_id, ()))
            answers[run_id] = Turn("assistant", text, run_id, e.seq, _OUTCOMES[e.event])
    out: list[Turn] = []
    for run_id, message in messages.items():  # in the order the messages were stored
        out.append(message)
        if run_id in answers:
            out.append(answers[run_id])
    return out


async def read_history(journal: Journal, key: ThreadKey, before: int, limit: int) -> list[Turn]:
    """The last ``limit`` turns of thread ``key`` whose messages precede seq ``before``, with
    the answers of those runs (which may have been stored after ``before``)."""
    if limit <= 0:
        return []
    events: list[Event] = []
    upto = await journal.last_seq(key)
    messages = 0
    while upto > 0:
        after = max(0, upto - PAGE)
        page = await journal.read(key, after, upto, limit=PAGE)
        events[:0] = page
        messages += sum(e.event == USER_MESSAGE and e.seq < before for e in page)
        upto = after
        # One message more than needed: every turn after the oldest message is complete.
        if messages > limit:
            break
    return turns_of(events, before)[-limit:]
