"""Lanes: the requests of one connection, one lane per thread.

A thread's requests run one at a time in the order they arrived (a ``send`` then a ``cancel``
of the same thread mean what they say); requests of different threads run concurrently, so one
thread's request stuck on a slow store holds back no other thread's, nor a ping. A lane is a
deque and a task that exists only while the lane has requests: an idle connection has none.
Bounded: a lane holds at most ``depth`` requests; one more is refused, never queued.
"""

from __future__ import annotations

import collections
from typing import Awaitable, Callable, Hashable

import trio

from .messages import Request


class Lanes:
    def __init__(self, handle: Callable[[Request], Awaitable[None]], depth: int) -> None:
        self._handle = handle
        self.depth = depth
        self._lanes: dict[Hashable, collections.deque[Request]] = {}

    def put_nowait(self, nursery: trio.Nursery, key: Hashable, request: Request) -> bool:
        """Queue ``request`` in the lane ``key``, starting its task in ``nursery`` if it has
        none. Returns False (nothing queued) when the lane is full."""
        lane = self._lanes.get(key)
        if lane is None:
            lane = self._lanes[key] = collections.deque()
            nursery.start_soon(self._run, key, lane)
        elif len(lane) >= self.depth:
            return False
        lane.append(request)
        return True

    async def _run(self, key: Hashable, lane: collections.deque[Request]) -> None:
        try:
            while lane:
                await self._handle(lane[0])  # stays in the lane while it runs: counts as queued
                lane.popleft()
        finally:
            del self._lanes[key]
