"""One request of the HTTP API (``http_api.py``), authenticated, and how a route reads it: its
query's integers, its body as the WebSocket frame of the same request, its thread as stored.
Shared by the routes of ``http_api.py`` and of ``http_tree.py``.

Invariants:

- A body is read as the frame ``kind`` on the URL's thread: the thread id and the path's other
  names (``run_id``, ``call_id``, ``message_id``) come from the URL and override the body's,
  and ``ref`` is never taken from it. So a body passes exactly the frame's checks, with its
  errors (400 ``bad_frame``).
- A query parameter is given at most once, and an integer one has at most 18 digits (no sign):
  anything else is 400 ``bad_frame``, never a value clipped or guessed.
- ``existing`` reads the journal (``ThreadHandle.stored_info``): it never creates a thread.
"""

from __future__ import annotations

import json
from typing import Any
from urllib.parse import parse_qs

import attrs

from threadline.actors.gateway import ThreadHandle, UserHandle
from threadline.actors.messages import Accepted, ThreadInfo

from .codec import parse_request
from .messages import BAD_FRAME, NOT_FOUND, BadFrame, Request
from .quotas import UserQuota


class Refused(Exception):
    """Answer ``code`` (its status from ``http_api.STATUS``) with ``message``."""

    def __init__(self, code: str, message: str, extra: tuple[tuple[str, str], ...] = ()) -> None:
        super().__init__(message)
        self.code, self.message, self.extra = code, message, extra


@attrs.frozen
class Call:
    """One request, authenticated: whose, on which thread, with which query."""

    user: UserHandle
    quota: UserQuota
    thread: ThreadHandle | None
    query: dict[str, str]
    params: dict[str, str]  # the path's other names (``run_id``, ``call_id``...), decoded
    body: bytearray  # as read (``RequestReader.read_body``): the one copy
    traceparent: str | None = None  # its ``traceparent`` header, if a valid one


def query_of(target: str) -> dict[str, str]:
    query = target.partition("?")[2]
    try:
        fields = parse_qs(query, keep_blank_values=True, errors="strict")
    except (UnicodeDecodeError, ValueError):
        raise Refused(BAD_FRAME, "malformed query string") from None
    for name, values in fields.items():
        if len(values) > 1:
            raise Refused(BAD_FRAME, f"{name} given more than once")
    return {name: values[0] for name, values in fields.items()}


def int_param(query: dict[str, str], name: str, default: int, low: int, high: int) -> int:
    text = query.get(name)
    if text is None:
        return default
    if not (text.isascii() and text.isdigit() and len(text) <= 18) or not low <= int(text) <= high:
        raise Refused(BAD_FRAME, f"{name} must be an integer from {low} to {high}")
    return int(text)


def parse_body(call: Call, kind: str, **path: str) -> Request:
    """The body as the WebSocket frame ``kind`` on the URL's thread, with the path's other
    names as its fields (the frame's rules, its errors)."""
    body = call.body
    try:
        obj = json.loads(body) if body and not body.isspace() else {}  # strip() would copy
    except (ValueError, RecursionError):  # RecursionError: nested deeper than json can
        raise BadFrame("the body is not valid JSON") from None
    if not isinstance(obj, dict):
        raise BadFrame("the body must be a JSON object")
    assert call.thread is not None
    return parse_request({**obj, **path, "ref": None, "type": kind,
                          "thread_id": call.thread.thread_id})


async def existing(call: Call) -> ThreadInfo:
    """The thread's stored info; ``Refused`` 404 ``not_found`` if it does not exist."""
    assert call.thread is not None
    info = await call.thread.stored_info()
    if info is None:
        raise Refused(NOT_FOUND, f"no thread {call.thread.thread_id!r}")
    return info


def accepted_answer(thread_id: str, acc: Accepted) -> dict[str, Any]:
    """The WebSocket's ``accepted`` without ``ref``: a message's answer, and a regenerate's."""
    return {"type": "accepted", "thread_id": thread_id, "message_id": acc.message_id,
            "run_id": acc.run_id, "seq": acc.seq}
