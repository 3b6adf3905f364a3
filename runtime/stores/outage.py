"""``Outage``: a durable store's failure state, apart from its writer: when to try again after
an outage (``BACKOFF_MIN`` doubling to ``BACKOFF_MAX``), how many outages there were, and the two
log lines an operator sees (failed, then back).

Invariants: retries that fail within one outage are not counted as new outages; while
``waiting()``, reads and writes fail fast with the ``unavailable()`` error instead of hammering a
store that is down; any success ends the outage and resets the backoff. The messages carry the
store's name and the first line of the driver's error, never data or secrets (``first_line``).
"""

from __future__ import annotations

import logging

import trio

from threadline.actors.errors import JournalUnavailable

from .errors import first_line

log = logging.getLogger("threadline.store")

BACKOFF_MIN, BACKOFF_MAX = 0.1, 5.0


class Outage:
    __slots__ = ("name", "count", "_retry_at", "_backoff")

    def __init__(self, name: str) -> None:
        self.name = name
        self.count = 0  # outages so far (for /metrics)
        self._retry_at = 0.0
        self._backoff = BACKOFF_MIN

    def waiting(self) -> bool:
        """Whether the store is in an outage and not yet due for another try."""
        return trio.current_time() < self._retry_at

    def failed(self, exc: BaseException) -> None:
        if self._retry_at == 0.0:  # a new outage (retries that fail within it are not one)
            self.count += 1
            log.error("%s failed: %s; retrying with backoff", self.name, first_line(exc))
        self._retry_at = trio.current_time() + self._backoff
        self._backoff = min(self._backoff * 2, BACKOFF_MAX)

    def recovered(self) -> None:
        if self._retry_at:
            log.warning("%s is back", self.name)
        self._retry_at = 0.0
        self._backoff = BACKOFF_MIN

    def unavailable(self, exc: BaseException | None = None) -> JournalUnavailable:
        detail = first_line(exc) if exc is not None else ""
        return JournalUnavailable(f"{self.name} unavailable{': ' if detail else ''}{detail}")
