"""``UserRuns``: at most ``limit`` runs of one user active at once, across all of the user's
threads; the user's other runs wait their turn.

Why: a run costs the process CPU (its agent, its tools, a streamed answer's pieces) and the
store its events, and nothing else bounds how many a user starts: the quotas bound messages per
second and threads, not what each message sets going. One user with a streaming run in each of
900 threads held the core and the store's writer until every other user's ``send`` timed out.
With this bound a user gets at most ``limit`` runs' share of the machine, however many threads
they drive; the other users' runs are not behind them in any queue.

Invariants:

- A run takes a slot before its ``agent_started`` and gives it back when its terminal event is
  written (``run_queue.run_queued``): a run waiting for a slot has only been ``accepted``, so
  clients see it as queued, and it may be cancelled there (it then ends with
  ``agent_started`` and ``agent_cancelled``, as any run cancelled before it ran).
- Slots are given in the order the runs asked (``trio.CapacityLimiter`` is FIFO), so one of the
  user's threads cannot starve another.
- A user's limiter exists only while the user has runs active or waiting: memory is per user
  with runs, not per user ever seen.
"""

from __future__ import annotations

import trio

__all__ = ["USER_RUNS", "UserRuns"]

USER_RUNS = 10  # runs of one user active at once, by default (PROTOCOL.md's decisions)


class UserRuns:
    __slots__ = ("limit", "_limiters", "waiting")

    def __init__(self, limit: int | None = USER_RUNS) -> None:
        if limit is not None and limit < 1:
            raise ValueError("user_runs must be at least 1")
        self.limit = limit  # None: no bound
        self._limiters: dict[str, trio.CapacityLimiter] = {}
        self.waiting = 0  # runs waiting for a slot now, all users

    async def acquire(self, user_id: str, borrower: object) -> None:
        """Take one of ``user_id``'s slots for ``borrower``, waiting for one first (a cancel
        point: the wait is given up when the caller's scope is cancelled, nothing held)."""
        if self.limit is None:
            return
        limiter = self._limiters.get(user_id)
        if limiter is None:
            limiter = self._limiters[user_id] = trio.CapacityLimiter(self.limit)
        if limiter.available_tokens > 0:
            limiter.acquire_on_behalf_of_nowait(borrower)
            return
        self.waiting += 1
        try:
            await limiter.acquire_on_behalf_of(borrower)
        except BaseException:
            self._forget_if_unused(user_id, limiter)
            raise
        finally:
            self.waiting -= 1

    def release(self, user_id: str, borrower: object) -> None:
        """Give back the slot ``borrower`` took (the next waiter of the user gets it)."""
        if self.limit is None:
            return
        limiter = self._limiters[user_id]
        limiter.release_on_behalf_of(borrower)
        self._forget_if_unused(user_id, limiter)

    def _forget_if_unused(self, user_id: str, limiter: trio.CapacityLimiter) -> None:
        if limiter.borrowed_tokens == 0 and limiter.statistics().tasks_waiting == 0:
            self._limiters.pop(user_id, None)

    def active(self, user_id: str) -> int:
        """How many of ``user_id``'s runs hold a slot now."""
        limiter = self._limiters.get(user_id)
        return 0 if limiter is None else limiter.borrowed_tokens
