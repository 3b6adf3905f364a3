"""A thread's conversation so far, as an agent sees it (``run.history``): read from the journal.

Invariants:

- Only the run's own thread is read: the key comes from the run's frozen ``RunContext``, never
  from an argument, so no call can reach another thread or user.
- The history of a run is its branch (``tree.py``): the path from the root to the message the
  run answers, and nothing of other branches. Turns come in that order, oldest first: each
  message, then the answer of the run on the path that answers it (a message answered again
  by a regenerate has several), once that run has ended.
- An answer is ``agent_completed``'s ``text``; for a run that failed or was cancelled, the text
  it had streamed (its ``agent_delta`` pieces, laid at their offsets), possibly empty.
- An answer carries the run's tool calls (``Turn.calls``), in the order they were made (their
  first event), each with what became of it: ``completed`` (its ``result``), ``failed`` (its
  ``error``), ``denied`` (a person, or the expiry, said no: ``error`` is ``tool_completed``'s
  ``"denied: " + reason``, and the tool never ran) or ``unfinished`` (the run ended before the
  call had an outcome: waiting for approval, or running). ``ToolUse.at`` is how much of the
  streamed answer was written before the call, so a reader can lay calls and text in the order
  they happened: the run's writer stores what was written before any later event
  (``run_writer.py``). Calls with no text between them share their ``at``; nothing stored tells
  the rounds of a model apart, and none is needed to replay them.
- A run's events count only while it is open: nothing after its terminal event is read into
  its turn.
- Only the run's ancestors count: the run's message (``run.text``), later messages and runs
  still going on are not history.
- The read is bounded by what is asked: ``limit`` turns come from at most ``limit`` ancestors
  (each gives its message, and its answer once its run ended: an ancestor queued behind an
  interrupt has none yet), read by walking parents, and each one's events by a range of seqs
  (``Journal.branch``, ``Journal.node_events``): never a scan of the thread.
"""

from __future__ import annotations

from typing import Any, Literal, Sequence

import attrs

from .approval import denial
from .journal import Journal
from .messages import (
    AGENT_CANCELLED,
    AGENT_COMPLETED,
    AGENT_DELTA,
    AGENT_FAILED,
    ANSWER_REQUESTED,
    APPROVAL_DECIDED,
    APPROVAL_REQUESTED,
    TOOL_COMPLETED,
    TOOL_EXECUTING,
    USER_MESSAGE,
    Event,
    ThreadKey,
)
from .tree import Node, TurnView

_OUTCOMES: dict[str, Literal["completed", "failed", "cancelled"]] = {
    AGENT_COMPLETED: "completed", AGENT_FAILED: "failed", AGENT_CANCELLED: "cancelled"}


ToolStatus = Literal["completed", "failed", "denied", "unfinished"]
_CALL_EVENTS = frozenset({APPROVAL_REQUESTED, APPROVAL_DECIDED, TOOL_EXECUTING, TOOL_COMPLETED})


@attrs.frozen(slots=True)
class ToolUse:
    """One tool call of an earlier run, and what became of it (see the module header)."""

    call_id: str
    tool: str
    args: dict[str, Any]
    at: int  # characters of the streamed answer written before the call
    status: ToolStatus
    result: Any = None        # completed: what the tool returned
    error: str | None = None  # failed or denied: ``tool_completed``'s error


@attrs.frozen(slots=True)
class Turn:
    """One turn of a conversation. ``outcome`` is None for a user's turn; ``calls`` are an
    answer's tool calls, in the order they were made."""

    role: Literal["user", "assistant"]
    text: str
    run_id: str
    seq: int  # of the event it comes from: the user_message, or the run's terminal event
    outcome: Literal["completed", "failed", "cancelled"] | None = None
    calls: tuple[ToolUse, ...] = ()
    #: A user's turn: its message's attachments as ``user_message`` lists them
    #: (``attachment_id``, ``name``, ``content_type``, ``size``); their bytes are read with
    #: ``attachments.read_bytes``.
    attachments: tuple[dict[str, Any], ...] = ()


@attrs.define(slots=True)
class _Call:
    tool: str
    args: dict[str, Any]
    at: int
    status: ToolStatus = "unfinished"
    result: Any = None
    error: str | None = None


@attrs.define(slots=True)
class _Run:
    """What is read so far of one run whose message counts."""

    message: Turn
    pieces: list[str] = attrs.field(factory=list)
    length: int = 0
    calls: dict[str, _Call] = attrs.field(factory=dict)  # in the order of their first event
    answer: Turn | None = None

    def piece(self, data: dict[str, Any]) -> None:
        text = data.get("text", "")
        if self.length == data.get("offset"):  # as a client lays pieces
            self.pieces.append(text)
            self.length += len(text)

    def call_event(self, event: str, data: dict[str, Any]) -> None:
        call_id = data.get("call_id")
        if not isinstance(call_id, str):
            return
        call = self.calls.get(call_id)
        if call is None:
            if event not in (APPROVAL_REQUESTED, TOOL_EXECUTING):
                return  # an outcome of a call never started: not one this run made
            args = data.get("args")
            call = self.calls[call_id] = _Call(str(data.get("tool", "")),
                                               args if isinstance(args, dict) else {},
                                               self.length)
        if event == APPROVAL_DECIDED and not data.get("approved"):
            call.status = "denied"
            call.error = denial(data.get("reason"))
        elif event == TOOL_COMPLETED:
            if "error" in data:
                call.status = "denied" if call.status == "denied" else "failed"
                call.error = str(data["error"])
            else:
                call.status, call.result = "completed", data.get("result")

    def take(self, event: Event) -> None:
        """One of the run's events after its message: a piece, a call's, or its end."""
        if event.event == AGENT_DELTA:
            self.piece(event.data)
        elif event.event in _CALL_EVENTS:
            self.call_event(event.event, event.data)
        elif event.event in _OUTCOMES:
            self.end(event)

    def calls_so_far(self) -> tuple[ToolUse, ...]:
        return tuple(ToolUse(call_id, c.tool, c.args, c.at, c.status, c.result, c.error)
                     for call_id, c in self.calls.items())

    def end(self, event: Event) -> None:
        text = event.data.get("text") if event.event == AGENT_COMPLETED else None
        if text is None:
            text = "".join(self.pieces)
        self.answer = Turn("assistant", text, self.message.run_id, event.seq,
                           _OUTCOMES[event.event], self.calls_so_far())


