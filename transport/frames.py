"""Frames from the server: a closed union of frozen records, the mirror of ``messages.py``'s
requests, and the one place that says what each carries on the wire.

Every frame a connection writes is one of these (``ServerFrame``), and the HTTP API's bodies
that PROTOCOL.md shares with the WebSocket (an event, an error) are their ``wire()`` too, so a
field is named and ordered in one place for both. ``wire()`` is the frame as a JSON- and
msgpack-ready dict, fields in PROTOCOL.md's order, ``ref`` last and only when the request had
one.

Encoding (``Codec.encode``) happens in the connection's writer, once per frame, except for
``EventFrame``: a thread's event goes to every connection that joined the thread (a user's
tabs, a shared thread), so its payload is encoded once per encoding and the bytes shared
(``codec.py``'s cache). That is safe because an ``Event`` is immutable and its frame depends
on nothing but the event: no ``ref``, nothing of the connection.
"""

from __future__ import annotations

from typing import Any, Union

import attrs

from threadline.actors.messages import Event

from .messages import Ref


def _with_ref(frame: dict[str, Any], ref: Ref) -> dict[str, Any]:
    if ref is not None:
        frame["ref"] = ref
    return frame


def event_wire(e: Event) -> dict[str, Any]:
    """An ``event`` frame's ``wire()`` straight from the event (the writer's path, and the HTTP
    API's pages of events, take it without a record around the event)."""
    return {"type": "event", "thread_id": e.key.thread_id, "seq": e.seq, "event": e.event,
            "run_id": e.run_id, "ts": e.ts, "data": e.data}


@attrs.frozen(slots=True)
class EventFrame:
    """``event``: one stored event of a joined thread."""

    event: Event

    def wire(self) -> dict[str, Any]:
        return event_wire(self.event)


@attrs.frozen(slots=True)
class Joined:
    """``joined``: the subscription is on; events after ``last_seq`` follow live."""

    ref: Ref
    thread_id: str
    last_seq: int
    created_at: float | None = None  # None: not known (the field is left out)

    def wire(self) -> dict[str, Any]:
        frame: dict[str, Any] = {"type": "joined", "thread_id": self.thread_id,
                                 "last_seq": self.last_seq}
        if self.created_at is not None:
            frame["created_at"] = self.created_at
        return _with_ref(frame, self.ref)


@attrs.frozen(slots=True)
class Left:
    """``left``: no more events of the thread (asked, or ``reason`` ``deleted``, unasked)."""

    ref: Ref
    thread_id: str
    reason: str | None = None

    def wire(self) -> dict[str, Any]:
        frame: dict[str, Any] = {"type": "left", "thread_id": self.thread_id}
        if self.reason is not None:
            frame["reason"] = self.reason
        return _with_ref(frame, self.ref)


@attrs.frozen(slots=True)
class Accepted:
    """``accepted``: a ``send`` or ``regenerate`` is stored as ``seq`` and its run queued."""

    ref: Ref
    thread_id: str
    message_id: str
    run_id: str
    seq: int

    def wire(self) -> dict[str, Any]:
        return _with_ref({"type": "accepted", "thread_id": self.thread_id,
                          "message_id": self.message_id, "run_id": self.run_id,
                          "seq": self.seq}, self.ref)


@attrs.frozen(slots=True)
class Ok:
    """``ok``: a ``cancel`` (``run_id``: the run it cancelled, or None) or a ``decide``
    (``call_id`` too) is done."""

    ref: Ref
    thread_id: str
    run_id: str | None
    call_id: str | None = None

    def wire(self) -> dict[str, Any]:
        frame: dict[str, Any] = {"type": "ok", "thread_id": self.thread_id,
                                 "run_id": self.run_id}
        if self.call_id is not None:
            frame["call_id"] = self.call_id
        return _with_ref(frame, self.ref)


@attrs.frozen(slots=True)
class ThreadsPage:
    """``threads``: a page of the user's threads, newest first, and the next page's cursor."""

    ref: Ref
    threads: list[dict[str, Any]]
    next_cursor: str | None

    def wire(self) -> dict[str, Any]:
        return _with_ref({"type": "threads", "threads": self.threads,
                          "next_cursor": self.next_cursor}, self.ref)


@attrs.frozen(slots=True)
class Pong:
    """``pong``: the answer to a ``ping``."""

    ref: Ref

    def wire(self) -> dict[str, Any]:
        return _with_ref({"type": "pong"}, self.ref)


@attrs.frozen(slots=True)
class Error:
    """``error``: a request (``ref``, if it had one) or a frame was refused, with ``code``."""

    code: str
    message: str
    ref: Ref = None

    def wire(self) -> dict[str, Any]:
        return _with_ref({"type": "error", "code": self.code, "message": self.message},
                         self.ref)


ServerFrame = Union[EventFrame, Joined, Left, Accepted, Ok, ThreadsPage, Pong, Error]
