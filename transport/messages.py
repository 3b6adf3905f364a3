"""The frames of wire protocol v1 (PROTOCOL.md), as a closed set of frozen attrs classes.

Client requests are decoded into these by ``threadline.transport.codec``; ``Ref`` is the client's
correlation value (a string of at most 64 characters or an integer) or None.
"""

from __future__ import annotations

from typing import Final, Union

import attrs

from threadline.actors.messages import LATEST, Parent, Strategy

Ref = Union[str, int, None]

JSON: Final = "threadline.v1.json"
MSGPACK: Final = "threadline.v1.msgpack"
SUBPROTOCOLS: Final = (JSON, MSGPACK)

# error codes (PROTOCOL.md, "Error codes")
BAD_FRAME: Final = "bad_frame"
NOT_JOINED: Final = "not_joined"
BUSY: Final = "busy"
UNKNOWN_RUN: Final = "unknown_run"
UNKNOWN_CALL: Final = "unknown_call"  # 1.1: a decide for a tool call that is not waiting
NOT_FOUND: Final = "not_found"  # 1.1: a regenerate or parent naming nothing here; HTTP: 404
BUDGET_EXCEEDED: Final = "budget_exceeded"  # 1.1: the user's token budget is spent; HTTP: 429
RATE_LIMITED: Final = "rate_limited"
LIMIT_REACHED: Final = "limit_reached"
INTERNAL: Final = "internal"
# error codes of the HTTP API only (HTTP.md)
UNAUTHORIZED: Final = "unauthorized"
METHOD_NOT_ALLOWED: Final = "method_not_allowed"
TOO_LARGE: Final = "too_large"
TIMEOUT: Final = "timeout"
UNSUPPORTED_TYPE: Final = "unsupported_type"  # 1.1: an upload of a type not allowed: 415

# close codes (PROTOCOL.md, "Close codes"; RFC 6455 section 7.4.1)
CLOSE_NORMAL: Final = 1000
CLOSE_GOING_AWAY: Final = 1001
CLOSE_ABNORMAL: Final = 1006      # never sent: what a peer reports when no close frame came
CLOSE_POLICY: Final = 1008
CLOSE_TOO_BIG: Final = 1009
CLOSE_INVALID_DATA: Final = 1007   # a text frame that is not valid UTF-8
CLOSE_INTERNAL: Final = 1011
CLOSE_TRY_AGAIN: Final = 1013
CLOSE_TOKEN_EXPIRED: Final = 4001  # ours (RFC 6455 leaves 4000-4999 to applications)


@attrs.frozen(slots=True)
class Join:
    ref: Ref
    thread_id: str
    since: int | None


@attrs.frozen(slots=True)
class Leave:
    ref: Ref
    thread_id: str


@attrs.frozen(slots=True)
class Send:
    ref: Ref
    thread_id: str
    text: str
    client_msg_id: str | None
    strategy: Strategy
    parent: Parent = LATEST  # 1.1: absent: LATEST; null: None (a new root); else a run id
    attachments: tuple[str, ...] = ()  # 1.1: attachment ids, at most 10 (absent: none)
    traceparent: str | None = None  # ours: a W3C trace context the run continues (else None)


@attrs.frozen(slots=True)
class Regenerate:
    """1.1: another answer to the ``user_message`` ``message_id`` of the thread."""

    ref: Ref
    thread_id: str
    message_id: str
    client_msg_id: str | None
    strategy: Strategy
    traceparent: str | None = None  # ours, as ``Send``'s


@attrs.frozen(slots=True)
class Cancel:
    ref: Ref
    thread_id: str
    run_id: str | None


@attrs.frozen(slots=True)
class Decide:
    """1.1: a decision on a tool call of ``run_id`` waiting for approval."""

    ref: Ref
    thread_id: str
    run_id: str
    call_id: str
    approved: bool
    reason: str | None     # at most 1 KiB of UTF-8


@attrs.frozen(slots=True)
class Threads:
    ref: Ref
    limit: int             # threads per page (PROTOCOL.md: 1-1000, default 100)
    cursor: str | None     # where the previous page ended (its next_cursor), None: the newest


@attrs.frozen(slots=True)
class Ping:
    ref: Ref


Request = Union[Join, Leave, Send, Regenerate, Cancel, Decide, Threads, Ping]


class BadFrame(Exception):
    """A client frame that cannot be decoded or validated. ``ref`` is the frame's own ref when
    it could be read, so the error can still answer the request."""

    def __init__(self, message: str, ref: Ref = None) -> None:
        super().__init__(message)
        self.message = message
        self.ref = ref
