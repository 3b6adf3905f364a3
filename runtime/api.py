"""The embedding API: ``open_runtime()``, and handles on users and threads.

::

    async with open_runtime() as rt:
        thread = rt.user("ada").thread("main")
        async with thread.open_subscription() as events:
            await thread.send("hello")
            async for event in events: ...

A ``UserHandle`` can only reach its own user's threads: code that got it from an authenticated
identity cannot name another user's thread. ``ThreadHandle`` methods look the actor up (or
activate it) on every call, so a handle stays valid across passivation and restarts.
"""

from __future__ import annotations

import logging
from contextlib import asynccontextmanager
from typing import Any, AsyncIterator, Callable, TypeVar

import attrs
import trio

from actors.agents import echo_agent, echo_tools
from actors.directory import Directory
from actors.engine import Agent, ToolRegistry
from actors.errors import ActorCrashed, ActorStopped, MailboxFull
from actors.journal import Journal, MemoryJournal
from actors.mailbox import DEFAULT_ASK_TIMEOUT, ActorRef, Reply
from actors.messages import (
    Accepted,
    CancelRun,
    Event,
    GetInfo,
    PostMessage,
    Shutdown,
    Strategy,
    STRATEGIES,
    Subscribe,
    ThreadInfo,
    ThreadKey,
    Unsubscribe,
    is_thread_id,
    is_user_id,
)
from actors.supervisor import RestartPolicy
from actors.thread import ThreadActor, ThreadEnv

from actors.subscription import Subscription

log = logging.getLogger("threadline.runtime")
T = TypeVar("T")


@attrs.frozen
class RuntimeConfig:
    """Tunables of a runtime; every default is the one PROTOCOL.md or DESIGN.md names."""

    mailbox_capacity: int = 1000         # per thread actor
    subscriber_capacity: int = 1000      # per subscription (PROTOCOL.md: outgoing queue 1,000)
    passivate_after: float | None = 300.0
    restart: RestartPolicy = RestartPolicy()
    ask_timeout: float = DEFAULT_ASK_TIMEOUT
    shutdown_grace: float = 5.0          # active runs get this long before agent_cancelled


class Runtime:
    """A running threadline: the directory of thread actors, the journal, the agent."""

    def __init__(self, nursery: trio.Nursery, journal: Journal, agent: Agent,
                 tools: ToolRegistry, config: RuntimeConfig) -> None:
        self.config = config
        self.journal = journal
        self._env = ThreadEnv(journal, agent, tools)
        self._nursery = nursery
        self.directory: Directory[ThreadKey] = Directory(
            nursery,
            lambda key: ThreadActor(key, self._env),
            mailbox_capacity=config.mailbox_capacity,
            policy=config.restart,
            passivate_after=config.passivate_after,
        )
        self.closing = False

    def user(self, user_id: str) -> UserHandle:
        if not is_user_id(user_id):
            raise ValueError(f"invalid user id {user_id!r}")
        return UserHandle(self, user_id)

    def thread(self, user_id: str, thread_id: str) -> ThreadHandle:
        return self.user(user_id).thread(thread_id)

    def statistics(self) -> dict[str, int]:
        d = self.directory
        return {"live_actors": len(d), "activations": d.activations,
                "passivations": d.passivations, "failures": d.failures}

    async def aclose(self, grace: float | None = None) -> None:
        """Stop: refuse new work, give active runs ``grace`` seconds (default from the config),
        cancel them with ``agent_cancelled`` (reason ``shutdown``), stop every actor."""
        if self.closing:
            return
        self.closing = True
        grace = self.config.shutdown_grace if grace is None else grace
        log.info("shutting down %d live thread actors (grace %ss)", len(self.directory), grace)

        def stop(ref: ActorRef) -> None:
            try:
                ref.tell(Shutdown(grace))
            except ActorStopped:
                pass
            except MailboxFull:  # wait for room in the background
                self._nursery.start_soon(ref.send, Shutdown(grace))

        left = await self.directory.aclose(stop, timeout=grace + 10.0)
        if left:
            log.warning("%d thread actors did not stop in time; cancelling them", left)
        self._nursery.cancel_scope.cancel()

    async def _ask(self, key: ThreadKey, make: Callable[[Reply[T]], Any]) -> T:
        # A mailbox closed under us (passivation won the race) never handled the request, so
        # asking the fresh activation is safe; a crash mid-request (ActorCrashed) is not retried.
        for attempt in range(3):
            ref = self.directory.get_or_spawn(key)
            try:
                return await ref.ask(make, self.config.ask_timeout)
            except ActorCrashed:
                raise
            except ActorStopped:
                if attempt == 2 or self.closing:
                    raise
        raise AssertionError("unreachable")


