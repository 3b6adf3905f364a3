"""The directory: get-or-spawn actors by key, one activation per key, passivation of idle ones.

``get_or_spawn`` is synchronous: it looks the key up and, if absent, creates the mailbox, records
the entry and starts the actor's task before it returns, with no checkpoint in between. That is
what makes the activation single even when a thousand tasks race for the same key: no await
separates the look-up from the insert. Whatever the actor must load (its journal state) it loads
in its own task, while early messages wait in its mailbox.
"""

from __future__ import annotations

import logging
from typing import Any, Callable, Generic, Hashable, Iterator, Protocol, TypeVar

import attrs
import trio

from .errors import ActorStopped, MailboxFull, RestartIntensityExceeded
from .mailbox import ActorRef, Backlog, Mailbox
from .messages import Passivate
from .supervisor import DEFAULT_POLICY, RestartBudget, RestartPolicy

log = logging.getLogger("threadline.directory")

K = TypeVar("K", bound=Hashable)


class Actor(Protocol):
    async def run(self, mailbox: Mailbox) -> None:
        """Handle the mailbox until told to stop. Called again, on the same object, after a crash."""

    def idle_since(self) -> float | None:
        """The trio time since which the actor has had nothing to do, or None while busy."""

    def stopped(self, reason: str, unread: list[Any]) -> None:
        """Called once when the actor has stopped for good (passivated, failed or shut down),
        with the messages its mailbox still held: the actor answers those that await a reply."""


@attrs.define(slots=True, eq=False)
class _Entry:
    ref: ActorRef
    actor: Any


class Directory(Generic[K]):
    """Owns one actor per key in ``nursery``.

    ``passivate_after``: an actor idle for that long (see ``Actor.idle_since``) is told
    ``Passivate``; ``None`` keeps actors forever. A sweeper task checks every
    ``passivate_after / 4`` seconds, so an idle actor leaves within 1.25 TTL.

    ``admit``: which keys may be activated here (say, only those this process owns when
    others serve the rest); ``None``: every key. Asked at each activation, never again for
    a live actor.
    """

    def __init__(
        self,
        nursery: trio.Nursery,
        spawn: Callable[[K], Actor],
        *,
        mailbox_capacity: int = 1000,
        policy: RestartPolicy = DEFAULT_POLICY,
        passivate_after: float | None = None,
        admit: Callable[[K], bool] | None = None,
    ) -> None:
        self._nursery = nursery
        self._spawn = spawn
        self._capacity = mailbox_capacity
        self._policy = policy
        self._entries: dict[K, _Entry] = {}
        self._closing = False
        self._empty: trio.Event | None = None
        self.activations = 0
        self.passivations = 0
        self.failures = 0
        self.backlog = Backlog()  # messages waiting in its actors' mailboxes, all together
        self._admit = admit
        if passivate_after is not None:
            nursery.start_soon(self._sweep, passivate_after)

    def get_or_spawn(self, key: K) -> ActorRef:
        """The actor for ``key``, activating it if needed. Never blocks.

        Raises ``ActorStopped`` once the directory is closing, or for a key ``admit`` refuses.
        """
        entry = self._entries.get(key)
        if entry is not None and not entry.ref.mailbox.closed:
            return entry.ref
        if self._closing:
            raise ActorStopped("the runtime is shutting down")
        if self._admit is not None and not self._admit(key):
            raise ActorStopped("this key is not activated here (it lives elsewhere)")
        actor = self._spawn(key)
        mailbox = Mailbox(self._capacity, self.backlog)
        entry = _Entry(ActorRef(key, mailbox), actor)
        self._entries[key] = entry
        self.activations += 1
        self._nursery.start_soon(self._run, key, entry, name=f"actor {key}")
        return entry.ref

    def lookup(self, key: K) -> ActorRef | None:
        """The live actor for ``key``, or None. Never activates."""
        entry = self._entries.get(key)
        return entry.ref if entry is not None else None

    def __len__(self) -> int:
        return len(self._entries)

    def __contains__(self, key: object) -> bool:
        return key in self._entries

    def refs(self) -> Iterator[ActorRef]:
        return iter([e.ref for e in self._entries.values()])

    async def _run(self, key: K, entry: _Entry) -> None:
        mailbox = entry.ref.mailbox
        reason = "stopped"
        budget: RestartBudget | None = None
        try:
            # supervise(), inlined: one coroutine frame less in each of 100,000 idle actors.
            while True:
                try:
                    await entry.actor.run(mailbox)
                    break
                except Exception as exc:
                    if budget is None:
                        budget = RestartBudget(self._policy, key)
                    budget.crashed(exc)
            reason = "passivated"
        except RestartIntensityExceeded as exc:
            # The parent's policy for an escalation: stop this actor and forget its key, so the
            # next look-up starts afresh from the journal; the runtime goes on.
            self.failures += 1
            reason = f"actor failed: {exc.__cause__!r}"
        finally:
            if self._entries.get(key) is entry:
                del self._entries[key]
            entry.actor.stopped(reason, mailbox.close())
            if reason == "passivated":
                self.passivations += 1
            if self._empty is not None and not self._entries:
                self._empty.set()

    async def aclose(self, stop: Callable[[ActorRef], None], timeout: float) -> int:
        """Refuse new activations, call ``stop(ref)`` for every live actor, and wait up to
        ``timeout`` seconds for all of them to finish. Returns how many were still running."""
        self._closing = True
        self._empty = trio.Event()
        for entry in list(self._entries.values()):
            stop(entry.ref)
        if self._entries:
            with trio.move_on_after(timeout):
                await self._empty.wait()
        return len(self._entries)

    async def _sweep(self, ttl: float) -> None:
        while True:
            await trio.sleep(ttl / 4)
            now = trio.current_time()
            for entry in list(self._entries.values()):
                since = entry.actor.idle_since()
                if since is not None and now - since >= ttl:
                    try:
                        entry.ref.tell(Passivate())
                    except (ActorStopped, MailboxFull):  # busy or gone: next sweep
                        pass
