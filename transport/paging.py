"""Pages: of a user's thread list (``threads`` with ``limit`` and ``cursor``; PROTOCOL.md), and
of a thread's events over HTTP (``events_page``: at most ``PAGE_BYTES`` of JSON, so that a page
of large events is cut short rather than built whole in memory; HTTP.md).

The list is ordered newest first by ``(updated_at, thread_id)``, both descending. A page is
read from the store as a keyset page (``Journal.threads_page``: at most ``limit + 1`` rows,
seeking an index), so a page costs the same whatever the number of the user's threads. A
cursor is opaque to clients: the position of the last thread of the previous page, so that a
page never repeats a thread; a thread updated meanwhile moves to the front and shows up on a
fresh first page, not twice in one walk.

Invariants of cursors:

- A cursor is ``POSITION.MAC``: the position (JSON, base64url) and an HMAC-SHA256 (first 16
  bytes) over the user id and the position, with a ``CursorKey``. A cursor is accepted only if
  its MAC verifies for the user asking: a forged one, one altered, or one given to another user
  is ``BadFrame`` (400 / ``bad_frame``), as HTTP.md and PROTOCOL.md promise. Nothing is read
  from the store before that.
- The key: given a token secret (HS256), ``HMAC-SHA256(secret, CURSOR_LABEL)`` (``CursorKey.of``),
  so cursors survive a restart and every node of a cluster (which shares the secret: its
  admission checks it) accepts the others'. A server with only public keys (RS256/ES256) has no
  shared secret: it uses ``PROCESS_KEY``, random per process, and a cursor of another process
  is refused (400; the client starts its walk again from the first page).
- The MAC covers the user id, so a cursor says nothing another user can use, and the position
  is the only thing it carries: it gives away a thread id and a time the user already has.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import math
import secrets
from typing import Any, Callable, Sequence, TypeVar

import attrs

from threadline.actors.gateway import ThreadHandle, UserHandle
from threadline.actors.messages import Event, ThreadInfo

from .auth import Authenticator
from .frames import event_wire
from .messages import BadFrame

T = TypeVar("T")

PAGE_BYTES = 4 * 1024 * 1024  # of events' JSON in one HTTP answer (at least one event)
MAX_CURSOR = 512  # characters: the cursors this server gives are far shorter
CURSOR_LABEL = b"threadline paging cursor v1"
MAC_BYTES = 16
REFUSED = "cursor is not one this server gave"

Position = tuple[float, str]  # (updated_at, thread_id) of the last thread of a page


@attrs.frozen
class CursorKey:
    """The key of the cursors' MACs (see the module header). Never blocks."""

    key: bytes = attrs.field(repr=False)

    @classmethod
    def of(cls, auth: Authenticator) -> CursorKey:
        """The key for a server whose tokens ``auth`` checks: derived from its token secret
        with a fixed label; ``PROCESS_KEY`` without one."""
        key = auth.derive_key(CURSOR_LABEL)
        return PROCESS_KEY if key is None else cls(key)

    def _mac(self, user_id: str, position: bytes) -> bytes:
        message = user_id.encode() + b"\0" + position  # user ids never hold a NUL
        return hmac.new(self.key, message, hashlib.sha256).digest()[:MAC_BYTES]

    def seal(self, user_id: str, position: Position) -> str:
        """The cursor of ``position`` for ``user_id``."""
        raw = json.dumps([position[0], position[1]], separators=(",", ":")).encode()
        return f"{_b64(raw)}.{_b64(self._mac(user_id, raw))}"

    def open(self, user_id: str, cursor: str) -> Position:
        """The position a cursor of this key for ``user_id`` holds. Raises ``BadFrame`` for
        anything else, and nothing else (the cursor is the client's text)."""
        try:
            if not isinstance(cursor, str) or len(cursor) > MAX_CURSOR:
                raise ValueError
            body, _, tag = cursor.partition(".")
            raw, mac = _unb64(body), _unb64(tag)
            if not hmac.compare_digest(mac, self._mac(user_id, raw)):
                raise ValueError
            updated_at, thread_id = json.loads(raw)
            if isinstance(updated_at, bool) or not isinstance(updated_at, (int, float)) \
                    or not math.isfinite(updated_at) or not isinstance(thread_id, str):
                raise ValueError
        except (ValueError, TypeError, RecursionError):
            raise BadFrame(REFUSED) from None
        return float(updated_at), thread_id


