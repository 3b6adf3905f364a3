"""Per-user quotas, across all of one user's connections to this server.

A ``UserQuota`` lives while the user has a connection open: the connection count, one send
bucket shared by the user's connections, and (loaded on the first join that could create a
thread) the set of the user's stored thread ids, so that joining a thread that exists never
costs a look-up and creating one more than ``user_threads`` is refused. Bookkeeping is on the
trio thread, synchronous where it decides, so two connections of one user cannot both take the
last slot.
"""

from __future__ import annotations

import trio

from threadline.actors.errors import LimitReached, RateLimited
from threadline.actors.gateway import UserHandle

from .limits import Limits, TokenBucket


class UserQuota:
    __slots__ = ("user", "limits", "connections", "sends", "threads", "_loading")

    def __init__(self, user: UserHandle, limits: Limits) -> None:
        self.user = user
        self.limits = limits
        self.connections = 0
        self.sends = TokenBucket(limits.user_send_rate, limits.user_send_burst,
                                 trio.current_time())
        self.threads: set[str] | None = None  # the user's stored thread ids, once loaded
        self._loading: trio.Event | None = None

    def admit_send(self) -> None:
        """Raises ``RateLimited`` when the user sends faster than allowed (all connections)."""
        if not self.sends.take(trio.current_time()):
            raise RateLimited(f"more than {self.limits.user_send_rate:g} messages/s from this "
                              "user; this one was dropped")

    async def admit_thread(self, thread_id: str) -> None:
        """Before joining ``thread_id``: raises ``LimitReached`` if it would be one stored
        thread more than allowed. Reads the user's threads from the journal once."""
        while self.threads is None:
            if self._loading is None:
                self._loading = trio.Event()
                try:
                    self.threads = {i.key.thread_id for i in await self.user.threads()}
                finally:
                    self._loading.set()
                    self._loading = None
            else:
                await self._loading.wait()
        if thread_id in self.threads:
            return
        if len(self.threads) >= self.limits.user_threads:
            raise LimitReached(f"at most {self.limits.user_threads} threads per user")
        self.threads.add(thread_id)  # joining creates it (PROTOCOL.md)


class UserQuotas:
    """The quotas of every user with a connection open."""

    def __init__(self, limits: Limits) -> None:
        self.limits = limits
        self._users: dict[str, UserQuota] = {}

    def open(self, user: UserHandle) -> UserQuota:
        """Count one more connection of ``user``. Raises ``LimitReached``."""
        quota = self._users.get(user.user_id)
        if quota is None:
            quota = self._users[user.user_id] = UserQuota(user, self.limits)
        if quota.connections >= self.limits.user_connections:
            raise LimitReached(f"at most {self.limits.user_connections} connections per user")
        quota.connections += 1
        return quota

    def release(self, quota: UserQuota) -> None:
        quota.connections -= 1
        if quota.connections <= 0:
            self._users.pop(quota.user.user_id, None)
