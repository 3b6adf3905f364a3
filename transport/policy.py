"""The sans-IO state of one connection: what to admit, when to close, and with which code.

No I/O and no clock of its own (callers pass ``now``), so every decision is tested without a
socket. The session asks it about each client message and reports what happened; it answers with
a verdict, and it records the one close decision a connection ever gets.

Phases and the events that move them (any other pair is a bug, and raises)::

    phase     event        next      what it means
    OPEN      close        CLOSING   a close code was decided (ours or the peer's); the reader
                                     stops, queued frames drain (unless the code is 1013)
    OPEN      gone         CLOSED    the peer vanished (reset, EOF): nothing more to send
    CLOSING   close        CLOSING   a later decision: ignored, the first one wins
    CLOSING   gone         CLOSED    the socket is closed
    CLOSED    close|gone   CLOSED    late reports: ignored

Admission of a client message, in this order: the byte rate (before decoding, so a flood costs
no parsing), the frame rate; then, after decoding, ``bad_frame`` counts toward the 1008 close
and any good frame resets the count.
"""

from __future__ import annotations

import enum

import attrs

from .limits import Limits, TokenBucket
from .messages import CLOSE_POLICY, CLOSE_TRY_AGAIN


class Phase(enum.Enum):
    OPEN = "open"
    CLOSING = "closing"
    CLOSED = "closed"


TRANSITIONS: dict[tuple[Phase, str], Phase] = {
    (Phase.OPEN, "close"): Phase.CLOSING,
    (Phase.OPEN, "gone"): Phase.CLOSED,
    (Phase.CLOSING, "close"): Phase.CLOSING,
    (Phase.CLOSING, "gone"): Phase.CLOSED,
    (Phase.CLOSED, "close"): Phase.CLOSED,
    (Phase.CLOSED, "gone"): Phase.CLOSED,
}


class Verdict(enum.Enum):
    ADMIT = "admit"
    RATE_LIMITED = "rate_limited"  # drop the frame, answer rate_limited, stay open


@attrs.frozen
class CloseDecision:
    code: int | None  # None: the peer closed or vanished; nothing to send
    reason: str

    @property
    def discard_queued(self) -> bool:
        """1013 means the client reads too slowly: what is queued is dropped, it resumes."""
        return self.code == CLOSE_TRY_AGAIN


class ConnectionState:
    def __init__(self, limits: Limits, now: float) -> None:
        self.limits = limits
        self.phase = Phase.OPEN
        self.decision: CloseDecision | None = None
        self.bad_in_row = 0
        self.rate_limited = 0  # frames dropped by a rate, this connection
        self._frames = TokenBucket(limits.rate, limits.burst, now)
        self._bytes = TokenBucket(limits.byte_rate, limits.byte_burst, now)

    def _move(self, event: str) -> Phase:
        self.phase = TRANSITIONS[(self.phase, event)]
        return self.phase

    # -- reading -----------------------------------------------------------------------------

    def receive_message(self, size: int, now: float) -> Verdict:
        """A client message of ``size`` bytes arrived. Decide before decoding it."""
        if self.phase is not Phase.OPEN:
            raise RuntimeError(f"message received in phase {self.phase.value}")
        if not self._bytes.take(now, size) or not self._frames.take(now):
            self.rate_limited += 1
            return Verdict.RATE_LIMITED
        return Verdict.ADMIT

    def bad_frame(self) -> CloseDecision | None:
        """A message that did not decode or validate. Returns the close decision (1008) when
        that was one too many in a row."""
        self.bad_in_row += 1
        if self.bad_in_row >= self.limits.max_bad_frames:
            return self.close(CLOSE_POLICY, f"{self.bad_in_row} bad frames in a row")
        return None

    def good_frame(self) -> None:
        self.bad_in_row = 0

    # -- closing -----------------------------------------------------------------------------

    def close(self, code: int | None, reason: str = "") -> CloseDecision | None:
        """Decide to close; returns the decision if this call made it (the first one wins)."""
        first = self.decision is None and self.phase is Phase.OPEN
        self._move("close")
        if first:
            self.decision = CloseDecision(code, reason)
            return self.decision
        return None

    def gone(self) -> None:
        """The socket is closed (or the peer vanished)."""
        if self.decision is None:
            self.decision = CloseDecision(None, "connection lost")
        self._move("gone")