def turns_along(path: Sequence[Node], events: Sequence[Event]) -> list[Turn]:
    """The turns of a branch: for each node of ``path`` (root first), its message and, once
    its run has ended, the answer, from ``events`` (``Journal.node_events`` of those nodes).
    A message missing from ``events`` (erased meanwhile) leaves its node out."""
    out: list[Turn] = []
    for run in _runs_of(path, events).values():  # root first
        out.append(run.message)
        if run.answer is not None:
            out.append(run.answer)
    return out


def _runs_of(nodes: Sequence[Node], events: Sequence[Event]) -> dict[str, _Run]:
    """Each node's run as ``events`` tell it, in the order of ``nodes``."""
    messages = {e.seq: e for e in events if e.event == USER_MESSAGE}
    runs: dict[str, _Run] = {}
    for node in nodes:
        message = messages.get(node.message_seq)
        if message is not None:
            listed = message.data.get("attachments")
            runs[node.run_id] = _Run(Turn(
                "user", message.data.get("text", ""), node.run_id, node.message_seq,
                attachments=tuple(a for a in listed if isinstance(a, dict))
                if isinstance(listed, list) else ()))
    for e in events:
        run = runs.get(e.run_id or "")
        if run is not None and run.answer is None and e.seq > run.message.seq:
            run.take(e)
    return runs


async def read_history(journal: Journal, key: ThreadKey, run_id: str, limit: int) -> list[Turn]:
    """The last ``limit`` turns of the branch that ends at run ``run_id``'s message, before
    that message (``tree.py``): its ancestors' messages and answers, none of another
    branch's. O(the turns read): a walk of parents, then each one's events by a range."""
    if limit <= 0:
        return []
    # The run, then its ancestors: each gives one turn at least (two once its run ended), so
    # ``limit`` of them are enough for ``limit`` turns, whichever have ended.
    nodes = await journal.branch(key, run_id, limit + 1)
    path = nodes[:0:-1]  # its ancestors, root first
    return turns_along(path, await journal.node_events(key, path))[-limit:]


async def read_turns(journal: Journal, key: ThreadKey, after: int, limit: int) -> list[TurnView]:
    """``ThreadHandle.turns``: a page of the tree's runs, each with its message, its answer
    and its places among its siblings. A completed run's answer is its terminal event's text:
    only that event is read (a node whose range is its end alone); the streamed pieces are
    read only for a run that failed or was cancelled, so a page holds its answers, not their
    streams."""
    placed = await journal.turns(key, after, limit)
    ends = [attrs.evolve(p.node, started_seq=p.node.ended_seq) for p in placed]
    events = await journal.node_events(key, ends)
    unfinished = {e.run_id for e in events if e.event in (AGENT_FAILED, AGENT_CANCELLED)}
    if unfinished:
        events = await journal.node_events(key, [p.node for p in placed
                                                 if p.node.run_id in unfinished] + ends)
    runs = _runs_of([p.node for p in placed], events)
    views: list[TurnView] = []
    for p in placed:
        node, run = p.node, runs.get(p.node.run_id)
        answer = run.answer if run is not None else None
        views.append(TurnView(node.run_id, node.message_id, node.parent, node.seq,
                              node.message_seq, run.message.text if run is not None else "",
                              answer.text if answer else None,
                              answer.outcome if answer else None, p.sibling_index,
                              p.sibling_count, p.answer_index, p.answer_count))
    return views


async def answered_message(journal: Journal, key: ThreadKey, request: Event) -> dict[str, Any]:
    """The data of the ``user_message`` that the run asked for by ``request`` answers: the
    request's own (a ``user_message``), or for an ``answer_requested`` the regenerated
    message's, read from the store (empty if it is gone)."""
    if request.event != ANSWER_REQUESTED:
        return request.data
    message = await message_of(journal, key, str(request.data.get("message_id")))
    return message.data if message is not None else {}


async def message_of(journal: Journal, key: ThreadKey, message_id: str) -> Event | None:
    """The stored ``user_message`` ``message_id`` of thread ``key``, if any (a regenerated
    run answers its text)."""
    node = await journal.message_node(key, message_id)
    if node is None:
        return None
    events = await journal.read(key, node.message_seq - 1, node.message_seq, limit=1)
    return events[0] if events and events[0].event == USER_MESSAGE else None


def answer_so_far(transcript: list[Event]) -> Turn:
    """A run's answer as its stored events (``Run.transcript``) tell it so far: what it wrote
    and its tool calls, those it parked on ``unfinished``. For a resumed agent that rebuilds
    its own past rounds (the OpenAI agent)."""
    run_id = transcript[0].run_id or "" if transcript else ""
    run = _Run(Turn("user", "", run_id, 0))
    for e in transcript:
        if e.event not in _OUTCOMES:  # a parked run has none; its answer is not over
            run.take(e)
    return Turn("assistant", "".join(run.pieces), run_id,
                transcript[-1].seq if transcript else 0, None, run.calls_so_far())