#: The key without a shared secret: random, this process's only (see the module header).
PROCESS_KEY = CursorKey(secrets.token_bytes(32))


def _b64(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def _unb64(text: str) -> bytes:
    if not text.isascii():
        raise ValueError
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def _frames(infos: Sequence[ThreadInfo]) -> list[dict[str, Any]]:
    """The threads as the ``threads`` reply lists them (1.1: with ``title``, the first 80
    code points of the thread's first message, or None; the journal's listings fill it)."""
    return [{"thread_id": i.key.thread_id, "last_seq": i.last_seq, "created_at": i.created_at,
             "updated_at": i.updated_at, "title": i.title} for i in infos]


async def read_threads_page(user: UserHandle, limit: int, cursor: str | None,
                            key: CursorKey | None = None,
                            ) -> tuple[list[dict[str, Any]], str | None]:
    """``(threads as frames' dicts, next_cursor or None)``: one page of ``user``'s threads,
    read from the store as a keyset page of ``limit + 1`` rows. Raises ``BadFrame`` for a
    cursor that ``key`` (default ``PROCESS_KEY``) did not seal for this user."""
    key = key if key is not None else PROCESS_KEY
    before = key.open(user.user_id, cursor) if cursor is not None else None
    infos = await user.gateway.journal.threads_page(user.user_id, limit, before)
    chosen = infos[:limit]
    more = len(infos) > limit and bool(chosen)
    last = chosen[-1] if more else None
    return _frames(chosen), (key.seal(user.user_id, (last.updated_at, last.key.thread_id))
                             if last is not None else None)


async def read_events_page(thread: ThreadHandle, after: int, limit: int, last_seq: int,
                           ) -> tuple[list[dict[str, Any]], int | None]:
    """``(event frames, next_after or None)``: a page of the HTTP history, read from the store
    with at most ``PAGE_BYTES`` of data (``Journal.read``'s ``max_bytes``), so that no more
    than that is held whatever the events' sizes. ``last_seq``, the thread's as answered:
    a page cut short by bytes before it says ``next_after``."""
    budget = PAGE_BYTES
    events = await thread.gateway.journal.read(thread.key, after, limit=limit,
                                               max_bytes=budget)
    frames, next_after = events_page(events, limit)
    if next_after is None and frames and frames[-1]["seq"] < last_seq:
        next_after = frames[-1]["seq"]  # cut by the store's byte bound: more follow
    return frames, next_after


def events_page(events: Sequence[Event], limit: int) -> tuple[list[dict[str, Any]], int | None]:
    """``(event frames, next_after or None)`` for ``events`` read with ``limit``: the frames
    up to ``PAGE_BYTES`` of JSON (at least one); ``next_after`` when more may follow."""
    return seq_page(events, limit, event_wire)


def seq_page(items: Sequence[T], limit: int, frame_of: Callable[[T], dict[str, Any]],
             ) -> tuple[list[dict[str, Any]], int | None]:
    """``(frames, next_after or None)`` for ``items`` (each one's frame has a ``seq``) read
    with ``limit``: the frames up to ``PAGE_BYTES`` of JSON (at least one); ``next_after``, the
    last frame's seq, when more may follow (the page is full, or was cut)."""
    frames: list[dict[str, Any]] = []
    size = 0
    for item in items:
        frame = frame_of(item)
        size += len(json.dumps(frame))
        if frames and size > PAGE_BYTES:
            break
        frames.append(frame)
    more = len(frames) < len(items) or len(items) == limit
    return frames, frames[-1]["seq"] if more and frames else None
