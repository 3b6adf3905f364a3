"""Limits of the edge (PROTOCOL.md, "Limits"), per connection and per user; each configurable.

The per-user limits bound what one account can hold however many connections it opens: one user
could otherwise keep thousands of connections and live actors (about 4 GB at the sustained
rate, measured) or create stored threads without end by joining and leaving, or keep
thousands of HTTP requests with large bodies in flight (3 GB for 1,500, measured).
"""

from __future__ import annotations

import attrs

from threadline.actors.user_runs import USER_RUNS


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
