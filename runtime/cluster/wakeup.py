"""``Wakeup``: a flag one task sleeps on and any task sets, cleared by the sleeper.

Built before the objects that set it (the fence, the router, the feed hub) and the task that
waits on it (the node's rounds, the announcer), so that each is given it at construction and
none needs a reference to the others. Setting never blocks and is idempotent until cleared; a
set between ``wait`` returning and ``clear`` is folded into the wake-up under way.
"""

from __future__ import annotations

import trio


class Wakeup:
    __slots__ = ("_event",)

    def __init__(self) -> None:
        self._event = trio.Event()

    def set(self) -> None:
        self._event.set()

    def is_set(self) -> bool:
        return self._event.is_set()

    def clear(self) -> None:
        if self._event.is_set():
            self._event = trio.Event()

    async def wait(self) -> None:
        await self._event.wait()