@attrs.frozen
class UserHandle:
    """One user's view of the runtime."""

    runtime: Runtime
    user_id: str

    def thread(self, thread_id: str) -> ThreadHandle:
        if not is_thread_id(thread_id):
            raise ValueError(f"invalid thread id {thread_id!r}")
        return ThreadHandle(self.runtime, ThreadKey(self.user_id, thread_id))

    async def threads(self) -> list[ThreadInfo]:
        """The user's threads, most recently updated first (from the journal)."""
        return await self.runtime.journal.threads(self.user_id)


@attrs.frozen
class ThreadHandle:
    """One thread. Every call may activate the thread actor (creating the thread if new)."""

    runtime: Runtime
    key: ThreadKey

    @property
    def thread_id(self) -> str:
        return self.key.thread_id

    async def send(self, text: str, *, client_msg_id: str | None = None,
                   strategy: Strategy = "enqueue") -> Accepted:
        """Store a user message and queue its run; returns once the message is durable.

        Raises ``Busy`` (strategy ``reject`` while a run is active), ``JournalUnavailable``,
        ``ActorStopped``, ``AskTimeout``.
        """
        if strategy not in STRATEGIES:
            raise ValueError(f"strategy must be one of {STRATEGIES}")
        return await self.runtime._ask(
            self.key, lambda r: PostMessage(text, client_msg_id, strategy, r))

    async def cancel(self, run_id: str | None = None) -> str:
        """Cancel the active run (or ``run_id``, if it is the active one); returns its id.
        Raises ``UnknownRun``. The run then ends with ``agent_cancelled`` (reason cancel)."""
        return await self.runtime._ask(self.key, lambda r: CancelRun(run_id, r))

    async def info(self) -> ThreadInfo:
        return await self.runtime._ask(self.key, GetInfo)

    async def history(self, after: int = 0, limit: int = 1000) -> list[Event]:
        """Stored events with ``seq > after``, at most ``limit``."""
        return await self.runtime.journal.read(self.key, after, limit=limit)

    @asynccontextmanager
    async def open_subscription(self, since: int | None = None,
                                capacity: int | None = None) -> AsyncIterator[Subscription]:
        """Subscribe to the thread's events; iterate the result.

        With ``since``, stored events with ``seq > since`` come first, then live ones, with no
        gap and no duplicate. ``capacity`` bounds the buffered events (default from the config);
        a subscriber that falls that far behind is dropped: iterating then raises
        ``SubscriberDropped`` after the buffered events, and you resume with ``since``.
        """
        sub = Subscription(self.key, self.runtime.journal, since,
                           capacity or self.runtime.config.subscriber_capacity)
        sub.joined_at = await self.runtime._ask(self.key, lambda r: Subscribe(sub, since, None, r))
        try:
            yield sub
        finally:
            with trio.CancelScope(shield=True) as scope:
                scope.deadline = trio.current_time() + self.runtime.config.ask_timeout
                ref = self.runtime.directory.lookup(self.key)
                if ref is not None:
                    try:
                        await ref.ask(lambda r: Unsubscribe(sub, r), None)
                    except ActorStopped:
                        pass


@asynccontextmanager
async def open_runtime(
    *,
    journal: Journal | None = None,
    agent: Agent | None = None,
    tools: ToolRegistry | None = None,
    config: RuntimeConfig | None = None,
) -> AsyncIterator[Runtime]:
    """Open a runtime that owns its root nursery, its directory and its journal.

    Defaults: an in-memory journal, the built-in ``echo`` agent with its ``calculator`` tool.
    On exit the runtime shuts down gracefully (see ``Runtime.aclose``), also when the body
    raised or was cancelled.
    """
    if agent is None:
        agent = echo_agent
        tools = tools if tools is not None else echo_tools()
    async with trio.open_nursery() as nursery:
        runtime = Runtime(nursery, journal if journal is not None else MemoryJournal(), agent,
                          tools if tools is not None else ToolRegistry(),
                          config or RuntimeConfig())
        try:
            yield runtime
        finally:
            with trio.CancelScope(shield=True):
                await runtime.aclose()
