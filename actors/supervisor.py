"""One-for-one supervision with a restart intensity, as in OTP.

``supervise(body)`` runs ``body()`` and, when it raises, runs it again: at most ``intensity``
restarts within any ``period`` seconds (OTP's defaults for a supervisor are 1 in 5 s; ours are 3
in 5 s, per DESIGN.md). One restart more and the crash escalates as
``RestartIntensityExceeded``, chained to the last crash.

The budget is counted per child, not per supervisor as OTP does: a runtime supervises one actor
per conversation thread, and one poisoned thread must not use up the restarts of a hundred
thousand healthy ones. A restart never touches a sibling: each child runs ``supervise`` in its
own task, so a crash is caught in that task and never reaches the shared nursery.
"""

from __future__ import annotations

import collections
import logging
from contextlib import asynccontextmanager
from typing import Any, AsyncIterator, Awaitable, Callable

import attrs
import trio

from .errors import RestartIntensityExceeded

log = logging.getLogger("threadline.supervisor")


@attrs.frozen
class RestartPolicy:
    intensity: int = 3
    period: float = 5.0


DEFAULT_POLICY = RestartPolicy()


class RestartBudget:
    """Counts one child's crashes against a ``RestartPolicy``."""

    __slots__ = ("policy", "name", "_times")

    def __init__(self, policy: RestartPolicy, name: object) -> None:
        self.policy = policy
        self.name = name
        self._times: collections.deque[float] | None = None  # allocated on the first crash

    def crashed(self, exc: Exception) -> None:
        """Record a crash; raises ``RestartIntensityExceeded`` (from ``exc``) if it is one
        too many, otherwise logs it and returns: the caller restarts the child."""
        now = trio.current_time()
        policy = self.policy
        if self._times is None:
            self._times = collections.deque()
        times = self._times
        while times and times[0] <= now - policy.period:
            times.popleft()
        if len(times) >= policy.intensity:
            log.error("%s crashed %d times within %ss; escalating", self.name, len(times) + 1,
                      policy.period, exc_info=exc)
            raise RestartIntensityExceeded(
                f"{self.name} crashed more than {policy.intensity} times in {policy.period} s"
            ) from exc
        times.append(now)
        log.warning("%s crashed; restarting (%d of %d in %ss)", self.name, len(times),
                    policy.intensity, policy.period, exc_info=exc)


async def supervise(
    body: Callable[..., Awaitable[None]],
    *args: Any,
    policy: RestartPolicy = DEFAULT_POLICY,
    name: object = "actor",
) -> None:
    """Run ``body(*args)`` until it returns, restarting it when it raises an ``Exception``.

    Cancellation is not a crash and is never restarted. Raises ``RestartIntensityExceeded``
    past the policy. Restarts are timed with trio's clock, so tests can use virtual time.
    """
    budget: RestartBudget | None = None
    while True:
        try:
            await body(*args)
            return
        except Exception as exc:
            if budget is None:
                budget = RestartBudget(policy, name)
            budget.crashed(exc)


class Supervisor:
    """A nursery whose children are supervised one-for-one.

    A child that crashes is restarted in place; its siblings are untouched. A child that
    exceeds its restart intensity escalates: the supervisor's nursery is cancelled and
    ``RestartIntensityExceeded`` propagates out of ``open_supervisor`` (inside an exception
    group, as trio nurseries raise), as an OTP supervisor terminates and fails to its parent.
    """

    def __init__(self, nursery: trio.Nursery, policy: RestartPolicy) -> None:
        self._nursery = nursery
        self.policy = policy

    def start_child(self, body: Callable[[], Awaitable[None]], *, name: object = "child") -> None:
        """Start ``body`` under supervision. Never blocks."""
        self._nursery.start_soon(self._child, body, name, name=f"supervised {name}")

    async def _child(self, body: Callable[[], Awaitable[None]], name: object) -> None:
        await supervise(body, policy=self.policy, name=name)

    def cancel(self) -> None:
        self._nursery.cancel_scope.cancel()


@asynccontextmanager
async def open_supervisor(policy: RestartPolicy = DEFAULT_POLICY) -> AsyncIterator[Supervisor]:
    """Open a supervisor; on exit, waits for its children like a nursery does."""
    async with trio.open_nursery() as nursery:
        yield Supervisor(nursery, policy)
