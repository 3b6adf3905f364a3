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

Across the nodes of a cluster (no database round trip per frame): each node tells the others,
every ``REPORT_INTERVAL`` seconds, what its users use (``take_report``: connections open, sends
admitted and threads created since its last report), and counts what it hears (``observe``):
the other nodes' connections against ``user_connections``, their sends taken from the user's
bucket here (which may go below zero, so the rate holds across the cluster over time), their new
threads added to the user's set. The bound: within one interval a user may get past a limit by
what the other nodes admit before they hear of each other (at most N times a limit on N nodes,
for a moment); after it, the limits hold for the user across the cluster. A node that leaves
is forgotten (``forget_node``), with what it reported.
"""

from __future__ import annotations

from collections import OrderedDict
from contextlib import contextmanager
from typing import Iterator, Mapping

import attrs
import trio

from threadline.actors.errors import LimitReached, RateLimited
from threadline.actors.gateway import UserHandle

from .limits import Limits, TokenBucket


REPORT_INTERVAL = 1.0  # seconds between a cluster node's reports of its users' use


@attrs.frozen
class UserUsage:
    """What one node reports of one user: what it has open now, and what it admitted since
    its last report."""

    connections: int = 0              # slots in use: WebSockets, +1 while HTTP requests are
    sends: int = 0                    # sends admitted since the last report
    threads: tuple[str, ...] = ()     # threads created since the last report

    def to_wire(self) -> list[object]:
        return [self.connections, self.sends, list(self.threads)]

    @classmethod
    def from_wire(cls, raw: object) -> UserUsage:
        """Raises ``ValueError`` for anything but what ``to_wire`` makes."""
        if not (isinstance(raw, (list, tuple)) and len(raw) == 3):
            raise ValueError("a user's usage is [connections, sends, threads]")
        connections, sends, threads = raw
        if not (type(connections) is int and type(sends) is int and connections >= 0
                and sends >= 0 and isinstance(threads, (list, tuple))
                and all(isinstance(t, str) for t in threads)):
            raise ValueError("a user's usage is [connections, sends, threads]")
        return cls(connections, sends, tuple(threads))


class UserQuota:
    __slots__ = ("user", "limits", "connections", "requests", "sends", "threads", "_loading",
                 "sent", "created")

    def __init__(self, user: UserHandle, limits: Limits) -> None:
        self.user = user
        self.limits = limits
        self.connections = 0  # WebSocket connections open
        self.requests = 0  # HTTP requests in flight: together, one slot
        self.sends = TokenBucket(limits.user_send_rate, limits.user_send_burst,
                                 trio.current_time())
        self.threads: set[str] | None = None  # the user's stored thread ids, once loaded
        self._loading: trio.Event | None = None
        self.sent = 0  # sends admitted since the last report to other nodes
        self.created: list[str] = []  # threads created since that report

    @property
    def slots(self) -> int:
        """Connection slots this node holds for the user."""
        return self.connections + (self.requests > 0)

    def admit_send(self) -> None:
        """Raises ``RateLimited`` when the user sends faster than allowed (all connections)."""
        if not self.sends.take(trio.current_time()):
            raise RateLimited(f"more than {self.limits.user_send_rate:g} messages/s from this "
                              "user; this one was dropped")
        self.sent += 1

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
        self.created.append(thread_id)


class UserQuotas:
    """The quotas of every user with a connection open or an HTTP request in flight, and of
    those idle for less than their send bucket takes to refill."""

    def __init__(self, limits: Limits) -> None:
        self.limits = limits
        self._users: dict[str, UserQuota] = {}
        self._idle: OrderedDict[str, float] = OrderedDict()  # user id -> idle since; oldest first
        self._keep = (limits.user_send_burst / limits.user_send_rate
                      if limits.user_send_rate > 0 else float("inf"))
        # What other nodes of a cluster reported: node id -> user id -> slots in use there.
        self._elsewhere: dict[str, dict[str, int]] = {}
        self._reported: set[str] = set()  # users in this node's last report

    def __len__(self) -> int:
        """Users with a record (open, active or refilling)."""
        return len(self._users)

    def open(self, user: UserHandle) -> UserQuota:
        """Count one more WebSocket connection of ``user``. Raises ``LimitReached``."""
        quota = self._quota_of(user)
        if quota.slots + self.slots_elsewhere(user.user_id) >= self.limits.user_connections:
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
        if quota.requests == 0 and (quota.connections + self.slots_elsewhere(user.user_id)
                                    >= self.limits.user_connections):
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

    # -- across the nodes of a cluster -------------------------------------------------------

    def slots_elsewhere(self, user_id: str) -> int:
        """Connection slots the other nodes last reported for ``user_id``."""
        return sum(users.get(user_id, 0) for users in self._elsewhere.values())

    def take_report(self) -> dict[str, UserUsage]:
        """What this node's users use, for the other nodes: every user with a slot here, or
        sends or new threads since the last report, or in the last report (so that the others
        hear when the last slot here closed). Resets what it counts since."""
        report: dict[str, UserUsage] = {}
        for user_id, quota in self._users.items():
            if quota.slots or quota.sent or quota.created or user_id in self._reported:
                report[user_id] = UserUsage(quota.slots, quota.sent, tuple(quota.created))
                quota.sent, quota.created = 0, []
        for user_id in self._reported - report.keys():  # its record was swept meanwhile
            report[user_id] = UserUsage()
        self._reported = {u for u, usage in report.items() if usage.connections}
        return report

    def observe(self, node_id: str, report: Mapping[str, UserUsage]) -> None:
        """Count what node ``node_id`` reports (its ``take_report``): its slots in use replace
        what it said before; its sends are taken from the user's bucket here, its new threads
        added to the user's set."""
        slots = self._elsewhere.setdefault(node_id, {})
        now = trio.current_time()
        for user_id, usage in report.items():
            if usage.connections:
                slots[user_id] = usage.connections
            else:
                slots.pop(user_id, None)
            quota = self._users.get(user_id)
            if quota is None:
                continue
            if usage.sends:
                bucket = quota.sends
                bucket.take(now, 0.0)  # refill to now first
                bucket.tokens = max(-bucket.burst, bucket.tokens - usage.sends)
            if usage.threads and quota.threads is not None:
                quota.threads.update(usage.threads)

    def forget_node(self, node_id: str) -> None:
        """Node ``node_id`` left (or its link did): what it reported no longer counts."""
        self._elsewhere.pop(node_id, None)

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
