"""Per-user quotas, across all of one user's connections and HTTP requests to this server.

A ``UserQuota`` is the user's bookkeeping: the connection count, the HTTP requests in flight,
one send bucket shared by all of them, and (loaded on the first join that could create a
thread) the set of the user's stored thread ids, so that joining a thread that exists never
costs a look-up and creating one more than ``user_threads`` is refused. Bookkeeping is on the
trio thread, synchronous where it decides, so two connections of one user cannot both take the
last slot.

Invariants:

- The user's slots in use are its WebSocket connections, plus one while it has at least one
  HTTP request in flight (``request_slot``, from the request's head to its answer written), at
  most ``user_connections``; HTTP requests in flight are at most ``user_http_requests``. A slot
  is free again the moment the last request holding it ends: idle HTTP use holds none.
- A record with nothing in use is kept while its send bucket refills (``burst / rate``
  seconds), so that closing a connection or letting a request end never buys a fresh burst,
  and then forgotten: it would hold nothing but a full bucket and a cache. Idle records are
  swept, oldest first, whenever a record is asked for. Memory: one record per user with
  something open or active in the last ``burst / rate`` seconds.
"""

from __future__ import annotations

from collections import OrderedDict
from contextlib import contextmanager
from typing import Iterator

import trio

from threadline.actors.errors import LimitReached, RateLimited
from threadline.actors.gateway import UserHandle

from .limits import Limits, TokenBucket


class UserQuota:
    __slots__ = ("user", "limits", "connections", "requests", "sends", "threads", "_loading")

    def __init__(self, user: UserHandle, limits: Limits) -> None:
        self.user = user
        self.limits = limits
        self.connections = 0  # WebSocket connections open
        self.requests = 0  # HTTP requests in flight: together, one slot
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
    """The quotas of every user with a connection open or an HTTP request in flight, and of
    those idle for less than their send bucket takes to refill."""

    def __init__(self, limits: Limits) -> None:
        self.limits = limits
        self._users: dict[str, UserQuota] = {}
        self._idle: OrderedDict[str, float] = OrderedDict()  # user id -> idle since; oldest first
        self._keep = (limits.user_send_burst / limits.user_send_rate
                      if limits.user_send_rate > 0 else float("inf"))

    def __len__(self) -> int:
        """Users with a record (open, active or refilling)."""
        return len(self._users)

    def open(self, user: UserHandle) -> UserQuota:
        """Count one more WebSocket connection of ``user``. Raises ``LimitReached``."""
        quota = self._quota_of(user)
        if quota.connections + (quota.requests > 0) >= self.limits.user_connections:
            raise LimitReached(f"at most {self.limits.user_connections} connections per user")
        quota.connections += 1
        self._idle.pop(user.user_id, None)
        return quota

    def release(self, quota: UserQuota) -> None:
        """One WebSocket connection of the quota's user closed."""
        quota.connections -= 1
        self._maybe_idle(quota)

    def open_request(self, user: UserHandle) -> UserQuota:
        """Count one more HTTP request of ``user`` in flight (the first takes a connection
        slot). Raises ``LimitReached``: too many in flight, or no slot free."""
        quota = self._quota_of(user)
        if quota.requests >= self.limits.user_http_requests:
            raise LimitReached(f"at most {self.limits.user_http_requests} HTTP requests at once "
                               "per user")
        if quota.requests == 0 and quota.connections >= self.limits.user_connections:
            raise LimitReached(f"at most {self.limits.user_connections} connections per user "
                               "(HTTP requests in flight hold one)")
        quota.requests += 1
        self._idle.pop(user.user_id, None)
        return quota

    def end_request(self, quota: UserQuota) -> None:
        """One HTTP request of the quota's user ended (the last frees its slot)."""
        quota.requests -= 1
        self._maybe_idle(quota)

    @contextmanager
    def request_slot(self, user: UserHandle) -> Iterator[UserQuota]:
        """``open_request`` ... ``end_request``, whatever happens in between."""
        quota = self.open_request(user)
        try:
            yield quota
        finally:
            self.end_request(quota)

    def requests_in_flight(self, user_id: str) -> int:
        quota = self._users.get(user_id)
        return 0 if quota is None else quota.requests

    def _quota_of(self, user: UserHandle) -> UserQuota:
        now = trio.current_time()
        while self._idle:  # oldest first: stop at the first still refilling
            user_id, since = next(iter(self._idle.items()))
            if now - since < self._keep:
                break
            del self._idle[user_id]
            self._users.pop(user_id, None)
        quota = self._users.get(user.user_id)
        if quota is None:
            quota = self._users[user.user_id] = UserQuota(user, self.limits)
        return quota

    def _maybe_idle(self, quota: UserQuota) -> None:
        if quota.connections <= 0 and quota.requests <= 0:
            user_id = quota.user.user_id
            self._idle.pop(user_id, None)
            self._idle[user_id] = trio.current_time()
