"""Limits of the edge (PROTOCOL.md, "Limits"), per connection and per user; each configurable.

The per-user limits bound what one account can hold however many connections it opens: one user
could otherwise keep thousands of connections and live actors (about 4 GB at the sustained
rate, measured) or create stored threads without end by joining and leaving, or keep
thousands of HTTP requests with large bodies in flight (3 GB for 1,500, measured).

Attachments (PROTOCOL.md 1.1, HTTP.md): a file's size, a user's bytes stored (counted by the
store, so across connections and nodes), the media types allowed (``media_types``: lower-case
``type/subtype`` or ``type/*``, none for no uploads at all) and how long an upload's body may
take (``http_attachments.py``).
"""

from __future__ import annotations

import re
from typing import Iterable

import attrs

from threadline.actors.attachments import MAX_BYTES, USER_BYTES
from threadline.actors.user_runs import USER_RUNS

#: PROTOCOL.md 1.1's default list: images png, jpeg, gif, webp; any text; PDF; JSON.
ATTACHMENT_TYPES = ("image/png", "image/jpeg", "image/gif", "image/webp", "text/*",
                    "application/pdf", "application/json")
_TOKEN = r"[a-z0-9!#$&^_.+-]{1,63}"  # RFC 6838's restricted name (lower-cased)
_MEDIA_RANGE = re.compile(rf"{_TOKEN}/(?:{_TOKEN}|\*)")


def media_types(value: str | Iterable[str]) -> tuple[str, ...]:
    """The allowed types as ``Limits`` keeps them: lower-case ``type/subtype`` or ``type/*``,
    each once, in order. A string is a list separated by commas, semicolons or spaces;
    ``none`` (or nothing) allows no type. ``ValueError`` for anything else."""
    items = re.split(r"[,;\s]+", value) if isinstance(value, str) else list(value)
    types = [t.strip().lower() for t in items if t.strip()]
    if types == ["none"]:
        return ()
    for t in types:
        if not _MEDIA_RANGE.fullmatch(t):
            raise ValueError(f"{t!r} is not a media type (type/subtype or type/*)")
    return tuple(dict.fromkeys(types))


@attrs.frozen
class Limits:
    # -- per connection (PROTOCOL.md's defaults) --
    max_frame_bytes: int = 1024 * 1024    # larger: close 1009
    max_bad_frames: int = 20              # bad_frame errors in a row, then close 1008
    rate: float = 200.0                   # frames per second per connection ...
    burst: int = 400                      # ... with bursts up to this many
    # Bytes per second per connection, checked before a frame is decoded (a frame over it is
    # dropped unread: rate_limited). The burst admits one frame of the largest size.
    byte_rate: float = 256 * 1024
    byte_burst: int = 1024 * 1024
    max_threads: int = 100                # threads joined per connection: limit_reached
    outgoing_queue: int = 1000            # frames queued for a slow reader, then close 1013
    lane_depth: int = 32                  # requests of one thread waiting their turn
    ping_interval: float | None = 20.0    # keepalive pings (None: off), as websockets' default
    ping_timeout: float = 20.0            # no pong within this: close 1011
    handshake_timeout: float = 10.0       # the opening HTTP request must arrive within this
    close_timeout: float = 5.0            # closing handshake and draining queued frames
    # -- per user, across all of the user's connections (ours; see PROTOCOL.md) --
    user_connections: int = 50            # more: the handshake completes, limit_reached, 1008
    user_threads: int = 10_000            # stored threads: joining one more is limit_reached
    user_send_rate: float = 50.0          # send frames per second ...
    user_send_burst: int = 100            # ... with bursts up to this many: rate_limited
    # HTTP API requests of one user in flight at once (HTTP.md), from the head read to the
    # answer written; one more is answered 429 limit_reached before its body is read. Bounds
    # what one user's HTTP use holds: this many bodies of ``max_frame_bytes`` and answers.
    user_http_requests: int = 16
    # Runs of one user active at once, across the user's threads (``user_runs.py``): the
    # others wait their turn, accepted but not started. Given to the runtime by the server.
    user_runs: int = USER_RUNS
    # -- attachments (PROTOCOL.md 1.1, "Attachments"; HTTP.md) --
    attachment_bytes: int = MAX_BYTES     # a file: one byte more is 413 too_large, at once
    user_attachment_bytes: int = USER_BYTES  # a user's stored files, uploads under way too: 429
    # Media types an upload may declare (else 415 unsupported_type); ``--limit
    # attachment_types=image/png,text/*``.
    attachment_types: tuple[str, ...] = attrs.field(default=ATTACHMENT_TYPES,
                                                    converter=media_types)
    # An upload's body must arrive within ``upload_timeout`` seconds of its head, with no
    # pause between two reads longer than ``upload_idle_timeout``: else 408 timeout, and
    # nothing of it is kept. (Other requests: the whole within ``handshake_timeout``.)
    upload_timeout: float = 120.0
    upload_idle_timeout: float = 10.0
    # -- tokens (PROTOCOL.md 1.1, "Usage and budgets"; ``actors/usage.py``) --
    # Tokens (input plus output, as the model counts them) a user may use per UTC day and per
    # month, across connections and nodes: then ``budget_exceeded`` (HTTP 429) until the
    # period ends. None: no budget. Given to the runtime by the server, as ``user_runs``.
    user_tokens_per_day: int | None = None
    user_tokens_per_month: int | None = None


class TokenBucket:
    """``rate`` tokens per second, at most ``burst`` banked. ``take`` never blocks."""

    __slots__ = ("rate", "burst", "tokens", "last")

    def __init__(self, rate: float, burst: float, now: float) -> None:
        self.rate = rate
        self.burst = float(burst)
        self.tokens = float(burst)
        self.last = now

    def take(self, now: float, cost: float = 1.0) -> bool:
        """Take ``cost`` tokens if there are that many; a cost above the burst never passes."""
        self.tokens = min(self.burst, self.tokens + (now - self.last) * self.rate)
        self.last = now
        if self.tokens >= cost:
            self.tokens -= cost
            return True
        return False
