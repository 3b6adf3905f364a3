"""The closed set of messages that cross actor mailboxes, and the records they carry.

Everything here is a frozen attrs class. Events and requests are addressed by ``ThreadKey``;
nothing here is ever addressed by a bare ``thread_id``.
"""

from __future__ import annotations

import enum
import re
from typing import Any, Final, Literal, Union

import attrs

from .reply import Reply


@attrs.frozen(slots=True)
class ThreadKey:
    """The address of a thread actor: the user from the token, and the user's thread id."""

    user_id: str
    thread_id: str


# PROTOCOL.md: a user id is 1-128 of A-Z a-z 0-9 _ . : @ -, a thread id the same without @.
USER_ID_PATTERN: Final = re.compile(r"[A-Za-z0-9_.:@-]{1,128}")
THREAD_ID_PATTERN: Final = re.compile(r"[A-Za-z0-9_.:-]{1,128}")


def is_user_id(value: object) -> bool:
    return isinstance(value, str) and USER_ID_PATTERN.fullmatch(value) is not None


def is_thread_id(value: object) -> bool:
    return isinstance(value, str) and THREAD_ID_PATTERN.fullmatch(value) is not None


# -- event names (PROTOCOL.md, "Events") --------------------------------------------------------

USER_MESSAGE: Final = "user_message"
ANSWER_REQUESTED: Final = "answer_requested"  # PROTOCOL.md 1.1: a regenerate
AGENT_STARTED: Final = "agent_started"
AGENT_THINKING: Final = "agent_thinking"
AGENT_DELTA: Final = "agent_delta"
TOOL_EXECUTING: Final = "tool_executing"
TOOL_COMPLETED: Final = "tool_completed"
APPROVAL_REQUESTED: Final = "approval_requested"  # PROTOCOL.md 1.1
APPROVAL_DECIDED: Final = "approval_decided"
AGENT_COMPLETED: Final = "agent_completed"
AGENT_FAILED: Final = "agent_failed"
AGENT_CANCELLED: Final = "agent_cancelled"

TERMINAL_EVENTS: Final = frozenset({AGENT_COMPLETED, AGENT_FAILED, AGENT_CANCELLED})

Strategy = Literal["enqueue", "interrupt", "reject"]
STRATEGIES: Final = ("enqueue", "interrupt", "reject")
#: The events that ask for a run (its first event): a ``send``'s message, or a regenerate.
RUN_REQUESTS: Final = frozenset({USER_MESSAGE, ANSWER_REQUESTED})


class _Latest(enum.Enum):
    LATEST = "latest"


#: A message's ``parent`` when the sender names none: the thread's newest run (PROTOCOL.md
#: 1.1, "The conversation tree"), or no parent (a root) when the thread has no run.
LATEST: Final = _Latest.LATEST
#: A ``send``'s parent: a run id of the thread, None for a new root, or ``LATEST``.
Parent = Union[str, None, _Latest]


@attrs.frozen(slots=True)
class Event:
    """One stored event of a thread. ``seq`` starts at 1 and grows by exactly 1 per event.

    ``data`` is a plain dict (JSON and msgpack friendly); treat it as immutable.
    """

    key: ThreadKey
    seq: int
    event: str
    run_id: str | None
    ts: float
    data: dict[str, Any]


@attrs.frozen(slots=True)
class ThreadInfo:
    """What the journal knows of a thread as a whole."""

    key: ThreadKey
    last_seq: int
    created_at: float
    updated_at: float
    #: The first 80 code points of the thread's first message (PROTOCOL.md 1.1), None before
    #: it has one; only the journal's listings (``threads``, ``threads_page``) carry it.
    title: str | None = attrs.field(default=None, eq=False)


@attrs.frozen(slots=True)
class Accepted:
    """The answer to a stored user message: where it went and which run it starts."""

    key: ThreadKey
    message_id: str
    run_id: str
    seq: int


@attrs.frozen(slots=True)
class Joined:
    """First item a new subscriber receives, before any replayed or live event.

    ``tag`` is whatever the subscriber passed in ``Subscribe`` (the transport puts the
    request's ``ref`` there), so the subscriber can answer the right request. ``created_at``
    tells this thread from an earlier one of the same id (deleted, then created again): a
    subscriber that held events of another ``created_at`` holds events of another thread.
    """

    key: ThreadKey
    last_seq: int
    tag: object = None
    created_at: float | None = None


# -- requests to a ThreadActor -------------------------------------------------------------------
# Each carries a ``reply`` slot; the actor answers with a value or an exception.


@attrs.frozen(slots=True)
class PostMessage:
    text: str
    client_msg_id: str | None
    strategy: Strategy
    reply: Reply
    parent: Parent = LATEST  # the run the message follows (``LATEST``: the newest)
    attachments: tuple[str, ...] = ()  # attachment ids (``attachments.py``), at most 10
    traceparent: str | None = None  # the request's trace context (``tracing.py``)


@attrs.frozen(slots=True)
class Regenerate:
    """PROTOCOL.md 1.1: another answer to the stored ``user_message`` ``message_id``; answered
    ``Accepted`` once its ``answer_requested`` is stored (``NotFound``: no such message)."""

    message_id: str
    client_msg_id: str | None
    strategy: Strategy
    reply: Reply
    traceparent: str | None = None  # the request's trace context (``tracing.py``)


@attrs.frozen(slots=True)
class Subscribe:
    subscriber: Any  # threadline.actors.thread.Subscriber
    since: int | None
    tag: object
    reply: Reply


@attrs.frozen(slots=True)
class Unsubscribe:
    subscriber: Any
    reply: Reply


@attrs.frozen(slots=True)
class CancelRun:
    run_id: str | None
    reply: Reply


@attrs.frozen(slots=True)
class Decide:
    """A decision for a tool call of ``run_id`` waiting for approval (``approval.py``)."""

    run_id: str
    call_id: str
    approved: bool
    reason: str | None
    reply: Reply


@attrs.frozen(slots=True)
class GetInfo:
    reply: Reply


@attrs.frozen(slots=True)
class DeleteThread:
    """Erase the thread: cancel its runs (reason ``deleted``), erase it from the journal, tell
    its subscribers (``dropped`` with ``THREAD_DELETED``) and stop. Answered None once the
    erasure is durable; the key can then be used again, from seq 1."""

    reply: Reply


#: The ``reason`` a subscriber's ``dropped`` gets when its thread was deleted (it should not
#: rejoin: joining creates a new, empty thread).
THREAD_DELETED: Final = "thread deleted"


@attrs.frozen(slots=True)
class Passivate:
    """From the directory: passivate if still idle. No reply."""


@attrs.frozen(slots=True)
class Shutdown:
    """From the runtime: cancel active runs with reason ``shutdown`` and stop. No reply."""

    grace: float


#: Every request a ``ThreadActor`` answers; each carries its ``reply``.
ThreadRequest = (PostMessage | Regenerate | Subscribe | Unsubscribe | CancelRun | Decide |
                 GetInfo | DeleteThread)
#: The closed set of what a ``ThreadActor``'s mailbox holds.
ThreadMessage = ThreadRequest | Passivate | Shutdown
