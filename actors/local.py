"""The thread actors of this process, asked through its directory: ``LocalThreads``.

The ``Gateway`` sends every request through a ``Router``; ``LocalThreads`` is the router of a
runtime whose threads all live here, and the local part that any other router (one that may
send a request elsewhere, built from above) is given to answer the requests it keeps here.
Building it first, and the router from it, is what lets a runtime be composed at construction:
nothing is plugged into the gateway afterwards.

Invariants:

- ``ask`` activates the actor (``Directory.get_or_spawn``) and asks it again only when its
  mailbox closed before the request was read (passivation won the race: never handled), at
  most three times and never once ``closing``; a crash mid-request (``ActorCrashed``) is never
  asked again.
- ``unsubscribe`` never activates, is shielded and is bounded by the ask timeout, so it can run
  in cleanup code.
"""

from __future__ import annotations

from typing import Any, Callable, Protocol, TypeVar

import trio

from .directory import Directory
from .errors import ActorCrashed, ActorStopped
from .messages import Subscribe, ThreadKey, Unsubscribe
from .reply import Reply
from .thread import Subscriber

T = TypeVar("T")


class Router(Protocol):
    """Where a ``Gateway``'s requests go: the same three calls as ``LocalThreads``, answered
    with the same values and errors (a router that may send a request to another process
    answers as the actor there would)."""

    async def ask(self, key: ThreadKey, make: Callable[[Reply[Any]], Any]) -> Any: ...
    async def subscribe(self, key: ThreadKey, subscriber: Subscriber, since: int | None,
                        tag: object) -> int: ...
    async def unsubscribe(self, key: ThreadKey, subscriber: Subscriber) -> None: ...


class LocalThreads:
    """Requests to the thread actors in ``directory`` (see the header)."""

    def __init__(self, directory: Directory[ThreadKey], *, ask_timeout: float) -> None:
        self.directory = directory
        self.ask_timeout = ask_timeout
        self.closing = False  # the runtime is shutting down: a closed mailbox is final

    async def ask(self, key: ThreadKey, make: Callable[[Reply[T]], Any]) -> T:
        """Ask the actor in this process's directory (activating it)."""
        for attempt in range(3):
            ref = self.directory.get_or_spawn(key)
            try:
                return await ref.ask(make, self.ask_timeout)
            except ActorCrashed:
                raise
            except ActorStopped:
                if attempt == 2 or self.closing:
                    raise
        raise AssertionError("unreachable")

    async def subscribe(self, key: ThreadKey, subscriber: Subscriber, since: int | None,
                        tag: object = None) -> int:
        return await self.ask(key, lambda r: Subscribe(subscriber, since, tag, r))

    async def unsubscribe(self, key: ThreadKey, subscriber: Subscriber) -> None:
        """Remove ``subscriber`` from the thread, if the thread is live here."""
        with trio.CancelScope(shield=True) as scope:
            scope.deadline = trio.current_time() + self.ask_timeout
            ref = self.directory.lookup(key)
            if ref is not None:
                try:
                    await ref.ask(lambda r: Unsubscribe(subscriber, r), None)
                except ActorStopped:
                    pass
