"""Per-connection limits (PROTOCOL.md, "Limits"); every one is configurable."""

from __future__ import annotations

import attrs


@attrs.frozen
class Limits:
    max_frame_bytes: int = 1024 * 1024    # larger: close 1009
    max_bad_frames: int = 20              # bad_frame errors in a row, then close 1008
    rate: float = 200.0                   # frames per second per connection ...
    burst: int = 400                      # ... with bursts up to this many
    max_threads: int = 100                # threads joined per connection: limit_reached
    outgoing_queue: int = 1000            # frames queued for a slow reader, then close 1013
    ping_interval: float | None = 20.0    # keepalive pings (None: off), as websockets' default
    ping_timeout: float = 20.0            # no pong within this: close 1011
    handshake_timeout: float = 10.0       # the opening HTTP request must arrive within this
    close_timeout: float = 5.0            # closing handshake and draining queued frames


class TokenBucket:
    """``rate`` tokens per second, at most ``burst`` banked. ``take`` never blocks."""

    __slots__ = ("rate", "burst", "tokens", "last")

    def __init__(self, rate: float, burst: int, now: float) -> None:
        self.rate = rate
        self.burst = float(burst)
        self.tokens = float(burst)
        self.last = now

    def take(self, now: float) -> bool:
        self.tokens = min(self.burst, self.tokens + (now - self.last) * self.rate)
        self.last = now
        if self.tokens >= 1.0:
            self.tokens -= 1.0
            return True
        return False
