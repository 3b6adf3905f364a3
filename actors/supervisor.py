"""The restart rule of one-for-one supervision, as in OTP: a restart intensity.

A child may crash and be restarted at most ``intensity`` times within any ``period`` seconds
(OTP's default for a supervisor is 1 in 5 s; ours is 3 in 5 s). One crash more escalates as
``RestartIntensityExceeded``, chained to the last crash.

The budget is counted per child, not per supervisor as OTP does: a runtime supervises one actor
per conversation thread, and one poisoned thread must not use up the restarts of a hundred
thousand healthy ones. The supervision loop itself is the directory's (``Directory._run``): each
actor runs in its own task, so a crash is caught in that task, restarted in place with
``RestartBudget.crashed`` deciding, and never touches a sibling. Cancellation is not a crash.
Time is trio's clock, so tests use virtual time.
"""

from __future__ import annotations

import collections
import logging

import attrs
import trio

from .errors import RestartIntensityExceeded, ThreadReload

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
        if _reload(exc):  # the store changed under the actor: no bug
            log.warning("%s: %s; reloading from the store (%d of %d in %ss)", self.name, exc,
                        len(times), policy.intensity, policy.period)
        else:
            log.warning("%s crashed; restarting (%d of %d in %ss)", self.name, len(times),
                        policy.intensity, policy.period, exc_info=exc)


def _reload(exc: BaseException) -> bool:
    """A ``ThreadReload``, or a group (the actor's nursery: its runner met it too) of those."""
    if isinstance(exc, BaseExceptionGroup):
        return all(_reload(e) for e in exc.exceptions)
    return isinstance(exc, ThreadReload)
