"""The conversation tree (PROTOCOL.md 1.1): which message each run answers, and which run each
message follows. What is read from it, an agent's history along its branch and the turns a
client renders, is ``history.py``'s.

The events stay one append-only, gapless sequence per thread; the tree is what they say of
themselves, kept beside them by every store as one ``Node`` per run (the SQL stores' ``turns``
table, written in the transaction of the event that changes it):

- a ``user_message`` makes the node of its run: ``message_id``, ``parent`` (the run it follows,
  None at a root), ``message_seq`` and ``seq`` both its own seq;
- an ``answer_requested`` (a regenerate) makes a node for the new run with the message's
  ``message_id``, ``parent`` and ``message_seq``, and its own ``seq``;
- ``agent_started`` sets the node's ``started_seq``, the run's terminal event its ``ended_seq``.

Invariants:

- A node never changes its place: ``parent`` and ``message_id`` are written once, with the
  event that asks for the run, and the parent is a run of the same thread, stored before it
  (checked by the thread actor before the event is queued: ``NotFound`` otherwise). So every
  walk of parents ends at a root, in at most as many steps as the thread has runs.
- A run's own events lie between its ``started_seq`` and its ``ended_seq``: a thread runs one
  run at a time, and a parked run holds the runs behind it back. What else lies there is the
  messages and requests stored meanwhile (of other runs, told apart by ``run_id``). So a
  branch is read in O(its length) through the store's indexes: the nodes by walking parents
  (``Journal.branch``), each run's events by a range of seqs, never a scan of the thread.
- Siblings are ordered by seq: the messages with one parent by ``message_seq``, the runs
  answering one message by ``seq``.
"""

from __future__ import annotations

from typing import Literal

import attrs

from .usage import Usage

Outcome = Literal["completed", "failed", "cancelled"]


@attrs.frozen(slots=True)
class Node:
    """One run of a thread and its place in the tree (see the module header)."""

    run_id: str
    message_id: str
    parent: str | None  # the run the message follows; None at a root
    message_seq: int    # of the user_message the run answers
    seq: int            # of the event that asked for the run: that user_message, or an
                        # answer_requested
    started_seq: int | None = None  # of its agent_started, once stored
    ended_seq: int | None = None    # of its terminal event, once stored
    usage: Usage | None = None      # what its agent reported so far (``usage.py``)


@attrs.frozen(slots=True)
class Placed:
    """A node and its places among its siblings (``Journal.turns``); indexes count from 0."""

    node: Node
    sibling_index: int  # of its message among the messages with the same parent
    sibling_count: int
    answer_index: int   # of the run among the runs answering the same message
    answer_count: int


@attrs.frozen(slots=True)
class TurnView:
    """One run of the tree as a client renders it (``GET /v1/threads/{id}/turns``): the
    message it answers, the answer, and where both sit among their siblings. Indexes count
    from 0 in seq order."""

    run_id: str
    message_id: str
    parent: str | None
    seq: int              # of the event that asked for the run
    message_seq: int      # of its user_message
    text: str             # the user's message
    answer: str | None    # the answer's text once the run ended (what it streamed, for a run
                          # that failed or was cancelled); None while it runs or waits
    outcome: Outcome | None
    sibling_index: int    # of the message among the messages with its parent
    sibling_count: int
    answer_index: int     # of this run among the runs answering its message
    answer_count: int
