"""Pages: of a user's thread list (``threads`` with ``limit`` and ``cursor``; PROTOCOL.md), and
of a thread's events over HTTP (``events_page``: at most ``PAGE_BYTES`` of JSON, so that a page
of large events is cut short rather than built whole in memory; HTTP.md).

The list is ordered newest first by ``(updated_at, thread_id)``, both descending. A cursor is
opaque to clients: the position of the last thread of the previous page, so that a page never
repeats a thread; a thread updated meanwhile moves to the front and shows up on a fresh first
page, not twice in one walk.
"""

from __future__ import annotations

import base64
import json
from typing import Any, Sequence

from threadline.actors.messages import Event, ThreadInfo

from .codec import event_frame
from .messages import BadFrame

PAGE_BYTES = 4 * 1024 * 1024  # of events' JSON in one HTTP answer (at least one event)


def encode_cursor(info: ThreadInfo) -> str:
    raw = json.dumps([info.updated_at, info.key.thread_id], separators=(",", ":"))
    return base64.urlsafe_b64encode(raw.encode()).decode().rstrip("=")


MAX_CURSOR = 512  # characters: the cursors this server gives are far shorter


def decode_cursor(cursor: str) -> tuple[float, str]:
    try:
        if len(cursor) > MAX_CURSOR:
            raise ValueError
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4))
        updated_at, thread_id = json.loads(raw)
        if isinstance(updated_at, bool) or not isinstance(updated_at, (int, float)) \
                or not isinstance(thread_id, str):
            raise ValueError
    except (ValueError, TypeError, RecursionError):
        raise BadFrame("cursor is not one this server gave") from None
    return float(updated_at), thread_id


def threads_page(infos: Sequence[ThreadInfo], limit: int,
                 cursor: str | None) -> tuple[list[dict[str, Any]], str | None]:
    """``(threads as frames' dicts, next_cursor or None)`` for ``infos`` newest first."""
    start = 0
    if cursor is not None:
        position = decode_cursor(cursor)
        start = len(infos)
        for i, info in enumerate(infos):
            if (info.updated_at, info.key.thread_id) < position:
                start = i
                break
    chosen = infos[start:start + limit]
    more = start + limit < len(infos)
    page = [{"thread_id": i.key.thread_id, "last_seq": i.last_seq, "created_at": i.created_at,
             "updated_at": i.updated_at} for i in chosen]
    return page, encode_cursor(chosen[-1]) if more and chosen else None


def events_page(events: Sequence[Event], limit: int) -> tuple[list[dict[str, Any]], int | None]:
    """``(event frames, next_after or None)`` for ``events`` read with ``limit``: the frames
    up to ``PAGE_BYTES`` of JSON (at least one); ``next_after`` when more may follow."""
    frames: list[dict[str, Any]] = []
    size = 0
    for event in events:
        frame = event_frame(event)
        size += len(json.dumps(frame))
        if frames and size > PAGE_BYTES:
            break
        frames.append(frame)
    more = len(frames) < len(events) or len(events) == limit
    return frames, frames[-1]["seq"] if more and frames else None
